-- Writes 64 KiB blocks while conn:write returns true and goes on in on_drain,
-- the documented style, until args.total bytes are out (default 32 MiB). The
-- most bytes written in one callback are logged at the end ("firehose max=N").
-- Other clients get their lines echoed.
local echokit = require "echokit"
local args = ...
local total = echokit.size(args.total, 32 << 20)
local block = string.rep("x", 64 * 1024)

local function pump(conn)
  local n = 0
  while conn.sent < total do
    local ok = conn:write(block)
    conn.sent, n = conn.sent + #block, n + #block
    if not ok then break end
  end
  if n > conn.max then conn.max = n end
  if conn.sent >= total and not conn.done then
    conn.done = true
    echokit.log("info", "firehose max=%d", conn.max)
  end
end

return {
  on_data = function(conn, data)
    if data == "go\n" then
      conn.sent, conn.max = 0, 0
      return pump(conn)
    end
    conn:write(data)
  end,
  on_drain = function(conn)
    if conn.sent then pump(conn) end
  end,
}
