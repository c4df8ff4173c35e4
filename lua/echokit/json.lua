-- echokit.json: JSON text that is valid whatever bytes it is given.
--
--   local json = require "echokit.json"
--   json.encode({ 1, "two", json.null })              --> [1,"two",null]
--   json.object({ "b", "a" }, { a = 1, b = "x" })      --> {"b":"x","a":1}
--
-- Strings are escaped by lua-cjson (a private instance, so nobody else's
-- settings apply). cjson copies bytes through as they are, which is not JSON
-- when they are not UTF-8: such a string is read as Latin-1 first, every byte
-- 0x80-0xFF becoming U+0080-U+00FF (how HTTP reads obs-text). That keeps
-- every byte, but a reader cannot tell it happened: payloads that must come
-- back byte for byte are better sent as base64 beside an encoding field.
--
-- Numbers and containers are written here, because cjson 2.1 rounds numbers
-- to 14 digits, writes an empty table as {} and keeps no key order:
-- integers exactly, floats with the fewest digits that read back the same
-- (NaN and infinities raise); a sequence or an empty table is an array, any
-- other table an object with its keys sorted; json.object gives the order.
local cjson = require("cjson").new()

local M = { null = cjson.null }

local function latin1(c) return utf8.char(c:byte()) end

local function str(s)
  if not utf8.len(s) then s = s:gsub("[\128-\255]", latin1) end
  return cjson.encode(s)
end

local function number(n)
  if math.type(n) == "integer" then return string.format("%d", n) end
  if n ~= n or n == math.huge or n == -math.huge then
    error("json: " .. tostring(n) .. " is not a JSON number", 3)
  end
  for digits = 15, 16 do
    local s = string.format("%." .. digits .. "g", n)
    if tonumber(s) == n then return s end
  end
  return string.format("%.17g", n)
end

local encode

-- The object of the fields of t named in keys, in that order; nil fields are
-- left out.
function M.object(keys, t)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if v ~= nil then parts[#parts + 1] = str(k) .. ":" .. encode(v) end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

encode = function(v)
  if v == nil or v == M.null then return "null" end
  local kind = type(v)
  if kind == "string" then return str(v) end
  if kind == "number" then return number(v) end
  if kind == "boolean" then return tostring(v) end
  if kind ~= "table" then error("json: cannot encode a " .. kind, 2) end
  if next(v) == nil or v[1] ~= nil then
    local parts = {}
    for i = 1, #v do parts[i] = encode(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" then error("json: object key " .. tostring(k) .. " is not a string", 2) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return M.object(keys, v)
end

-- JSON text for v: strings, numbers, booleans, json.null, and tables of them.
M.encode = encode

return M
