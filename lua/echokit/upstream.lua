-- The upstream options every proxying handler takes, in one place:
--
--   upstream=tls://HOST:PORT [ca=FILE] [sni=NAME] [alpn=LIST] [cert=FILE key=FILE]
--   [insecure=1]
--
-- upstream.options(args, who) checks them when the handler loads (a bad CA
-- file or a TLS option on a plain upstream is a start-up error, not a
-- failure at the first client) and returns the opts table echokit.connect
-- takes, or nil for a plain upstream.
local echokit = require "echokit"

local M = {}

M.KEYS = { "ca", "sni", "alpn", "cert", "key", "insecure" }

function M.options(args, who)
  local upstream = args.upstream
  local tls
  for _, k in ipairs(M.KEYS) do
    if args[k] ~= nil then
      tls = tls or {}
      tls[k] = args[k]
    end
  end
  if not upstream:match("^tls://") then
    if tls then
      error(("%s: %s= applies to a tls:// upstream only (upstream=%s)")
            :format(who, next(tls), upstream), 0)
    end
    return nil
  end
  local ok, err = pcall(echokit.tls_check, upstream, tls)
  if not ok then error(who .. ": " .. tostring(err), 0) end
  return { tls = tls }
end

return M
