-- echokit.replay without the binary: the byte-stream matcher of each match=
-- mode (input cut anywhere must give the same verdict), server selection,
-- timing, the first-message pick and the diff's text.
local replay = require "echokit.replay"

-- Feeds input to consume() in pieces of size cut; returns the verdict and
-- how many bytes the message took.
local function run(mode, expected, input, cut)
  local buf, pos, i = "", 1, 1
  while true do
    local st, a, b = replay.consume(mode, expected, buf, pos, i > #input)
    if st == "ok" then return st, a - 1 end
    if st == "mismatch" then return st, b - 1, a end
    if i > #input then error("more after eof") end
    buf = buf .. input:sub(i, i + cut - 1)
    i = i + cut
  end
end

-- The same as the mock server reads: on "more", gather() until consume()
-- may decide. Returns as run() does, and how many times consume ran.
local function run_gather(mode, expected, input, cut)
  local i = 1
  local function receive()
    if i > #input then return nil end
    local d = input:sub(i, i + cut - 1)
    i = i + cut
    return d
  end
  local buf, pos, eof, calls = "", 1, false, 0
  while true do
    calls = calls + 1
    local st, a, b = replay.consume(mode, expected, buf, pos, eof)
    if st == "ok" then return st, a - 1, nil, calls end
    if st == "mismatch" then return st, b - 1, a, calls end
    if eof then error("more after eof") end
    buf, eof = replay.gather(mode, expected, buf:sub(pos), receive)
    pos = 1
  end
end

local function all_cuts(mode, expected, input, want, taken)
  for cut = 1, #input + 1 do
    for _, f in ipairs({ run, run_gather }) do
      local st, n = f(mode, expected, input, cut)
      assert.equal(want, st, ("mode %s, cut %d"):format(mode, cut))
      if taken then assert.equal(taken, n, ("mode %s, cut %d"):format(mode, cut)) end
    end
  end
end

describe("echokit.replay.consume", function()
  it("exact: the next #expected bytes, however the input is cut", function()
    all_cuts("exact", "GET k\r\n", "GET k\r\nGET j\r\n", "ok", 7)
    all_cuts("exact", "GET k\r\n", "GET x\r\n", "mismatch")
    all_cuts("exact", "GET k\r\n", "GET", "mismatch") -- the client stopped short
  end)

  it("exact: decides as soon as a byte differs, without waiting for the rest", function()
    assert.equal("mismatch", (replay.consume("exact", "GET k\r\n", "PUT", 1, false)))
    assert.equal("more", (replay.consume("exact", "GET k\r\n", "GE", 1, false)))
  end)

  it("prefix: only the first line compared, as many bytes taken", function()
    all_cuts("prefix", "GET /a\nHost: x\n", "GET /a\nHost: y\nnext", "ok", 15)
    all_cuts("prefix", "GET /a\nHost: x\n", "GET /b\nHost: x\n", "mismatch")
  end)

  it("lines: as many lines as recorded, LF and CR LF alike", function()
    all_cuts("lines", "HELO a\nMAIL b\n", "HELO a\r\nMAIL b\r\nRCPT", "ok", 16)
    all_cuts("lines", "HELO a\nMAIL b\n", "HELO a\nMAIL c\n", "mismatch")
    all_cuts("lines", "HELO a\nEND", "HELO a\r\nENDx", "ok", 11)
  end)

  it("lines: a line that differs is seen before the line ends, a CR alone decides nothing", function()
    all_cuts("lines", "HELO a\nMAIL b\n", "HELO a\nMXYZ", "mismatch")
    all_cuts("lines", "HELO a\nMAIL b\n", "HELO a\rx\nMAIL b\n", "mismatch")
    all_cuts("lines", "HELO a\nMAIL b\n", "HELO a\r\r\n", "mismatch")
    all_cuts("lines", "HELO\r\nEND", "HELO\nEN", "mismatch") -- the client stopped short
  end)

  it("gather: a message sent a byte at a time is joined once, not once per byte", function()
    -- 1-byte chunks of a 100 kB message: consume runs a bounded number of
    -- times (joining per chunk would copy the whole input per byte)
    local big = string.rep("0123456789abcdef", 6400) .. "\n"
    for _, mode in ipairs({ "exact", "prefix", "lines" }) do
      local st, n, _, calls = run_gather(mode, big, big .. "next", 1)
      assert.equal("ok", st, mode)
      assert.equal(#big, n, mode)
      assert.is_true(calls <= 4, mode .. ": consume ran " .. calls .. " times")
    end
    -- and a byte that differs still stops it at once
    local received = 0
    local wrong = "0123456789abcdeX" .. string.rep("z", 1000)
    local buf, eof = replay.gather("exact", big, "", function()
      received = received + 1
      return wrong:sub(received, received)
    end)
    assert.equal(16, received)
    assert.equal("0123456789abcdeX", buf)
    assert.is_false(eof)
  end)

  it("any: whatever has arrived", function()
    assert.same({ "ok", 4 }, { replay.consume("any", "whatever", "abc", 1, false) })
    assert.equal("more", (replay.consume("any", "whatever", "abc", 4, false)))
    assert.equal("mismatch", (replay.consume("any", "whatever", "", 1, true)))
  end)
end)

describe("echokit.replay", function()
  local convs = {
    { server = { host = "127.0.0.1", port = 6379 }, client = { host = "127.0.0.1", port = 5 },
      messages = { { from = "client", data = "*1\r\n$4\r\nPING\r\n", t = 1 },
                   { from = "server", data = "+PONG\r\n", t = 1.5 } } },
    { server = { host = "::1", port = 6379 }, client = { host = "::1", port = 6 },
      messages = { { from = "client", data = "*2\r\n$3\r\nGET\r\n", t = 2 } } },
    { server = { host = "10.0.0.1", port = 80 }, client = { host = "10.0.0.2", port = 7 },
      messages = {} },
  }

  it("selects conversations by server port, host and port, or the first one's port", function()
    local l, what = replay.select(convs)
    assert.equal(2, #l); assert.equal("*:6379", what)
    l, what = replay.select(convs, "[::1]:6379")
    assert.equal(1, #l); assert.equal(convs[2], l[1]); assert.equal("[::1]:6379", what)
    l = replay.select(convs, "80")
    assert.equal(convs[3], l[1])
    local none, err = replay.select(convs, "127.0.0.1:80")
    assert.is_nil(none)
    assert.matches("no conversation with server 127.0.0.1:80 %(servers in the capture: " ..
      "127.0.0.1:6379, %[::1%]:6379, 10.0.0.1:80%)", err)
    assert.matches("server=not HOST:PORT", select(2, replay.select(convs, "x:y")))
  end)

  it("picks by the longest common prefix of the first message, ties in turn", function()
    assert.equal(2, replay.pick(convs, "*2\r\n$3\r\nGET\r\n$1", 0))
    assert.equal(1, replay.pick(convs, "*1\r\n", 0))
    -- nothing in common: round robin from the last one served
    assert.equal(2, replay.pick({ convs[3], convs[3], convs[3] }, "x", 1))
    assert.equal(1, replay.pick({ convs[3], convs[3], convs[3] }, "x", 3))
  end)

  it("checks match= and timing=, and scales the recorded gaps", function()
    assert.equal("exact", replay.check_mode(nil))
    assert.is_nil(replay.check_mode("fuzzy"))
    assert.equal(0, replay.check_timing("none"))
    assert.equal(1, replay.check_timing("real"))
    assert.equal(4, replay.check_timing("x4"))
    for _, bad in ipairs({ "x0", "x-1", "fast", "xnan", "xinf" }) do
      assert.is_nil(replay.check_timing(bad), bad)
    end
    local msgs = convs[1].messages
    assert.equal(0, replay.delay(msgs, 1, 1))
    assert.equal(0.5, replay.delay(msgs, 2, 1))
    assert.equal(0.125, replay.delay(msgs, 2, 4))
    assert.equal(0, replay.delay(msgs, 2, 0))
  end)

  it("diffs: where the bytes part, both sides as hexdumps, long ones clipped", function()
    local hd = function(s) return "[" .. s .. "]\n" end
    local d = replay.diff("msg 1", "abcdef", "abXdef", hd)
    assert.equal("msg 1: differs at byte 2 (expected 6 bytes, received 6)\n" ..
      "expected:\n[abcdef]\nreceived:\n[abXdef]\n", d)
    d = replay.diff("m", string.rep("a", 600), "", hd, 512)
    assert.matches("%.%.%. 88 bytes more\n", d)
    assert.equal(3, replay.common("abc", "abcd"))
    assert.equal(0, replay.common("", "x"))
  end)
end)
