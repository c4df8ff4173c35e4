-- The sequential style: serve(conn) with receive/receiveany/send/echokit.sleep.
local t = require "echokit_test"
local socket = require "socket"

local SERVE = "tests/handlers/serve.lua"

-- Connects to a serve.lua server and picks a mode.
local function open(srv, mode)
  local c = srv:connect()
  c:setoption("tcp-nodelay", true)
  t.send_all(c, mode .. "\n")
  assert.equal("OK", t.recv_line(c))
  return c
end

describe("serve", function()
  after_each(t.teardown)

  it("built-in 'lines' answers LF and CRLF lines and closes on quit", function()
    local srv = t.start{ handler = "lines" }
    local c = srv:connect()
    t.send_all(c, "one\ntwo\r\nthree\n")
    assert.equal("one\n", t.recv_n(c, 4))
    assert.equal("two\n", t.recv_n(c, 4))
    assert.equal("three\n", t.recv_n(c, 6))
    t.send_all(c, "quit\n")
    local rest, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert(rest == "" or rest == "bye\n", "after quit: " .. rest)  -- a parting word is fine
  end)

  it("receive() returns lines without LF or CRLF, split anywhere", function()
    local srv = t.start{ handler = SERVE }
    local c = open(srv, "lines")
    t.send_all(c, "alpha\nbeta\r\n\ngam")
    assert.equal("[alpha]", t.recv_line(c))
    assert.equal("[beta]", t.recv_line(c))
    assert.equal("[]", t.recv_line(c))
    t.expect_silence(c, 0.2, "half a line must not be answered")
    t.send_all(c, "ma\r")
    t.expect_silence(c, 0.1, "a line ending in CR alone is not complete")
    t.send_all(c, "\nquit\n")
    assert.equal("[gamma]", t.recv_line(c))
    assert.equal("bye", t.recv_line(c))
    local rest, err = t.recv_until_closed(c, 5)
    assert.same({ "", "closed" }, { rest, err })
  end)

  it("receive() returns nil, 'closed', partial when the client half-closes mid-line", function()
    local srv = t.start{ handler = SERVE }
    local c = open(srv, "lines")
    t.send_all(c, "whole\nhalf a li")
    assert.equal("[whole]", t.recv_line(c))
    assert(c:shutdown("send"))
    assert.equal("ERR closed partial=[half a li]", t.recv_line(c))
    local rest, err = t.recv_until_closed(c, 5)
    assert.same({ "", "closed" }, { rest, err })
  end)

  it("receive() returns nil, 'closed', partial when the client closes mid-line", function()
    local srv = t.start{ handler = SERVE }
    local c = open(srv, "lines")
    t.send_all(c, "whole\npart")
    assert.equal("[whole]", t.recv_line(c))
    c:close()
    srv:await_log("ERR closed partial=%[part%]")
    srv:await_log("closed conn %d+ reason=")
  end)

  it("receive(n) waits for exactly n bytes across chunk boundaries", function()
    local srv = t.start{ handler = SERVE }
    local c = open(srv, "fixed 5")
    t.send_all(c, "hel")
    t.expect_silence(c, 0.2, "receive(5) must not return 3 bytes")
    t.send_all(c, "lo")
    assert.equal("<hello>", t.recv_n(c, 7))
    -- byte by byte, paced so that they arrive as separate chunks
    local msg = "world12345abc"
    for i = 1, #msg do
      t.send_all(c, msg:sub(i, i))
      socket.sleep(0.005)  -- pacing only, not synchronisation
    end
    assert.equal("<world><12345>", t.recv_n(c, 14))
    -- several units in one chunk
    t.send_all(c, "de" .. "fghij" .. "klmno" .. "pq")
    assert.equal("<abcde><fghij><klmno>", t.recv_n(c, 21))
    assert(c:shutdown("send"))
    assert.equal("ERR closed partial=[pq]", t.recv_line(c))
  end)

  it("receive('*a') returns everything until the client shuts down", function()
    local srv = t.start{ handler = SERVE }
    local c = open(srv, "all")
    local data = t.random_bytes(100 * 1000)
    t.send_all(c, data:sub(1, 10))
    t.expect_silence(c, 0.2, "receive('*a') must wait for the end")
    t.send_all(c, data:sub(11))
    assert(c:shutdown("send"))
    local back, err = t.recv_until_closed(c, 10)
    assert.equal("closed", err)
    t.assert_bytes(#data .. ":" .. data, back, "receive('*a')")
  end)

  it("receiveany(max) returns between 1 and max bytes of what has arrived", function()
    local srv = t.start{ handler = SERVE }
    local c = open(srv, "any 4")
    t.send_all(c, "ab")
    assert.equal("[ab]", t.recv_n(c, 4))
    t.send_all(c, "abcdefghij")
    local joined, pieces = "", 0
    local deadline = t.now() + t.T(5)
    while #joined < 10 do
      assert(t.now() < deadline, "receiveany pieces incomplete: " .. joined)
      assert.equal("[", t.recv_n(c, 1))
      local piece = ""
      while true do
        local ch = t.recv_n(c, 1)
        if ch == "]" then break end
        piece = piece .. ch
        assert(#piece <= 10, "runaway piece " .. piece)
      end
      assert(#piece >= 1 and #piece <= 4, "receiveany(4) returned " .. #piece .. " bytes: " .. piece)
      pieces = pieces + 1
      joined = joined .. piece
    end
    assert.equal("abcdefghij", joined)
    assert(pieces >= 3)
  end)

  it("send() waits while output is above the high-water mark", function()
    local srv = t.start{ handler = SERVE, opts = { "--high-water", "64k" } }
    local total, chunk = 4 * 1024 * 1024, 16384
    local c = open(srv, "big " .. total .. " " .. chunk)
    -- the handler sends 4 MiB in one go; a send() that did not wait would
    -- queue all of it at once
    local body = t.recv_n(c, total, 20)
    for i = 1, total // chunk do
      local head = body:sub((i - 1) * chunk + 1, (i - 1) * chunk + 8)
      if head ~= string.format("%08d", i) then
        error(string.format("piece %d starts with %q", i, head))
      end
    end
    local trailer = t.recv_line(c)  -- the "\n" before END
    assert.equal("", trailer)
    local maxbuf = tonumber(t.recv_line(c):match("^END maxbuffered=(%d+)$"))
    assert(maxbuf, "no END line")
    assert(maxbuf <= 64 * 1024 + chunk, "conn:send let the queue reach " .. maxbuf .. " bytes")
  end)

  it("echokit.sleep pauses only its own coroutine", function()
    local srv = t.start{ handler = SERVE }
    local a = open(srv, "sleep")
    local b = open(srv, "sleep")
    local t0 = t.now()
    t.send_all(a, "sleep 0.5\n")
    t.send_all(b, "ping\n")
    assert.equal("pong ping", t.recv_line(b, 2))
    local quick = t.now() - t0
    assert(quick < 0.4, "the other connection waited " .. quick .. " s for the sleeper")
    local line = t.recv_line(a, 3)
    local elapsed = t.now() - t0
    local slept = tonumber(line:match("^slept ([%d.]+)$"))
    assert(slept, line)
    assert(slept >= 0.49 and slept < t.T(1.5), "echokit.now says it slept " .. slept)
    assert(elapsed >= 0.49, "the answer came after " .. elapsed .. " s")
  end)

  it("a client that leaves during echokit.sleep does not upset the server", function()
    local srv = t.start{ handler = SERVE }
    local a = open(srv, "sleep")
    t.send_all(a, "sleep 0.2\n")
    a:close()
    srv:await_log("closed conn %d+ reason=")
    local b = open(srv, "sleep")
    t.send_all(b, "sleep 0.01\n")
    assert.truthy(t.recv_line(b):match("^slept "))
  end)

  -- hexdump -C of `data`, its offset labels shifted by `offset`
  local function hexdump_c(data, offset)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
    local p = assert(io.popen("hexdump -C " .. path))
    local want = p:read("a")
    p:close()
    os.remove(path)
    if offset then
      want = want:gsub("[^\n]+", function(line)
        return (line:gsub("^(%x%x%x%x%x%x%x%x)", function(h)
          return string.format("%08x", tonumber(h, 16) + offset)
        end))
      end)
    end
    return want
  end

  local function remote_hexdump(srv, data, offset)
    local c = open(srv, "hexdump " .. #data .. (offset and (" " .. offset) or ""))
    t.send_all(c, data)
    local len = tonumber(t.recv_line(c))
    local got = len > 0 and t.recv_n(c, len) or ""
    c:close()
    return got
  end

  it("echokit.hexdump(data) is the same text as hexdump -C", function()
    local srv = t.start{ handler = SERVE }
    for _, n in ipairs({ 1, 15, 16, 17, 100, 300 }) do
      local data = t.random_bytes(n)
      if n == 300 then
        data = string.rep("A", 100) .. data:sub(1, 200)  -- a run that hexdump folds as '*'
      end
      assert.equal(hexdump_c(data), remote_hexdump(srv, data), "hexdump of " .. n .. " bytes")
    end
  end)

  it("echokit.hexdump(data, offset) labels lines from offset", function()
    local srv = t.start{ handler = SERVE }
    local data = t.random_bytes(40)
    assert.equal(hexdump_c(data, 4096), remote_hexdump(srv, data, 4096))
  end)
end)
