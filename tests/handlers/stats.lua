-- Test handler: a line protocol for counting connections and references.
--   stats    -> "stats k=v k=v ...\n" (echokit.stats(), sorted keys)
--   statsgc  -> the same after a full garbage collection
--   quit     -> "bye\n", then the server closes
--   boom     -> a Lua error (closes this connection)
--   reset    -> conn:reset()
--   other    -> the line echoed back
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
  if line == "stats" then
    conn:write(stats_line())
  elseif line == "statsgc" then
    collectgarbage("collect")
    collectgarbage("collect")
    conn:write(stats_line())
  elseif line == "quit" then
    conn:write("bye\n")
    conn:close()
    return true
  elseif line == "boom" then
    error("boom on request")
  elseif line == "reset" then
    conn:reset()
    return true
  else
    conn:write(line .. "\n")
  end
end

return {
  on_data = function(conn, data)
    conn.buf = (conn.buf or "") .. data
    while true do
      local line, rest = conn.buf:match("^(.-)\r?\n(.*)$")
      if not line then break end
      conn.buf = rest
      if on_line(conn, line) then break end
    end
  end,
  on_close = function(conn, reason)
    echokit.log("info", "closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
