-- The "Write your own protocol" examples in README.md, taken from the README
-- itself and run as handlers, so the documentation cannot drift from what works.
local t = require "echokit_test"
local peers = require "peers"

-- The body of the ```lua block in README.md whose text contains `needle`.
local function readme_block(needle)
  local readme = t.read_file(t.src .. "/README.md")
  for block in readme:gmatch("```lua\n(.-)```") do
    if block:find(needle, 1, true) then return block end
  end
  error("no ```lua block containing " .. needle .. " in README.md")
end

describe("README protocol examples", function()
  after_each(peers.teardown)

  it("kv.lua answers set/get/quit over split and joined lines, and enforces its limit", function()
    local path = peers.tmpfile(readme_block("-- kv.lua:"))
    local srv = t.start{ handler = path }
    local c = srv:connect()
    t.send_all(c, "set greeting hello world\r\nget gree")
    assert.equal("STORED", t.recv_line(c))
    t.send_all(c, "ting\r\nget nothing\nfly\r\n")
    assert.equal("VALUE hello world", t.recv_line(c))
    assert.equal("NOT_FOUND", t.recv_line(c))
    assert.equal("ERROR unknown command", t.recv_line(c))
    -- state is shared between connections
    local d = srv:connect()
    t.send_all(d, "get greeting\r\nquit\r\n")
    assert.equal("VALUE hello world", t.recv_line(d))
    assert.same({ "", "closed" }, { t.recv_until_closed(d, 5) })
    -- the README's nc line
    local r = peers.assert_ok(peers.run({ "sh", "-c", ("printf 'set a b\\r\\nget a\\r\\n' | nc -q1 127.0.0.1 %d")
                                          :format(srv:port()) }, 10))
    assert.equal("STORED\r\nVALUE b\r\n", r.out)
    t.send_all(c, ("x"):rep(2000))
    assert.equal("ERROR line too long", t.recv_line(c))
    assert.same({ "", "closed" }, { t.recv_until_closed(c, 5) })
  end)

  it("the http.handler example answers /time and 404", function()
    local path = peers.tmpfile(readme_block('req.path ~= "/time"'))
    local srv = t.start{ handler = path }
    local base = ("http://127.0.0.1:%d"):format(srv:port())
    local r = peers.assert_ok(peers.run({ "curl", "-s", "-w", " %{http_code}", "--max-time", "10",
                                          base .. "/time" }, 15))
    assert.truthy(r.out:match("^%d%d:%d%d:%d%d\n 200$"), r.out)
    local nf = peers.assert_ok(peers.run({ "curl", "-s", "-w", " %{http_code}", "--max-time", "10",
                                           base .. "/" }, 15))
    assert.equal("try /time\n 404", nf.out)
  end)
end)
