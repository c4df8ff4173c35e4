-- The proxy handler with udp:// upstreams: datagrams relayed flow to flow in
-- C, replies routed to the right client, idle expiry, an upstream port that
-- answers with ICMP port unreachable, and real DNS (dig -> echokit -> dnsmasq).
local t = require "echokit_test"
local peers = require "peers"

local PEERS = t.src .. "/tests/support/udp_peers.py"

local closed_udp_port = peers.closed_udp_port
local client, ask = t.udp_client, t.udp_ask

local function proxy_to(upstream, opts)
  return peers.front(t.start{ handler = "proxy", listen = { "udp://127.0.0.1:0" },
                              args = { upstream = upstream }, opts = opts })
end

local function udp_echo()
  return t.start{ listen = { "udp://127.0.0.1:0" } }
end

describe("udp proxy", function()
  after_each(peers.teardown)

  it("relays 10 clients x 1,000 datagrams, each reply to its own client", function()
    local up = udp_echo()
    local px = proxy_to("udp://127.0.0.1:" .. up:addr().port)
    local r = peers.run({ "/usr/bin/python3", PEERS, "many", "127.0.0.1",
      tostring(px:addr().port), "10", "1000", "8", tostring(t.T(5)) }, 120)
    peers.assert_ok(r, "udp_peers many")
    assert.equal("ok replies=10000\n", r.out)
  end)

  it("keeps datagram boundaries, empty and 65,507-byte ones included", function()
    local up = udp_echo()
    local px = proxy_to("udp://127.0.0.1:" .. up:addr().port)
    local r = peers.run({ "/usr/bin/python3", "-c", [[
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[2]))
s.connect(("127.0.0.1", int(sys.argv[1])))
for d in (b"a", b"", os.urandom(65507), b"bc"):
    s.send(d)
    r = s.recv(70000)
    assert r == d, "%d bytes came back as %d" % (len(d), len(r))
print("ok")
]], tostring(px:addr().port), tostring(t.T(5)) }, 30)
    peers.assert_ok(r, "python through the proxy")
  end)

  it("taps see each datagram relayed either way, with its size", function()
    local up = udp_echo()
    local px = peers.front(t.start{ handler = "tests/handlers/udp_tap_proxy.lua",
      listen = { "udp://127.0.0.1:0" }, args = { upstream = "127.0.0.1:" .. up:addr().port } })
    local a = client(px)
    assert.equal("", ask(a, ""))
    assert.equal("hello", ask(a, "hello"))
    assert.equal(string.rep("z", 1000), ask(a, string.rep("z", 1000)))
    for _, n in ipairs({ 0, 5, 1000 }) do
      px:await_log("tap up " .. n .. " bytes from %d+")
      px:await_log("tap down " .. n .. " bytes from %d+")
    end
    assert.equal(3, #px:log_matching("tap up"))
    assert.equal(3, #px:log_matching("tap down"))
  end)

  it("drops a datagram too large for the upstream's family (IPv6 client, IPv4 upstream), counted and logged; the flow carries on",
    function()
      local up = udp_echo()
      local px = peers.front(t.start{ handler = "proxy", listen = { "udp://[::1]:0" },
        args = { upstream = "udp://127.0.0.1:" .. up:addr().port }, opts = { "--verbose" } })
      local r = peers.run({ "/usr/bin/python3", "-c", [[
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[2]))
s.connect(("::1", int(sys.argv[1])))
s.send(b"before")
assert s.recv(70000) == b"before"
s.send(b"y" * 65520)  # fits IPv6 (65,527), not IPv4 (65,507)
s.send(b"after")
r = s.recv(70000)
assert r == b"after", "%d bytes came back" % len(r)
print("ok")
]], tostring(px:addr().port), tostring(t.T(5)) }, 30)
      peers.assert_ok(r, "python through the proxy")
      px:await_log("udp: dropped 1 datagram%(s%): the kernel refused to send them")
      -- the upstream flow was not torn down by it
      assert.equal(0, #px:log_matching("Message too long"))
      assert.equal(0, #px:log_matching("%] closed %("))
    end)

  it("closes both flows when they have been idle for --udp-idle-timeout", function()
    local up = udp_echo()
    local px = proxy_to("udp://127.0.0.1:" .. up:addr().port,
      { "--udp-idle-timeout", tostring(t.T(0.3)), "--verbose" })
    local a = client(px)
    assert.equal("x", ask(a, "x"))
    px:await_log("closed %(timeout%)")
    t.eventually(function()
      return #px:log_matching("%] closed %(") == 2
    end, 5, "both flows closed")
    -- a new pair of flows for the next datagram
    assert.equal("y", ask(a, "y"))
  end)

  it("an upstream port that answers with ICMP port unreachable: logged, flow closed, serving on", function()
    local port = closed_udp_port()
    local px = proxy_to("udp://127.0.0.1:" .. port, { "--verbose" })
    local a = client(px)
    assert(a:send("anyone?"))
    px:await_log("upstream udp://127%.0%.0%.1:" .. port .. ": refused")
    px:await_log("127%.0%.0%.1:%d+%] closed %(clean%)") -- the client's flow
    assert(a:send("again?"))
    t.eventually(function()
      return #px:log_matching(": refused") >= 2
    end, 5, "a second refusal")
    assert(px:alive())
  end)

  it("answers a flow's first datagram when the upstream is a host name (held while it resolves)",
    function()
      local up = udp_echo()
      local px = proxy_to("udp://localhost:" .. up:addr().port)
      local a = client(px)
      assert.equal("first", ask(a, "first"))
      assert.equal("second", ask(a, "second"))
      local b = client(px) -- a second flow resolves again
      assert.equal("b first", ask(b, "b first"))
    end)

  it("an upstream without a port is a start-up error (exit 2), not a failure per client", function()
    for _, bad in ipairs({ "udp://127.0.0.1:", "127.0.0.1", "udp://[::1]:", "udp://127.0.0.1:70000" }) do
      local r = t.run{ handler = "proxy", listen = { "udp://127.0.0.1:0" }, args = { upstream = bad } }
      assert.equal(2, r.code, bad .. ": " .. r.stderr)
      assert.matches("upstream=" .. bad:gsub("%p", "%%%0") .. ": give HOST:PORT", r.stderr)
    end
  end)

  it("logs each refused flow with its client's address, at most 10 a second, the rest counted", function()
    local port = closed_udp_port()
    local px = proxy_to("udp://127.0.0.1:" .. port)
    local n = 30
    local cs = {}
    for i = 1, n do
      cs[i] = client(px)
      assert(cs[i]:send("anyone?"))
    end
    px:await_log("proxy: %d+ more upstream failures? not logged %(at most 10 a second%)", 5)
    local lines = px:log_matching("upstream udp://127%.0%.0%.1:" .. port .. ": refused")
    assert.truthy(#lines >= 1 and #lines < n, #lines .. " lines")
    assert.matches("%[conn %d+ 127%.0%.0%.1:%d+%]: upstream", lines[1])
    t.eventually(function()
      local full, held = #px:log_matching(": refused"), 0
      for _, l in ipairs(px:log_matching("more upstream failure")) do
        held = held + tonumber(l:match("(%d+) more upstream failure"))
      end
      return full + held == n, ("%d logged, %d counted"):format(full, held)
    end, 5, "every refusal logged or counted")
  end)

  it("answers dig through the proxy to dnsmasq", function()
    local function dig(port)
      return peers.run({ "dig", "@127.0.0.1", "-p", tostring(port), "example.test", "A",
        "+short", "+tries=1", "+time=" .. math.ceil(t.T(1)) }, 30)
    end
    local user = peers.run({ "id", "-un" }, 5).out:match("^(%S+)")
    -- dnsmasq binds TCP too: a port taken for TCP meanwhile makes it exit,
    -- and another port is tried
    local dport, why
    for _ = 1, 5 do
      local port = closed_udp_port()
      local h = peers.spawn({ "dnsmasq", "--no-daemon", "--port=" .. port,
        "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
        "--conf-file=/dev/null", "--pid-file", "--user=" .. user,
        "--address=/example.test/192.0.2.1" })
      local ok = pcall(t.eventually, function()
        if h.p:wait(0) then return "exited" end
        return dig(port).out == "192.0.2.1\n"
      end, 10, "dnsmasq answers")
      why = peers.helper_stderr(h)
      if ok and not h.p:wait(0) then
        dport = port
        break
      end
    end
    assert(dport, "dnsmasq did not start: " .. tostring(why))
    local px = proxy_to("udp://127.0.0.1:" .. dport)
    local r = dig(px:addr().port)
    peers.assert_ok(r, "dig through the proxy")
    assert.equal("192.0.2.1\n", r.out)
  end)
end)
