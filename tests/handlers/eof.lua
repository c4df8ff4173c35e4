-- Test handler: counts bytes; on the peer's half-close answers with the count
-- and half-closes its own side (on_eof + shutdown).
local echokit = require "echokit"

return {
  on_connect = function(conn) conn.count = 0 end,
  on_data = function(conn, data) conn.count = conn.count + #data end,
  on_eof = function(conn)
    conn:write(string.format("got %d bytes\n", conn.count))
    conn:shutdown()
  end,
  on_close = function(conn, reason)
    echokit.log("info", "closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
