-- udp_spec: echokit.listen("udp://...") at run time, driven by datagrams.
--   listen     -> "ok udp://HOST:PORT": a new UDP listener whose flows
--                 answer each datagram upper-cased
--   close      -> closes the last one: "closed"
--   selfclose  -> "ok udp://HOST:PORT": a listener whose first flow answers
--                 "closing", then closes the listener from its on_data, drops
--                 the last reference to it and runs a full collection
--   refs       -> "refs N" after a full collection
local echokit = require "echokit"

local upper = { on_data = function(flow, d) flow:write(d:upper()) end }
local last

return {
  on_data = function(flow, d)
    if d == "listen" then
      last = assert(echokit.listen("udp://127.0.0.1:0", upper))
      flow:write("ok " .. last:address())
    elseif d == "close" then
      last:close()
      flow:write("closed")
    elseif d == "selfclose" then
      local l
      l = assert(echokit.listen("udp://127.0.0.1:0", {
        on_data = function(f)
          f:write("closing")
          l:close()
          l = nil
          collectgarbage("collect")
        end,
      }))
      flow:write("ok " .. l:address())
    elseif d == "refs" then
      collectgarbage("collect")
      flow:write("refs " .. echokit.stats().refs)
    end
  end,
}
