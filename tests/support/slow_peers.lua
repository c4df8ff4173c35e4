-- slow_peers: clients that send a request a byte at a time and never finish
-- it (slowloris), driven together from one loop until the server closes them.
--
--   local slow = require "slow_peers"
--   local res = slow.trickle(clients, {
--     bytes = "GET / HTTP/1.1\r\nHost: x\r\nX-a: " .. ("a"):rep(1000),
--     interval = 0.1,          -- seconds between two bytes of one client
--     timeout = 10,            -- overall bound (scaled for slow runs)
--     during = function(tick) end,   -- called once per interval: serve a
--                                    -- normal client meanwhile
--   })
--   -- res[i] = { received = bytes the server sent, sent = bytes sent,
--   --            closed_after = seconds from the start to the server's close }
--
-- Every client gets its next byte each interval (pacing the peer as a slow
-- client does; the waits are on the sockets, so a close is seen at once). The
-- call returns when the server has closed every client, and fails when the
-- timeout passes first, saying which are still open. A client whose bytes
-- run out just waits.
local socket = require "socket"
local t = require "echokit_test"

local M = {}

function M.trickle(clients, o)
  local bytes = o.bytes
  local interval = o.interval or 0.1
  local timeout = t.T(o.timeout or 10)
  local t0 = t.now()
  local deadline = t0 + timeout
  local res, open = {}, {}
  for i, c in ipairs(clients) do
    c:settimeout(0)
    res[i] = { received = "", sent = 0 }
    open[c] = i
  end
  local tick, next_tick = 0, t0
  while next(open) do
    local now = t.now()
    if now > deadline then
      local still = {}
      for _, i in pairs(open) do still[#still + 1] = i end
      table.sort(still)
      error(string.format("clients %s still open after %gs (client %d sent %d bytes)",
        table.concat(still, ", "), timeout, still[1], res[still[1]].sent), 2)
    end
    if now >= next_tick then
      tick = tick + 1
      next_tick = next_tick + interval
      for c, i in pairs(open) do
        local r = res[i]
        if r.sent < #bytes then
          local last = c:send(bytes, r.sent + 1, r.sent + 1)
          if last then r.sent = last end
        end
      end
      if o.during then o.during(tick) end
    end
    local list = {}
    for c in pairs(open) do list[#list + 1] = c end
    local readable = socket.select(list, nil, math.max(0, math.min(next_tick, deadline) - t.now()))
    for _, c in ipairs(readable or {}) do
      local i = open[c]
      local d, err, partial = c:receive(65536)
      d = d or partial
      if d and #d > 0 then res[i].received = res[i].received .. d end
      if err == "closed" or (err and err ~= "timeout") then
        res[i].closed_after = t.now() - t0
        res[i].err = err
        open[c] = nil
      end
    end
  end
  return res
end

return M
