-- Listener kinds: IPv4, IPv6, unix sockets, several at once.
local t = require "echokit_test"

local function roundtrip(srv, i, msg)
  local c = srv:connect(i)
  t.send_all(c, msg .. "\n")
  assert.equal(msg, t.recv_line(c))
  c:close()
end

describe("listeners", function()
  after_each(t.teardown)

  it("listens on [::1]:0 and prints the real port", function()
    local srv = t.start{ listen = { "[::1]:0" } }
    assert.equal("::1", srv:addr(1).host)
    assert.truthy(srv.stdout_lines[1]:match("^listening on %[::1%]:%d+$"), srv.stdout_lines[1])
    assert(srv:port(1) > 0)
    roundtrip(srv, 1, "over ipv6")
  end)

  it("listens on a unix socket", function()
    local path = t.unix_path("u")
    local srv = t.start{ listen = { "unix:" .. path } }
    assert.equal("listening on unix:" .. path, srv.stdout_lines[1])
    assert.equal(path, srv:addr(1).path)
    roundtrip(srv, 1, "over unix")
    local big = t.random_bytes(1024 * 1024)
    local c = srv:connect(1)
    assert.equal(#big, t.exchange(c, big, { timeout = 20 }))
  end)

  it("serves IPv4, IPv6 and unix listeners at once", function()
    local path = t.unix_path("m")
    local srv = t.start{ listen = { "127.0.0.1:0", "[::1]:0", "unix:" .. path } }
    assert.equal(3, #srv.addrs)
    assert.equal("127.0.0.1", srv:addr(1).host)
    assert.equal("::1", srv:addr(2).host)
    assert.equal(path, srv:addr(3).path)
    -- interleaved: all three connections open together
    local cs = {}
    for i = 1, 3 do cs[i] = srv:connect(i) end
    for i = 3, 1, -1 do t.send_all(cs[i], "via " .. i .. "\n") end
    for i = 1, 3 do assert.equal("via " .. i, t.recv_line(cs[i])) end
  end)

  it("gives peer() and sockname() of a unix connection as its path", function()
    local path = t.unix_path("p")
    local srv = t.start{ handler = "tests/handlers/conn.lua", listen = { "unix:" .. path } }
    local c = srv:connect(1)
    t.send_all(c, "peer\n")
    local line = t.recv_line(c)
    assert.truthy(line:find(path, 1, true), "sockname should show the path: " .. line)
  end)

  it("gives peer() and sockname() of a TCP connection as host, port", function()
    local srv = t.start{ handler = "tests/handlers/conn.lua" }
    local c = srv:connect(1)
    local _, myport = c:getsockname()
    t.send_all(c, "peer\n")
    assert.equal(string.format("peer 127.0.0.1 %d sock 127.0.0.1 %d", myport, srv:port(1)),
      t.recv_line(c))
  end)
end)
