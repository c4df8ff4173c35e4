-- soak_stats: runs another handler and answers "stats" on a second port, so
-- bench/soak can read the Lua heap of each server it watches.
--
--   echokit -l 127.0.0.1:9100 -H bench/handlers/soak_stats.lua -- \
--     inner=handlers/echo.lua stats=127.0.0.1:9101 [the inner handler's args...]
--
-- The inner handler is loaded from its file with the same argument table (the
-- built-in handlers are these same files, compiled into the binary). A client
-- of the stats port sends "stats\n" and gets one line of key=value pairs:
-- echokit.stats() (lua_memory as it stands), then lua_live, the heap after a
-- full collection: the figure a leak would move. Connections to the stats port
-- count in connections_open (bench/soak keeps one open).
local echokit = require "echokit"
local args = ...

local inner = assert(args.inner, "soak_stats: give inner=PATH of the handler to run")
local chunk = assert(loadfile(inner))
local handler = chunk(args)

local function line()
  local s = echokit.stats()
  local raw = s.lua_memory
  collectgarbage("collect")
  local live = echokit.stats().lua_memory
  return string.format(
    "lua_memory=%d lua_live=%d connections_open=%d connections_total=%d refs=%d errors=%d bytes_in=%d bytes_out=%d\n",
    raw, live, s.connections_open, s.connections_total, s.refs, s.errors, s.bytes_in, s.bytes_out)
end

local l, err = echokit.listen(assert(args.stats, "soak_stats: give stats=HOST:PORT"), {
  on_data = function(conn, data)
    conn.pending = (conn.pending or "") .. data
    if #conn.pending > 64 then return conn:close() end
    while true do
      local cmd, rest = conn.pending:match("^([^\n]*)\n(.*)$")
      if not cmd then break end
      conn.pending = rest
      if cmd:gsub("\r$", "") == "stats" then conn:write(line()) else conn:write("unknown\n") end
    end
  end,
})
assert(l, err)
return handler
