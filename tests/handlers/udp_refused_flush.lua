-- udp_robust_spec: "go PORT" over TCP opens an outbound UDP flow to PORT on
-- 127.0.0.1 (where nothing listens) and pauses it, so that its socket is not
-- read: the ICMP port unreachable its first datagram brings back is then
-- reported by its next send, in the flush before the loop polls. It sends
-- "a", then "b" 0.3 s later; on_close logs the reason.
local echokit = require "echokit"

return {
  on_data = function(c, d)
    local port = d:match("^go (%d+)")
    if not port then return end
    echokit.connect("udp://127.0.0.1:" .. port, {
      on_connect = function(up)
        up:pause()
        up:write("a")
        echokit.timer(0.3, function()
          up:write("b")
          echokit.log("info", "second datagram written")
        end)
      end,
      on_close = function(_, reason) echokit.log("info", "outbound closed %s", tostring(reason)) end,
    })
    c:write("ok\n")
  end,
}
