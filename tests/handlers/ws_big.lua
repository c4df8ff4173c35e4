-- echokit.websocket's handler builder answering every message with a large
-- one (size= bytes, default 256 KiB): many small messages ask for far more
-- output than their own size.
local echokit = require "echokit"
local ws = require "echokit.websocket"
local args = ...

local big = ("w"):rep(echokit.size(args.size, 256 * 1024))

return ws.handler({
  on_message = function(conn)
    conn.ws:send(big, "binary")
  end,
})
