-- UDP listeners: datagram echo with real clients (Python sockets, nc -u,
-- socat, luasocket), flows (state, idle timeout, errors, limits), raw
-- datagrams (on_datagram / sock:sendto), serve and outbound UDP flows.
local t = require "echokit_test"
local socket = require "socket"
local peers = require "peers"

local PEERS = t.src .. "/tests/support/udp_peers.py"
local FLOWS = "tests/handlers/udp_flows.lua"

local client, ask = t.udp_client, t.udp_ask

local function udp_start(o)
  o.listen = o.listen or { "udp://127.0.0.1:0" }
  return t.start(o)
end

local function python(code, ...)
  return peers.run({ "/usr/bin/python3", "-c", code, ... }, 20)
end

describe("udp", function()
  after_each(peers.teardown)

  describe("echo", function()
    it("echoes 1 B, 0 B and 65,507 B datagrams intact (Python sockets)", function()
      local srv = udp_start{}
      local r = python([[
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[2]))
s.connect(("127.0.0.1", int(sys.argv[1])))
for d in (b"x", b"", os.urandom(65507), b"\x00\xff" * 700):
    s.send(d)
    r = s.recv(70000)
    assert r == d, "datagram of %d bytes came back as %d bytes" % (len(d), len(r))
print("ok")
]], tostring(srv:addr().port), tostring(t.T(5)))
      peers.assert_ok(r, "python echo")
      assert.equal("ok\n", r.out)
    end)

    it("answers nc -u and socat", function()
      local srv = udp_start{}
      local port = tostring(srv:addr().port)
      local r = peers.run({ "sh", "-c", "printf 'hello udp' | nc -u -w " ..
        math.ceil(t.T(2)) .. " 127.0.0.1 " .. port }, 30)
      assert.equal("hello udp", r.out)
      r = peers.run({ "sh", "-c", "printf 'hi socat' | socat -t " .. t.T(2) ..
        " - UDP:127.0.0.1:" .. port }, 30)
      assert.equal("hi socat", r.out)
    end)

    it("serves udp://[::1]:0", function()
      local srv = udp_start{ listen = { "udp://[::1]:0" } }
      assert.truthy(srv:addr().v6)
      assert.equal("six", ask(client(srv), "six"))
    end)

    it("over IPv6 a flow writes up to 65,527 bytes, and one more raises", function()
      local srv = udp_start{ handler = FLOWS, listen = { "udp://[::1]:0" } }
      assert.matches("^false .*a UDP datagram over IPv6 holds at most 65527 bytes",
        ask(client(srv), "try big"))
    end)

    it("echoes 10 clients x 1,000 datagrams, each reply to its own client", function()
      local srv = udp_start{}
      local r = peers.run({ "/usr/bin/python3", PEERS, "many", "127.0.0.1",
        tostring(srv:addr().port), "10", "1000", "8", tostring(t.T(5)) }, 120)
      peers.assert_ok(r, "udp_peers many")
      assert.equal("ok replies=10000\n", r.out)
    end)

    it("serves UDP with --workers 2", function()
      local srv = udp_start{ opts = { "--workers", "2" } }
      local r = peers.run({ "/usr/bin/python3", PEERS, "many", "127.0.0.1",
        tostring(srv:addr().port), "8", "200", "4", tostring(t.T(5)) }, 120)
      peers.assert_ok(r, "udp_peers many")
      assert.equal("ok replies=1600\n", r.out)
    end)
  end)

  describe("flows", function()
    it("one flow per peer address: its own id, fields and peer", function()
      local srv = udp_start{ handler = FLOWS }
      local a, b = client(srv), client(srv)
      assert.equal("true 1", ask(a, "count"))
      assert.equal("true 2", ask(a, "count"))
      assert.equal("true 1", ask(b, "count"))
      local ida, idb = ask(a, "id"), ask(b, "id")
      assert.are_not.equal(ida, idb)
      local _, port = a:getsockname()
      assert.equal("true 127.0.0.1 " .. port, ask(a, "peer"))
      srv:await_log("flow open %d+ 127%.0%.0%.1 " .. port)
    end)

    it("closes a flow idle for --udp-idle-timeout with reason timeout", function()
      local srv = udp_start{ handler = FLOWS, opts = { "--udp-idle-timeout", tostring(t.T(0.3)) } }
      local a = client(srv)
      assert.equal("true 1", ask(a, "count"))
      local id = ask(a, "id"):match("^true (%d+)$")
      srv:await_log("flow closed " .. id .. " timeout")
      -- the next datagram opens a new flow: its fields start again
      assert.equal("true 1", ask(a, "count"))
    end)

    it("flow:close ends the flow after what it wrote; the next datagram opens another", function()
      local srv = udp_start{ handler = FLOWS }
      local a = client(srv)
      local id = ask(a, "id"):match("^true (%d+)$")
      assert.equal("bye", ask(a, "bye"))
      srv:await_log("flow closed " .. id .. " nil")
      assert.are_not.equal("true " .. id, ask(a, "id"))
    end)

    it("raises clear errors for shutdown, receive patterns, a pipe to TCP and an oversized write", function()
      local srv = udp_start{ handler = FLOWS, args = { closed_port = peers.closed_port() } }
      local a = client(srv)
      assert.matches("^false .*shutdown: not supported on a UDP flow", ask(a, "try shutdown"))
      assert.matches("^false .*receive: not supported on a UDP flow", ask(a, "try receive"))
      assert.matches("^false .*pipe: not supported between a UDP flow and a stream",
        ask(a, "try pipe"))
      assert.matches("^false .*a UDP datagram over IPv4 holds at most 65507 bytes", ask(a, "try big"))
      assert.matches("^false .*starttls: not supported on a UDP flow", ask(a, "try starttls"))
      assert.equal("still here", ask(a, "still here"))
    end)

    it("a handler error ends that flow only", function()
      local srv = udp_start{ handler = FLOWS, expect_errors = { "boom on purpose" } }
      local a, b = client(srv), client(srv)
      assert.equal("true 1", ask(a, "count"))
      assert.equal("true 1", ask(b, "count"))
      local id = ask(a, "id"):match("^true (%d+)$")
      assert(a:send("boom"))
      srv:await_log("flow closed " .. id .. " error: .*boom on purpose")
      assert.equal("true 2", ask(b, "count"))
      assert.equal("true 1", ask(a, "count")) -- a new flow
    end)

    it("--max-flows drops new peers with a counted line and keeps serving the others", function()
      local srv = udp_start{ handler = FLOWS, opts = { "--max-flows", "4" } }
      local a, b = client(srv), client(srv, 1, "127.0.0.2")
      assert.equal("a", ask(a, "a"))
      assert.equal("b", ask(b, "b"))
      local srcs = {}
      for i = 1, 10 do
        for _ = 1, 3 do srcs[#srcs + 1] = "127.0.0." .. i end
      end
      local r = peers.run({ "/usr/bin/python3", PEERS, "flows", "127.0.0.1",
        tostring(srv:addr().port), tostring(t.T(1)), table.unpack(srcs) }, 60)
      peers.assert_ok(r, "udp_peers flows")
      assert.equal("replied=2 of 30\n", r.out)
      srv:await_log("udp: dropped 1 datagram%(s%) from 127%.0%.0%.%d+:%d+: new peers over " ..
        "%-%-max%-flows %(4 flows open%)")
      srv:await_log("udp: dropped 27 more datagram%(s%) in the last 1s: new peers over " ..
        "%-%-max%-flows")
      assert.equal("a again", ask(a, "a again"))
      assert.equal("b again", ask(b, "b again"))
      assert.matches("dropped=28 rcvbuf=0 flows=4", ask(a, "stats"))
    end)

    it("zero-length datagrams open a flow and are echoed", function()
      local srv = udp_start{ handler = FLOWS }
      local r = python([[
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[2]))
s.connect(("127.0.0.1", int(sys.argv[1])))
for _ in range(3):
    s.send(b"")
    assert s.recv(100) == b""
s.send(b"count")
print(s.recv(100).decode())
]], tostring(srv:addr().port), tostring(t.T(5)))
      peers.assert_ok(r, "python")
      assert.equal("true 1\n", r.out)
      srv:await_log("flow open")
    end)

    it("counts what a flood beyond the receive buffer loses, and serves on", function()
      local srv = udp_start{ handler = FLOWS, opts = { "--cpu-budget", "10" } }
      local a = client(srv)
      assert.equal("before", ask(a, "before"))
      -- the loop is held while 3,000 datagrams of 1,200 bytes (3.6 MB) arrive:
      -- far more than a receive buffer holds
      local flag = os.tmpname()
      os.remove(flag)
      assert(a:send("stall " .. flag))
      local r = peers.run({ "/usr/bin/python3", PEERS, "flood", "127.0.0.1",
        tostring(srv:addr().port), "3000", "1200" }, 60)
      peers.assert_ok(r, "udp_peers flood")
      assert.equal("sent=3000\n", r.out)
      peers.write_file(flag, "")
      assert.equal("stalled", a:receive())
      os.remove(flag)
      local stats = ask(a, "stats")
      local got = tonumber(stats:match("in=(%d+)"))
      local lost = tonumber(stats:match("rcvbuf=(%d+)"))
      -- a's 3 datagrams and the flood's: each received or counted lost
      assert(lost > 0 and got + lost <= 3003 and got + lost >= 2900, stats)
      srv:await_log("udp: dropped %d+ datagram%(s%): by the kernel: receive buffer full")
      assert.equal("after", ask(a, "after"))
    end)
  end)

  describe("echokit.listen", function()
    -- a luasocket client of "udp://HOST:PORT"
    local function client_of(srv, addr)
      local host, port = addr:match("^udp://(.+):(%d+)$")
      local u = assert(socket.udp())
      assert(u:setpeername(host, tonumber(port)))
      u:settimeout(t.T(5))
      srv.clients[#srv.clients + 1] = u
      return u
    end

    it("opens UDP listeners at run time; closing one ends its flows and frees its port", function()
      local srv = udp_start{ handler = "tests/handlers/udp_listen.lua" }
      local ctl = client(srv)
      local refs = ask(ctl, "refs")
      local addr = ask(ctl, "listen"):match("^ok (udp://127%.0%.0%.1:%d+)$")
      assert(addr, "no address")
      local u = client_of(srv, addr)
      assert.equal("HELLO", ask(u, "hello"))
      assert.equal("closed", ask(ctl, "close"))
      -- nothing listens there now: the kernel answers port unreachable
      assert(u:send("anyone"))
      local r, err = u:receive()
      assert.is_nil(r)
      assert.equal("connection refused", err)
      assert.equal(refs, ask(ctl, "refs"))
    end)

    it("a listener closed and collected from its own flow's callback", function()
      local srv = udp_start{ handler = "tests/handlers/udp_listen.lua" }
      local ctl = client(srv)
      local refs = ask(ctl, "refs")
      local addr = ask(ctl, "selfclose"):match("^ok (udp://127%.0%.0%.1:%d+)$")
      local u = client_of(srv, addr)
      -- two datagrams in one batch: the second meets a closed socket
      assert(u:send("one"))
      assert(u:send("two"))
      -- "two" may come after the close: the port unreachable it earns can be
      -- reported before "closing" is read
      local got, err
      for _ = 1, 3 do
        got, err = u:receive()
        if got or err ~= "connection refused" then break end
      end
      assert.equal("closing", got, err)
      assert.equal(refs, ask(ctl, "refs"))
    end)

    it("refuses on_datagram (flows only) with a clear error", function()
      local r = t.run{ handler = "tests/handlers/udp_listen_raw.lua" }
      assert.equal(2, r.code)
      assert.matches("on_datagram is for %-%-listen udp:// listeners", r.stderr)
    end)
  end)

  describe("raw datagrams", function()
    it("on_datagram gets every datagram with its peer; sock:sendto answers", function()
      local srv = udp_start{ handler = "tests/handlers/udp_raw.lua",
                             expect_errors = { "sendto: bad peer address", "raw boom" } }
      local a = client(srv)
      local _, port = a:getsockname()
      assert.equal("127.0.0.1:" .. port .. " hi", ask(a, "hi"))
      assert.equal("127.0.0.1:" .. port .. " ", ask(a, ""))
      assert(a:send("bad peer"))
      srv:await_log("on_datagram.*sendto: bad peer address")
      assert(a:send("boom"))
      srv:await_log("raw boom on purpose")
      assert.equal("127.0.0.1:" .. port .. " on", ask(a, "on"))
      assert.matches("^false .*a UDP datagram over IPv4 holds at most 65507 bytes", ask(a, "big"))
    end)
  end)

  describe("serve", function()
    it("receive() returns each datagram whole, and nil, timeout when the flow expires", function()
      local srv = udp_start{ handler = "tests/handlers/udp_serve.lua",
                             opts = { "--udp-idle-timeout", tostring(t.T(0.3)) } }
      local a = client(srv)
      assert.equal("serve one", ask(a, "one"))
      assert.equal("serve two\nlines", ask(a, "two\nlines"))
      assert.equal("serve ", ask(a, ""))
      srv:await_log("serve ended timeout")
    end)
  end)

  describe("outbound", function()
    it("echokit.connect('udp://') is a flow with the same callbacks; a closed port is refused", function()
      local up = udp_start{}
      local srv = peers.front(udp_start{ handler = "tests/handlers/udp_connect.lua",
        args = { upstream = "127.0.0.1:" .. up:addr().port } })
      local a = client(srv)
      assert.equal("via x", ask(a, "x"))
      assert.equal("via ", ask(a, ""))
      srv:await_log("outbound connected %d+")
      up:stop("TERM")
      assert(a:send("y"))
      srv:await_log("outbound closed refused")
    end)
  end)
end)
