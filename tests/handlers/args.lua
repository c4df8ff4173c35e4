-- Test handler: on connect, writes the handler arguments, serialised with
-- sorted keys, then whether `...` and echokit.args hold the same values, then closes.
local echokit = require "echokit"
local args = ...

local function ser(t)
  if type(t) ~= "table" then return "<" .. type(t) .. ">" end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    local ks = type(k) == "number" and ("[" .. k .. "]") or tostring(k)
    local vs = type(v) == "string" and string.format("%q", v) or ("<" .. type(v) .. ">")
    out[#out + 1] = ks .. "=" .. vs
  end
  return "{" .. table.concat(out, " ") .. "}"
end

local same = ser(args) == ser(echokit.args)

return {
  on_connect = function(conn)
    conn:write(ser(args) .. "\n" .. "same=" .. tostring(same) .. "\n")
    conn:close()
  end,
}
