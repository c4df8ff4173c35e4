-- echokit.timer / echokit.every / :cancel() / echokit.now.
local t = require "echokit_test"

local TIMERS = "tests/handlers/timers.lua"

describe("timers", function()
  after_each(t.teardown)

  it("a one-shot timer fires once, after its delay", function()
    local srv = t.start{ handler = TIMERS }
    local c = srv:connect()
    local t0 = t.now()
    t.send_all(c, "timer 0.2\n")
    local line = t.recv_line(c, 3)
    local waited = t.now() - t0
    local elapsed = tonumber(line:match("^fired ([%d.]+)$"))
    assert(elapsed, line)
    assert(elapsed >= 0.19, "fired after " .. elapsed .. " s by echokit.now()")
    assert(waited >= 0.19, "fired after " .. waited .. " s")
    t.expect_silence(c, 0.3, "a one-shot timer fired twice")
  end)

  it("an every() timer repeats until cancelled", function()
    local srv = t.start{ handler = TIMERS }
    local c = srv:connect()
    local t0 = t.now()
    t.send_all(c, "every 0.05\n")
    for i = 1, 4 do assert.equal("tick " .. i, t.recv_line(c, 3)) end
    assert(t.now() - t0 >= 0.19, "4 ticks of 0.05 s came after " .. (t.now() - t0) .. " s")
    t.send_all(c, "cancel\n")
    -- ticks already queued before the cancel may precede its answer
    local deadline = t.now() + t.T(3)
    while true do
      assert(t.now() < deadline)
      local line = t.recv_line(c, 3)
      if line == "cancelled" then break end
      assert.truthy(line:match("^tick %d+$"), line)
    end
    t.expect_silence(c, 0.3, "ticks after cancel")
  end)

  it("cancelling a one-shot timer before it fires stops it", function()
    local srv = t.start{ handler = TIMERS }
    local c = srv:connect()
    t.send_all(c, "timer 0.2\ncancel\n")
    assert.equal("cancelled", t.recv_line(c, 3))
    t.expect_silence(c, 0.5, "a cancelled timer fired")
    -- cancelling again (and after firing) is harmless
    t.send_all(c, "timer 0.01\n")
    assert.truthy(t.recv_line(c, 3):match("^fired "))
    t.send_all(c, "cancel\ncancel\n")
    assert.equal("cancelled", t.recv_line(c, 3))
    assert.equal("cancelled", t.recv_line(c, 3))
  end)

  it("timers of different connections are independent", function()
    local srv = t.start{ handler = TIMERS }
    local a, b = srv:connect(), srv:connect()
    t.send_all(a, "every 0.05\n")
    t.send_all(b, "timer 0.1\n")
    assert.truthy(t.recv_line(b, 3):match("^fired "))
    assert.equal("tick 1", t.recv_line(a, 3))
    t.send_all(b, "cancel\n")   -- b has no repeating timer: a keeps ticking
    assert.equal("cancelled", t.recv_line(b, 3))
    local deadline = t.now() + t.T(3)
    local n = 1
    while n < 5 do
      assert(t.now() < deadline)
      n = tonumber(t.recv_line(a, 3):match("^tick (%d+)$"))
    end
  end)

  it("echokit.now() is a float clock in seconds that moves forward", function()
    local srv = t.start{ handler = TIMERS }
    local c = srv:connect()
    t.send_all(c, "now\n")
    local n1, ty = t.recv_line(c):match("^now ([%d.]+) (%a+)$")
    assert.equal("float", ty)
    t.send_all(c, "timer 0.1\n")
    t.recv_line(c, 3)
    t.send_all(c, "now\n")
    local n2 = t.recv_line(c):match("^now ([%d.]+)")
    local d = tonumber(n2) - tonumber(n1)
    assert(d >= 0.09 and d < t.T(2), "echokit.now() advanced by " .. d .. " s over a 0.1 s timer")
  end)
end)
