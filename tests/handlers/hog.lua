-- Takes Lua memory on request. "grow N": keeps N MiB in this connection's own
-- table, a MiB at a time, then answers "grown N"; anything else is echoed.
-- Closing the connection lets the memory go.
return {
  on_data = function(conn, data)
    local n = tonumber(data:match("^grow (%d+)"))
    if not n then return conn:write(data) end
    conn.hoard = conn.hoard or {}
    for i = 1, n do conn.hoard[#conn.hoard + 1] = string.rep(string.char(i % 256), 1 << 20) end
    conn:write("grown " .. n .. "\n")
  end,
}
