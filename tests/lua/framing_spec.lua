-- echokit.framing without the binary: lines and length-prefixed frames split
-- at every boundary, their limits, and a fuzz run in which no Lua error may
-- escape.
local framing = require "echokit.framing"
local fuzz = require "fuzz"

local function drain(f, input, step) return fuzz.feed(f, input, step) end

describe("echokit.framing lines", function()
  local INPUT = "one\r\ntwo\n\nthree with spaces\r\n\r\nlast-no-newline"
  it("splits at LF, dropping a CR before it, at every chunk size", function()
    for step = 1, #INPUT do
      local f = framing.lines()
      assert.same({ "one", "two", "", "three with spaces", "" }, drain(f, INPUT, step))
      assert.equal("last-no-newline", f:rest())
    end
  end)

  it("starts afresh after rest()", function()
    local f = framing.lines()
    assert.same({ "a" }, drain(f, "a\nlong partial line"))
    assert.equal("long partial line", f:rest())
    assert.same({ "b", "c" }, drain(f, "b\nc\n", 1))
  end)

  it("splits at a multi-byte delimiter that straddles chunks", function()
    for step = 1, 7 do
      assert.same({ "a", "b\r", "" }, drain(framing.lines{ delimiter = "\r\n\r\n" },
                                            "a\r\n\r\nb\r\r\n\r\n\r\n\r\n", step))
    end
  end)

  it("fails a line over max, ended or not, and stays failed", function()
    local f = framing.lines{ max = 10 }
    local out, err = drain(f, "0123456789\n01234567890\n")
    assert.same({ "0123456789" }, out)
    assert.equal("line too long", err)
    local _, err2 = drain(framing.lines{ max = 10 }, ("x"):rep(100), 1)
    assert.equal("line too long", err2)
    f:feed("ok\n")
    assert.same({ nil, "line too long" }, { f:next() })
  end)

  it("scans a long unterminated line once, not once per byte", function()
    local f = framing.lines{ max = 1 << 20 }
    local t0 = os.clock()
    for _ = 1, 200000 do
      f:feed("x")
      assert(f:next() == nil)
    end
    f:feed("\n")
    assert.equal(200000, #f:next())
    -- joining at every byte would copy 20 GB; linear work takes well under 1 s
    assert(os.clock() - t0 < 1, "took " .. (os.clock() - t0) .. " s")
  end)
end)

describe("echokit.framing length_prefixed", function()
  for _, o in ipairs({ { size = 1 }, { size = 2 }, { size = 4 }, { size = 8 },
                       { size = 2, little = true }, { size = 4, inclusive = true } }) do
    it(("round-trips frames with a %d-byte %s%s length"):format(o.size,
         o.little and "little-endian" or "big-endian", o.inclusive and " inclusive" or ""), function()
      local enc = framing.length_prefixed(o)
      local msgs = { "", "a", ("b"):rep(200), "\0\1\2" }
      local input = {}
      for i, m in ipairs(msgs) do input[i] = enc:encode(m) end
      input = table.concat(input)
      for step = 1, 9 do
        assert.same(msgs, drain(framing.length_prefixed(o), input, step))
      end
    end)
  end

  it("writes the length as told", function()
    assert.equal("\0\0\0\3abc", framing.length_prefixed():encode("abc"))
    assert.equal("\3\0abc", framing.length_prefixed{ size = 2, little = true }:encode("abc"))
    assert.equal("\0\0\0\7abc", framing.length_prefixed{ inclusive = true }:encode("abc"))
    assert.has_error(function() framing.length_prefixed{ size = 1 }:encode(("x"):rep(256)) end)
    assert.has_error(function() framing.length_prefixed{ size = 3 } end)
  end)

  it("fails a frame over max from its header, and a length below the header size", function()
    local _, err = drain(framing.length_prefixed{ max = 100 }, "\0\0\0\101")
    assert.equal("frame too large", err)
    local _, err2 = drain(framing.length_prefixed{ inclusive = true }, "\0\0\0\2")
    assert.equal("bad frame length", err2)
    local _, err3 = drain(framing.length_prefixed{ size = 8 }, "\255\255\255\255\255\255\255\255")
    assert.equal("frame too large", err3)
  end)

  it("never lets a Lua error escape on random, mutated and truncated input", function()
    local rng = fuzz.rng(42)
    local enc = framing.length_prefixed{ size = 2 }
    local base = enc:encode("hello") .. enc:encode(("x"):rep(300)) .. "line one\nline two\r\n"
    for i = 1, 2000 do
      local input = fuzz.mutate(rng, base, i)
      for _, mk in ipairs({ function() return framing.length_prefixed{ size = 2, max = 1000 } end,
                            function() return framing.lines{ max = 50 } end }) do
        local ok, out, err = pcall(drain, mk(), input, rng(1, 20))
        assert(ok, "raised on " .. ("%q"):format(input) .. ": " .. tostring(out))
        assert(err == nil or type(err) == "string")
      end
    end
  end)
end)
