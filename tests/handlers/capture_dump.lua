-- Prints what echokit.capture reads from args.from, one line per
-- conversation and per message (bytes in hex), for the replay spec; run with
-- --check. An error is printed as "error: ...".
local echokit = require "echokit"
local args = ...
local convs, err = echokit.capture(args.from)
if not convs then
  print("error: " .. err)
  return {}
end
print(string.format("packets=%d skipped=%d warning=%s", convs.packets, convs.skipped,
  convs.warning or ""))
for i, c in ipairs(convs) do
  print(string.format("conv %d %s:%d -> %s:%d truncated=%s messages=%d", i, c.client.host,
    c.client.port, c.server.host, c.server.port, tostring(c.truncated), #c.messages))
  for _, m in ipairs(c.messages) do
    print(string.format("  %s %s", m.from, (m.data:gsub(".", function(ch)
      return string.format("%02x", ch:byte()) end))))
  end
end
return {}
