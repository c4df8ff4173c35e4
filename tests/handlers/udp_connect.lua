-- udp_spec: each flow opens an outbound UDP flow (echokit.connect "udp://")
-- to upstream= and relays through Lua, replies prefixed with "via ".
local echokit = require "echokit"
local upstream = assert((...).upstream, "upstream=HOST:PORT")

return {
  on_connect = function(flow)
    flow.up = echokit.connect("udp://" .. upstream, {
      on_connect = function(up) echokit.log("info", "outbound connected %d", up.id) end,
      on_data = function(up, d) flow:write("via " .. d) end,
      on_close = function(up, reason)
        echokit.log("info", "outbound closed %s", tostring(reason))
        flow:close()
      end,
    })
  end,
  on_data = function(flow, d) flow.up:write(d) end,
  on_close = function(flow) flow.up:close() end,
}
