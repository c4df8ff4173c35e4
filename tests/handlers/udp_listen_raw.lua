-- udp_spec: echokit.listen("udp://") with on_datagram is refused at load.
local echokit = require "echokit"
echokit.listen("udp://127.0.0.1:0", { on_datagram = function() end })
return {}
