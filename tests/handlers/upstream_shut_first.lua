-- Test upstream: greets, then half-closes its sending side at once and keeps
-- reading. Logs:
--   upstream got conn N BYTES bytes total=T: "<the chunk, LF shown as \n>"
--   upstream eof conn N total=T
--   upstream closed conn N reason=R
-- On the client's half-close it closes.
local echokit = require "echokit"

return {
  on_connect = function(conn)
    conn.total = 0
    conn:write("hello from upstream\n")
    conn:shutdown()
  end,
  on_data = function(conn, data)
    conn.total = conn.total + #data
    echokit.log("info", "upstream got conn %d %d bytes total=%d: \"%s\"", conn.id, #data,
      conn.total, (data:gsub("\n", "\\n")))
  end,
  on_eof = function(conn)
    echokit.log("info", "upstream eof conn %d total=%d", conn.id, conn.total)
    conn:close()
  end,
  on_close = function(conn, reason)
    echokit.log("info", "upstream closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
