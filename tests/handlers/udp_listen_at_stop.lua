-- udp_robust_spec: a connection's data stops the process and closes the
-- connection; its on_close (run after the shutdown began) tries to open a
-- UDP listener and keeps whatever it got in a global, so a listener opened
-- then would still be open when the Lua state closes.
local echokit = require "echokit"

return {
  on_data = function(c)
    echokit.stop()
    c:close()
  end,
  on_close = function()
    local l, err = echokit.listen("udp://127.0.0.1:0", { on_data = function() end })
    KEEP = l
    echokit.log("info", "listen after stop: %s %s", tostring(l), tostring(err))
  end,
}
