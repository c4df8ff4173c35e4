-- echokit.http without the binary: the request parser on whole, split and
-- byte-by-byte input, its limits and error statuses, the response writer, and
-- a fuzz run in which no Lua error may escape.
local http = require "echokit.http"
local fuzz = require "fuzz"

-- Feeds `input` in pieces of `step` bytes (or all at once); returns the
-- requests parsed and the error (err, status) if one ended the stream.
local function parse(input, step, opts)
  local p = http.parser(opts)
  local reqs = {}
  local function drain()
    while true do
      local r, err, status = p:next()
      if not r then return err, status end
      reqs[#reqs + 1] = r
    end
  end
  step = step or #input
  if step < 1 then step = 1 end
  for i = 1, #input, step do
    p:feed(input:sub(i, i + step - 1))
    local err, status = drain()
    if err then return reqs, err, status end
  end
  local _, err, status = p:finish()
  return reqs, err, status
end

local PIPELINE = table.concat{
  "GET /a?x=1&y=%20z HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Twice: 1\r\nx-twice: 2\r\n\r\n",
  "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
  "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: yes\r\n\r\n",
  "PUT /c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
  "GET /old HTTP/1.0\r\n\r\n",
  "GET /ka HTTP/1.0\nConnection: keep-alive\n\n",
}

local function check_pipeline(reqs, err)
  assert.is_nil(err)
  assert.equal(5, #reqs)
  local a, b, c, d, e = table.unpack(reqs)
  assert.same({ "GET", "/a", "x=1&y=%20z", "1.1", true, "" },
              { a.method, a.path, a.query, a.version, a.keep_alive, a.body })
  assert.equal("1, 2", a.headers["x-twice"])
  assert.same({ "X-Twice", "1" }, a.header_list[3])
  assert.same({ "POST", "hello world", true }, { b.method, b.body, b.chunked })
  assert.same({ "PUT", "abc", false }, { c.method, c.body, c.keep_alive })
  assert.same({ "/old", "1.0", false }, { d.path, d.version, d.keep_alive })
  assert.same({ "/ka", true }, { e.path, e.keep_alive })
end

describe("echokit.http parser", function()
  it("parses pipelined requests given at once", function()
    check_pipeline(parse(PIPELINE))
  end)

  it("parses the same requests split at every chunk size from 1 to 64", function()
    for step = 1, 64 do check_pipeline(parse(PIPELINE, step)) end
  end)

  it("parses them split at every single position", function()
    for cut = 1, #PIPELINE - 1 do
      local p = http.parser()
      local reqs = {}
      p:feed(PIPELINE:sub(1, cut))
      for r in function() return p:next() end do reqs[#reqs + 1] = r end
      p:feed(PIPELINE:sub(cut + 1))
      for r in function() return p:next() end do reqs[#reqs + 1] = r end
      check_pipeline(reqs, select(2, p:finish()))
    end
  end)

  it("decodes query strings", function()
    assert.same({ x = "1", y = " z", ["a b"] = "c+d" }, http.query("x=1&y=%20z&a+b=c%2Bd"))
  end)

  it("calls on_headers before the body has arrived, flagging 100-continue", function()
    local seen
    local p = http.parser{ on_headers = function(r) seen = r end }
    p:feed("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n")
    assert.is_nil(p:next())
    assert.is_true(seen.expect_continue)
    p:feed("body")
    assert.equal("body", p:next().body)
  end)

  it("closes after an HTTP/1.0 request framed with Transfer-Encoding", function()
    local reqs, err = parse("POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                            "1\r\nx\r\n0\r\n\r\n")
    assert.is_nil(err)
    assert.same({ "x", false }, { reqs[1].body, reqs[1].keep_alive })
  end)

  it("ignores empty lines before a request line", function()
    local reqs, err = parse("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert.is_nil(err)
    assert.equal(1, #reqs)
  end)

  local bad = {
    { "bad request line", "GARBAGE\r\n\r\n", 400 },
    { "two spaces", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
    { "lower-case version", "GET / http/1.1\r\nHost: h\r\n\r\n", 400 },
    { "HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505 },
    { "bad method", "G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
    { "control char in target", "GET /\1 HTTP/1.1\r\nHost: h\r\n\r\n", 400 },
    { "no Host in 1.1", "GET / HTTP/1.1\r\n\r\n", 400 },
    { "header without colon", "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", 400 },
    { "space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400 },
    { "obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400 },
    { "bare CR", "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400 },
    { "NUL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n", 400 },
    { "CL not a number", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12a\r\n\r\n", 400 },
    { "negative CL", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400 },
    { "conflicting CL", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400 },
    { "CL and TE", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
    { "unknown TE", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501 },
    { "bad chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400 },
    { "empty chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", 400 },
    { "chunk without CRLF", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", 400 },
    { "huge chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 413 },
    { "CL over the limit", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048577\r\n\r\n", 413 },
    { "unknown expectation", "POST / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx", 417 },
    { "truncated head", "GET / HTTP/1.1\r\nHost: h\r\n", 400 },
    { "truncated request line", "GET / HT", 400 },
    { "truncated body", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc", 400 },
    { "truncated chunked body", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 400 },
    { "oversized header", "GET / HTTP/1.1\r\nHost: h\r\nX: " .. ("a"):rep(9000) .. "\r\n\r\n", 431 },
    { "oversized request line", "GET /" .. ("a"):rep(9000) .. " HTTP/1.1\r\n\r\n", 431 },
    { "endless header line", "GET / HTTP/1.1\r\nX: " .. ("a"):rep(9000), 431 },
    { "binary without a line end", "\22\3\1\0\165\1\0\0", 400 },
    { "a method then a control char", "GET\1", 400 },
    { "too many headers", "GET / HTTP/1.1\r\nHost: h\r\n" .. ("X: y\r\n"):rep(101) .. "\r\n", 431 },
    { "two Host lines", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400 },
    { "bare LF after a chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n", 400 },
    { "bare CR in a chunk extension", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a\rb\r\nx\r\n0\r\n\r\n", 400 },
    { "bare LF after chunk data", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n", 400 },
    { "bare LF ending the trailers", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n", 400 },
  }
  for _, case in ipairs(bad) do
    it("answers " .. case[1] .. " with " .. case[3] .. " (whole and byte by byte)", function()
      for _, step in ipairs({ #case[2], 1, 7 }) do
        local reqs, err, status = parse(case[2], step)
        assert.equal(0, #reqs)
        assert.is_string(err)
        assert.equal(case[3], status)
      end
    end)
  end

  it("keeps answering the same error after one", function()
    local p = http.parser()
    p:feed("BAD\r\n\r\n")
    local _, e1, s1 = p:next()
    p:feed("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    local r, e2, s2 = p:next()
    assert.is_nil(r)
    assert.same({ e1, s1 }, { e2, s2 })
  end)

  it("honours max_body on chunked bodies and max_header", function()
    local _, _, st = parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                           "8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", 3, { max_body = 10 })
    assert.equal(413, st)
    local reqs, err = parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789",
                            nil, { max_body = 10 })
    assert.is_nil(err)
    assert.equal("0123456789", reqs[1].body)
    local _, _, st2 = parse("GET / HTTP/1.1\r\nHost: hhhhhhhhhh\r\n\r\n", 1, { max_header = 20 })
    assert.equal(431, st2)
  end)

  it("never lets a Lua error escape on random, mutated and truncated input", function()
    local rng = fuzz.rng(20261127)
    for i = 1, 3000 do
      local input = fuzz.mutate(rng, PIPELINE, i)
      local step = rng(1, 40)
      local ok, reqs, err, status = pcall(parse, input, step, { max_body = 4096, max_header = 512 })
      assert(ok, "parser raised on input " .. ("%q"):format(input) .. ": " .. tostring(reqs))
      if err then
        assert.is_string(err)
        assert.is_number(status)
        assert(status >= 400 and status < 600, "status " .. tostring(status))
      end
    end
  end)
end)

describe("echokit.http response writer", function()
  it("writes status, headers in order, Content-Length and body", function()
    assert.equal("HTTP/1.1 404 Not Found\r\nA: 1\r\nB: 2\r\nContent-Length: 4\r\n\r\nnope",
      http.response(404, { { "A", "1" }, { "B", 2 } }, "nope"))
    assert.equal("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
      http.response(200, nil, nil, { close = true }))
  end)

  it("leaves the body out for HEAD and 204, and writes chunks", function()
    assert.equal("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
      http.response(200, {}, "hello", { head = true }))
    assert.equal("HTTP/1.1 204 No Content\r\n\r\n", http.response(204, {}, ""))
    assert.equal("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
      http.response(200, {}, nil, { chunked = true }))
    assert.equal("a\r\n0123456789\r\n", http.chunk("0123456789"))
    assert.equal("0\r\n\r\n", http.chunk(""))
  end)

  it("refuses CR/LF in headers (response splitting)", function()
    assert.has_error(function() http.response(200, { X = "a\r\nSet-Cookie: x" }) end)
    assert.has_error(function() http.response(99, {}) end)
  end)

  it("parses back what it writes, as a request body", function()
    local body = ("x"):rep(1000)
    local p = http.parser()
    p:feed("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" ..
           http.chunk(body:sub(1, 300)) .. http.chunk(body:sub(301)) .. http.chunk(""))
    assert.equal(body, p:next().body)
  end)

  it("bounds the framing of a chunked body, not only its data", function()
    local head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    -- one byte per chunk: the body is small, the framing is not
    local reqs, err, st = parse(head .. ("1\r\nx\r\n"):rep(20000) .. "0\r\n\r\n")
    assert.same({ 0, "too much chunked framing", 413 }, { #reqs, err, st })
    -- long extensions on every chunk count too
    local ext = "1;" .. ("e"):rep(1000) .. "\r\nx\r\n"
    reqs, err, st = parse(head .. ext:rep(100) .. "0\r\n\r\n")
    assert.same({ 0, "too much chunked framing", 413 }, { #reqs, err, st })
    -- a body in chunks of a sane size passes, up to max_body
    local body = ("0123456789abcdef"):rep(65536)
    local parts = {}
    for i = 1, #body, 4096 do parts[#parts + 1] = http.chunk(body:sub(i, i + 4095)) end
    reqs, err = parse(head .. table.concat(parts) .. "0\r\n\r\n", nil, { max_body = #body })
    assert.is_nil(err)
    assert.equal(body, reqs[1].body)
  end)

  it("trims header values in linear time", function()
    -- the same header twice: inner blanks (quadratic for a .- match) and
    -- letters; the blanks may cost a few times the letters, not hundreds
    local function cost(inner)
      local req = "GET / HTTP/1.1\r\nHost: h\r\nX: a" .. inner .. "b \t \r\n\r\n"
      local t0 = os.clock()
      for _ = 1, 5 do
        local reqs, err = parse(req, nil, { max_header = 64 * 1024 })
        assert.is_nil(err)
        assert.equal("a" .. inner .. "b", reqs[1].headers.x)
      end
      return os.clock() - t0
    end
    local n = 16 * 1024
    local base = cost(("c"):rep(n))
    local blanks = cost((" \t"):rep(n // 2))
    assert.is_true(blanks < 20 * base + 0.05,
                   ("blanks took %.3fs, letters %.3fs"):format(blanks, base))
    assert.equal("", http.trim(" \t "))
    assert.equal("a b", http.trim(" a b\t"))
  end)
end)

describe("echokit.http handler", function()
  local fakes = require "fakes"

  -- A handler on a fake loop answering "<path>" for every request; `o` adds options.
  local function handler(loop, o)
    o = o or {}
    o.timer, o.now = loop.timer, loop.now
    o.log = function(level, fmt, ...) loop.logged = (loop.logged or "") .. level .. " " .. fmt:format(...) .. "\n" end
    return http.handler(function(req) return 200, { { "X", "y" } }, req.path end, o)
  end

  -- The statuses of the responses in `out` (the bodies here never hold "HTTP/").
  local function responses(out)
    local list = {}
    for status in out:gmatch("HTTP/1%.1 (%d+) ") do list[#list + 1] = tonumber(status) end
    return list
  end

  local function get(path, extra) return "GET " .. path .. " HTTP/1.1\r\nHost: x\r\n" .. (extra or "") .. "\r\n" end

  it("passes max_framing to its parser", function()
    local loop = fakes.loop()
    local h = handler(loop, { max_framing = 16 })
    local c = fakes.conn()
    h.on_connect(c)
    h.on_data(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                 ("1;ext=aaaa\r\nz\r\n"):rep(4) .. "0\r\n\r\n")
    assert.truthy(c:output():find("^HTTP/1%.1 413 "), c:output())
    assert.is_true(c.closed)
  end)

  it("answers 408 and closes when a head is not complete within header_timeout", function()
    local loop = fakes.loop()
    local h = handler(loop, { header_timeout = 30 })
    local c = fakes.conn()
    h.on_connect(c)
    h.on_data(c, "GET / HTTP/1.1\r\nHost")
    for _ = 1, 29 do
      loop:advance(1)
      h.on_data(c, "x")             -- a byte a second: never idle
    end
    assert.equal("", c:output())
    loop:advance(1)
    assert.truthy(c:output():find("^HTTP/1%.1 408 Request Timeout\r\n"), c:output())
    assert.truthy(c:output():find("\r\nConnection: close\r\n", 1, true), c:output())
    assert.is_true(c.closed)
    assert.truthy(loop.logged:find("^info %[conn 1 fake%] request head not complete after 30s"), loop.logged)
    h.on_close(c)
    loop:advance(10)                -- the log's quiet interval ends
    assert.equal(0, loop:pending())
    -- header_timeout = 0: no clock at all
    local created = loop.created
    local h0 = handler(loop, { header_timeout = 0 })
    local d = fakes.conn{ id = 2 }
    h0.on_connect(d)
    h0.on_data(d, "GET / HTTP/1.1\r\n")
    loop:advance(1e6)
    assert.equal("", d:output())
    assert.equal(created, loop.created)
  end)

  it("times the head from the connection's start and from each request's first byte", function()
    local loop = fakes.loop()
    local h = handler(loop, { header_timeout = 30 })
    -- nothing sent at all: 408 after 30 s
    local idle = fakes.conn{ id = 1 }
    h.on_connect(idle)
    loop:advance(30)
    assert.truthy(idle:output():find("^HTTP/1%.1 408 "))
    -- a complete head in time, a slow body, an idle keep-alive gap and a
    -- second request whose head trickles: only the last one is timed out
    local c = fakes.conn{ id = 2 }
    h.on_connect(c)
    loop:advance(20)
    h.on_data(c, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
    loop:advance(40)
    h.on_data(c, "abc")
    assert.same({ 200 }, responses(c:output()))
    loop:advance(100)               -- keep-alive: nothing buffered, no clock
    assert.is_false(c.closed)
    h.on_data(c, "GET /b HTTP/1.1\r\n")
    loop:advance(29)
    h.on_data(c, "Host: x\r\n")
    assert.is_false(c.closed)
    loop:advance(1)
    assert.same({ 200, 408 }, responses(c:output()))
    assert.is_true(c.closed)
    -- blank lines between requests do not start the clock
    local b = fakes.conn{ id = 3 }
    h.on_connect(b)
    h.on_data(b, get("/c") .. "\r\n")
    loop:advance(100)
    assert.same({ 200 }, responses(b:output()))
    assert.is_false(b.closed)
  end)

  it("answers a pipeline max_answers at a time, in order, and waits for on_drain on false", function()
    local loop = fakes.loop()
    local h = handler(loop, { max_answers = 10 })
    local c = fakes.conn{ full = { [25] = true } }
    h.on_connect(c)
    local reqs = {}
    for i = 1, 40 do reqs[i] = get("/" .. i) end
    h.on_data(c, table.concat(reqs))
    assert.equal(10, #responses(c:output()))
    loop:advance(0)
    assert.equal(20, #responses(c:output()))
    loop:advance(0)
    assert.equal(25, #responses(c:output()))
    assert.is_true(c.paused)
    loop:advance(0)
    assert.equal(25, #responses(c:output()))
    -- the peer half-closes meanwhile: the rest is answered first, then the close
    h.on_eof(c)
    assert.is_false(c.closed)
    h.on_drain(c)
    assert.equal(35, #responses(c:output()))
    loop:advance(0)
    assert.equal(40, #responses(c:output()))
    assert.is_true(c.closed)
    local paths = {}
    for p in c:output():gmatch("\r\n\r\n/(%d+)") do paths[#paths + 1] = tonumber(p) end
    for i = 1, 40 do assert.equal(i, paths[i]) end
  end)
end)
