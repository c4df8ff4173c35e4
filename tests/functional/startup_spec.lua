-- Start-up: broken handlers, --check, usage errors. Exit 2 with one stderr line
-- naming file, line and cause; never a stack dump.
local t = require "echokit_test"

-- The non-empty lines of a text.
local function lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do
    if l:find("%S") then out[#out + 1] = l end
  end
  return out
end

-- Runs echokit and asserts exit 2 with exactly one stderr line; returns it.
local function expect_exit2(o, what)
  local r = t.run(o)
  assert(r.how == "exited" and r.code == 2, string.format(
    "%s: expected exit 2, got %s %s\nstdout:\n%s\nstderr:\n%s", what, r.how, r.code,
    t.clip(r.stdout), t.clip(r.stderr)))
  local l = lines(r.stderr)
  assert(#l == 1, string.format("%s: expected one stderr line, got %d:\n%s", what, #l,
    t.clip(r.stderr)))
  assert.is_nil(r.stdout:find("listening on", 1, true), what .. ": it listened anyway")
  assert.is_nil(l[1]:find("traceback", 1, true), what .. ": a traceback on stderr")
  return l[1]
end

describe("start-up", function()
  after_each(t.teardown)

  it("exits 2 on a handler with a syntax error, naming file and line", function()
    local line = expect_exit2({ handler = "tests/handlers/bad_syntax.lua",
                                listen = { "127.0.0.1:0" } }, "syntax error")
    assert.truthy(line:find("tests/handlers/bad_syntax.lua:3:", 1, true), line)
    assert.truthy(line:find("near '+'", 1, true) or line:find("unexpected symbol", 1, true), line)
  end)

  it("exits 2 on a handler that fails while loading, naming file and line", function()
    local n = t.line_of("tests/handlers/bad_runtime.lua", "-- RUNTIME_ERROR")
    local line = expect_exit2({ handler = "tests/handlers/bad_runtime.lua",
                                listen = { "127.0.0.1:0" } }, "runtime error at load")
    assert.truthy(line:find("tests/handlers/bad_runtime.lua:" .. n .. ":", 1, true), line)
    assert.truthy(line:find("attempt to index a nil value", 1, true), line)
  end)

  it("exits 2 on a handler that does not return a table", function()
    local line = expect_exit2({ handler = "tests/handlers/not_table.lua",
                                listen = { "127.0.0.1:0" } }, "no table")
    assert.truthy(line:find("tests/handlers/not_table.lua", 1, true), line)
    assert.truthy(line:find("table", 1, true), line)
    assert.truthy(line:find("nil", 1, true), line)
  end)

  it("exits 2 on a handler file that does not exist, naming it", function()
    local line = expect_exit2({ handler = "tests/handlers/does_not_exist.lua",
                                listen = { "127.0.0.1:0" } }, "missing file")
    assert.truthy(line:find("tests/handlers/does_not_exist.lua", 1, true), line)
  end)

  it("exits 2 on an unknown built-in handler name, naming it", function()
    local line = expect_exit2({ handler = "no_such_builtin", listen = { "127.0.0.1:0" } },
      "unknown built-in")
    assert.truthy(line:find("no_such_builtin", 1, true), line)
  end)

  it("exits 2 on an unknown option", function()
    local line = expect_exit2({ opts = { "--no-such-option" }, listen = { "127.0.0.1:0" } },
      "unknown option")
    assert.truthy(line:find("no-such-option", 1, true), line)
  end)

  it("exits 2 on a count option that is not a count, naming the option", function()
    for _, opt in ipairs({ "--max-conns", "--max-conns-per-ip" }) do
      for _, v in ipairs({ "x", "-1", "", "3x" }) do
        local line = expect_exit2({ opts = { opt, v }, listen = { "127.0.0.1:0" } },
          opt .. " " .. v)
        assert.truthy(line:find(opt .. ": '" .. v .. "' is not a count", 1, true), line)
      end
    end
  end)

  it("--help exits 0 and describes every long option the parser takes", function()
    local r = t.run({ opts = { "--help" } })
    assert.same({ "exited", 0 }, { r.how, r.code })
    local src = t.read_file(t.src .. "/src/options.c")
    local names = {}
    for name in src:gmatch('{"([%w-]+)", [%w_]+_argument,') do names[#names + 1] = name end
    assert(#names >= 20, "found only " .. #names .. " options in src/options.c")
    for _, name in ipairs(names) do
      assert.truthy(r.stdout:find("%-%-" .. name:gsub("%-", "%%-") .. "[ ,\n]"),
        "--help does not mention --" .. name)
    end
    -- the subcommand, whose options its own --help describes
    assert.truthy(r.stdout:find("echokit replay --client", 1, true), r.stdout)
    local sub = t.run({ opts = { "replay", "--help" } })
    assert.same({ "exited", 0 }, { sub.how, sub.code })
    for _, name in ipairs { "client", "to", "server", "ignore", "timeout" } do
      assert.truthy(sub.stdout:find("--" .. name, 1, true), "replay --help lacks --" .. name)
    end
  end)

  it("exits 2 on a malformed listen address", function()
    expect_exit2({ listen = { "not-an-address" } }, "bad --listen")
  end)

  it("--check exits 0 on a good handler without listening", function()
    for _, h in ipairs({ "echo", "lines", "handlers/echo.lua", "tests/handlers/boom.lua",
                         "tests/handlers/serve.lua" }) do
      local r = t.run({ handler = h, opts = { "--check" }, listen = { "127.0.0.1:0" } })
      assert(r.how == "exited" and r.code == 0, string.format(
        "--check %s: expected exit 0, got %s %s; stderr:\n%s", h, r.how, r.code, t.clip(r.stderr)))
      assert.is_nil(r.stdout:find("listening on", 1, true), "--check listened: " .. r.stdout)
      assert(r.elapsed < t.T(5), "--check took " .. r.elapsed .. " s")
    end
  end)

  it("--check exits 2 on a broken handler with the same one-line message", function()
    local line = expect_exit2({ handler = "tests/handlers/bad_syntax.lua",
                                opts = { "--check" } }, "--check syntax error")
    assert.truthy(line:find("tests/handlers/bad_syntax.lua:3:", 1, true), line)
    line = expect_exit2({ handler = "tests/handlers/not_table.lua", opts = { "--check" } },
      "--check no table")
    assert.truthy(line:find("tests/handlers/not_table.lua", 1, true), line)
  end)

  it("never takes a unix socket something listens on; replaces a stale one", function()
    local path = t.unix_path("taken")
    local first = t.start { handler = "echo", listen = { "unix:" .. path } }
    local c = first:connect()
    local r = t.run { handler = "echo", listen = { "unix:" .. path } }
    assert(r.how == "exited" and r.code == 1, string.format(
      "a second echokit on a live unix socket: expected exit 1, got %s %s; stdout:\n%s",
      r.how, r.code, t.clip(r.stdout)))
    assert.is_nil(r.stdout:find("listening on", 1, true), "it listened anyway")
    assert.truthy(r.stderr:find("address in use: something is listening on " .. path, 1, true),
                  r.stderr)
    -- The first service kept its socket: old and new clients reach it.
    t.send_all(c, "still\n")
    assert.equal("still", t.recv_line(c))
    local c2 = first:connect()
    t.send_all(c2, "new client\n")
    assert.equal("new client", t.recv_line(c2))
    c:close()
    c2:close()
    first:stop()
    -- A socket file nobody listens on is stale: replaced.
    local unix = require "socket.unix"
    local s = assert(unix.stream())
    assert(s:bind(path))
    s:close()
    local second = t.start { handler = "echo", listen = { "unix:" .. path } }
    local c3 = second:connect()
    t.send_all(c3, "stale replaced\n")
    assert.equal("stale replaced", t.recv_line(c3))
    c3:close()
    second:stop()
    -- A path that is not a socket is refused and left alone.
    local f = assert(io.open(path, "w"))
    f:write("not a socket")
    f:close()
    r = t.run { handler = "echo", listen = { "unix:" .. path } }
    assert.equal(1, r.code, r.stderr)
    assert.truthy(r.stderr:find(path .. " exists and is not a socket", 1, true), r.stderr)
    assert.equal("not a socket", t.read_file(path))
  end)

  it("prints one flushed 'listening on' line per listener, with the real port", function()
    local srv = t.start{ listen = { "127.0.0.1:0", "127.0.0.1:0" } }
    assert.equal(2, #srv.addrs)
    assert.are_not.equal(srv:port(1), srv:port(2))
    for i = 1, 2 do
      assert(srv:port(i) > 0 and srv:port(i) < 65536)
      assert.equal("listening on 127.0.0.1:" .. srv:port(i), srv.stdout_lines[i])
      local c = srv:connect(i)
      t.send_all(c, "port " .. i .. "\n")
      assert.equal("port " .. i, t.recv_line(c))
    end
  end)
end)
