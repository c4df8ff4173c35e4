-- Test handler: passes echokit.connect and echokit.listen bad handler tables
-- (a callback that is not a function; serve with on_data) and writes back
-- each error message, one a line.
local echokit = require "echokit"

local BAD = {
  { on_data = 5 },
  { on_data = function() end, serve = function() end },
}

return {
  on_data = function(conn)
    for _, f in ipairs{ "connect", "listen" } do
      for _, h in ipairs(BAD) do
        local ok, err = pcall(echokit[f], "127.0.0.1:0", h)
        conn:write((ok and "no error" or tostring(err)) .. "\n")
      end
    end
  end,
}
