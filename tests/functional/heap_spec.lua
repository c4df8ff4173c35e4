-- The Lua heap: echokit's allocator keeps freed small blocks for reuse (off
-- in ASan builds and with ECHOKIT_LUA_POOL=0); strings and tables that go
-- through it keep their contents, and --lua-memory counts every block it
-- hands out and gets back.
local t = require "echokit_test"

local HEAP = "tests/handlers/heap.lua"

-- The sum `stress R` reports, worked out here: for each round r, the table
-- part adds i*r for i = 1..100, the hash part 1..50, and each string of n
-- bytes its last byte, 65 + (n + r) % 26.
local function stress_sum(rounds)
  local sum = 0
  for r = 1, rounds do
    sum = sum + 5050 * r + 1275
    for n = 1, 300 do sum = sum + 65 + (n + r) % 26 end
  end
  return sum
end

local function ask(c, line) return t.ask(c, line, 30) end

describe("the Lua heap", function()
  after_each(t.teardown)

  it("keeps strings of every small size and resized tables intact across collections", function()
    local srv = t.start{ handler = HEAP }
    local c = srv:connect()
    assert.equal("ok " .. stress_sum(40), ask(c, "stress 40"))
    -- a second connection after the first one's garbage went back to the allocator
    local c2 = srv:connect()
    assert.equal("ok " .. stress_sum(7), ask(c2, "stress 7"))
  end)

  it("counts back every block freed under --lua-memory: the cap is hit at the same count each time", function()
    local srv = t.start{ handler = HEAP, opts = { "--lua-memory", "4m" } }
    local c = srv:connect()
    local function hog(size)
      local n = tonumber(ask(c, "hog " .. size):match("^hog (%d+)$"))
      assert(n, "no count from hog " .. size)
      -- 4 MiB of strings of `size` bytes: fewer than 4 MiB / size fit, and
      -- at least a third of that (the table holding them takes its share)
      assert(n < 4 * 1048576 / size and n > 4 * 1048576 / size / 3,
        string.format("the 4 MiB cap let through %d strings of %d bytes", n, size))
      return n
    end
    for _, size in ipairs{ 100, 200, 4096 } do
      -- The first round leaves Lua's own structures (the string table) at
      -- the size they grew to; from then on, were a freed block not counted
      -- back, each round would fit fewer strings than the one before.
      hog(size)
      local first = hog(size)
      for _ = 1, 3 do
        local again = hog(size)
        assert(math.abs(again - first) <= 2,
          string.format("hog %d: %d strings, then %d", size, first, again))
      end
    end
    -- and the server still serves
    assert.equal("ok " .. stress_sum(2), ask(c, "stress 2"))
  end)
end)
