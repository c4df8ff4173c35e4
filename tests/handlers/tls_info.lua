-- Test handler for TLS listeners: line commands, other lines echoed.
--   info  -> "version=V sni=S alpn=A server=B resumed=R"
--   peer  -> "subject=S issuer=I verify=V san=a,b" or "peer=none"
-- on_tls and on_connect log what conn:tls() says when they run.
local echokit = require "echokit"
local framing = require "echokit.framing"

local function info(conn)
  local t = conn:tls()
  if not t then return "plain" end
  return string.format("version=%s sni=%s alpn=%s server=%s resumed=%s", tostring(t.version),
    tostring(t.sni), tostring(t.alpn), tostring(t.server), tostring(t.resumed))
end

local function peer(conn)
  local t = conn:tls()
  local p = t and t.peer_cert
  if not p then return "peer=none" end
  return string.format("subject=%s issuer=%s verify=%s san=%s", tostring(p.subject),
    tostring(p.issuer), tostring(t.verify), table.concat(p.san or {}, ","))
end

return {
  on_tls = function(conn)
    echokit.log("info", "on_tls conn %d %s", conn.id, info(conn))
  end,
  on_connect = function(conn)
    conn.lines = framing.lines()
    echokit.log("info", "on_connect conn %d %s", conn.id, info(conn))
  end,
  on_data = function(conn, data)
    conn.lines:feed(data)
    for line in conn.lines.next, conn.lines do
      if line == "info" then
        conn:write(info(conn) .. "\n")
      elseif line == "peer" then
        conn:write(peer(conn) .. "\n")
      else
        conn:write(line .. "\n")
      end
    end
  end,
}
