-- Test handler: a proxy like handlers/proxy.lua whose two pipes have taps.
--
--   echokit -H tests/handlers/proxy_tap.lua -- upstream=ADDR dir=DIR
--
-- Every chunk a tap sees is appended to DIR/c2u-<client id> (client ->
-- upstream) or DIR/u2c-<client id> (upstream -> client). When the source
-- connection of a direction is gone its file is closed and the handler logs
--   tap DIR conn N bytes=B chunks=K foreign=F
-- where foreign counts tap calls whose second argument was not the source
-- connection (must be 0).
local echokit = require "echokit"
local args = ...
local upstream = assert(args.upstream, "give -- upstream=ADDR")
local dir = assert(args.dir, "give -- dir=DIR")

local function recorder(name, id, source_of)
  local f = assert(io.open(string.format("%s/%s-%d", dir, name, id), "wb"))
  local r = { bytes = 0, chunks = 0, foreign = 0 }
  function r.tap(data, conn)
    if conn ~= source_of() then r.foreign = r.foreign + 1 end
    r.bytes = r.bytes + #data
    r.chunks = r.chunks + 1
    assert(f:write(data))
  end
  function r.finish()
    if not f then return end
    f:close()
    f = nil
    echokit.log("info", "tap %s conn %d bytes=%d chunks=%d foreign=%d", name, id, r.bytes,
      r.chunks, r.foreign)
  end
  return r
end

return {
  on_connect = function(client)
    local up
    local u2c = recorder("u2c", client.id, function() return up end)
    client.c2u = recorder("c2u", client.id, function() return client end)
    up = echokit.connect(upstream, {
      on_close = function(_, reason)
        if reason then echokit.log("warn", "upstream %s: %s", upstream, reason) end
        u2c.finish()
      end,
    })
    client:pipe(up, { tap = client.c2u.tap })
    up:pipe(client, { tap = u2c.tap })
  end,
  on_close = function(client) client.c2u.finish() end,
}
