-- echokit.writer: its Lua contract (tests/handlers/writer_check.lua, run with
-- --check). What it is for, a stalled reader that must not stall the loop, is
-- in debug_spec ("debug proxy with a stderr nobody reads").
local t = require "echokit_test"
local peers = require "peers"

describe("echokit.writer", function()
  after_each(peers.teardown)

  it("writes to a file and to stderr, and answers misuse as documented", function()
    local path = peers.tmpfile()
    local r = t.run{ handler = "tests/handlers/writer_check.lua", opts = { "--check" },
                     args = { path = path } }
    assert.equal(0, r.code, r.stderr)
    assert.matches("writer ok", r.stdout)
    assert.matches("through the writer to stderr\n", r.stderr)
    assert.equal("one\n" .. ("x"):rep(4096) .. "\n", t.read_file(path))
  end)
end)
