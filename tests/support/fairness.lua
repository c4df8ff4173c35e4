-- fairness: how long a small request waits while another client of the same
-- server is being answered a great deal.
--
--   local fairness = require "fairness"
--   local h = peers.spawn{ "sh", "-c", "exec redis-cli -p PORT --pipe < FILE" }
--   local m = fairness.probe{
--     probe = c, ping = "PING\r\n", pong = "+PONG\r\n",
--     done = function() return h.p:wait(0) end,   -- the bulk client is finished
--     timeout = 60,
--   }
--   -- m.total: seconds until done() was true; m.pings: round trips completed;
--   -- m.median_rtt; m.max_rtt (the ping in flight when done() turns true is
--   waited for and counted)
--
-- The probe sends its next ping as soon as the whole previous answer is in,
-- so the longest round trip is about the longest time the server spent on
-- the other client without turning its loop. Every wait is bounded by
-- `timeout` (scaled for slow runs).
local t = require "echokit_test"

local M = {}

function M.probe(o)
  local probe, ping, pong = o.probe, o.ping, o.pong
  local timeout = t.T(o.timeout or 60)
  local t0 = t.now()
  local deadline = t0 + timeout
  local rtts = {}
  probe:settimeout(0.05)
  while not o.done() do
    if t.now() > deadline then
      error(string.format("not done within %gs; %d probe round trips", timeout, #rtts), 2)
    end
    local at = t.now()
    assert(probe:send(ping) == #ping, "probe: ping not sent at once")
    local got = ""
    while #got < #pong do
      local d, err, partial = probe:receive(#pong - #got)
      got = got .. (d or partial or "")
      if err == "closed" then error("probe: closed", 2) end
      if err == "timeout" and t.now() > deadline then
        error(string.format("probe: no answer within %gs", timeout), 2)
      end
    end
    assert(got == pong, ("probe: expected %q, got %q"):format(pong, got))
    rtts[#rtts + 1] = t.now() - at
  end
  local total = t.now() - t0
  table.sort(rtts)
  return {
    total = total, pings = #rtts,
    max_rtt = rtts[#rtts] or 0,
    median_rtt = rtts[(#rtts + 1) // 2] or 0,
  }
end

function M.describe(m)
  return string.format("%.3fs, %d probe round trips, median %.4fs, max %.4fs",
    m.total, m.pings, m.median_rtt, m.max_rtt)
end

return M
