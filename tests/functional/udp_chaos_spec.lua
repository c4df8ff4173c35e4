-- Datagram faults: -H chaos with a udp:// upstream, and UDP proxies made
-- through the control API. Real DNS (dig and a Python client -> echokit ->
-- dnsmasq) and real UDP sockets; counts checked against binomial bounds,
-- delays against the same proxy without the toxic.
local t = require "echokit_test"
local socket = require "socket"
local peers = require "peers"
local dns = require "dnsmasq"
local cjson = require "cjson"

local function chaos(upstream, toxic_args, opts)
  local args = { upstream = upstream }
  for k, v in pairs(toxic_args or {}) do args[k] = v end
  return peers.start_chaos(args, { listen = { "udp://127.0.0.1:0" }, opts = opts })
end

local function udp_echo()
  return t.start{ listen = { "udp://127.0.0.1:0" } }
end

local function client(srv, port)
  local u = assert(socket.udp())
  assert(u:setpeername("127.0.0.1", port or srv:addr().port))
  u:settimeout(t.T(5))
  srv.clients[#srv.clients + 1] = u
  return u
end

-- Reads datagrams until none comes for `quiet` seconds (scaled).
local function drain(u, quiet)
  local got = {}
  u:settimeout(t.T(quiet))
  while true do
    local d = u:receive()
    if not d then break end
    got[#got + 1] = d
  end
  u:settimeout(t.T(5))
  return got
end

describe("chaos over UDP", function()
  after_each(peers.teardown)

  it("loss=1: dig gets no answer; without it dig does", function()
    local port = dns.start()
    local px = chaos("udp://127.0.0.1:" .. port, { loss = 1 })
    local r = dns.dig(px:addr().port)
    assert.is_nil(r.out:find(dns.ADDRESS, 1, true), "answered through loss=1: " .. r.out)
    assert.are_not.equal(0, r.code, "dig reported success: " .. r.out)
    local clean = chaos("udp://127.0.0.1:" .. port)
    assert.equal(dns.ADDRESS .. "\n", peers.assert_ok(dns.dig(clean:addr().port)).out)
  end)

  it("down=1: every flow is dropped, the process serves on", function()
    local port = dns.start()
    local px = chaos("udp://127.0.0.1:" .. port, { down = 1 })
    local r = dns.dig(px:addr().port)
    assert.is_nil(r.out:find(dns.ADDRESS, 1, true), "answered through down=1: " .. r.out)
    assert(px:alive())
  end)

  it("loss=0.5: about half of 200 queries are answered", function()
    local port = dns.start()
    local px = chaos("udp://127.0.0.1:" .. port, { loss = 0.5 })
    local n = dns.queries(px:addr().port, 200, 100, 1)
    -- binomial(200, 0.5): mean 100, sd 7.07; 5 sd either way
    assert(n.answered >= 65 and n.answered <= 135,
      "answered " .. n.answered .. " of 200 (expected 100 +- 35)")
    assert.equal(1, n.max_copies)
    assert.equal(0, n.unknown)
  end)

  it("duplicate=1: each query gets two answers", function()
    local port = dns.start()
    local px = chaos("udp://127.0.0.1:" .. port, { duplicate = 1 })
    local n = dns.queries(px:addr().port, 50, 10, 2, 0.3)
    assert.equal(50, n.answered)
    assert.equal(100, n.answers)
    assert.equal(2, n.max_copies)
  end)

  it("latency=0.2 delays the answers by that much over the same proxy without it", function()
    local port = dns.start()
    local plain = chaos("udp://127.0.0.1:" .. port)
    local slow = chaos("udp://127.0.0.1:" .. port, { latency = 0.2 })
    local a = dns.queries(plain:addr().port, 20, 1, 2)
    local b = dns.queries(slow:addr().port, 20, 1, 2)
    assert.equal(20, a.answered)
    assert.equal(20, b.answered)
    assert(b.rtt_median >= 0.2, "median " .. b.rtt_median .. " s through latency=0.2")
    assert(b.rtt_median > a.rtt_median + 0.15, string.format(
      "median %.4f s with latency=0.2, %.4f s without", b.rtt_median, a.rtt_median))
  end)

  it("empty datagrams pass through the toxics", function()
    local up = udp_echo()
    local px = chaos("udp://127.0.0.1:" .. up:addr().port, { truncate = 1000 })
    local u = client(px)
    for _, d in ipairs({ "a", "", "bc" }) do
      assert(u:send(d))
      assert.equal(d, u:receive())
    end
  end)

  it("truncate, corrupt and reorder act on each datagram", function()
    local up = udp_echo()
    local cut = client(chaos("udp://127.0.0.1:" .. up:addr().port, { truncate = 3 }))
    assert(cut:send("hello")); assert.equal("hel", cut:receive())
    assert(cut:send("hi")); assert.equal("hi", cut:receive())

    local bad = client(chaos("udp://127.0.0.1:" .. up:addr().port, { corrupt = 1 }))
    local d = string.rep("z", 64)
    for _ = 1, 5 do
      assert(bad:send(d))
      local r = assert(bad:receive())
      assert.equal(64, #r)
      local diff = 0
      for i = 1, 64 do if r:byte(i) ~= d:byte(i) then diff = diff + 1 end end
      assert.equal(1, diff, "bytes flipped in " .. r)
    end

    -- each reply held back behind the next one (the last goes on alone)
    local mix = client(chaos("udp://127.0.0.1:" .. up:addr().port, { reorder = 1, ["reorder.hold"] = t.T(0.5) }))
    for _, x in ipairs({ "1", "2", "3" }) do assert(mix:send(x)) end
    local got = {}
    for i = 1, 3 do got[i] = assert(mix:receive()) end
    assert.same({ "2", "1", "3" }, got)
  end)

  it("bandwidth paces whole datagrams, never cutting one", function()
    local up = udp_echo()
    -- 1 KB/s: a byte stream is paced in 100-byte pieces
    local px = chaos("udp://127.0.0.1:" .. up:addr().port, { bandwidth = 1 })
    local u = client(px)
    local d = string.rep("x", 300)
    for _ = 1, 3 do assert(u:send(d)) end
    local got = {}
    for i = 1, 3 do
      got[i] = assert(u:receive())
    end
    for i = 1, 3 do assert.equal(300, #got[i]) end
    assert.same({}, drain(u, 0.3))
  end)

  it("limit_data: the datagrams that fit pass, then both flows close", function()
    local up = udp_echo()
    local px = chaos("udp://127.0.0.1:" .. up:addr().port, { limit_data = 100 },
                     { "--verbose" })
    local u = client(px)
    local d = string.rep("y", 40)
    assert(u:send(d)); assert.equal(d, u:receive())
    assert(u:send(d)); assert.equal(d, u:receive())
    assert(u:send(d)) -- 120 bytes: over the limit, dropped
    t.eventually(function()
      return #px:log_matching("%] closed %(") == 2
    end, 5, "both flows closed")
    assert.same({}, drain(u, 0.2))
    -- the next datagram opens new flows, with their own count
    assert(u:send("again"))
    assert.equal("again", u:receive())
  end)

  it("closes both flows when they have been idle for --udp-idle-timeout", function()
    local up = udp_echo()
    local px = chaos("udp://127.0.0.1:" .. up:addr().port, { latency = 0.01 },
                     { "--udp-idle-timeout", tostring(t.T(0.3)), "--verbose" })
    local u = client(px)
    assert(u:send("x"))
    assert.equal("x", u:receive())
    px:await_log("closed %(timeout%)")
    t.eventually(function()
      return #px:log_matching("%] closed %(") == 2
    end, 5, "both flows closed")
    assert(u:send("y"))
    assert.equal("y", u:receive())
  end)

  it("refuses at start-up what needs a byte stream", function()
    local cases = {
      { { slicer = 10 }, "slicer cuts chunks into slices: it needs a byte stream" },
      { { slow_close = 1 }, "slow_close delays the end of a stream" },
      { { http_status = 503 }, "http_status answers HTTP requests" },
      { { resp_error = "ERR x" }, "resp_error answers Redis commands" },
      { { slow_open = 1 }, "slow_open pauses the client" },
      { { latency = 0.1, ["latency.line"] = "GET" }, "a lines matcher frames messages" },
    }
    for _, c in ipairs(cases) do
      local args = { upstream = "udp://127.0.0.1:1" }
      for k, v in pairs(c[1]) do args[k] = v end
      local r = t.run { handler = "chaos", listen = { "udp://127.0.0.1:0" }, args = args }
      assert.equal(2, r.code, r.stderr)
      assert.matches(c[2], r.stderr, 1, true)
    end
  end)
end)

describe("the default listener", function()
  after_each(t.teardown)

  it("is udp://127.0.0.1:7000 when the upstream is udp:// (in a network namespace of its own)",
     function()
    -- port 7000 is fixed here, so the server runs where nothing else can hold it
    local ns = { "unshare", "-n" }
    if peers.run({ "id", "-u" }, 5).out ~= "0\n" then ns = { "unshare", "-rn" } end
    local probe = peers.run({ ns[1], ns[2], "true" }, 5)
    if probe.code ~= 0 then
      print("skipped: no network namespace here (" .. probe.err .. ")")
      return
    end
    local wrap = { ns[1], ns[2], "sh", "-c", 'ip link set lo up && exec "$0" "$@"' }
    for _, case in ipairs {
      { args = { upstream = "udp://127.0.0.1:5353", loss = "0.3" },
        want = "listening on udp://127.0.0.1:7000" },
      { args = { upstream = "127.0.0.1:5353", latency = "0.1" }, want = "listening on 127.0.0.1:7000" },
    } do
      local srv = t.start{ handler = "chaos", listen = {}, wrap = wrap, args = case.args }
      local line = srv.p:readline(t.T(10))
      assert.equal(case.want, line)
      srv:stop()
    end
  end)
end)

describe("control API, UDP proxies", function()
  after_each(peers.teardown)

  local function admin()
    local srv = peers.front(t.start { listen = {}, opts = { "--admin", "127.0.0.1:0" } })
    local line = srv.p:readline(t.T(5))
    srv.admin = line and line:match("^admin listening on (.+)$")
    assert(srv.admin, "expected the admin line, got " .. tostring(line))
    return srv
  end

  -- curl METHOD URL [JSON]: returns status, body, the body decoded (or {})
  local function curl(srv, method, path, body)
    local argv = { "curl", "-sS", "-X", method, "-w", "\n%{http_code}",
                   "http://" .. srv.admin .. path }
    if body then
      argv[#argv + 1] = "-H"
      argv[#argv + 1] = "Content-Type: application/json"
      argv[#argv + 1] = "-d"
      argv[#argv + 1] = body
    end
    local r = peers.assert_ok(peers.run(argv, 10), "curl")
    local text, status = r.out:match("^(.*)\n(%d+)$")
    local ok, json = pcall(cjson.decode, text)
    return tonumber(status), text, ok and type(json) == "table" and json or {}
  end

  it("a udp:// proxy relays DNS; loss added and removed through the API", function()
    local port = dns.start()
    local srv = admin()
    local st, body, proxy = curl(srv, "POST", "/proxies", string.format(
      '{"name":"dns","listen":"udp://127.0.0.1:0","upstream":"udp://127.0.0.1:%d"}', port))
    assert.equal(201, st, body)
    local pport = tonumber(tostring(proxy.listen):match("^udp://127%.0%.0%.1:(%d+)$"))
    assert(pport, "no udp listen address in " .. body)
    assert.equal(dns.ADDRESS .. "\n", peers.assert_ok(dns.dig(pport)).out)

    st, body = curl(srv, "POST", "/proxies/dns/toxics",
      '{"name":"drop","type":"loss","attributes":{"probability":1}}')
    assert.equal(200, st, body)
    local r = dns.dig(pport)
    assert.is_nil(r.out:find(dns.ADDRESS, 1, true), "answered through loss 1: " .. r.out)

    st, body = curl(srv, "DELETE", "/proxies/dns/toxics/drop")
    assert.equal(204, st, body)
    assert.equal(dns.ADDRESS .. "\n", peers.assert_ok(dns.dig(pport)).out)
  end)

  it("with --workers 2, a toxic added through the API acts in every worker", function()
    local port = dns.start()
    local srv = peers.front(t.start { listen = {}, opts = { "--admin", "127.0.0.1:0",
                                                           "--workers", "2" } })
    local line = srv.p:readline(t.T(5))
    srv.admin = line and line:match("^admin listening on (.+)$")
    assert(srv.admin, "expected the admin line, got " .. tostring(line))
    local st, body, proxy = curl(srv, "POST", "/proxies", string.format(
      '{"name":"dns","upstream":"udp://127.0.0.1:%d"}', port))
    assert.equal(201, st, body)
    local pport = tonumber(tostring(proxy.listen):match(":(%d+)$"))
    -- 16 sockets, one query each: the kernel spreads their flows over the workers
    local function answered()
      local r = peers.assert_ok(peers.run({ "/usr/bin/python3", "-c", [[
import socket, struct, sys, time
port, wait = int(sys.argv[1]), float(sys.argv[2])
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\7example\4test\0" + struct.pack(">HH", 1, 1)
socks = []
for _ in range(16):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.send(q)
    socks.append(s)
n, end = 0, time.monotonic() + wait
for s in socks:
    s.settimeout(max(0.01, end - time.monotonic()))
    try:
        s.recv(512)
        n += 1
    except socket.timeout:
        pass
print(n)
]], tostring(pport), tostring(t.T(1)) }, 30), "16 queries")
      return tonumber(r.out)
    end
    -- the other worker applies a change within ~0.1 s: waited for, not assumed
    t.eventually(function() return answered() == 16 end, 10, "16 answers without toxics")
    st, body = curl(srv, "POST", "/proxies/dns/toxics", '{"type":"loss","attributes":{"probability":1}}')
    assert.equal(200, st, body)
    t.eventually(function() return answered() == 0 end, 10, "no answer through loss 1")
  end)

  it("answers 400 to stream-only toxics on a UDP proxy and to mixed addresses", function()
    local srv = admin()
    local st, body = curl(srv, "POST", "/proxies",
      '{"name":"u","listen":"udp://127.0.0.1:0","upstream":"udp://127.0.0.1:9"}')
    assert.equal(201, st, body)
    local err
    st, body, err = curl(srv, "POST", "/proxies/u/toxics",
      '{"type":"slicer","attributes":{"average_size":10}}')
    assert.equal(400, st, body)
    assert.matches("slicer cuts chunks into slices: it needs a byte stream", err.error, 1, true)
    st, body, err = curl(srv, "POST", "/proxies/u/toxics",
      '{"type":"latency","attributes":{"latency":10,"match":{"http":{"method":"GET"}}}}')
    assert.equal(400, st, body)
    assert.matches("a http matcher frames messages", err.error, 1, true)
    -- datagram toxics are fine
    st, body = curl(srv, "POST", "/proxies/u/toxics", '{"type":"reorder","attributes":{"probability":0.5}}')
    assert.equal(200, st, body)

    st, body, err = curl(srv, "POST", "/proxies",
      '{"name":"mixed","listen":"udp://127.0.0.1:0","upstream":"127.0.0.1:9"}')
    assert.equal(400, st, body)
    assert.matches("a UDP proxy needs udp:// on both", err.error, 1, true)
    st, body = curl(srv, "POST", "/proxies",
      '{"name":"mixed","listen":"127.0.0.1:0","upstream":"udp://127.0.0.1:9"}')
    assert.equal(400, st, body)
    st, body = curl(srv, "POST", "/proxies/u", '{"upstream":"127.0.0.1:9"}')
    assert.equal(400, st, body)
    -- without a listen, a udp:// upstream gets a UDP listener
    local auto
    st, body, auto = curl(srv, "POST", "/proxies", '{"name":"auto","upstream":"udp://127.0.0.1:9"}')
    assert.equal(201, st, body)
    assert.matches("^udp://127%.0%.0%.1:%d+$", auto.listen)
    st, body = curl(srv, "GET", "/proxies")
    assert.equal(200, st)
    assert.is_nil(body:find('"mixed"', 1, true))
  end)
end)
