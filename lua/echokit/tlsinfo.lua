-- echokit.tlsinfo: TLS as a debugging proxy reports it.
--
--   local tlsinfo = require "echokit.tlsinfo"
--   tlsinfo.summary(conn:tls())        --> "TLSv1.3 TLS_AES_256_GCM_SHA384, sni localhost"
--   local sniff = tlsinfo.hello_reader()
--   sniff(first_bytes)                 --> nil (more bytes), false (not TLS), or
--                                          echokit.tls_hello's table, once
local echokit = require "echokit"

local M = {}

-- One line for what conn:tls() (or echokit.tls_hello) returned: version,
-- cipher, then the names that were sent, the peer's certificate and its
-- verification when known.
function M.summary(info)
  local parts = { info.version }
  if info.cipher then parts[1] = parts[1] .. " " .. info.cipher end
  if info.sni then parts[#parts + 1] = "sni " .. info.sni end
  if info.alpn then parts[#parts + 1] = "alpn " .. info.alpn end
  if info.resumed then parts[#parts + 1] = "resumed" end
  if info.truncated then parts[#parts + 1] = "names cut short" end
  if info.peer_cert then
    parts[#parts + 1] = "certificate " .. (info.peer_cert.subject or "?") ..
      " (verify " .. (info.verify or "?") .. ")"
  end
  return table.concat(parts, ", ")
end

-- The ClientHello read off a client's first bytes, chunk by chunk, without
-- holding more than a hello can take (64 KiB of records): the returned
-- function takes each chunk the client sends and answers nil while it needs
-- more, then once false (not TLS) or the hello's table; after that nil again.
function M.hello_reader()
  local buf = ""
  local done = false
  return function(data)
    if done then return nil end
    buf = buf .. data
    local hello = echokit.tls_hello(buf)
    if hello == nil and #buf <= 65536 + 5 * 16 then return nil end
    done, buf = true, nil
    return hello or false
  end
end

return M
