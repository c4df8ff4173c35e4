-- echokit.glob: Redis-style glob patterns (KEYS, CONFIG GET, SCAN MATCH), with
-- the rules of Redis's stringmatchlen: * any run of bytes, ? one byte,
-- [abc] [^abc] [a-z] (a reversed range is swapped; \ escapes inside), \x the
-- byte x; an unterminated [ takes the rest of the pattern as its set.
--
-- The match is an iterative two-pointer walk that only ever backtracks to the
-- last *, so it costs at most #subject * #pattern steps (no exponential
-- backtracking as a Lua pattern with several .* would have), and it runs as
-- Lua instructions, which the per-callback CPU budget can interrupt.
--
--   local glob = require "echokit.glob"
--   local match, err = glob.compile(pattern [, max_len])  -- err: "pattern too long"
--   match(subject) -> true | false
--   glob.match(pattern, subject) -> true | false
local M = {}

M.MAX_PATTERN = 1024

local STAR, ANY = {}, {}

-- A [...] set starting after the '[' at i: a 256-entry table of the bytes it
-- accepts, and the index just past its ']' (or past the pattern's end).
local function set_at(p, i)
  local n, neg, set = #p, false, {}
  if p:byte(i) == 94 then neg, i = true, i + 1 end          -- ^
  while true do
    local c = p:byte(i)
    if c == 92 and i + 1 <= n then                           -- \x
      set[p:byte(i + 1)] = true
      i = i + 2
    elseif c == 93 then                                      -- ]
      i = i + 1
      break
    elseif i > n then
      break
    elseif i + 2 <= n and p:byte(i + 1) == 45 then           -- a-z
      local a, b = c, p:byte(i + 2)
      if a > b then a, b = b, a end
      for x = a, b do set[x] = true end
      i = i + 3
    else
      set[c] = true
      i = i + 1
    end
  end
  if neg then
    local inv = {}
    for x = 0, 255 do if not set[x] then inv[x] = true end end
    set = inv
  end
  return set, i
end

local function tokens(p)
  local out, i, n = {}, 1, #p
  while i <= n do
    local c = p:byte(i)
    if c == 42 then                                          -- *
      if out[#out] ~= STAR then out[#out + 1] = STAR end
      i = i + 1
    elseif c == 63 then                                      -- ?
      out[#out + 1] = ANY
      i = i + 1
    elseif c == 91 then                                      -- [
      out[#out + 1], i = set_at(p, i + 1)
    elseif c == 92 and i < n then                            -- \x
      out[#out + 1] = p:byte(i + 1)
      i = i + 2
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return out
end

function M.compile(p, max_len)
  if #p > (max_len or M.MAX_PATTERN) then return nil, "pattern too long" end
  local t = tokens(p)
  local m = #t
  if m == 1 and t[1] == STAR then return function() return true end end
  return function(s)
    local byte = string.byte
    local n = #s
    local si, ti = 1, 1
    local star_ti, star_si = nil, 0
    while si <= n do
      local tk = t[ti]
      if tk == STAR then
        if ti == m then return true end
        star_ti, star_si, ti = ti, si, ti + 1
      elseif tk ~= nil and (tk == ANY or tk == byte(s, si)
                            or (type(tk) == "table" and tk[byte(s, si)])) then
        si, ti = si + 1, ti + 1
      elseif star_ti then
        -- let the last * take one more byte and try again after it
        star_si = star_si + 1
        si, ti = star_si, star_ti + 1
      else
        return false
      end
    end
    while t[ti] == STAR do ti = ti + 1 end
    return ti > m
  end
end

function M.match(p, s)
  local f, err = M.compile(p)
  if not f then error(err, 2) end
  return f(s)
end

return M
