-- Test upstream: keeps everything a client sends; once the client half-closes
-- it answers with all of it followed by "END <bytes>\n", then closes.
-- Logs:
--   upstream eof conn N after BYTES bytes
--   upstream closed conn N reason=R
local echokit = require "echokit"

return {
  on_connect = function(conn) conn.got = {} end,
  on_data = function(conn, data) conn.got[#conn.got + 1] = data end,
  on_eof = function(conn)
    local all = table.concat(conn.got)
    echokit.log("info", "upstream eof conn %d after %d bytes", conn.id, #all)
    conn:write(all)
    conn:write(string.format("END %d\n", #all))
    conn:close()
  end,
  on_close = function(conn, reason)
    echokit.log("info", "upstream closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
