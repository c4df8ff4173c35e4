-- websocket: a WebSocket (RFC 6455) echo server. Every text or binary message
-- comes back as it was sent; pings are answered, the close handshake is done,
-- and malformed frames close the connection with the right code.
--
--   echokit -H websocket          then: python3 -m websockets ws://127.0.0.1:7000/
--   echokit -H websocket -- max_message=1m
--   echokit -H websocket -- header_timeout=30
--
-- header_timeout (seconds, default 30, 0 = none): the handshake request must
-- be complete that long after the connection opened, else 408 and a close.
local ws = require "echokit.websocket"
local echokit = require "echokit"
local args = ...

return ws.handler({
  on_message = function(conn, data, kind)
    conn.ws:send(data, kind)
  end,
}, {
  max_message = echokit.size(args.max_message, ws.MAX_MESSAGE),
  header_timeout = require("echokit.pipeline").seconds(args.header_timeout,
    ws.HEADER_TIMEOUT, "header_timeout"),
})
