-- The built-in `http` handler (handlers/http_echo.lua on echokit.http) against
-- curl and wrk, and raw sockets for pipelining and malformed requests. Every
-- client run is bounded in time (curl --max-time, wrk -d, peers.run timeouts).
local t = require "echokit_test"
local peers = require "peers"
-- lua-cjson (Debian), strict: NaN, Infinity and hex numbers are not JSON
local json = require("cjson").new()
json.decode_invalid_numbers(false)
local socket = require "socket"
local slow = require "slow_peers"

local function url(srv, path) return ("http://127.0.0.1:%d%s"):format(srv:port(), path) end

local function curl(args, timeout)
  local argv = { "curl", "--silent", "--show-error", "--max-time", tostring(t.T(timeout or 10)) }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return peers.run(argv, (timeout or 10) + 5)
end

-- Reads one HTTP response from a luasocket client:
-- { status =, headers = {lower-case = value}, body = }. Fails on timeout or early close.
local function read_response(c, timeout, what)
  c:settimeout(t.T(timeout or 5))
  local line, err = c:receive("*l")
  assert(line, (what or "response") .. ": no status line: " .. tostring(err))
  local status = tonumber(line:match("^HTTP/1%.1 (%d%d%d) "))
  assert(status, "bad status line: " .. line)
  local headers = {}
  while true do
    local h, herr = c:receive("*l")
    assert(h, "headers cut short: " .. tostring(herr))
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    assert(k, "bad header line: " .. h)
    headers[k:lower()] = v
  end
  local n = tonumber(headers["content-length"] or "0")
  local body = n > 0 and t.recv_n(c, n) or ""
  return { status = status, headers = headers, body = body }
end

local function text(n, seed)
  local parts, x = {}, seed or 1
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    parts[i] = string.char(97 + x % 26)
  end
  return table.concat(parts)
end

describe("http handler", function()
  after_each(peers.teardown)

  it("is listed, with the other protocol handlers, under the names users type", function()
    local r = t.run{ handler = "no_such_handler" }
    assert.equal(2, r.code)
    local list = r.stderr:match("built%-in: ([^;]+);")
    assert(list, r.stderr)
    for _, name in ipairs({ "http", "websocket", "redis", "chat" }) do
      assert.truthy((", " .. list .. ","):find(", " .. name .. ",", 1, true), list)
    end
    assert.falsy(list:find("http_echo", 1, true), list)
  end)

  it("answers curl with what it received, as JSON", function()
    local srv = t.start{ handler = "http" }
    local r = peers.assert_ok(curl{ "-H", "X-Test: one two", "-d", 'a "quoted" body',
                                    url(srv, "/some/path?x=1&y=2") })
    local d = json.decode(r.out)
    assert.same({ "POST", "/some/path", "x=1&y=2", "1.1", 'a "quoted" body', "text" },
                { d.method, d.path, d.query, d.version, d.body, d.body_encoding })
    local found
    for _, kv in ipairs(d.headers) do
      if kv[1] == "X-Test" then found = kv[2] end
    end
    assert.equal("one two", found)
  end)

  it("serves /hello with a fixed body, and HEAD without one", function()
    local srv = t.start{ handler = "http" }
    local r = peers.assert_ok(curl{ "-i", url(srv, "/hello") })
    assert.truthy(r.out:find("^HTTP/1%.1 200 OK\r\n"))
    assert.truthy(r.out:find("\r\nContent%-Length: 14\r\n"))
    assert.truthy(r.out:find("\r\n\r\nHello, World!\n$"))
    local h = peers.assert_ok(curl{ "-I", url(srv, "/hello") })
    assert.truthy(h.out:find("Content%-Length: 14"))
    assert.falsy(h.out:find("Hello"))
  end)

  it("keeps the connection alive across curl's requests", function()
    local srv = t.start{ handler = "http" }
    local r = peers.assert_ok(curl{ "-w", "%{http_code} %{num_connects}\n",
                                    "-o", "/dev/null", url(srv, "/a"), "-o", "/dev/null", url(srv, "/b"),
                                    "-o", "/dev/null", url(srv, "/c") })
    -- one TCP connection made for the first transfer, reused for the others
    assert.equal("200 1\n200 0\n200 0\n", r.out)
  end)

  it("takes a chunked upload from curl", function()
    local srv = t.start{ handler = "http" }
    local body = text(300 * 1000, 7)
    local path = peers.tmpfile(body)
    local r = peers.assert_ok(curl{ "-H", "Transfer-Encoding: chunked", "--data-binary", "@" .. path,
                                    url(srv, "/up") })
    local d = json.decode(r.out)
    assert.equal(#body, #d.body)
    assert.equal(body, d.body)
    local te
    for _, kv in ipairs(d.headers) do if kv[1]:lower() == "transfer-encoding" then te = kv[2] end end
    assert.equal("chunked", te)
  end)

  it("answers Expect: 100-continue before curl sends the body", function()
    local srv = t.start{ handler = "http" }
    local body = text(100 * 1000, 3)
    local path = peers.tmpfile(body)
    -- --expect100-timeout: curl would send the body anyway after 30 s; the
    -- interim answer must come first
    local r = peers.assert_ok(curl{ "-v", "--expect100-timeout", "30", "-H", "Expect: 100-continue",
                                    "--data-binary", "@" .. path, url(srv, "/up") }, 20)
    assert.truthy(r.err:find("< HTTP/1.1 100 Continue", 1, true), r.err)
    assert.equal(body, json.decode(r.out).body)
  end)

  it("returns binary bodies base64-encoded and answers HTTP/1.0", function()
    local srv = t.start{ handler = "http" }
    local path = peers.tmpfile("\0\1\2\255\254")
    local r = peers.assert_ok(curl{ "--http1.0", "--data-binary", "@" .. path, url(srv, "/bin") })
    local d = json.decode(r.out)
    assert.same({ "1.0", "AAEC//4=", "base64" }, { d.version, d.body, d.body_encoding })
  end)

  it("writes JSON a strict decoder takes, whatever bytes the request holds", function()
    local srv = t.start{ handler = "http" }
    local c = srv:connect()
    -- obs-text (bytes 0x80-0xFF) and a tab in a header value, an invalid
    -- UTF-8 path byte, quotes and backslashes; then HTTP/1.0 with no header
    t.send_all(c, "POST /p\255%22q?a=\"b\\ HTTP/1.1\r\nHost: x\r\n" ..
                  "X-Obs: caf\233 \128\t\255\r\nContent-Length: 3\r\n\r\n\0\31\255")
    local one = read_response(c, 5, "obs-text request").body
    t.send_all(c, "GET / HTTP/1.0\r\n\r\n")
    local two = read_response(c, 5, "header-less request").body
    local dir = peers.tmpdir()
    peers.write_file(dir .. "/one.json", one)
    peers.write_file(dir .. "/two.json", two)
    -- Python reads the bytes as UTF-8 strictly and rejects NaN and friends;
    -- text that is not UTF-8 comes back as Latin-1
    local r = peers.run({ "python3", "-c", [[
import json, sys
def no(c): raise ValueError("not JSON: " + c)
one, two = (json.loads(open(p, "rb").read(), parse_constant=no) for p in sys.argv[1:3])
hs = dict(one["headers"])
print(repr(one["path"].encode("latin-1")), repr(one["query"]),
      repr(hs["X-Obs"].encode("latin-1")), one["body"], one["body_encoding"])
print(json.dumps(two["headers"]), json.dumps(two["query"]), two["version"])
]], dir .. "/one.json", dir .. "/two.json" }, 10)
    peers.assert_ok(r, "decoding the answers")
    assert.equal("b'/p\\xff%22q' 'a=\"b\\\\' b'caf\\xe9 \\x80\\t\\xff' AB// base64\n" ..
                 "[] null 1.0\n", r.out)
  end)

  it("answers wrk at 100 connections with no errors and no non-2xx", function()
    local srv = t.start{ handler = "http" }
    for _, path in ipairs({ "/hello", "/json?q=1" }) do
      local r = peers.assert_ok(peers.run({ "wrk", "-t", "2", "-c", "100", "-d", "2s",
                                            "--timeout", "5s", url(srv, path) }, 30))
      local n = tonumber(r.out:match("(%d+) requests in"))
      assert(n and n > 100, "wrk made too few requests:\n" .. r.out)
      assert.falsy(r.out:find("Non%-2xx"), r.out)
      assert.falsy(r.out:find("Socket errors"), r.out)
    end
    -- and the server still answers a plain client afterwards
    local c = srv:connect()
    t.send_all(c, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.equal(200, read_response(c).status)
  end)

  it("answers pipelined requests in order on one raw connection", function()
    local srv = t.start{ handler = "http" }
    local c = srv:connect()
    local reqs = {}
    for i = 1, 100 do
      if i % 3 == 0 then
        reqs[i] = ("POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nbody%d"):format(
          i, #tostring(i) + 4, i)
      elseif i % 3 == 1 then
        reqs[i] = ("POST /p%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                   "2\r\nch\r\n%x\r\n%d\r\n0\r\n\r\n"):format(i, #tostring(i), i)
      else
        reqs[i] = ("GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n"):format(i)
      end
    end
    t.send_all(c, table.concat(reqs))
    for i = 1, 100 do
      local resp = read_response(c)
      assert.equal(200, resp.status)
      local d = json.decode(resp.body)
      assert.equal("/p" .. i, d.path)
      if i % 3 == 0 then assert.equal("body" .. i, d.body)
      elseif i % 3 == 1 then assert.equal("ch" .. i, d.body)
      else assert.equal("", d.body) end
    end
  end)

  it("parses a request sent one byte at a time", function()
    local srv = t.start{ handler = "http" }
    local c = srv:connect()
    c:setoption("tcp-nodelay", true)
    local req = "POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for i = 1, #req do
      t.send_all(c, req:sub(i, i))
    end
    local resp = read_response(c)
    assert.equal("abc", json.decode(resp.body).body)
  end)

  it("closes after answering HTTP/1.0 without keep-alive and on Connection: close", function()
    local srv = t.start{ handler = "http" }
    for _, req in ipairs({ "GET /a HTTP/1.0\r\n\r\n",
                           "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /c HTTP/1.1\r\n" }) do
      local c = srv:connect()
      t.send_all(c, req)
      local resp = read_response(c)
      assert.equal(200, resp.status)
      assert.equal("close", resp.headers.connection)
      local rest, err = t.recv_until_closed(c, 5)
      assert.same({ "", "closed" }, { rest, err })
    end
    -- HTTP/1.0 with keep-alive stays open
    local c = srv:connect()
    t.send_all(c, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert.equal("/a", json.decode(read_response(c).body).path)
    assert.equal("/b", json.decode(read_response(c).body).path)
  end)

  local malformed = {
    { "a bad request line", "HELLO\r\n\r\n", 400 },
    { "a bad method", "G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400 },
    { "HTTP/2.0", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505 },
    { "a missing Host", "GET / HTTP/1.1\r\n\r\n", 400 },
    { "a header without colon", "GET / HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n", 400 },
    { "a bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400 },
    { "a chunk overrunning its size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n", 400 },
    { "a bad Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400 },
    { "Content-Length with chunked", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
    { "an unknown transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501 },
    { "oversized headers", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("b"):rep(20000) .. "\r\n\r\n", 431 },
    { "a body over max_body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n", 413 },
    { "a chunked body over max_body", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      ("100\r\n" .. ("z"):rep(256) .. "\r\n"):rep(5), 413 },
    { "binary garbage", "\22\3\1\0\165\1\0\0\161\3\3", 400 },
  }
  it("answers every malformed request with its status and a close, and keeps serving", function()
    local srv = t.start{ handler = "http", args = { max_body = "1k" } }
    for _, case in ipairs(malformed) do
      local c = srv:connect()
      t.send_all(c, case[2])
      local resp = read_response(c, 5, case[1])
      assert.equal(case[3], resp.status, case[1])
      assert.equal("close", resp.headers.connection, case[1])
      local _, err = t.recv_until_closed(c, 5)
      assert.equal("closed", err, case[1])
    end
    local c = srv:connect()
    t.send_all(c, "GET /still HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, read_response(c).status)
  end)

  it("answers a truncated body or head with 400 when the client half-closes", function()
    local srv = t.start{ handler = "http" }
    for _, req in ipairs({ "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
                           "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                           "GET / HTTP/1.1\r\nHost: x\r\n" }) do
      local c = srv:connect()
      t.send_all(c, req)
      assert(c:shutdown("send"))
      local resp = read_response(c)
      assert.equal(400, resp.status)
      local _, err = t.recv_until_closed(c, 5)
      assert.equal("closed", err)
    end
    -- a clean half-close between requests just closes
    local c = srv:connect()
    t.send_all(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert(c:shutdown("send"))
    assert.equal(200, read_response(c).status)
    local rest, err = t.recv_until_closed(c, 5)
    assert.same({ "", "closed" }, { rest, err })
  end)

  it("survives clients that vanish mid-request", function()
    local srv = t.start{ handler = "http" }
    for i = 1, 20 do
      local c = srv:connect()
      t.send_all(c, ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"):sub(1, 10 + i * 3))
      if i % 2 == 0 then c:setoption("linger", { on = true, timeout = 0 }) end
      c:close()
    end
    local c = srv:connect()
    t.send_all(c, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal("/after", json.decode(read_response(c).body).path)
  end)

  it("answers 500 and closes when the request function raises", function()
    local srv = t.start{ handler = "tests/handlers/http_boom.lua" }
    srv:expect_errors("boom at /boom")
    local c = srv:connect()
    t.send_all(c, "GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    local resp = read_response(c)
    assert.equal(500, resp.status)
    assert.equal("close", resp.headers.connection)
    local _, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    srv:await_log("error.*GET /boom: .*boom at /boom")
    local c2 = srv:connect()
    t.send_all(c2, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal("fine\n", read_response(c2).body)
  end)

  it("answers a pipeline of large answers as the client reads them", function()
    -- 100 answers of 256 KiB: built up in one callback they would pass
    -- --max-buffer and get the connection reset
    local srv = t.start{ handler = "tests/handlers/http_big.lua", opts = { "--max-buffer", "2m" } }
    local c = srv:connect()
    local n = 100
    local req = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"
    local got = {}
    local left = n
    t.send_all(c, req:rep(n))
    while left > 0 do
      local status = t.recv_line(c, 30)
      assert.equal("HTTP/1.1 200 OK", status)
      local len
      repeat
        local l = t.recv_line(c, 30)
        len = len or tonumber(l:match("^Content%-Length: (%d+)$"))
      until l == ""
      assert.equal(256 * 1024, len)
      got[#got + 1] = #t.recv_n(c, len, 30)
      left = left - 1
    end
    assert.equal(n, #got)
  end)

  it("answers 408 and closes clients that trickle their headers, and serves curl meanwhile", function()
    local limit = t.T(1)
    local srv = t.start{ handler = "http", args = { header_timeout = limit } }
    local clients = {}
    for i = 1, 20 do clients[i] = srv:connect() end
    local served
    local res = slow.trickle(clients, {
      bytes = "GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: " .. ("a"):rep(1000),
      timeout = 10,
      during = function(tick)
        if tick == 3 then
          served = peers.assert_ok(curl{ "-s", "-o", "/dev/null", "-w", "%{http_code}", url(srv, "/hello") }).out
        end
      end,
    })
    assert.equal("200", served)
    for i, r in ipairs(res) do
      assert.truthy(r.received:find("^HTTP/1%.1 408 Request Timeout\r\n"), "client " .. i .. ": " .. r.received)
      assert.truthy(r.received:find("\r\nConnection: close\r\n", 1, true), r.received)
      assert(r.closed_after >= limit - 0.05, "client " .. i .. " closed early: " .. r.closed_after)
      assert(r.sent > 5, "client " .. i .. " sent " .. r.sent)
    end
    -- one log line for the lot, not one a client
    srv:await_log("request head not complete after")
    assert.equal(1, #srv:log_matching("request head not complete after"))
    -- a client that connects and sends nothing is timed out too
    local c = srv:connect()
    local all, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert.truthy(all:find("^HTTP/1%.1 408 "), all)
    -- a slow body is not a slow head: the clock stops at the blank line
    c = srv:connect()
    t.send_all(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\na")
    t.expect_silence(c, limit * 1.5, "a request whose body is on its way")
    t.send_all(c, "b")
    assert.equal("ab", json.decode(read_response(c).body).body)
    srv:stop()
    local r = t.run{ handler = "http", args = { header_timeout = "-1" }, opts = { "--check" } }
    assert.equal(2, r.code)
    assert.truthy(r.stderr:find("header_timeout: not a number of seconds: -1", 1, true), r.stderr)
  end)

  it("refuses chunked framing past max_framing", function()
    local srv = t.start{ handler = "http", args = { max_framing = "64" } }
    local c = srv:connect()
    t.send_all(c, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                  ("1;a-long-chunk-extension\r\nz\r\n"):rep(4) .. "0\r\n\r\n")
    local resp = read_response(c)
    assert.equal(413, resp.status)
  end)
end)
