-- Answers "pid" with the serving process's id (which worker) and closes;
-- other data is echoed.
local function pid()
  local f = assert(io.open("/proc/self/stat"))
  local n = f:read("n")
  f:close()
  return n
end

return {
  on_data = function(conn, data)
    if data:match("^pid") then
      conn:write(tostring(pid()) .. "\n")
      return conn:close()
    end
    conn:write(data)
  end,
}
