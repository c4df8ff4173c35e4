-- Test handler: loads fine, fails while running its top level.
local config = nil
local port = config.port -- RUNTIME_ERROR
return { on_data = function(conn, data) conn:write(data) end }
