-- json: a strict JSON decoder for checking what handlers answer (objects,
-- arrays, strings with escapes, numbers, true/false/null -> json.null).
-- Raises with the offset on anything that is not JSON.
local M = { null = setmetatable({}, { __tostring = function() return "null" end }) }

function M.decode(s)
  local pos = 1
  local function fail(what) error(("json: %s at offset %d in %q"):format(what, pos - 1, s:sub(1, 200)), 0) end
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    pos = pos + 1
    local out = {}
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1 return table.concat(out) end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local simple = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
        if simple[e] then out[#out + 1] = simple[e]; pos = pos + 2
        elseif e == "u" then
          local h = s:sub(pos + 2, pos + 5)
          if not h:match("^%x%x%x%x$") then fail("bad \\u escape") end
          out[#out + 1] = utf8.char(tonumber(h, 16)); pos = pos + 6
        else fail("bad escape") end
      elseif c:byte() < 32 then fail("control character in string")
      else out[#out + 1] = c; pos = pos + 1 end
    end
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local o = {}
      ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1 return o end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("expected a key") end
        local k = str()
        ws()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        o[k] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return o end
        if d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      pos = pos + 1
      local a = {}
      ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1 return a end
      while true do
        a[#a + 1] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return a end
        if d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif s:find("^true", pos) then pos = pos + 4 return true
    elseif s:find("^false", pos) then pos = pos + 5 return false
    elseif s:find("^null", pos) then pos = pos + 4 return M.null
    else
      local n = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not n or n == "" then fail("unexpected character") end
      pos = pos + #n
      return tonumber(n) or fail("bad number")
    end
  end
  local v = value()
  ws()
  if pos <= #s then fail("trailing data") end
  return v
end

return M
