-- Loads in the process that starts (the --workers master checks it there)
-- and raises in every worker: a worker's parent is the same program as
-- itself, the master's is not.
local function stat(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local s = f:read("a")
  f:close()
  local comm, ppid = s:match("^%d+ (%b()) %a (%d+)")
  return comm, ppid
end

local comm, ppid = stat("self")
if stat(ppid) == comm then
  error("worker_fails.lua refuses to start in a worker")
end
return { on_data = function(conn, data) conn:write(data) end }
