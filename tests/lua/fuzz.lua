-- fuzz: seeded input mutation for the parser specs. The same seed gives the
-- same inputs on every run, so a failure names an input that can be replayed.
local M = {}

-- A deterministic generator: rng(a, b) -> integer in [a, b]. xorshift64*, so
-- the sequence does not depend on the Lua build's math.random.
function M.rng(seed)
  local s = seed ~ 0x9E3779B97F4A7C15
  if s == 0 then s = 1 end
  return function(a, b)
    s = s ~ (s >> 12); s = s ~ (s << 25); s = s ~ (s >> 27)
    local v = (s * 0x2545F4914F6CDD1D) >> 11
    return a + v % (b - a + 1)
  end
end

-- Feeds `input` to a parser `step` bytes at a time (default: all at once) and
-- collects what p:next() returns until it has nothing more; stops at the
-- first error. Returns the values, then err and code if one came.
function M.feed(p, input, step)
  local out = {}
  step = math.max(1, step or #input)
  for i = 1, #input, step do
    p:feed(input:sub(i, i + step - 1))
    while true do
      local v, err, code = p:next()
      if err then return out, err, code end
      if v == nil then break end
      out[#out + 1] = v
    end
  end
  return out
end

function M.bytes(rng, n)
  local t = {}
  for i = 1, n do t[i] = string.char(rng(0, 255)) end
  return table.concat(t)
end

-- One of: random bytes, a truncation, byte flips, a duplicated slice, an
-- inserted run, a deleted slice of `base`; chosen by i so every kind is tried.
function M.mutate(rng, base, i)
  local kind = i % 6
  local n = #base
  if kind == 0 then
    return M.bytes(rng, rng(0, 200))
  elseif kind == 1 then
    return base:sub(1, rng(0, n))
  elseif kind == 2 then
    local t = { base:byte(1, -1) }
    for _ = 1, rng(1, 8) do t[rng(1, n)] = rng(0, 255) end
    return string.char(table.unpack(t))
  elseif kind == 3 then
    local a = rng(1, n)
    local b = rng(a, math.min(n, a + 64))
    local at = rng(1, n)
    return base:sub(1, at) .. base:sub(a, b) .. base:sub(at + 1)
  elseif kind == 4 then
    local at = rng(1, n)
    local pick = { "\r\n", "\n", ":", " ", "0", "f", ";", "\0", "\r", "99999999" }
    return base:sub(1, at) .. pick[rng(1, #pick)]:rep(rng(1, 4)) .. base:sub(at + 1)
  else
    local a = rng(1, n)
    return base:sub(1, a - 1) .. base:sub(rng(a, n) + 1)
  end
end

return M
