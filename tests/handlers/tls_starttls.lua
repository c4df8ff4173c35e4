-- Test handler: a tiny SMTP-like line protocol with STARTTLS.
--   greeting "220 ready"; "EHLO x" -> "250-hi" "250 STARTTLS";
--   "STARTTLS" -> "220 go ahead", then conn:starttls() (the --tls-* certs);
--   after the handshake every line is echoed ("QUIT" -> "221 bye", close).
-- Before the upgrade other lines get "500 first STARTTLS".
local echokit = require "echokit"
local framing = require "echokit.framing"

return {
  on_connect = function(conn)
    conn.lines, conn.secure = framing.lines(), false
    conn:write("220 ready\r\n")
  end,
  on_tls = function(conn)
    conn.secure = true
    echokit.log("info", "starttls done conn %d %s", conn.id, conn:tls().version)
  end,
  on_data = function(conn, data)
    conn.lines:feed(data)
    for line in conn.lines.next, conn.lines do
      if conn.secure then
        if line == "QUIT" then
          conn:write("221 bye\r\n")
          conn:close()
          return
        end
        conn:write(line .. "\r\n")
      elseif line:match("^EHLO ") then
        conn:write("250-hi\r\n250 STARTTLS\r\n")
      elseif line == "STARTTLS" then
        conn:write("220 go ahead\r\n")
        assert(conn:starttls())
        conn.lines = framing.lines() -- nothing may follow STARTTLS in the clear
        return
      else
        conn:write("500 first STARTTLS\r\n")
      end
    end
  end,
}
