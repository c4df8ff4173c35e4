-- udp_spec: a flow served by a coroutine; receive() is the next datagram.
local echokit = require "echokit"
return {
  serve = function(flow)
    while true do
      local d, err = flow:receive()
      if not d then
        echokit.log("info", "serve ended %s", err)
        return
      end
      flow:write("serve " .. d)
    end
  end,
}
