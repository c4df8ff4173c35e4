-- proxy: relays every client to an upstream, in C (conn:pipe), with
-- back-pressure and half-close carried across.
--
--   echokit -H proxy -l 127.0.0.1:7000 -- upstream=127.0.0.1:6379 [reset=1]
--   echokit -H proxy -- upstream=tls://db.example:6380 [ca=FILE] [sni=NAME]
--                       [alpn=LIST] [cert=FILE key=FILE] [insecure=1]
--   echokit -H proxy -l udp://127.0.0.1:5300 -- upstream=udp://127.0.0.1:53
--
-- A tls:// upstream is verified against the system CA store (or ca=); a
-- client of a tls:// listener is relayed as plaintext: TLS on either side,
-- or both, and the relay stays in C.
-- UDP: each client flow (its peer address) gets its own upstream socket; the
-- pipes relay datagram by datagram in C, and either side's idle timeout
-- (--udp-idle-timeout) or an ICMP "port unreachable" ("refused") closes both.
-- An upstream that refuses (or cannot be reached) is logged per client, at
-- most 10 lines a second. reset=1: a reset of either side (an RST) resets the other too; by default
-- the other side gets a clean close after what was already relayed.
local echokit = require "echokit"
local args = ...
local upstream = args.upstream
local opts = { reset = args.reset == "1" }
if not upstream then
  error("proxy: give the upstream address: -- upstream=HOST:PORT (or [V6]:PORT, unix:/path)")
end
-- An address echokit.connect would refuse at the first client is a start-up
-- error instead (a port from 1 to 65535; the host is resolved per client).
if not upstream:match("^unix:") then
  local port = upstream:gsub("^%a+://", ""):match("^[^:]*:(%d+)$") or
               upstream:gsub("^%a+://", ""):match("^%[.*%]:(%d+)$") or
               upstream:gsub("^%a+://", ""):match("^(%d+)$")
  if not port or tonumber(port) < 1 or tonumber(port) > 65535 then
    error(("proxy: upstream=%s: give HOST:PORT, [V6]:PORT or unix:/path, with a port " ..
           "from 1 to 65535"):format(upstream), 0)
  end
end
local connect_opts = require("echokit.upstream").options(args, "proxy")

-- An upstream failing (refused, unreachable) is logged with the client's
-- address, at most 10 lines a second: a flood of UDP peers, each a
-- flow of its own, cannot flood the log. Those held back are counted in one
-- line when the second is over.
local limited = require("echokit.loglimit").new(10, "proxy", "upstream failure", "logged")
local function report(who, reason)
  limited("warn", "%s: upstream %s: %s", who, upstream, reason)
end

return {
  on_connect = function(client)
    local who = tostring(client) -- "[conn 7 127.0.0.1:51514]", kept for after its close
    local up = echokit.connect(upstream, {
      on_close = function(up, reason)
        if reason and (not up.connected or reason == "refused") then report(who, reason) end
      end,
      on_connect = function(up) up.connected = true end,
    }, connect_opts)
    -- Bytes the client sends before the upstream is up wait in its queue.
    client:pipe(up, opts)
    up:pipe(client, opts)
  end,
}
