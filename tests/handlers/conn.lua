-- Test handler: a line protocol exercising the connection object.
--   reset        conn:reset(), then reset/close again (must not raise)
--   closeme      "bye\n", conn:close(), then a write that must return nil, "closed"
--   probe        after this connection is gone, a timer writes to it and logs the result
--   timeout S    conn:set_timeout(S)            -> "ok\n"
--   notimeout    conn:set_timeout(nil)          -> "ok\n"
--   peer         "peer HOST PORT sock HOST PORT\n"
--   id           "id N\n"
--   field        increments conn.n              -> "field N\n"
--   pause S      conn:pause(), resume after S   -> "paused\n"
--   buffered     "buffered N\n"
--   log LEVEL W  echokit.log(LEVEL, "msg=%s n=%d", W, 42) -> "logged\n"
--   stop         "stopping\n", echokit.stop()
--   other        the line echoed back
-- Close reasons are logged as "closed conn ID reason=REASON".
local echokit = require "echokit"

local commands = {}

function commands.reset(conn)
  conn:reset()
  conn:reset()
  conn:close()
  local ok, err = conn:write("x")
  echokit.log("info", "write-after-reset ok=%s err=%s", tostring(ok), tostring(err))
  return true
end

function commands.closeme(conn)
  conn:write("bye\n")
  conn:close()
  local ok, err = conn:write("more\n")
  echokit.log("info", "write-after-close ok=%s err=%s", tostring(ok), tostring(err))
  conn:close()
  return true
end

function commands.probe(conn)
  conn.probe = true
  conn:write("ok\n")
end

function commands.timeout(conn, arg)
  conn:set_timeout(tonumber(arg))
  conn:write("ok\n")
end

function commands.notimeout(conn)
  conn:set_timeout(nil)
  conn:write("ok\n")
end

function commands.peer(conn)
  local h, p = conn:peer()
  local sh, sp = conn:sockname()
  conn:write(string.format("peer %s %s sock %s %s\n", tostring(h), tostring(p),
    tostring(sh), tostring(sp)))
end

function commands.id(conn)
  conn:write(string.format("id %s %s\n", tostring(conn.id), math.type(conn.id)))
end

function commands.field(conn)
  conn.n = (conn.n or 0) + 1
  conn:write(string.format("field %d\n", conn.n))
end

function commands.pause(conn, arg)
  conn:pause()
  conn:write("paused\n")
  echokit.timer(tonumber(arg), function() conn:resume() end)
end

function commands.buffered(conn)
  conn:write(string.format("buffered %d\n", conn:buffered()))
end

function commands.log(conn, arg)
  local level, word = arg:match("^(%S+) (%S+)$")
  echokit.log(level, "msg=%s n=%d", word, 42)
  conn:write("logged\n")
end

function commands.stop(conn)
  conn:write("stopping\n")
  echokit.stop()
end

return {
  on_data = function(conn, data)
    conn.buf = (conn.buf or "") .. data
    while true do
      local line, rest = conn.buf:match("^(.-)\r?\n(.*)$")
      if not line then break end
      conn.buf = rest
      local cmd, arg = line:match("^(%S+)%s*(.*)$")
      local f = commands[cmd or ""]
      if f then
        if f(conn, arg) then break end
      else
        conn:write(line .. "\n")
      end
    end
  end,
  on_close = function(conn, reason)
    echokit.log("info", "closed conn %d reason=%s", conn.id, tostring(reason))
    if conn.probe then
      echokit.timer(0.05, function()
        local ok, err = conn:write("late\n")
        echokit.log("info", "write-after-gone ok=%s err=%s", tostring(ok), tostring(err))
        conn:close()
        conn:reset()
      end)
    end
  end,
}
