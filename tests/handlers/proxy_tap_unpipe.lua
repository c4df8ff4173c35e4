-- Test handler: a proxy whose client->upstream pipe has a tap that unpipes
-- when a chunk contains "STOP". From then on the client's input reaches
-- on_data, which forwards it to the upstream prefixed with "[lua]".
--
--   echokit -H tests/handlers/proxy_tap_unpipe.lua -- upstream=ADDR
--
-- Logs: "tap saw %q" for each tapped chunk, "on_data got %q" for each chunk
-- on_data sees (LF shown as \n).
local echokit = require "echokit"
local args = ...
local upstream = assert(args.upstream, "give -- upstream=ADDR")

local function show(s) return (s:gsub("\n", "\\n")) end

return {
  on_connect = function(client)
    client.up = echokit.connect(upstream, {
      on_close = function() client:close() end,
    })
    client:pipe(client.up, { tap = function(data, c)
      echokit.log("info", "tap saw \"%s\"", show(data))
      if data:find("STOP", 1, true) then c:unpipe() end
    end })
    client.up:pipe(client)
  end,
  on_data = function(client, data)
    echokit.log("info", "on_data got \"%s\"", show(data))
    client.up:write("[lua]" .. data)
  end,
  on_eof = function(client) client.up:shutdown() end,
}
