-- Test handler for output back-pressure.
--   fill\n     writes numbered 16 KiB blocks until conn:write returns false (at
--              most 1024), logs "filled N ok=OK buffered=B", then waits for on_drain,
--              which writes
--              "\nDRAINED after N writes buffered=B\n" and closes.
--              If write never returned false: "\nNEVER-FALSE\n" and close.
--   flood N\n  writes N bytes in 64 KiB blocks ignoring conn:write's result.
-- Close reasons are logged as "closed conn ID reason=REASON".
local echokit = require "echokit"

local BLOCK = 16384

local function block(i)
  local head = string.format("%08d", i)
  return head .. string.rep(string.char(65 + i % 26), BLOCK - #head)
end

return {
  on_data = function(conn, data)
    if conn.filled then return end
    if data:find("fill\n", 1, true) then
      local n, ok = 0, true
      repeat
        n = n + 1
        ok = conn:write(block(n))
      until ok == false or n >= 1024
      conn.filled = n
      echokit.log("info", "filled %d ok=%s buffered=%d", n, tostring(ok), conn:buffered())
      if ok ~= false then
        conn:write("\nNEVER-FALSE\n")
        conn:close()
      end
    else
      local total = tonumber(data:match("flood (%d+)\n"))
      if total then
        conn.filled = true
        local chunk = string.rep("z", 65536)
        local sent = 0
        while sent < total do
          local n = math.min(#chunk, total - sent)
          local ok, err = conn:write(n == #chunk and chunk or chunk:sub(1, n))
          if ok == nil then
            echokit.log("info", "flood stopped at %d: %s", sent, tostring(err))
            return
          end
          sent = sent + n
        end
        echokit.log("info", "flood wrote %d", sent)
      end
    end
  end,
  on_drain = function(conn)
    if type(conn.filled) == "number" and not conn.drained then
      conn.drained = true
      local b = conn:buffered()
      conn:write(string.format("\nDRAINED after %d writes buffered=%d\n", conn.filled, b))
      conn:close()
    end
  end,
  on_close = function(conn, reason)
    echokit.log("info", "closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
