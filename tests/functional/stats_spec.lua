-- echokit.stats(): counters, and no leaked registry references once clients
-- are gone (luv's unclosed-handle check).
local t = require "echokit_test"

local stats, settle = t.stats, t.settle

local function assert_refs_back(base, now, what)
  assert(now.refs == base.refs, string.format(
    "%s: %d registry references held, %d at the baseline (leak of %d)",
    what, now.refs, base.refs, now.refs - base.refs))
end

describe("stats", function()
  after_each(t.teardown)

  it("has the documented integer counters", function()
    local srv = t.start{ handler = "tests/handlers/stats.lua" }
    local ctl = srv:connect()
    local s = stats(ctl, "stats")
    for _, k in ipairs({ "connections_open", "connections_total", "bytes_in", "bytes_out",
                         "errors", "refs" }) do
      assert(type(s[k]) == "number" and s[k] >= 0 and s[k] == math.floor(s[k]),
        "stats()." .. k .. " = " .. tostring(s[k]))
    end
    assert.equal(1, s.connections_open)
    assert.equal(1, s.connections_total)
    assert.equal(#"stats\n", s.bytes_in)
    assert.equal(0, s.errors)
  end)

  it("counts connections, bytes and errors; refs return to the baseline", function()
    local srv = t.start{ handler = "tests/handlers/stats.lua" }
    srv:expect_errors("boom on request")
    local ctl = srv:connect()
    local base = stats(ctl)

    -- 10 clients that each do a round trip; they leave in different ways
    local cs, sent = {}, 0
    for i = 1, 10 do
      cs[i] = srv:connect()
      local msg = string.format("hello from %02d\n", i)
      t.send_all(cs[i], msg)
      assert.equal(msg:sub(1, -2), t.recv_line(cs[i]))
      sent = sent + #msg
    end
    local mid = stats(ctl)
    assert.equal(11, mid.connections_open)
    assert.equal(base.connections_total + 10, mid.connections_total)
    assert(mid.bytes_in - base.bytes_in >= sent, "bytes_in grew by " ..
      (mid.bytes_in - base.bytes_in) .. ", clients sent " .. sent)
    assert(mid.bytes_out - base.bytes_out >= sent, "bytes_out grew by " ..
      (mid.bytes_out - base.bytes_out) .. ", server echoed " .. sent)

    for i = 1, 4 do cs[i]:close() end                          -- client closes
    for i = 5, 7 do                                            -- server closes
      t.send_all(cs[i], "quit\n")
      assert.equal("bye", t.recv_line(cs[i]))
    end
    t.send_all(cs[8], "boom\n")                                -- Lua error
    assert.equal("closed", select(2, t.recv_until_closed(cs[8], 5)))
    srv:await_log("closed conn %d+ reason=error")
    assert.equal(base.errors + 1, stats(ctl).errors)
    t.send_all(cs[9], "reset\n")                               -- server resets
    assert.equal("closed", select(2, t.recv_until_closed(cs[9], 5)))
    cs[10]:setoption("linger", { on = true, timeout = 0 })     -- client resets
    cs[10]:close()

    local after = settle(ctl)
    assert.equal(base.connections_total + 10, after.connections_total)
    assert_refs_back(base, after, "on_data handler")
  end)

  it("refs return to the baseline after serve coroutines end, however they end", function()
    local srv = t.start{ handler = "tests/handlers/serve.lua" }
    local ctl = srv:connect()
    t.send_all(ctl, "stats\n")
    assert.equal("OK", t.recv_line(ctl))
    local base = stats(ctl)

    local function open(mode)
      local c = srv:connect()
      t.send_all(c, mode .. "\n")
      assert.equal("OK", t.recv_line(c))
      return c
    end
    local a = open("lines")                 -- returns from serve on quit
    t.send_all(a, "x\nquit\n")
    assert.equal("[x]", t.recv_line(a))
    assert.equal("bye", t.recv_line(a))
    local b = open("lines")                 -- client closes mid-receive
    t.send_all(b, "partial")
    b:close()
    local c = open("fixed 10")              -- client half-closes mid-receive(n)
    t.send_all(c, "12345")
    c:shutdown("send")
    assert.truthy(t.recv_line(c):match("^ERR closed"))
    local d = open("sleep")                 -- client leaves while the coroutine sleeps
    t.send_all(d, "sleep 0.2\n")
    d:close()
    local e = open("any 8")                 -- client resets mid-receiveany
    e:setoption("linger", { on = true, timeout = 0 })
    e:close()
    local f = open("all")                   -- receive("*a") completes
    t.send_all(f, "everything")
    f:shutdown("send")
    assert.equal("10:everything", select(1, t.recv_until_closed(f, 5)))

    local after = settle(ctl, "serve clients gone")
    -- the sleeping coroutine may outlive its connection by its sleep
    after = t.eventually(function()
      local s = stats(ctl)
      return s.refs == base.refs and s, "refs=" .. s.refs .. " base=" .. base.refs
    end, 3, "serve refs back to the baseline")
    assert_refs_back(base, after, "serve handler")
  end)

  it("refs return to the baseline after timers fire, are cancelled, or outlive clients", function()
    local srv = t.start{ handler = "tests/handlers/timers.lua" }
    local ctl = srv:connect()
    local base = stats(ctl)
    local a = srv:connect()                 -- one-shot that fires
    t.send_all(a, "timer 0.01\n")
    assert.truthy(t.recv_line(a):match("^fired"))
    local b = srv:connect()                 -- every, cancelled
    t.send_all(b, "every 0.01\n")
    assert.equal("tick 1", t.recv_line(b))
    t.send_all(b, "cancel\n")
    local c = srv:connect()                 -- armed timers when the client leaves
    t.send_all(c, "timer 10\nevery 10\nnow\n")
    assert.truthy(t.recv_line(c):match("^now "))
    for _, x in ipairs({ a, b, c }) do x:close() end
    local after = settle(ctl, "timer clients gone")
    assert_refs_back(base, after, "timers")
  end)
end)
