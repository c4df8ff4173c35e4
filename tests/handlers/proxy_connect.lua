-- Test handler: outbound connects on request, and an echo for everything else.
--   connect ADDR   echokit.connect(ADDR); answers "connected\n" once established
--                  or "closed REASON after SECONDS\n" if it fails
--   other lines    echoed back
local echokit = require "echokit"

return {
  on_data = function(conn, data)
    conn.buf = (conn.buf or "") .. data
    while true do
      local line, rest = conn.buf:match("^(.-)\r?\n(.*)$")
      if not line then break end
      conn.buf = rest
      local addr = line:match("^connect (%S+)$")
      if addr then
        local t0 = echokit.now()
        conn.out = echokit.connect(addr, {
          on_connect = function(up)
            conn:write("connected\n")
            up:close()
          end,
          on_close = function(up, reason)
            if reason then
              conn:write(string.format("closed %s after %.3f\n", reason, echokit.now() - t0))
            end
          end,
        })
      else
        conn:write(line .. "\n")
      end
    end
  end,
}
