-- UDP under abuse and at the edges: listeners opened during shutdown,
-- reflection loops, oversized datagrams, writes from the pre-poll phase,
-- flows and --max-conns, error floods, upstream names.
local t = require "echokit_test"
local socket = require "socket"
local peers = require "peers"

local function udp_client(host, port)
  local u = assert(socket.udp())
  assert(u:setpeername(host, port))
  u:settimeout(t.T(5))
  return u
end

describe("udp robustness", function()
  after_each(peers.teardown)

  it("echokit.listen after shutdown began returns nil, 'shutting down' (no listener outlives the loop)",
    function()
      local srv = t.start{ handler = "tests/handlers/udp_listen_at_stop.lua" }
      local c = srv:connect()
      t.send_all(c, "x")
      srv:await_log("listen after stop: nil shutting down")
      -- the exit: 0, and (in the sanitizer build) no report of a freed UDP
      -- context read by the listener's __gc at lua_close
      local how, code = srv:wait_exit(10)
      assert.equal("exited", how)
      assert.equal(0, code, srv:stderr())
      c:close()
    end)
end)

describe("udp flows and --max-conns", function()
  after_each(peers.teardown)

  it("do not count: with --max-conns 5 and 5 UDP peers a TCP client still gets its echo", function()
    local srv = t.start{ listen = { "127.0.0.1:0", "udp://127.0.0.1:0" },
                         opts = { "--max-conns", "5" } }
    for i = 1, 5 do
      assert.equal("peer " .. i, t.udp_ask(t.udp_client(srv, 2), "peer " .. i))
    end
    local c = srv:connect(1)
    t.send_all(c, "tcp still served\n")
    assert.equal("tcp still served", t.recv_line(c, 5))
  end)
end)

describe("udp writes before the loop polls", function()
  after_each(peers.teardown)

  it("a datagram a TCP connection's on_close writes goes out at once", function()
    local srv = t.start{ handler = "tests/handlers/udp_close_writes.lua",
                         listen = { "127.0.0.1:0", "udp://127.0.0.1:0" } }
    local u = srv:addr(2)
    local f = udp_client(u.host, u.port)
    srv.clients[#srv.clients + 1] = f
    assert(f:send("register"))
    assert.equal("ok", f:receive())
    local c = srv:connect(1)
    t.send_all(c, "close\n")
    -- nothing else wakes the loop: the flush must not wait for the next event
    f:settimeout(t.T(2))
    local d, err = f:receive()
    assert.equal("bye", d, "the datagram on_close wrote: " .. tostring(err))
    c:close()
  end)

  it("a flow a failed send ends (ICMP port unreachable seen by the flush) hears on_close at once",
    function()
      local s = assert(socket.udp())
      assert(s:setsockname("127.0.0.1", 0))
      local _, port = s:getsockname()
      s:close()
      local srv = t.start{ handler = "tests/handlers/udp_refused_flush.lua" }
      local c = srv:connect()
      assert.equal("ok", t.ask(c, "go " .. port))
      srv:await_log("second datagram written")
      -- nothing else wakes the loop (the next background timer is 10 s away)
      srv:await_log("outbound closed refused", 2)
      c:close()
    end)
end)

describe("callback errors at the datagram rate", function()
  after_each(peers.teardown)

  it("are logged at most 10 a second, the rest counted; the first error is there in full", function()
    local srv = t.start{ handler = "tests/handlers/udp_raw.lua", listen = { "udp://127.0.0.1:0" },
                         expect_errors = { "raw boom on purpose" } }
    local sent = 300
    local r = peers.run({ "/usr/bin/python3", "-c", [[
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.settimeout(float(sys.argv[3]))
# in bursts of 50, each followed by a datagram that is answered: the
# receive buffer never overflows, and every error is handled by the end
for i in range(int(sys.argv[2]) // 50):
    for j in range(50):
        s.send(b"boom")
    s.send(b"after")
    r = s.recv(100).decode()
print(r)
]], tostring(srv:addr().port), tostring(sent), tostring(t.T(5)) }, 30)
    peers.assert_ok(r, "python sender")
    assert.matches("after%s*$", r.out)
    srv:await_log("more callback error%(s%) not logged %(at most 10 a second%)", 5)
    assert.truthy(#srv:log_matching("on_datagram: .*raw boom on purpose") >= 1)
    -- every error either logged in full or counted once its second is over
    t.eventually(function()
      local full, held = #srv:log_matching("on_datagram: .*raw boom on purpose"), 0
      for _, l in ipairs(srv:log_matching("more callback error")) do
        held = held + tonumber(l:match("(%d+) more callback error"))
      end
      return full < sent and full + held == sent,
        ("%d logged, %d counted"):format(full, held)
    end, 5, "errors logged or counted")
  end)
end)

describe("an outbound flow to a host name", function()
  after_each(peers.teardown)

  it("holds 64 datagrams written while it resolves, drops (and logs) the rest", function()
    local up = t.start{ listen = { "udp://127.0.0.1:0" } }
    local srv = t.start{ handler = "tests/handlers/udp_connect_burst.lua",
                         listen = { "udp://127.0.0.1:0" },
                         args = { upstream = "localhost:" .. up:addr().port } }
    local a = srv:addr()
    local c = udp_client(a.host, a.port)
    srv.clients[#srv.clients + 1] = c
    assert(c:send("burst 70"))
    local got = {}
    for _ = 1, 64 do
      local d, err = c:receive()
      assert(d, "reply " .. (#got + 1) .. ": " .. tostring(err))
      got[#got + 1] = tonumber(d)
    end
    table.sort(got)
    assert.equal(1, got[1])
    assert.equal(64, got[64])
    srv:await_log("udp: dropped 1 datagram%(s%): written while the peer's name was resolved")
    srv:await_log("udp: dropped 5 more datagram%(s%) in the last 1s: written while")
  end)
end)

-- Sends one UDP datagram with a forged source (a raw socket: root only).
local SPOOF = [[
import socket, struct, sys
src, sport, dst, dport, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5].encode()
udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data  # checksum 0: none (IPv4)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, (dst, 0))
print("sent")
]]

local function is_root()
  return peers.run({ "id", "-u" }, 5).out == "0\n"
end

describe("reflection loops", function()
  after_each(peers.teardown)

  local function spoof(src, sport, dst, dport, data)
    local r = peers.run({ "/usr/bin/python3", "-c", SPOOF, src, tostring(sport), dst,
      tostring(dport), data }, 10)
    peers.assert_ok(r, "spoofed datagram")
  end

  local function stats(srv)
    local a = srv:addr()
    local c = udp_client(a.host, a.port)
    srv.clients[#srv.clients + 1] = c
    assert(c:send("stats"))
    return assert(c:receive())
  end

  for _, listen in ipairs({ "udp://127.0.0.1:0", "udp://0.0.0.0:0" }) do
    it("a datagram from the listener's own address is dropped, not echoed to itself (" .. listen .. ")",
      function()
        if not is_root() then
          pending("needs root (a raw socket forges the source address)")
          return
        end
        local srv = t.start{ handler = "tests/handlers/udp_flows.lua", listen = { listen } }
        local port = srv:addr().port
        spoof("127.0.0.1", port, "127.0.0.1", port, "loop?")
        srv:await_log("udp: dropped 1 datagram%(s%) from 127%.0%.0%.1:" .. port .. ": a reflection loop")
        -- nothing went round: the one datagram in, then the stats request
        assert.matches("^true in=2 out=0 dropped=1 ", stats(srv))
      end)
  end

  it("datagrams from port 0 and from reflector ports (echo 7, chargen 19) are dropped", function()
    if not is_root() then
      pending("needs root (a raw socket forges the source port)")
      return
    end
    local srv = t.start{ handler = "tests/handlers/udp_flows.lua", listen = { "udp://127.0.0.1:0" } }
    local port = srv:addr().port
    for _, p in ipairs({ 0, 7, 19 }) do spoof("127.0.0.2", p, "127.0.0.1", port, "x") end
    srv:await_log("udp: dropped 1 datagram%(s%) from 127%.0%.0%.2:0: a reflection loop")
    srv:await_log("udp: dropped 2 more datagram%(s%) in the last 1s: a reflection loop", 5)
    assert.matches("^true in=4 out=0 dropped=3 ", stats(srv))
  end)
end)

describe("the shutdown line", function()
  after_each(peers.teardown)

  it("counts the connections still open, not the UDP flows the listeners' close ended", function()
    local srv = t.start{ listen = { "127.0.0.1:0", "udp://127.0.0.1:0" } }
    for i = 1, 3 do
      assert.equal("flow " .. i, t.udp_ask(t.udp_client(srv, 2), "flow " .. i))
    end
    local c = srv:connect(1)
    t.send_all(c, "tcp\n")
    assert.equal("tcp", t.recv_line(c, 5))
    srv.p:kill("TERM")
    srv:await_log("shutting down: 1 connection%(s%) open")
    c:close()
  end)
end)
