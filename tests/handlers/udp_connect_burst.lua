-- udp_robust_spec: a flow's datagram "burst N" makes an outbound flow to
-- upstream= (a host name: resolved on a thread) and writes N datagrams to it
-- at once, before the name is resolved: "1".."N". Replies go back to the flow.
local echokit = require "echokit"
local upstream = assert((...).upstream, "upstream=HOST:PORT")

return {
  on_data = function(flow, d)
    local n = tonumber(d:match("^burst (%d+)$"))
    if not n then return end
    flow.up = echokit.connect("udp://" .. upstream, {
      on_data = function(_, r) flow:write(r) end,
    })
    for i = 1, n do flow.up:write(tostring(i)) end
  end,
  on_close = function(flow) if flow.up then flow.up:close() end end,
}
