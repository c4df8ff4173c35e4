-- echokit.websocket's frame parser and writer without the binary (the Lua
-- mask stands in for echokit.codec's): lengths at every encoding boundary,
-- fragmentation with control frames between fragments, every protocol error
-- with its close code, strict UTF-8, byte-by-byte input and a fuzz run.
local ws = require "echokit.websocket"
local fuzz = require "fuzz"

local KEY = "\55\250\33\61"

-- A client frame (masked).
local function cf(op, payload, fin)
  return ws.frame(op, payload, fin, KEY)
end

local function parse(input, step, opts) return fuzz.feed(ws.parser(opts), input, step) end

describe("echokit.websocket parser", function()
  it("unmasks and returns messages of 7-, 16- and 64-bit lengths", function()
    for _, n in ipairs({ 0, 1, 125, 126, 127, 65535, 65536, 70000 }) do
      local data = ("%d:"):format(n) .. ("abcdefg"):rep(n // 7 + 1)
      data = data:sub(1, n)
      local frame = cf(2, data)
      local hdr = n < 126 and 6 or n < 65536 and 8 or 14
      assert.equal(hdr + n, #frame)
      for _, step in ipairs({ #frame, 1, 3, 1000 }) do
        local evs, err = parse(frame, step)
        assert.is_nil(err)
        assert.same({ { type = "binary", data = data } }, evs)
      end
    end
  end)

  it("joins fragments and passes control frames between them", function()
    local input = cf(1, "frag", false) .. cf(9, "are you there") .. cf(0, "men", false) ..
                  cf(10, "pong") .. cf(0, "ted ✓", true) .. cf(8, "\3\232bye")
    for step = 1, 12 do
      local evs, err = parse(input, step)
      assert.is_nil(err)
      assert.same({
        { type = "ping", data = "are you there" },
        { type = "pong", data = "pong" },
        { type = "text", data = "fragmented ✓" },
        { type = "close", code = 1000, reason = "bye" },
      }, evs)
    end
  end)

  it("reads an empty close frame as a close without a code", function()
    local evs = parse(cf(8, ""))
    assert.same({ { type = "close", reason = "" } }, evs)
  end)

  local bad = {
    { "an unmasked client frame", ws.frame(1, "hi"), 1002 },
    { "opcode 3", cf(3, "x"), 1002 },
    { "opcode 11", cf(11, "x"), 1002 },
    { "a reserved bit", string.char(0x80 | 0x40 | 1) .. cf(1, "x"):sub(2), 1002 },
    { "a continuation without a message", cf(0, "x"), 1002 },
    { "a new message inside a fragmented one", cf(1, "a", false) .. cf(1, "b"), 1002 },
    { "a fragmented ping", cf(9, "x", false), 1002 },
    { "a ping over 125 bytes", cf(9, ("x"):rep(126)), 1002 },
    { "a 1-byte close payload", cf(8, "\3"), 1002 },
    { "close code 1005", cf(8, "\3\237"), 1002 },
    { "close code 999", cf(8, "\3\231"), 1002 },
    { "close code 2000", cf(8, "\7\208"), 1002 },
    { "a close reason that is not UTF-8", cf(8, "\3\232\255"), 1007 },
    { "a 64-bit length with the top bit set", string.char(0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1) .. KEY, 1002 },
    { "text that is not UTF-8", cf(1, "ab\255"), 1007 },
    { "UTF-16 surrogates in text", cf(1, "\237\160\128"), 1007 },
    { "an overlong encoding in text", cf(1, "\192\175"), 1007 },
    { "a code point past U+10FFFF", cf(1, "\244\144\128\128"), 1007 },
    { "UTF-8 cut at the end of a fragmented text", cf(1, "\226\130", false) .. cf(0, "", true), 1007 },
    { "a message over max_message", cf(2, ("x"):rep(1025)), 1009 },
    { "fragments over max_message", cf(2, ("x"):rep(600), false) .. cf(0, ("x"):rep(600)), 1009 },
  }
  for _, case in ipairs(bad) do
    it("fails " .. case[1] .. " with close code " .. case[3], function()
      for _, step in ipairs({ #case[2], 1 }) do
        local _, err, code = parse(case[2], step, { max_message = 1024 })
        assert.is_string(err)
        assert.equal(case[3], code)
      end
    end)
  end

  it("accepts UTF-8 split across fragments and the largest code points", function()
    local evs, err = parse(cf(1, "\226\130", false) .. cf(0, "\172 \244\143\191\191"))
    assert.is_nil(err)
    assert.equal("€ \u{10FFFF}", evs[1].data)
  end)

  it("refuses to wait for a frame it already knows is too big", function()
    -- only the header of a 1 GiB frame: the error comes before any payload
    local hdr = string.char(0x82, 0xFF) .. string.pack(">I8", 1 << 30) .. KEY
    local _, err, code = parse(hdr, nil, { max_message = 1024 })
    assert.equal(1009, code, err)
  end)

  it("parses unmasked frames when told they come from a server", function()
    local evs = parse(ws.text("hi") .. ws.ping("p"), 1, { masked = false })
    assert.same({ { type = "text", data = "hi" }, { type = "ping", data = "p" } }, evs)
    local _, _, code = parse(cf(1, "x"), nil, { masked = false })
    assert.equal(1002, code)
  end)

  it("never lets a Lua error escape on random, mutated and truncated input", function()
    local rng = fuzz.rng(6455)
    local base = cf(1, "hello", false) .. cf(9, "p") .. cf(0, " world") .. cf(2, ("z"):rep(300)) ..
                 cf(8, "\3\232ok")
    for i = 1, 3000 do
      local input = fuzz.mutate(rng, base, i)
      local ok, evs, err, code = pcall(parse, input, rng(1, 40), { max_message = 4096 })
      assert(ok, "parser raised on " .. ("%q"):format(input) .. ": " .. tostring(evs))
      if err then
        assert.is_string(err)
        assert(code == 1002 or code == 1007 or code == 1009, "close code " .. tostring(code))
      end
    end
  end)
end)

describe("echokit.websocket writer", function()
  it("writes headers for each length encoding and close frames", function()
    assert.equal("\129\2hi", ws.text("hi"))
    assert.equal("\130\126\0\126", ws.binary(("x"):rep(126)):sub(1, 4))
    assert.equal("\130\127\0\0\0\0\0\1\0\0", ws.binary(("x"):rep(65536)):sub(1, 10))
    assert.equal("\136\4\3\232ok", ws.close_frame(1000, "ok"))
    assert.equal("\136\0", ws.close_frame())
    assert.equal("\1\3abc", ws.frame(1, "abc", false))
  end)

  it("cuts a close reason at a UTF-8 boundary and refuses reserved codes", function()
    local reason = ("a"):rep(122) .. "é"            -- é is 2 bytes: 122 + 2 > 123
    local f = ws.close_frame(1000, reason)
    assert.equal(2 + 2 + 122, #f)
    assert.truthy(utf8.len(f:sub(5)))
    local three = ("€"):rep(50)                     -- 3-byte chars: 41 fit in 123
    assert.equal(4 + 123, #ws.close_frame(1000, three))
    for _, code in ipairs({ 999, 1004, 1005, 1006, 1015, 5000 }) do
      assert.has_error(function() ws.close_frame(code, "x") end)
    end
    assert.equal("\136\2\15\160", ws.close_frame(4000))
  end)

  it("bounds a message of many empty or tiny fragments", function()
    local flood = { cf(1, "", false) }
    for i = 1, 100000 do flood[i + 1] = cf(0, "", false) end
    local evs, err, code = parse(table.concat(flood), nil, { max_message = 1024 * 1024 })
    assert.same({ 0, "too many fragments", 1009 }, { #evs, err, code })
    -- a message in a fair number of fragments still passes
    local parts = { cf(2, "x", false) }
    for i = 1, 1000 do parts[i + 1] = cf(0, "y", i == 1000) end
    evs, err = parse(table.concat(parts), nil, { max_message = 1024 * 1024 })
    assert.is_nil(err)
    assert.equal("x" .. ("y"):rep(1000), evs[1].data)
  end)
end)

describe("echokit.websocket handler", function()
  local fakes = require "fakes"
  -- the handshake's SHA-1 and base64 are echokit.codec's (C): stand-ins that
  -- give a wrong accept key, which these specs do not look at
  local function with_codec(fn)
    local was = package.loaded["echokit.codec"]
    package.loaded["echokit.codec"] = {
      sha1 = function(s) return ("x"):rep(20) end,
      base64 = function(s) return ("A"):rep(28) end,
      unbase64 = function(s) return ("k"):rep(16) end,
    }
    local ok, err = pcall(fn)
    package.loaded["echokit.codec"] = was
    if not ok then error(err, 0) end
  end

  local HANDSHAKE = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" ..
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

  local function echo_handler(loop, o)
    o = o or {}
    o.timer, o.now = loop.timer, loop.now
    o.log = function(level, fmt, ...) loop.logged = (loop.logged or "") .. level .. " " .. fmt:format(...) .. "\n" end
    return ws.handler({ on_message = function(conn, data, kind) conn.ws:send(data, kind) end }, o)
  end

  -- The server's frames in `out` after the 101's head.
  local function frames_out(out)
    local body = out:match("^HTTP/1%.1 101 .-\r\n\r\n(.*)$")
    local p = ws.parser{ masked = false }
    p:feed(body)
    local list = {}
    while true do
      local ev = p:next()
      if not ev then break end
      list[#list + 1] = ev.data
    end
    return list
  end

  it("reads max_frames frames a callback, in order, and none while a write is false", function()
    with_codec(function()
      local loop = fakes.loop()
      local h = echo_handler(loop, { max_frames = 10 })
      local c = fakes.conn{ full = { [16] = true } }   -- the 101, then 15 echoes
      h.on_connect(c)
      local msgs = {}
      for i = 1, 40 do msgs[i] = cf(1, "m" .. i) end
      h.on_data(c, HANDSHAKE .. table.concat(msgs))
      assert.equal(10, #frames_out(c:output()))
      loop:advance(0)
      assert.equal(15, #frames_out(c:output()))
      assert.is_true(c.paused)
      loop:advance(0)
      assert.equal(15, #frames_out(c:output()))
      h.on_drain(c)
      assert.equal(25, #frames_out(c:output()))
      loop:advance(0)
      loop:advance(0)
      local got = frames_out(c:output())
      assert.equal(40, #got)
      for i = 1, 40 do assert.equal("m" .. i, got[i]) end
      assert.is_false(c.paused)
    end)
  end)

  it("answers 408 when the handshake request is not complete within header_timeout", function()
    with_codec(function()
      local loop = fakes.loop()
      local h = echo_handler(loop, { header_timeout = 30 })
      local c = fakes.conn()
      h.on_connect(c)
      for i = 1, 29 do
        h.on_data(c, HANDSHAKE:sub(i, i))
        loop:advance(1)
      end
      assert.equal("", c:output())
      loop:advance(1)
      assert.truthy(c:output():find("^HTTP/1%.1 408 Request Timeout\r\n"), c:output())
      assert.is_true(c.closed)
      assert.truthy(loop.logged:find("handshake request not complete after 30s", 1, true))
      h.on_close(c)
      -- completed in time, the session has no such limit
      local d = fakes.conn{ id = 2 }
      h.on_connect(d)
      loop:advance(29)
      h.on_data(d, HANDSHAKE)
      loop:advance(1000)
      assert.is_false(d.closed)
      h.on_data(d, cf(1, "late"))
      assert.same({ "late" }, frames_out(d:output()))
    end)
  end)
end)
