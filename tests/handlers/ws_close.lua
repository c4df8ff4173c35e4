-- echokit.websocket's handler builder from the server side: on_open sees the
-- request, "bye" makes the server start the close handshake, on_close logs
-- how the session ended.
local echokit = require "echokit"
local ws = require "echokit.websocket"

return ws.handler({
  on_open = function(conn, req)
    conn.ws:send("hello " .. req.path)
  end,
  on_message = function(conn, data)
    if data == "bye" then conn.ws:close(4000, "server bye")
    elseif data == "ping me" then conn.ws:ping("from server")
    else conn.ws:send(data) end
  end,
  on_close = function(conn, code, reason)
    echokit.log("info", "ws closed: %s %s", tostring(code), tostring(reason))
  end,
}, { close_timeout = 0.5, protocols = { "v2", "v1" } })
