-- echokit.glob without the binary: Redis's stringmatchlen rules, the edge cases
-- a Lua-pattern translation got wrong, and patterns that backtrack
-- exponentially in a naive matcher.
local glob = require "echokit.glob"

local function yes(p, s) assert(glob.match(p, s), ("%q should match %q"):format(p, s)) end
local function no(p, s) assert(not glob.match(p, s), ("%q should not match %q"):format(p, s)) end

describe("echokit.glob", function()
  it("matches * ? and literals as Redis does", function()
    yes("*", ""); yes("*", "anything")
    yes("h?llo", "hello"); yes("h?llo", "hallo"); no("h?llo", "hllo")
    yes("h*llo", "hllo"); yes("h*llo", "heeeello"); no("h*llo", "hellox")
    yes("a*b*c", "aXbYc"); no("a*b*c", "aXbY")
    yes("**a**", "xxaxx"); no("", "x"); yes("", "")
    yes("user:*", "user:1"); no("user:*", "use")
    yes("%d.(", "%d.(")      -- Lua pattern magic is plain here
  end)

  it("takes [abc] [^a] [a-z], reversed ranges and escapes inside sets", function()
    yes("h[ae]llo", "hello"); yes("h[ae]llo", "hallo"); no("h[ae]llo", "hillo")
    yes("h[^e]llo", "hallo"); no("h[^e]llo", "hello")
    yes("h[a-b]llo", "hbllo"); no("h[a-b]llo", "hcllo")
    yes("[z-a]", "m")                    -- reversed range, swapped
    yes("[\\]]", "]"); yes("[\\-]", "-"); no("[\\-]", "a")
    -- "a-]" is a range (']' to 'a', swapped) and the set runs on to the end
    yes("[a-]x", "]"); yes("[a-]x", "x"); no("[a-]x", "]x")
    no("[]", "a"); no("[]", "")          -- an empty set matches nothing
  end)

  it("does not choke on patterns a Lua pattern could not express", function()
    yes("[^]", "x")                      -- negation of nothing: any byte
    no("[^]", "")
    yes("[abc", "b")                     -- unterminated: the rest is the set
    no("[abc", "d")
    yes("\\d", "d"); no("\\d", "5")      -- \d is a literal d, not a digit class
    yes("\\*", "*"); no("\\*", "x")
    yes("a\\", "a\\")                    -- a trailing backslash is itself
    yes("\0?\255", "\0x\255")
  end)

  it("matches a pathological pattern in bounded work", function()
    local key = ("a"):rep(2000)
    local steps = 0
    debug.sethook(function() steps = steps + 1 end, "", 1000)
    local r = glob.match("*a*a*a*a*b", key)
    debug.sethook()
    assert.is_false(r)
    -- two pointers: at most #key * #pattern byte steps, i.e. 20000 here; the
    -- hook counts thousands of VM instructions, a few per step
    assert.is_true(steps < 2000, "took " .. steps .. "k instructions")
    assert.is_true(glob.match("*a*a*a*a*a", key))
  end)

  it("refuses a pattern past the length cap", function()
    local m, err = glob.compile(("?"):rep(glob.MAX_PATTERN + 1))
    assert.is_nil(m)
    assert.equal("pattern too long", err)
    assert.is_function(glob.compile(("?"):rep(glob.MAX_PATTERN)))
  end)
end)
