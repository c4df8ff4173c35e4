-- Test handler: answers the first line with one line and shuts its sending
-- side down (conn:shutdown: close_notify, then the FIN); logs what the client
-- sends after that (newlines shown as |), its end and the close.
local echokit = require "echokit"

return {
  on_connect = function(conn) conn.buf, conn.shut = "", false end,
  on_data = function(conn, data)
    if conn.shut then
      echokit.log("info", "after shutdown conn %d got [%s]", conn.id, (data:gsub("\n", "|")))
      return
    end
    conn.buf = conn.buf .. data
    local line = conn.buf:match("^([^\n]*)\n")
    if line then
      conn:write("last words for " .. line .. "\n")
      conn:shutdown()
      conn.shut = true
      echokit.log("info", "shut down conn %d", conn.id)
    end
  end,
  on_eof = function(conn)
    echokit.log("info", "eof conn %d", conn.id)
    conn:close()
  end,
  on_close = function(conn, reason)
    echokit.log("info", "closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
