-- Test handler: works the Lua heap through echokit's allocator. One command
-- per line, one reply line each:
--   "stress R"  R rounds of strings of every size 1-300 (each small size
--               class and past it), tables grown one slot at a time and
--               emptied, hash parts, with collections in between; every
--               string is checked after the collector ran. -> "ok SUM"
--   "hog N"     keeps N-byte strings until the --lua-memory cap refuses one,
--               lets them all go and collects. -> "hog COUNT"
local function stress(rounds)
  local sum = 0
  for r = 1, rounds do
    local keep = {}
    for n = 1, 300 do
      keep[n] = string.rep(string.char(65 + (n + r) % 26), n)
    end
    local t = {}
    for i = 1, 100 do t[i] = i * r end
    for i = 100, 1, -1 do sum = sum + t[i]; t[i] = nil end
    local h = {}
    for i = 1, 50 do h["k" .. i .. "_" .. r] = i end
    for _, v in pairs(h) do sum = sum + v end
    collectgarbage("step")
    for n = 1, 300 do
      local s = keep[n]
      local c = 65 + (n + r) % 26
      if #s ~= n or s:byte(1) ~= c or s:byte(n) ~= c or s ~= string.rep(string.char(c), n) then
        error(string.format("string of %d bytes corrupted in round %d", n, r))
      end
      sum = sum + s:byte(n)
    end
  end
  collectgarbage()
  return sum
end

local function hog(size)
  local keep, count = {}, 0
  local ok = pcall(function()
    while true do
      -- distinct contents, so each string is its own allocation
      keep[count + 1] = string.format("%08d", count) .. string.rep("x", size - 8)
      count = count + 1
    end
  end)
  assert(not ok)
  keep = nil
  collectgarbage()
  collectgarbage()
  return count
end

local pending = {}

return {
  on_data = function(conn, data)
    local buf = (pending[conn] or "") .. data
    for line in buf:gmatch("([^\n]*)\n") do
      local cmd, arg = line:match("^(%a+) (%d+)$")
      if cmd == "stress" then
        conn:write("ok " .. stress(tonumber(arg)) .. "\n")
      elseif cmd == "hog" then
        conn:write("hog " .. hog(tonumber(arg)) .. "\n")
      else
        conn:write("what? " .. line .. "\n")
      end
    end
    pending[conn] = buf:match("[^\n]*$")
  end,
  on_close = function(conn) pending[conn] = nil end,
}
