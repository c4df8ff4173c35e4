-- The built-in echo handler over TCP: payload sizes, many clients, half-close.
local t = require "echokit_test"
local socket = require "socket"

describe("echo", function()
  after_each(t.teardown)

  for _, size in ipairs({ 1, 1024, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024 }) do
    it(string.format("echoes %d random bytes intact", size), function()
      local srv = t.start{}   -- default handler: echo
      local c = srv:connect()
      local data = t.random_bytes(size)
      local got = t.exchange(c, data, { timeout = 30 })
      assert.equal(size, got)
      -- and the connection still works afterwards
      c:settimeout(t.T(5))
      t.send_all(c, "again")
      assert.equal("again", t.recv_n(c, 5))
    end)
  end

  it("echoes with the handler given as a file from the repo root", function()
    local srv = t.start{ handler = "handlers/echo.lua" }
    local c = srv:connect()
    t.send_all(c, "file handler\n")
    assert.equal("file handler", t.recv_line(c))
  end)

  it("serves 200 concurrent clients, each with its own round trip", function()
    local srv = t.start{ handler = "echo" }
    local n = 200
    local clients, expect, got, index = {}, {}, {}, {}
    for i = 1, n do
      clients[i] = srv:connect()
      index[clients[i]] = i
    end
    -- every client is connected before any sends: all 200 are open at once
    for i = 1, n do
      expect[i] = string.format("client %03d says %s\n", i, string.rep(string.char(65 + i % 26), i))
      t.send_all(clients[i], expect[i])
      got[i] = ""
      clients[i]:settimeout(0)
    end
    local pending, deadline = {}, t.now() + t.T(20)
    for i = 1, n do pending[#pending + 1] = clients[i] end
    while #pending > 0 do
      assert(t.now() < deadline, string.format("%d of %d clients got no full echo in time",
        #pending, n))
      local r = socket.select(pending, nil, 1)
      for _, c in ipairs(r) do
        local i = index[c]
        local want = #expect[i] - #got[i]
        local d, err, partial = c:receive(want)
        got[i] = got[i] .. (d or partial or "")
        if err == "closed" then
          error(string.format("client %d: closed after %q", i, got[i]))
        end
      end
      local still = {}
      for _, c in ipairs(pending) do
        if #got[index[c]] < #expect[index[c]] then still[#still + 1] = c end
      end
      pending = still
    end
    for i = 1, n do assert.equal(expect[i], got[i]) end
  end)

  it("echoes everything sent before a half-close, then closes (EOF)", function()
    local srv = t.start{}
    local c = srv:connect()
    local data = t.random_bytes(300 * 1000)
    t.send_all(c, data)
    assert(c:shutdown("send"))
    local back, err = t.recv_until_closed(c, 10)
    assert.equal("closed", err)
    t.assert_bytes(data, back, "echo after half-close")
  end)

  it("survives a client that resets the connection while its echo is in flight", function()
    local srv = t.start{}
    local rude = srv:connect()
    t.send_all(rude, t.random_bytes(512 * 1024))
    rude:setoption("linger", { on = true, timeout = 0 })
    rude:close()  -- RST; the server may be writing the echo right now (EPIPE/SIGPIPE)
    local c = srv:connect()
    t.send_all(c, "still here\n")
    assert.equal("still here", t.recv_line(c))
    assert.is_true(srv:alive())
  end)
end)
