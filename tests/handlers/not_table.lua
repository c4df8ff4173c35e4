-- Test handler: forgets to return its callback table.
local function on_data(conn, data) conn:write(data) end
