-- echokit.match without the binary: matchers compiled from specs, framers
-- fed whole, split and pipelined input, and CIDR ranges.
local match = require "echokit.match"
local resp = require "echokit.resp"
local ws = require "echokit.websocket"

-- Feeds chunks to a framer; returns the messages as { bytes, msg } (msg nil
-- for bytes passed on unframed) and what is still held. Pieces passed on
-- early (msg nil) are joined to the message they end with.
local function frame(m, direction, chunks)
  local f = m:framer(direction)
  local out, early = {}, ""
  for _, c in ipairs(chunks) do
    local raw, n = f:push(c)
    local start = 1
    for i = 1, n do
      local piece = raw:sub(start, f.stops[i])
      if f.msgs[i] == nil then
        early = early .. piece
      else
        out[#out + 1] = { early .. piece, f.msgs[i] }
        early = ""
      end
      start = f.stops[i] + 1
    end
  end
  if early ~= "" then out[#out + 1] = { early } end
  return out, f:rest()
end

-- Every way of cutting s in two, and s byte by byte.
local function cuts(s)
  local out = { { s } }
  for i = 1, #s - 1 do out[#out + 1] = { s:sub(1, i), s:sub(i + 1) } end
  local bytes = {}
  for i = 1, #s do bytes[i] = s:sub(i, i) end
  out[#out + 1] = bytes
  return out
end

local function hits(m, msgs)
  local out = {}
  for _, e in ipairs(msgs) do out[#out + 1] = m:test({}, e[1], nil, e[2]) end
  return out
end

describe("echokit.match", function()
  local GET_API = "GET /api/x HTTP/1.1\r\nHost: a\r\nX-Tenant: blue\r\n\r\n"
  local POST_STATIC = "POST /static/y HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
  local GET_STATIC = "GET /static/z HTTP/1.1\r\nHost: a\r\n\r\n"

  it("http: method, path glob and header glob; whole, split at every byte, pipelined", function()
    local m = assert(match.compile { http = { method = "GET", path = "/api/*",
                                              header = { ["x-TENANT"] = "b*" } } })
    local stream = GET_API .. POST_STATIC .. GET_STATIC .. GET_API
    for _, chunks in ipairs(cuts(stream)) do
      local msgs, rest = frame(m, "upstream", chunks)
      assert.equal("", rest)
      assert.equal(4, #msgs)
      assert.same({ GET_API, POST_STATIC, GET_STATIC, GET_API },
                  { msgs[1][1], msgs[2][1], msgs[3][1], msgs[4][1] })
      assert.same({ true, false, false, true }, hits(m, msgs))
    end
  end)

  it("http: a partial request is held until it is whole; a header absent does not match", function()
    local m = assert(match.compile { http = { header = { ["X-Tenant"] = "*" } } })
    local f = m:framer("upstream")
    local raw, n = f:push(GET_STATIC:sub(1, 10))
    assert.equal(0, n)
    raw, n = f:push(GET_STATIC:sub(11))
    assert.equal(1, n)
    assert.equal(GET_STATIC, raw)
    assert.equal(#GET_STATIC, f.stops[1])
    assert.is_false(m:test({}, raw, nil, f.msgs[1]))
  end)

  it("http: a request whose head cannot match passes on as its body arrives; one that can is held", function()
    local m = assert(match.compile { http = { method = "PUT" } })
    local f = m:framer("upstream")
    local head = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    local raw, n = f:push(head)
    assert.equal(1, n)
    assert.equal(#head, f.stops[1])
    assert.is_nil(f.msgs[1])
    raw, n = f:push("01234")
    assert.same({ 1, 5 }, { n, f.stops[1] })
    raw, n = f:push("56789" .. GET_STATIC)
    assert.same({ 2, 5, 5 + #GET_STATIC }, { n, f.stops[1], f.stops[2] })
    assert.equal("POST", f.msgs[1].method)
    assert.is_false(m:test({}, raw, nil, f.msgs[1]))
    -- a PUT can match: held until whole
    local put = "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"
    raw, n = f:push(put)
    assert.equal(0, n)
    raw, n = f:push("abc")
    assert.equal(1, n)
    assert.equal(put .. "abc", raw)
    assert.is_true(m:test({}, raw, nil, f.msgs[1]))
  end)

  it("http: whole requests cut without the parser frame and match as the parser does", function()
    local m = assert(match.compile { http = { method = "GET", path = "/api/*" } })
    local streams = {
      GET_API .. POST_STATIC .. GET_STATIC,
      "GET /api/x?q=1 HTTP/1.0\r\n\r\nGET /api/y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
      "GET /api/z HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
      "POST /api/x HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\n\r\nhi" .. GET_API,
      "GET /api/x HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\n\r\n",
      -- left to the parser: chunked, duplicate lengths, folding, upgrade
      "POST /api/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n" .. GET_API,
      "GET /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
      "GET /api/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nxx",
    }
    local function view(msgs)
      local out = {}
      for i, e in ipairs(msgs) do
        local r = e[2]
        out[i] = { e[1], r and r.method, r and r.path, r and r.keep_alive, m:test({}, e[1], nil, r) }
      end
      return out
    end
    for i, st in ipairs(streams) do
      local whole = frame(m, "upstream", { st })
      -- the first five go the quick way, the others to the parser
      assert.equal(i <= 5, whole[1][2].quick == true, "stream " .. i)
      local bytes = {}
      for i = 1, #st do bytes[i] = st:sub(i, i) end
      local split = frame(m, "upstream", bytes)
      assert.same(view(split), view(whole))
    end
  end)

  it("http: a chunk of whole requests comes back as itself (no copy)", function()
    local m = assert(match.compile { http = { path = "/nothing" } })
    local f = m:framer("upstream")
    local chunk = GET_STATIC .. GET_STATIC
    local raw = f:push(chunk)
    assert.equal(chunk, raw)
  end)

  it("http: garbage or an upgrade makes the rest of the stream pass unframed", function()
    local m = assert(match.compile { http = {} })
    local up = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    local msgs = frame(m, "upstream", { up .. "\129\128abcd", GET_STATIC })
    assert.equal(up, msgs[1][1])
    assert.is_table(msgs[1][2])
    for i = 2, #msgs do assert.is_nil(msgs[i][2]) end
    msgs = frame(m, "upstream", { "\22\3\1 not http", GET_STATIC })
    for _, e in ipairs(msgs) do assert.is_nil(e[2]) end
  end)

  it("resp: command (any case) and key glob; inline and multibulk, split and pipelined", function()
    local m = assert(match.compile { resp = { command = "get", key = "user:*" } })
    local a = resp.command("GET", "user:1")
    local b = resp.command("SET", "user:1", "v")
    local c = "get user:2\r\n"
    local d = resp.command("GET", "other")
    for _, chunks in ipairs(cuts(a .. b .. c .. d)) do
      local msgs, rest = frame(m, "upstream", chunks)
      assert.equal("", rest)
      assert.same({ a, b, c, d }, { msgs[1][1], msgs[2][1], msgs[3][1], msgs[4][1] })
      assert.same({ true, false, true, false }, hits(m, msgs))
    end
  end)

  it("websocket: the handshake passes, then frames match by opcode", function()
    local m = assert(match.compile { websocket = { opcode = "text" } })
    local hs = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    local t, b, p = ws.text("hi"), ws.binary("\0\1"), ws.ping("x")
    for _, chunks in ipairs(cuts(hs .. t .. b .. p .. t)) do
      local msgs, rest = frame(m, "downstream", chunks)
      assert.equal("", rest)
      assert.same({ hs, t, b, p, t }, { msgs[1][1], msgs[2][1], msgs[3][1], msgs[4][1], msgs[5][1] })
      assert.same({ false, true, false, false, true }, hits(m, msgs))
    end
  end)

  it("lines: a line over the bound makes the stream pass unframed, whole or split", function()
    local m = assert(match.compile { bytes = "x" })
    local long = string.rep("x", match.MAX_LINE + 1) .. "\n"
    for _, chunks in ipairs { { long .. "x\n" }, { long:sub(1, 100), long:sub(101) .. "x\n" } } do
      local msgs = frame(m, "upstream", chunks)
      local all = {}
      for _, e in ipairs(msgs) do
        assert.is_nil(e[2])
        all[#all + 1] = e[1]
      end
      assert.equal(long .. "x\n", table.concat(all))
    end
  end)

  it("bytes: a Lua pattern on each line", function()
    local m = assert(match.compile { bytes = "^PUB%s" })
    for _, chunks in ipairs(cuts("SUB a\nPUB a 1\r\nPING\n")) do
      local msgs, rest = frame(m, "upstream", chunks)
      assert.equal("", rest)
      assert.same({ "SUB a\n", "PUB a 1\r\n", "PING\n" }, { msgs[1][1], msgs[2][1], msgs[3][1] })
      assert.same({ false, true, false }, hits(m, msgs))
    end
  end)

  it("bytes: whole-line reads and partial ones mixed keep the boundaries", function()
    local m = assert(match.compile { bytes = "^b" })
    local msgs, rest = frame(m, "upstream", { "a\n", "b", "\n", "c\nb", "x\n", "bb\n", "b" })
    assert.equal("b", rest)
    local bytes = {}
    for i, e in ipairs(msgs) do bytes[i] = e[1] end
    assert.same({ "a\n", "b\n", "c\n", "bx\n", "bb\n" }, bytes)
    assert.same({ false, true, false, true, true }, hits(m, msgs))
  end)

  it("bytes: a read miss() passes holds no line the pattern matches; a read with one is framed", function()
    local reads = { "NEVER\n", "a NEVER\n", "x\nNEVER y\n", "x\r\n", "abc\n", "a\nb\nc\n",
                    " x\n", "x \n", "NEVER", "\n" }
    local pats = { "^NEVER", "NEVER", "^x$", "x$", "%f[%s]x", "^%s", "\r", "c\n", "^a.*c" }
    for _, pat in ipairs(pats) do
      local m = assert(match.compile { bytes = pat })
      for _, r in ipairs(reads) do
        local f = m:framer("upstream")
        local missed = f.miss ~= nil and f.miss(f, r)
        local any = false
        for _, e in ipairs(frame(m, "upstream", { r })) do
          if e[2] ~= nil and m:test({}, e[1], nil, e[2]) then any = true end
        end
        assert(not (missed and any), string.format("%q missed in %q, which has a match", pat, r))
      end
    end
    -- the reads it can prove: whole lines, nothing held, no $ or %f in the pattern
    local m = assert(match.compile { bytes = "^NEVER" })
    local f = m:framer("upstream")
    assert.is_true(f.miss(f, "a NEVER\nb\n"))
    assert.is_false(f.miss(f, "b\nNEVER\n"))
    assert.is_false(f.miss(f, "NEV"))
    assert.is_nil(assert(match.compile { bytes = "x$" }):framer("upstream").miss)
    assert.is_nil(assert(match.compile { bytes = "%f[%w]x" }):framer("upstream").miss)
    assert.is_nil(assert(match.compile { bytes = "x", fn = function() return true end })
                    :framer("upstream").miss)
    -- bytes held from a partial line: the next read is framed, not missed
    local raw, n = f:push("NEV")
    assert.equal(0, n)
    assert.is_false(f.miss(f, "ER\n"))
    raw, n = f:push("ER\n")
    assert.equal(1, n)
    assert.equal("NEVER\n", raw)
    assert.is_true(m:test({}, raw, nil, f.msgs[1]))
  end)

  it("a function sees each chunk; with a protocol it sees the message too", function()
    local seen = {}
    local m = assert(match.compile(function(_, data) seen[#seen + 1] = data; return data == "b" end))
    assert.equal("chunk", m.kind)
    assert.is_nil(m:framer("upstream"))
    assert.is_false(m:test({}, "a"))
    assert.is_true(m:test({}, "b"))
    local both = assert(match.compile { http = { method = "GET" },
                                        fn = function(_, raw, _, req) return req.path == "/a" and #raw > 0 end })
    local msgs = frame(both, "upstream", { "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n" })
    assert.same({ true, false }, hits(both, msgs))
  end)

  it("fuzz: every framer gives back exactly the bytes it was fed, however cut", function()
    local fuzz = require "fuzz"
    local rng = fuzz.rng(16)
    local specs = {
      { { http = { path = "/a*" } }, "upstream",
        "GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\n" ..
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" },
      { { resp = { command = "GET" } }, "upstream",
        resp.command("GET", "k") .. "PING\r\n" .. resp.command("SET", "k", "v") },
      { { websocket = { opcode = "text" } }, "downstream",
        "HTTP/1.1 101 x\r\n\r\n" .. ws.text("hi") .. ws.ping("p") .. ws.binary("b") },
      { { bytes = "^a" }, "upstream", "abc\nxyz\r\na\n" },
    }
    for _, sp in ipairs(specs) do
      local m = assert(match.compile(sp[1]))
      for i = 1, 300 do
        local input = i % 3 == 0 and fuzz.bytes(rng, rng(0, 200)) or fuzz.mutate(rng, sp[3], i)
        local chunks, pos = {}, 1
        while pos <= #input do
          local n = rng(1, 40)
          chunks[#chunks + 1] = input:sub(pos, pos + n - 1)
          pos = pos + n
        end
        local msgs, rest = frame(m, sp[2], chunks)
        local out = {}
        for j, e in ipairs(msgs) do out[j] = e[1] end
        assert.equal(input, table.concat(out) .. rest, "input " .. i .. " of " .. next(sp[1]))
        hits(m, msgs)   -- a test of any message never raises
      end
    end
  end)

  it("malformed matchers are refused with a sentence naming the field", function()
    local bad = {
      { 42, "match must be a function or a table" },
      { {}, "give one of" },
      { { http = {}, resp = {} }, "give one of" },
      { { htp = {} }, "unknown key 'htp'" },
      { { http = { verb = "GET" } }, "match.http: unknown key 'verb'" },
      { { http = { path = 5 } }, "match.http.path must be a string" },
      { { http = { path = string.rep("*", 2000) } }, "pattern too long" },
      { { http = { header = "x" } }, "match.http.header must be a table" },
      { { resp = { command = {} } }, "match.resp.command must be a string" },
      { { websocket = { opcode = "txt" } }, "match.websocket.opcode must be" },
      { { bytes = "(" }, "match.bytes: " },
      { { bytes = "%" }, "match.bytes: " },
      { { http = {}, fn = "x" }, "match.fn must be a function" },
    }
    for _, case in ipairs(bad) do
      local m, err = match.compile(case[1])
      assert.is_nil(m)
      assert.truthy(err:find(case[2], 1, true), err)
    end
  end)

  it("cidr: IPv4 and IPv6 ranges, single addresses, IPv4-mapped clients", function()
    local v4 = assert(match.cidr("127.0.0.2/32"))
    assert.is_true(v4("127.0.0.2"))
    assert.is_false(v4("127.0.0.1"))
    assert.is_true(v4("::ffff:127.0.0.2"))
    assert.is_false(v4("::1"))
    local net = assert(match.cidr("10.1.0.0/15"))
    assert.is_true(net("10.0.255.1"))
    assert.is_true(net("10.1.2.3"))
    assert.is_false(net("10.2.0.0"))
    local v6 = assert(match.cidr("fd00:ab::/32"))
    assert.is_true(v6("fd00:ab:1::9"))
    assert.is_false(v6("fd00:ac::1"))
    assert.is_false(v6("10.0.0.1"))
    assert.is_true(assert(match.cidr("::1"))("0:0:0:0:0:0:0:1"))
    assert.is_true(assert(match.cidr("0.0.0.0/0"))("192.0.2.7"))
    assert.is_false(assert(match.cidr("::/0"))(nil))
    for _, bad in ipairs { "127.0.0.1/33", "::1/129", "300.0.0.1", "1::2::3", "host", "10.0.0.0/x" } do
      local f, err = match.cidr(bad)
      assert.is_nil(f)
      assert.truthy(err:find(bad, 1, true), err)
    end
  end)
end)
