-- "spin" loops forever (the CPU budget must stop it); "pid" answers the
-- serving process's id (which worker); other data is echoed.
return {
  on_data = function(conn, data)
    if data:match("^spin") then while true do end end
    if data:match("^pid") then
      local f = assert(io.open("/proc/self/stat"))
      local pid = f:read("n")
      f:close()
      return conn:write(tostring(pid) .. "\n")
    end
    conn:write(data)
  end,
}
