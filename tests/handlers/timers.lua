-- Test handler for echokit.timer / echokit.every / echokit.now.
--   timer S   one-shot after S seconds: "fired ELAPSED\n"
--   every S   repeating: "tick N\n"
--   cancel    cancels both, "cancelled\n"
--   now       "now T\n"
--   stats / statsgc   "stats k=v ...\n" (statsgc after a full collection)
-- Timers still armed when the connection closes are cancelled in on_close.
local echokit = require "echokit"

local function stats_line()
  local s = echokit.stats()
  local keys = {}
  for k in pairs(s) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. tostring(s[k]) end
  return "stats " .. table.concat(out, " ") .. "\n"
end

local function on_line(conn, line)
  local cmd, arg = line:match("^(%S+)%s*(.*)$")
  if cmd == "timer" then
    local t0 = echokit.now()
    conn.t = echokit.timer(tonumber(arg), function()
      conn:write(string.format("fired %.3f\n", echokit.now() - t0))
    end)
  elseif cmd == "every" then
    local n = 0
    conn.e = echokit.every(tonumber(arg), function()
      n = n + 1
      conn:write(string.format("tick %d\n", n))
    end)
  elseif cmd == "cancel" then
    if conn.t then conn.t:cancel() end
    if conn.e then conn.e:cancel() end
    conn:write("cancelled\n")
  elseif cmd == "now" then
    conn:write(string.format("now %.6f %s\n", echokit.now(), math.type(echokit.now())))
  elseif cmd == "stats" then
    conn:write(stats_line())
  elseif cmd == "statsgc" then
    collectgarbage("collect")
    collectgarbage("collect")
    conn:write(stats_line())
  else
    conn:write("unknown " .. line .. "\n")
  end
end

return {
  on_data = function(conn, data)
    conn.buf = (conn.buf or "") .. data
    while true do
      local line, rest = conn.buf:match("^(.-)\r?\n(.*)$")
      if not line then break end
      conn.buf = rest
      on_line(conn, line)
    end
  end,
  on_close = function(conn)
    if conn.t then conn.t:cancel() end
    if conn.e then conn.e:cancel() end
  end,
}
