-- The built-in `websocket` echo (handlers/websocket_echo.lua on
-- echokit.websocket) against a real client library (Debian's
-- python3-websockets, tests/support/ws_client.py), and raw sockets for
-- handshake refusals and malformed frames.
local t = require "echokit_test"
local peers = require "peers"
local slow = require "slow_peers"

local PYTHON = "/usr/bin/python3"

local function client(srv, scenario, timeout)
  local r = peers.run({ PYTHON, "tests/support/ws_client.py", tostring(srv:port()), scenario },
                      timeout or 60)
  return peers.assert_ok(r, "ws_client.py " .. scenario)
end

local function oks(out)
  local lines = {}
  for l in out:gmatch("ok ([^\n]+)") do lines[#lines + 1] = l end
  return lines
end

-- A raw client after a completed handshake.
local function upgraded(srv, extra)
  local c = srv:connect()
  t.send_all(c, "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" ..
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" ..
                (extra or ""))
  assert.equal("HTTP/1.1 101 Switching Protocols", t.recv_line(c))
  local accept
  repeat
    local l = t.recv_line(c)
    accept = accept or l:match("^Sec%-WebSocket%-Accept: (.*)$")
  until l == ""
  -- RFC 6455 section 1.3's example key and answer
  assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", accept)
  return c
end

local KEY = "\1\2\3\4"
local function mask(s)
  local out = {}
  for i = 1, #s do out[i] = string.char(s:byte(i) ~ KEY:byte((i - 1) % 4 + 1)) end
  return table.concat(out)
end
local function frame(b1, payload, masked)
  local n = #payload
  local head = n < 126 and string.char(b1, (masked and 0x80 or 0) | n)
               or string.pack(">BBI2", b1, (masked and 0x80 or 0) | 126, n)
  return masked and (head .. KEY .. mask(payload)) or (head .. payload)
end

-- Reads the server's close frame and the end of the connection: code, reason.
local function read_close(c)
  local all = t.recv_until_closed(c, 5)
  local b1, b2 = all:byte(1, 2)
  assert(b1 == 0x88, ("expected a close frame, got %q"):format(all:sub(1, 20)))
  assert(b2 & 0x80 == 0, "server frames must not be masked")
  local n = b2 & 0x7F
  assert(n >= 2, "close frame without a code")
  return (all:byte(3) << 8) | all:byte(4), all:sub(5, 2 + n)
end

describe("websocket handler", function()
  after_each(peers.teardown)

  it("echoes text and binary messages up to 16 MiB to python3-websockets", function()
    local srv = t.start{ handler = "websocket" }
    local r = client(srv, "echo", 90)
    assert.equal(17, #oks(r.out), r.out)
  end)

  it("reassembles fragmented messages and answers pings", function()
    local srv = t.start{ handler = "websocket" }
    assert.equal(3, #oks(client(srv, "fragments").out))
    assert.equal(4, #oks(client(srv, "ping").out))
  end)

  it("echoes the client's close code in the close handshake", function()
    local srv = t.start{ handler = "websocket" }
    for _, code in ipairs({ 1000, 1001, 3000, 4001 }) do
      assert.equal(1, #oks(client(srv, "close:" .. code).out))
    end
  end)

  it("closes with 1009 when a message is over max_message", function()
    local srv = t.start{ handler = "websocket", args = { max_message = "1k" } }
    assert.equal(1, #oks(client(srv, "too_big").out))
  end)

  local malformed = {
    { "an unmasked client frame", frame(0x81, "hi", false), 1002 },
    { "opcode 3", frame(0x83, "x", true), 1002 },
    { "a reserved bit", frame(0xC1, "x", true), 1002 },
    { "text that is not UTF-8", frame(0x81, "ok\255", true), 1007 },
    { "a surrogate in text", frame(0x81, "\237\160\128", true), 1007 },
    { "a continuation without a message", frame(0x80, "x", true), 1002 },
    { "a ping over 125 bytes", frame(0x89, ("p"):rep(126), true), 1002 },
    { "close code 1005", frame(0x88, "\3\237", true), 1002 },
  }
  for _, case in ipairs(malformed) do
    it("answers " .. case[1] .. " with close code " .. case[3], function()
      local srv = t.start{ handler = "websocket" }
      local c = upgraded(srv)
      -- a good message first: the bad frame ends a working session
      t.send_all(c, frame(0x81, "fine", true))
      assert.equal(frame(0x81, "fine", false), t.recv_n(c, 6))
      t.send_all(c, case[2])
      local code = read_close(c)
      assert.equal(case[3], code)
    end)
  end

  it("takes frames sent right behind the handshake, and one byte at a time", function()
    local srv = t.start{ handler = "websocket" }
    local c = upgraded(srv, frame(0x82, "early", true))
    assert.equal(frame(0x82, "early", false), t.recv_n(c, 7))
    c:setoption("tcp-nodelay", true)
    local f = frame(0x81, ("é"):rep(100), true) .. frame(0x89, "p", true)
    for i = 1, #f do t.send_all(c, f:sub(i, i)) end
    local want = frame(0x81, ("é"):rep(100), false) .. frame(0x8A, "p", false)
    assert.equal(want, t.recv_n(c, #want))
    t.send_all(c, frame(0x88, "\3\232done", true))
    local code, reason = read_close(c)
    assert.same({ 1000, "done" }, { code, reason })
  end)

  it("refuses bad handshakes with an HTTP answer and a close", function()
    local srv = t.start{ handler = "websocket" }
    local base = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    for _, case in ipairs({
      { "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426 },
      { "GET / HTTP/1.1\r\n" .. base .. "Sec-WebSocket-Version: 13\r\n\r\n", 400 },
      { "GET / HTTP/1.1\r\n" .. base .. "Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n", 400 },
      { "GET / HTTP/1.1\r\n" .. base .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426 },
      { "POST / HTTP/1.1\r\n" .. base .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 405 },
      { "NONSENSE\r\n\r\n", 400 },
    }) do
      local c = srv:connect()
      t.send_all(c, case[1])
      local all = t.recv_until_closed(c, 5)
      assert.equal(case[2], tonumber(all:match("^HTTP/1%.1 (%d+)")), all)
      assert.truthy(all:find("\r\nConnection: close\r\n", 1, true), all)
    end
    local r = peers.assert_ok(peers.run({ "curl", "-s", "-i", "--max-time", "10",
                                          ("http://127.0.0.1:%d/"):format(srv:port()) }, 15))
    assert.truthy(r.out:find("^HTTP/1%.1 426 "), r.out)
    assert.truthy(r.out:find("\r\nUpgrade: websocket\r\n", 1, true), r.out)
  end)

  it("runs on_open, a server-started close handshake and on_close", function()
    local srv = t.start{ handler = "tests/handlers/ws_close.lua" }
    local c = upgraded(srv)
    assert.equal(frame(0x81, "hello /chat", false), t.recv_n(c, 13))
    t.send_all(c, frame(0x81, "ping me", true))
    assert.equal(frame(0x89, "from server", false), t.recv_n(c, 13))
    t.send_all(c, frame(0x81, "bye", true))
    local closing = t.recv_n(c, 14)
    assert.equal(frame(0x88, "\15\160server bye", false), closing)
    -- messages after our close frame are not answered; the peer's close ends it
    t.send_all(c, frame(0x81, "too late", true) .. frame(0x88, "\15\160", true))
    local rest, err = t.recv_until_closed(c, 5)
    assert.same({ "", "closed" }, { rest, err })
    srv:await_log("ws closed: 4000 ")
  end)

  it("closes the TCP connection when the peer never answers our close", function()
    local srv = t.start{ handler = "tests/handlers/ws_close.lua" }
    local c = upgraded(srv)
    t.recv_n(c, 13)
    t.send_all(c, frame(0x81, "bye", true))
    local t0 = t.now()
    local all, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert.equal(frame(0x88, "\15\160server bye", false), all)
    assert(t.now() - t0 >= 0.4, "closed before close_timeout")
    srv:await_log("ws closed: nil")
  end)

  it("picks the first subprotocol it supports from the client's offer", function()
    local srv = t.start{ handler = "tests/handlers/ws_close.lua" }
    local c = srv:connect()
    t.send_all(c, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" ..
                  "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n" ..
                  "Sec-WebSocket-Protocol: v1, v2\r\n\r\n")
    local head = {}
    repeat
      local l = t.recv_line(c)
      head[#head + 1] = l
    until l == ""
    local text = table.concat(head, "\n")
    assert.truthy(text:find("^HTTP/1%.1 101 "), text)
    assert.truthy(text:find("\nSec%-WebSocket%-Protocol: v2\n"), text)
    assert.truthy(text:find("\nSec%-WebSocket%-Accept: ICX%+Yqv66kxgM0FcWaLWlFLwTAI=\n"), text)
  end)

  it("keeps other sessions going when one fails", function()
    local srv = t.start{ handler = "websocket" }
    local good = upgraded(srv)
    local bad = upgraded(srv)
    t.send_all(bad, frame(0x81, "x", false))
    assert.equal(1002, (read_close(bad)))
    t.send_all(good, frame(0x81, "still here", true))
    assert.equal(frame(0x81, "still here", false), t.recv_n(good, 12))
  end)

  it("reads no further messages while its answers are above high water", function()
    -- 100 small messages, each answered with 256 KiB: answered all in one
    -- callback they would pass --max-buffer and get the connection reset
    local srv = t.start{ handler = "tests/handlers/ws_big.lua", opts = { "--max-buffer", "2m" } }
    local c = upgraded(srv)
    local n = 100
    t.send_all(c, frame(0x82, "x", true):rep(n))
    local size = 256 * 1024
    local head = string.pack(">BBI8", 0x82, 127, size)
    for i = 1, n do
      assert.equal(head, t.recv_n(c, #head, 30), "frame " .. i)
      assert.equal(size, #t.recv_n(c, size, 30))
    end
  end)

  it("answers 408 and closes clients that trickle the handshake, and serves others meanwhile", function()
    local limit = t.T(1)
    local srv = t.start{ handler = "websocket", args = { header_timeout = limit } }
    local clients = {}
    for i = 1, 20 do clients[i] = srv:connect() end
    local served
    local res = slow.trickle(clients, {
      bytes = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: " .. ("a"):rep(1000),
      timeout = 10,
      during = function(tick)
        if tick == 3 then served = #oks(client(srv, "ping").out) end
      end,
    })
    assert.equal(4, served)
    for i, r in ipairs(res) do
      assert.truthy(r.received:find("^HTTP/1%.1 408 Request Timeout\r\n"), "client " .. i .. ": " .. r.received)
      assert.truthy(r.received:find("\r\nConnection: close\r\n", 1, true), r.received)
      assert(r.closed_after >= limit - 0.05, "client " .. i .. " closed early: " .. r.closed_after)
    end
    srv:await_log("handshake request not complete after")
    assert.equal(1, #srv:log_matching("handshake request not complete after"))
    -- once upgraded, a quiet session is not timed out: the limit is the handshake's
    local c = upgraded(srv)
    t.expect_silence(c, limit * 1.5, "an open session")
    t.send_all(c, frame(0x81, "still", true))
    assert.equal(frame(0x81, "still", false), t.recv_n(c, 7))
  end)
end)
