-- The connection object and handler plumbing: args, timeouts, reset, close,
-- half-close, pause/resume, ids and fields, logging.
local t = require "echokit_test"
local socket = require "socket"

local CONN = "tests/handlers/conn.lua"

describe("handler arguments", function()
  after_each(t.teardown)

  it("arrive as strings in `...` and echokit.args; bare words are appended", function()
    local srv = t.start{ handler = "tests/handlers/args.lua",
                         args = { a = "1", b = "x", eq = "p=q", empty = "", "bare", "more" } }
    local c = srv:connect()
    assert.equal('{[1]="bare" [2]="more" a="1" b="x" empty="" eq="p=q"}', t.recv_line(c))
    assert.equal("same=true", t.recv_line(c))
  end)

  it("are an empty table when none are given", function()
    local srv = t.start{ handler = "tests/handlers/args.lua" }
    local c = srv:connect()
    assert.equal("{}", t.recv_line(c))
    assert.equal("same=true", t.recv_line(c))
  end)
end)

describe("the connection", function()
  after_each(t.teardown)

  it("is closed with reason 'timeout' after --idle-timeout", function()
    local srv = t.start{ handler = CONN, opts = { "--idle-timeout", "0.3" } }
    local c = srv:connect()
    local t0 = t.now()
    local _, err = t.recv_until_closed(c, 5)
    local took = t.now() - t0
    assert.equal("closed", err)
    assert(took >= 0.25 and took < t.T(2), "idle connection closed after " .. took .. " s")
    srv:await_log("closed conn %d+ reason=timeout$")
  end)

  it("is kept open by activity within the idle timeout", function()
    local srv = t.start{ handler = CONN, opts = { "--idle-timeout", "0.4" } }
    local c = srv:connect()
    local t0 = t.now()
    while t.now() - t0 < 1.0 do   -- bounded: one second of traffic every 0.1 s
      t.send_all(c, "tick\n")
      assert.equal("tick", t.recv_line(c))
      socket.sleep(0.1)           -- pacing the traffic, not synchronisation
    end
    t.send_all(c, "still\n")
    assert.equal("still", t.recv_line(c))
  end)

  it("set_timeout(seconds) closes an idle connection with reason 'timeout'", function()
    local srv = t.start{ handler = CONN }
    local c = srv:connect()
    t.send_all(c, "timeout 0.2\n")
    assert.equal("ok", t.recv_line(c))
    local t0 = t.now()
    local _, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert(t.now() - t0 >= 0.15, "closed after " .. (t.now() - t0) .. " s")
    srv:await_log("closed conn %d+ reason=timeout$")
  end)

  it("set_timeout(nil) removes the --idle-timeout", function()
    local srv = t.start{ handler = CONN, opts = { "--idle-timeout", "0.2" } }
    local c = srv:connect()
    t.send_all(c, "notimeout\n")
    assert.equal("ok", t.recv_line(c))
    t.expect_silence(c, 0.5, "connection without timeout")
    t.send_all(c, "alive\n")
    assert.equal("alive", t.recv_line(c))
  end)

  it("reset() sends the client an RST (ECONNRESET), and later calls are harmless", function()
    local srv = t.start{ handler = CONN }
    local c = srv:connect()
    t.send_all(c, "reset\n")
    c:settimeout(t.T(5))
    local r = socket.select({ c }, nil, t.T(5))
    assert(#r == 1, "no reset within 5 s")
    local d, errno, msg = t.raw_recv(c)
    assert.is_nil(d, "expected ECONNRESET, got " .. (d == "" and "EOF (a FIN, not an RST)"
      or string.format("%q", tostring(d))))
    assert.equal(t.proc.errno.ECONNRESET, errno, msg)
    srv:await_log("write%-after%-reset ok=nil err=closed")
  end)

  it("reports a client's RST as reason 'reset'", function()
    local srv = t.start{ handler = CONN }
    local c = srv:connect()
    t.send_all(c, "hello\n")
    assert.equal("hello", t.recv_line(c))
    c:setoption("linger", { on = true, timeout = 0 })
    c:close()
    srv:await_log("closed conn %d+ reason=reset$")
  end)

  it("write after close() returns nil, 'closed'; queued output is still flushed", function()
    local srv = t.start{ handler = CONN }
    local c = srv:connect()
    t.send_all(c, "closeme\n")
    local all, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert.equal("bye\n", all)
    srv:await_log("write%-after%-close ok=nil err=closed")
    srv:await_log("closed conn %d+ reason=nil$")
  end)

  it("write on a connection that is gone returns nil, 'closed'", function()
    local srv = t.start{ handler = CONN }
    local c = srv:connect()
    t.send_all(c, "probe\n")
    assert.equal("ok", t.recv_line(c))
    c:close()
    srv:await_log("write%-after%-gone ok=nil err=closed")
  end)

  it("on_eof + shutdown(): answers after the client's half-close, then EOF", function()
    local srv = t.start{ handler = "tests/handlers/eof.lua" }
    local c = srv:connect()
    t.send_all(c, string.rep("z", 12345))
    t.expect_silence(c, 0.2, "no answer before EOF")
    assert(c:shutdown("send"))
    assert.equal("got 12345 bytes", t.recv_line(c))
    local rest, err = t.recv_until_closed(c, 5)
    assert.same({ "", "closed" }, { rest, err })
    srv:await_log("closed conn %d+ reason=nil$")
  end)

  it("pause() stops reading until resume()", function()
    local srv = t.start{ handler = CONN }
    local c = srv:connect()
    t.send_all(c, "pause 0.4\n")
    local t0 = t.now()
    assert.equal("paused", t.recv_line(c))
    t.send_all(c, "ping\n")
    assert.equal("ping", t.recv_line(c, 3))
    local waited = t.now() - t0
    assert(waited >= 0.35, "answered after " .. waited .. " s while paused for 0.4 s")
  end)

  it("has a unique integer id and keeps the handler's own fields", function()
    local srv = t.start{ handler = CONN }
    local ids = {}
    local cs = {}
    for i = 1, 5 do
      cs[i] = srv:connect()
      t.send_all(cs[i], "id\n")
      local id, ty = t.recv_line(cs[i]):match("^id (%d+) (%a+)$")
      assert.equal("integer", ty)
      assert.is_nil(ids[id], "duplicate id " .. tostring(id))
      ids[id] = true
    end
    for n = 1, 3 do
      for i = 1, 2 do
        t.send_all(cs[i], "field\n")
        assert.equal("field " .. n, t.recv_line(cs[i]))
      end
    end
  end)

  it("echokit.log writes `TIMESTAMP LEVEL message` lines, printf-style", function()
    local srv = t.start{ handler = CONN }
    local c = srv:connect()
    for _, level in ipairs({ "info", "warn" }) do
      t.send_all(c, "log " .. level .. " w_" .. level .. "\n")
      assert.equal("logged", t.recv_line(c))
      local line = srv:await_log("msg=w_" .. level .. " n=42")
      assert.truthy(line:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ " .. level ..
        " msg=w_" .. level .. " n=42$"), line)
    end
  end)
end)
