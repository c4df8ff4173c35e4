-- Test handler: what an upstream TLS connection negotiated, as conn:tls()
-- tells it (tls_proxy_spec).
--   echokit -H tests/handlers/tls_proxy_resume.lua -- upstream=tls://HOST:PORT ca=FILE
-- Each line from the client opens a connection to the upstream (an echo
-- server), sends the line, and once it is echoed (the session tickets came
-- before it) answers "resumed=BOOL verify=... version=... subject=...\n" and
-- closes the upstream connection; a failure answers "closed REASON\n".
local echokit = require "echokit"
local args = ...
local opts = require("echokit.upstream").options(args, "tls_proxy_resume")

return {
  on_data = function(conn, data)
    conn.buf = (conn.buf or "") .. data
    while true do
      local line, rest = conn.buf:match("^(.-)\n(.*)$")
      if not line then break end
      conn.buf = rest
      echokit.connect(args.upstream, {
        on_connect = function(up) up:write(line .. "\n") end,
        on_data = function(up, got)
          up.got = (up.got or "") .. got
          if up.got ~= line .. "\n" then return end
          local info = up:tls() or {}
          local cert = info.peer_cert or {}
          conn:write(("resumed=%s verify=%s version=%s subject=%s\n"):format(
            tostring(info.resumed), tostring(info.verify), tostring(info.version),
            tostring(cert.subject)))
          up:close()
        end,
        on_close = function(_, reason)
          if reason then conn:write("closed " .. reason .. "\n") end
        end,
      }, opts)
    end
  end,
}
