-- echokit.resp without the binary: commands (RESP arrays and inline) and reply
-- values, whole and byte by byte; Redis's protocol errors; limits; the encoder;
-- and a fuzz run in which no Lua error may escape.
local resp = require "echokit.resp"
local fuzz = require "fuzz"

local function parse(input, step, opts) return fuzz.feed(resp.parser(opts), input, step) end

local COMMANDS = "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$12\r\nhello\r\nworld\r\n" ..
                 "PING\r\n" ..
                 "set \"a b\" 'it\\'s' \"\\x41\\r\\n\"\n" ..
                 "\r\n" ..
                 "*0\r\n" ..
                 "*1\r\n$0\r\n\r\n" ..
                 "*2\r\n$4\r\nECHO\r\n$3\r\n\0\1\2\r\n"

local function check_commands(cmds, err)
  assert.is_nil(err)
  assert.equal(5, #cmds)
  assert.same({ "SET", "key", "hello\r\nworld", n = 3 }, cmds[1])
  assert.same({ "PING", n = 1 }, cmds[2])
  assert.same({ "set", "a b", "it's", "A\r\n", n = 4 }, cmds[3])
  assert.same({ "", n = 1 }, cmds[4])
  assert.same({ "ECHO", "\0\1\2", n = 2 }, cmds[5])
end

describe("echokit.resp command parser", function()
  it("parses RESP and inline commands given at once", function()
    check_commands(parse(COMMANDS))
  end)

  it("parses them at every chunk size from 1 to 40", function()
    for step = 1, 40 do check_commands(parse(COMMANDS, step)) end
  end)

  it("parses a large bulk string fed in small pieces without rescanning it", function()
    local big = ("x"):rep(2 * 1024 * 1024)
    local input = "*2\r\n$4\r\nECHO\r\n$" .. #big .. "\r\n" .. big .. "\r\n"
    local p = resp.parser()
    local t0 = os.clock()
    for i = 1, #input, 1000 do
      p:feed(input:sub(i, i + 999))
      local v, err = p:next()
      assert.is_nil(err)
      if v then assert.equal(big, v[2]) end
    end
    -- joining every piece each time would copy ~2 GB; this copies it once
    assert(os.clock() - t0 < 2, "parsing took " .. (os.clock() - t0) .. " s")
  end)

  local bad = {
    { "a bad multibulk length", "*x\r\n", "invalid multibulk length" },
    { "a huge multibulk length", "*2000000\r\n", "invalid multibulk length" },
    { "a bad bulk length", "*1\r\n$x\r\n", "invalid bulk length" },
    { "a nil bulk in a command", "*1\r\n$-1\r\n", "invalid bulk length" },
    { "a bulk over max_bulk", "*1\r\n$99999999999\r\n", "invalid bulk length" },
    { "a simple string in a command", "*1\r\n+PING\r\n", "expected '$', got '+'" },
    { "a nested array in a command", "*1\r\n*1\r\n", "expected '$', got '*'" },
    { "a bulk without CRLF", "*1\r\n$2\r\nabcd\r\n", "not terminated" },
    { "unbalanced quotes", "SET \"a b\r\n", "unbalanced quotes" },
    { "a quote glued to a word", "SET \"a\"b c\r\n", "unbalanced quotes" },
    { "an endless inline command", ("x"):rep(70000), "too big inline request" },
  }
  for _, case in ipairs(bad) do
    it("reports " .. case[1] .. " (whole and byte by byte)", function()
      for _, step in ipairs({ #case[2], 1 }) do
        local _, err = parse(case[2], step)
        assert.is_string(err)
        assert.truthy(err:find(case[3], 1, true), err)
        assert.truthy(err:find("^Protocol error: "), err)
      end
    end)
  end

  it("stays failed after an error", function()
    local p = resp.parser()
    p:feed("*x\r\n")
    local _, e1 = p:next()
    p:feed("PING\r\n")
    local v, e2 = p:next()
    assert.is_nil(v)
    assert.equal(e1, e2)
  end)

  it("takes a line of max_inline bytes whether or not its CR LF arrives split", function()
    local input = "+1234567\r\n:1234567\r\n"
    for _, step in ipairs({ #input, 1, 9 }) do
      local out, err = parse(input, step, { values = true, max_inline = 8 })
      assert.is_nil(err)
      assert.same({ "1234567", 1234567 }, out)
    end
    local _, err = parse("+12345678\r", 1, { values = true, max_inline = 8 })
    assert.equal("Protocol error: too big line", err)
  end)

  it("never lets a Lua error escape on random, mutated and truncated input", function()
    local rng = fuzz.rng(6379)
    for i = 1, 3000 do
      local input = fuzz.mutate(rng, COMMANDS, i)
      local ok, out, err = pcall(parse, input, rng(1, 30), { max_bulk = 4096, max_inline = 256 })
      assert(ok, "parser raised on " .. ("%q"):format(input) .. ": " .. tostring(out))
      assert(err == nil or type(err) == "string")
      for _, cmd in ipairs(out) do
        for j = 1, cmd.n do assert.is_string(cmd[j]) end
      end
    end
  end)
end)

describe("echokit.resp values", function()
  local REPLIES = "+OK\r\n-ERR bad thing\r\n:-42\r\n$-1\r\n$5\r\nhello\r\n*-1\r\n*0\r\n" ..
                  "*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n"
  local function check(vals, err)
    assert.is_nil(err)
    assert.equal(8, #vals)
    assert.equal("OK", vals[1])
    assert.equal("ERR bad thing", vals[2].err)
    assert.equal(-42, vals[3])
    assert.equal(resp.null, vals[4])
    assert.equal("hello", vals[5])
    assert.equal(resp.null, vals[6])
    assert.same({ n = 0 }, vals[7])
    assert.same({ 1, { "a", resp.null, n = 2 }, "x", n = 3 }, vals[8])
  end

  it("parses replies whole and byte by byte", function()
    for _, step in ipairs({ 1000, 1, 2, 3, 5, 7 }) do check(parse(REPLIES, step, { values = true })) end
  end)

  it("round-trips through the encoder", function()
    -- simple strings come back as bulk strings, which parse to the same value
    local vals = parse(REPLIES, nil, { values = true })
    local encoded = {}
    for i, v in ipairs(vals) do
      if type(v) == "table" and v.err then encoded[i] = resp.encode(resp.error(v.err))
      else encoded[i] = resp.encode(v) end
    end
    check(parse(table.concat(encoded), 1, { values = true }))
  end)

  it("limits nesting and rejects bad integers", function()
    local _, err = parse(("*1\r\n"):rep(40) .. ":1\r\n", nil, { values = true })
    assert.truthy(err:find("nested too deep"))
    local _, err2 = parse(":12x\r\n", nil, { values = true })
    assert.truthy(err2:find("invalid integer"))
    local _, err3 = parse("!x\r\n", nil, { values = true })
    assert.truthy(err3:find("unknown type byte"))
  end)

  it("encodes every kind of value and commands", function()
    assert.equal("+OK\r\n", resp.encode(resp.OK))
    assert.equal("-ERR x y\r\n", resp.encode(resp.error("ERR x\r\ny")))
    assert.equal(":7\r\n", resp.encode(7))
    assert.equal("$-1\r\n", resp.encode(resp.null))
    assert.equal("*2\r\n$1\r\na\r\n$-1\r\n", resp.encode({ "a", resp.null, n = 2 }))
    assert.equal("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", resp.command("GET", "k"))
    assert.has_error(function() resp.encode(resp.status("a\r\nb")) end)
    assert.has_error(function() resp.encode(function() end) end)
  end)

  it("refuses a command past max_command from its headers", function()
    local TOO_BIG = "Protocol error: command too big (max_command)"
    -- the element count alone: 64 bytes each
    local cmds, err = parse("*1048576\r\n", nil, { max_command = 1024 * 1024 })
    assert.same({ 0, TOO_BIG }, { #cmds, err })
    -- bulk lengths add up across elements, refused before the payload arrives
    local big = ("$1000\r\n" .. ("x"):rep(1000) .. "\r\n")
    cmds, err = parse("*20\r\n" .. big:rep(15) .. "$1000\r\n", 7, { max_command = 16 * 1024 })
    assert.same({ 0, TOO_BIG }, { #cmds, err })
    -- the count restarts with each command
    local one = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4000\r\n" .. ("v"):rep(4000) .. "\r\n"
    cmds, err = parse(one:rep(10), 5, { max_command = 8 * 1024 })
    assert.is_nil(err)
    assert.equal(10, #cmds)
    -- values mode too
    cmds, err = parse("*2\r\n*2\r\n$5000\r\n", nil, { values = true, max_command = 4096 })
    assert.same({ 0, TOO_BIG }, { #cmds, err })
  end)
end)
