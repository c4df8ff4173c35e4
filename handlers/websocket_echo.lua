-- websocket: a WebSocket (RFC 6455) echo server. Every text or binary message
-- comes back as it was sent; pings are answered, the close handshake is done,
-- and malformed frames close the connection with the right code.
--
--   echokit -H websocket          then: python3 -m websockets ws://127.0.0.1:7000/
--   echokit -H websocket -- max_message=1m
local ws = require "echokit.websocket"
local args = ...

local function size(v, default)
  if not v then return default end
  local n, unit = tostring(v):lower():match("^(%d+)([kmg]?)$")
  if not n then error("not a size: " .. tostring(v), 0) end
  return math.tointeger(n * ({ [""] = 1, k = 1024, m = 1024 ^ 2, g = 1024 ^ 3 })[unit])
end

return ws.handler({
  on_message = function(conn, data, kind)
    conn.ws:send(data, kind)
  end,
}, { max_message = size(args.max_message, ws.MAX_MESSAGE) })
