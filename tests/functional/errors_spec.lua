-- Lua errors and CPU-budget overruns in callbacks close only that connection.
local t = require "echokit_test"

local BOOM = "tests/handlers/boom.lua"

-- Asserts that `c` is closed by the server (EOF or reset) within `secs`;
-- returns what arrived before.
local function assert_closed(c, secs, what)
  local got, err = t.recv_until_closed(c, secs)
  assert.equal("closed", err, what)
  return got
end

-- A connection that keeps working: one round trip.
local function roundtrip(c, msg)
  c:settimeout(t.T(5))
  t.send_all(c, msg)
  assert.equal(msg, t.recv_n(c, #msg))
end

describe("a Lua error in a callback", function()
  after_each(t.teardown)

  it("closes that connection only, logs file:line and a traceback", function()
    local srv = t.start{ handler = BOOM }
    srv:expect_errors("boom")
    local good = srv:connect()
    local bad = srv:connect()
    roundtrip(good, "before\n")
    roundtrip(bad, "fine so far\n")

    t.send_all(bad, "now!\n")
    assert.equal("", assert_closed(bad, 5, "the erroring connection is closed"))

    -- the other connection carries on, and new ones are accepted
    roundtrip(good, "after\n")
    local fresh = srv:connect()
    roundtrip(fresh, "new\n")

    local line = t.line_of(BOOM, "-- BOOM")
    local err = srv:await_log("%] on_data: " .. BOOM:gsub("%p", "%%%0") .. ":" .. line .. ": boom")
    -- `2026-11-26T23:00:00.123Z error [conn 7 127.0.0.1:51514] on_data: file:line: boom`
    assert.truthy(err:match(
      "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ error %[conn %d+ 127%.0%.0%.1:%d+%] on_data: "),
      "error line format: " .. err)
    -- the traceback follows on indented lines, up to the next log line
    local stderr = srv:stderr()
    local after = stderr:sub(stderr:find(err, 1, true) + #err + 1)
    local tb = {}
    for l in after:gmatch("[^\n]+") do
      if t.parse_log_line(l) then break end
      tb[#tb + 1] = l
    end
    assert(#tb > 0, "no traceback after the error line:\n" .. t.clip(stderr))
    for _, l in ipairs(tb) do
      assert(l:match("^[ \t]"), "traceback line not indented: " .. l .. "\n" .. t.clip(stderr))
    end
    assert.truthy(table.concat(tb, "\n"):find(BOOM, 1, true),
      "traceback does not mention the handler:\n" .. t.clip(stderr))
    -- the close reason
    srv:await_log("closed conn %d+ reason=error: ")
    assert.equal(1, #srv:log_matching("reason=error"))
    -- one error for one failure (no duplicate logging)
    assert.equal(1, #srv:log_matching("^%S+ error "))
  end)

  it("runs until a --cpu-budget 0.2 overrun, which closes only that connection", function()
    local srv = t.start{ handler = BOOM, opts = { "--cpu-budget", "0.2" } }
    srv:expect_errors(".")   -- the overrun message is the server's to word
    local good = srv:connect()
    local bad = srv:connect()
    roundtrip(good, "hello\n")
    local t0 = t.now()
    t.send_all(bad, "spin ~\n")
    assert.equal("", assert_closed(bad, 10, "the spinning connection is closed"))
    local took = t.now() - t0
    assert(took < t.T(5), "the overrun took " .. took .. " s to be stopped")
    roundtrip(good, "still alive\n")
    srv:await_log("closed conn %d+ reason=error: ")
    assert.equal(1, #srv:log_matching("^%S+ error "))
  end)

  it("stops an overrun inside pcall too (the handler cannot swallow it)", function()
    local srv = t.start{ handler = BOOM, opts = { "--cpu-budget", "0.2" } }
    srv:expect_errors(".")
    local good = srv:connect()
    local bad = srv:connect()
    t.send_all(bad, "spin in pcall ^\n")
    local got = assert_closed(bad, 10, "the spinning connection is closed")
    assert.is_nil(got:find("swallowed", 1, true), "the handler's pcall swallowed the budget error")
    roundtrip(good, "ok\n")
    srv:await_log("closed conn %d+ reason=error: ")
  end)

  it("stops an overrun inside the handler's own coroutines, and after them", function()
    local srv = t.start{ handler = BOOM, opts = { "--cpu-budget", "0.2" } }
    srv:expect_errors(".")
    local good = srv:connect()
    local bad = srv:connect()
    local t0 = t.now()
    t.send_all(bad, "spin in a coroutine %\n")
    local got = assert_closed(bad, 10, "the spinning connection is closed")
    assert.is_nil(got:find("swallowed", 1, true), "the overrun escaped the budget")
    assert(t.now() - t0 < t.T(5), "the overrun took " .. (t.now() - t0) .. " s to be stopped")
    roundtrip(good, "ok\n")
    srv:await_log("closed conn %d+ reason=error: .*CPU budget")
  end)

end)

describe("a bad handler table given to echokit.connect or echokit.listen", function()
  after_each(t.teardown)

  it("raises a clear error naming the function and the field, and nothing else breaks", function()
    local srv = t.start{ handler = "tests/handlers/handler_misuse.lua" }
    local c = srv:connect()
    t.send_all(c, "go\n")
    for _, f in ipairs{ "connect", "listen" } do
      assert.equal("echokit." .. f .. ": handler.on_data must be a function (got number)",
        t.recv_line(c, 5))
      assert.equal("echokit." .. f .. ": 'serve' and 'on_data' exclude each other",
        t.recv_line(c, 5))
    end
    -- the server still serves
    local c2 = srv:connect()
    t.send_all(c2, "again\n")
    assert.truthy(t.recv_line(c2, 5):find("must be a function", 1, true))
  end)
end)
