-- Test upstream: streams to every client as fast as the client takes it.
--
--   echokit -H tests/handlers/upstream_stream.lua [-- bytes=N]
--
-- The stream is the line "%015d\n" for i = 0, 1, 2, ... (16 bytes per line),
-- written in 64 KiB chunks while conn:write returns true and resumed from
-- on_drain. With bytes=N the connection is closed after N bytes (N a multiple
-- of 16); without it the stream never ends. Logs:
--   upstream open conn N
--   upstream closed conn N reason=R sent=BYTES
local echokit = require "echokit"
local args = ...
local limit = args.bytes and tonumber(args.bytes)
local LINES = 4096                      -- 64 KiB per chunk

local function chunk(first, n)
  local t = {}
  for i = 0, n - 1 do t[#t + 1] = string.format("%015d\n", first + i) end
  return table.concat(t)
end

local function pump(conn)
  while true do
    if limit and conn.sent >= limit then
      conn:close()
      return
    end
    local n = LINES
    if limit then n = math.min(n, (limit - conn.sent) // 16) end
    local ok = conn:write(chunk(conn.sent // 16, n))
    if ok == nil then return end        -- closed
    conn.sent = conn.sent + n * 16      -- queued even when write returned false
    if not ok then return end           -- above high water: wait for on_drain
  end
end

return {
  on_connect = function(conn)
    conn.sent = 0
    echokit.log("info", "upstream open conn %d", conn.id)
    pump(conn)
  end,
  on_drain = pump,
  on_data = function() end,             -- requests are ignored
  on_close = function(conn, reason)
    echokit.log("info", "upstream closed conn %d reason=%s sent=%d", conn.id,
      tostring(reason), conn.sent or 0)
  end,
}
