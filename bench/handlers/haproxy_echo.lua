-- An echo service for HAProxy's Lua (a TCP applet). It reads lines: the
-- ping-pong messages of bench/loadgen end in "\n" and hold no other one.
core.register_service("echo", "tcp", function(applet)
  while true do
    local line = applet:getline()
    if line == nil or line == "" then return end
    applet:send(line)
  end
end)
