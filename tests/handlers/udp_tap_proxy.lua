-- udp_proxy_spec: the proxy's shape with taps: each datagram relayed in C
-- either way is seen by a tap first (what the debugging proxy builds on).
local echokit = require "echokit"
local upstream = assert((...).upstream, "upstream=HOST:PORT")

return {
  on_connect = function(client)
    local up = echokit.connect("udp://" .. upstream, {})
    client:pipe(up, { tap = function(d, c)
      echokit.log("info", "tap up %d bytes from %d", #d, c.id)
    end })
    up:pipe(client, { tap = function(d, c)
      echokit.log("info", "tap down %d bytes from %d", #d, c.id)
    end })
  end,
}
