-- TLS on either side of the proxying handlers, against real peers: curl,
-- redis-cli and redis-server (both with and without TLS), Python's ssl
-- module (tests/support/tls_peer.py: an HTTPS file server, a TLS echo server
-- that answers after the client's EOF, a half-closing TLS client) and the
-- control API driven with curl. Certificates are made with the openssl CLI
-- (tests/support/pki.lua): a CA, a leaf for localhost and 127.0.0.1 signed by
-- it, and a second CA that signed nothing of ours. Every wait is bounded.
local t = require "echokit_test"
local socket = require "socket"
local cjson = require "cjson"
local peers = require "peers"

local PYTHON = "/usr/bin/python3"
local PEER = t.src .. "/tests/support/tls_peer.py"
local MiB = 1024 * 1024

local run, assert_ok, spawn = peers.run, peers.assert_ok, peers.spawn

---------------------------------------------------------------------------
-- Certificates (made once for the file)
---------------------------------------------------------------------------
local pki   -- { dir=, ca=, cert=, key=, wrong=, pki= }

local function make_pki()
  local p = require("pki").new("echokit-tls")
  local ca = p:ca("ca", { key = "ca.key", subj = "/CN=echokit test CA",
                          addext = { "basicConstraints=critical,CA:TRUE",
                                     "keyUsage=critical,keyCertSign,cRLSign" } })
  local leaf = p:leaf("server", { ca = ca, key = "server.key", subj = "/CN=localhost",
                                  san = "DNS:localhost,IP:127.0.0.1",
                                  ext = { "basicConstraints=CA:FALSE" }, eku = "serverAuth" })
  local wrong = p:ca("wrong-ca", { key = "wrong-ca.key", subj = "/CN=echokit wrong CA",
                                   addext = { "basicConstraints=critical,CA:TRUE" } })
  -- the chain is what the tests think it is
  local ok, said = p:verify(ca, leaf)
  assert(ok, "verify with the CA:\n" .. said)
  ok, said = p:verify(wrong, leaf)
  assert(not ok, "the leaf verifies against the wrong CA:\n" .. said)
  peers.cleanup()
  return { pki = p, dir = p.dir, ca = ca.cert, cert = leaf.cert, key = leaf.key,
           wrong = wrong.cert }
end

---------------------------------------------------------------------------
-- Peers
---------------------------------------------------------------------------

-- tls_peer.py MODE ... (a server): h.port; h:conn() reads its next
-- `conn N ...` line (bounded), returning the rest of it.
local function start_peer(...)
  local h = spawn({ PYTHON, PEER, ... })
  local line, why = h.p:readline(t.T(10))
  assert(line and line:match("^%d+$"), string.format(
    "tls_peer.py %s printed no port (%s: %s); stderr:\n%s", (select(1, ...)), tostring(why),
    tostring(line), t.clip(peers.helper_stderr(h))))
  h.port = tonumber(line)
  function h.conn(self, what)
    local l, err = self.p:readline(t.T(10))
    assert(l, string.format("tls_peer.py: no connection line for %s (%s); stderr:\n%s",
      what or "a connection", tostring(err), t.clip(peers.helper_stderr(self))))
    local n, rest = l:match("^conn (%d+) (.*)$")
    assert(n, "tls_peer.py: unexpected line " .. l)
    return rest
  end
  return h
end

local function www()
  local dir = peers.tmpdir()
  local blob = t.random_bytes(MiB + 12345)
  peers.write_file(dir .. "/blob.bin", blob)
  local small = t.random_bytes(32 * 1024)
  peers.write_file(dir .. "/small.bin", small)
  peers.write_file(dir .. "/index.html", "<h1>echokit</h1>\n")
  return dir, blob, small
end

-- curl with a bound on the whole transfer; { how, code, out, err, elapsed }.
local function curl(...)
  return run({ "curl", "-sS", "--max-time", tostring(t.T(20)), ... }, 30)
end

-- curl that must succeed, its body byte-exact against `want`.
local function curl_body(want, what, ...)
  local r = assert_ok(curl(...), what)
  t.assert_bytes(want, r.out, what)
  return r
end

local function proxy(o)
  o.opts = o.opts or {}
  if o.tls_listener then
    o.listen = { "tls://127.0.0.1:0" }
    for _, a in ipairs({ "--tls-cert", pki.cert, "--tls-key", pki.key }) do
      o.opts[#o.opts + 1] = a
    end
  end
  return peers.front(t.start(o))
end

local function url(srv, path)
  return ("%s://127.0.0.1:%d/%s"):format(srv:addr().tls and "https" or "http", srv:port(),
                                        path or "")
end

-- redis-server with TLS only, on a port picked here (redis takes no port 0
-- for --tls-port): tried again if another process took it meanwhile.
local function start_redis_tls()
  local dir = peers.tmpdir()
  for _ = 1, 5 do
    local port = peers.closed_port()
    local log = dir .. "/redis-" .. port .. ".log"
    local h = spawn({ "redis-server", "--port", "0", "--tls-port", tostring(port),
      "--bind", "127.0.0.1", "--tls-cert-file", pki.cert, "--tls-key-file", pki.key,
      "--tls-ca-cert-file", pki.ca, "--tls-auth-clients", "no", "--save", "",
      "--appendonly", "no", "--dir", dir, "--logfile", log })
    h.port = port
    local up = t.eventually(function()
      if h.p:wait(0) then return "exited" end
      local r = run({ "redis-cli", "--tls", "--cacert", pki.ca, "-h", "127.0.0.1", "-p",
                      tostring(port), "PING" }, 5)
      return r.code == 0 and r.out == "PONG\n" and "up", r.out .. r.err
    end, 10, "redis-server --tls-port " .. port .. " answering")
    if up == "up" then return h end
    local text = t.read_file(log)
    assert(text:find("Address already in use", 1, true),
      "redis-server with TLS exited at start; log:\n" .. text ..
      "\nstderr:\n" .. peers.helper_stderr(h))
  end
  error("redis-server: no free port in 5 tries")
end

local function cli(port, ...)
  local r = assert_ok(run({ "redis-cli", "-h", "127.0.0.1", "-p", tostring(port), ... }, 10),
                      "redis-cli " .. table.concat({ ... }, " "))
  return (r.out:gsub("\n$", "")), r
end

local function tls_cli(port, ...)
  return cli(port, "--tls", "--cacert", pki.ca, ...)
end

-- Round trip of one line through a plain TCP address; seconds.
local function line_rtt(port, line)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(t.T(10))
  local t0 = t.now()
  t.send_all(c, line .. "\n")
  local back = t.recv_line(c)
  local secs = t.now() - t0
  c:close()
  assert.equal(line, back)
  return secs
end

---------------------------------------------------------------------------

describe("TLS proxy", function()
  setup(function() pki = make_pki() end)
  teardown(function() if pki then pki.pki:remove() end end)
  after_each(peers.teardown)

  it("terminates TLS for curl in front of a plain HTTP server, byte-exact", function()
    local dir, blob = www()
    local http = peers.start_http(dir)
    local srv = proxy{ handler = "proxy", tls_listener = true,
                       args = { upstream = "127.0.0.1:" .. http.port } }
    assert.truthy(srv:addr().tls)
    curl_body(blob, "curl https://127.0.0.1 (IP SAN)", "--cacert", pki.ca, url(srv, "blob.bin"))
    curl_body("<h1>echokit</h1>\n", "curl https://localhost (DNS SAN)", "--cacert", pki.ca,
              "--resolve", ("localhost:%d:127.0.0.1"):format(srv:port()),
              ("https://localhost:%d/"):format(srv:port()))
    -- the client really checks the listener's certificate: another CA fails it
    local r = curl("--cacert", pki.wrong, url(srv, "blob.bin"))
    assert.equal(60, r.code, "curl with the wrong CA: " .. r.err)   -- CURLE_PEER_FAILED_VERIFICATION
    -- and a plain HTTP request to the TLS listener gets no HTTP answer
    r = curl((url(srv, "blob.bin"):gsub("^https", "http")))
    assert.are_not.equal(0, r.code, "plain HTTP was answered by a TLS listener")
    srv:await_log("tls handshake failed")
  end)

  it("answers a request that came in the same segment as the client's Finished", function()
    -- the records are read with the handshake's last read: nothing on the
    -- socket will announce them again
    local srv = proxy{ handler = "echo", tls_listener = true }
    for i = 1, 3 do
      local r = assert_ok(run({ PYTHON, PEER, "ask", "127.0.0.1", tostring(srv:port()), pki.ca,
                                "localhost", "request " .. i }, 20,
                              { env = { TLS_PEER_TIMEOUT = tostring(t.T(5)) } }),
                          "tls_peer.py ask")
      assert.equal("request " .. i .. "\n", r.out)
    end
  end)

  describe("to a TLS upstream (Python's HTTPS server)", function()
    local function setup_up()
      local dir, blob = www()
      local up = start_peer("http", pki.cert, pki.key, dir)
      return up, blob
    end

    it("relays a plain client when ca= is the upstream's CA", function()
      local up, blob = setup_up()
      local srv = proxy{ handler = "proxy",
                         args = { upstream = "tls://127.0.0.1:" .. up.port, ca = pki.ca } }
      curl_body(blob, "curl through the proxy", url(srv, "blob.bin"))
      assert.matches("^resumed=0 version=TLS", (up:conn("the first connection")))
      assert.equal(0, #srv:log_matching(" warn "), srv:stderr())
    end)

    for _, case in ipairs({ { "a wrong CA", function() return { ca = pki.wrong } end },
                            { "the system store (no ca=)", function() return {} end } }) do
      it("refuses the upstream verified against " .. case[1], function()
        local up = setup_up()
        local args = case[2]()
        args.upstream = "tls://127.0.0.1:" .. up.port
        local srv = proxy{ handler = "proxy", args = args }
        for i = 1, 2 do
          local r = curl(url(srv, "blob.bin"))
          -- 52: empty reply (closed without an answer), or 56 when the
          -- request reached the socket just after echokit closed it and the
          -- kernel answered it with a reset; not 28, a timeout
          assert.is_true(r.code == 52 or r.code == 56,
                         ("curl %d: exit %s, %d bytes: %s"):format(i, tostring(r.code), #r.out,
                                                                   r.err))
          assert.equal("", r.out)
          -- the upstream saw the handshake refused by echokit
          assert.matches("^failed: .*[Uu][Nn][Kk][Nn][Oo][Ww][Nn][ _][Cc][Aa]", (up:conn()))
        end
        local line = srv:await_log("certificate verify failed")
        assert.truthy(line:find(" warn ", 1, true), line)
        assert.truthy(line:find("upstream tls://127.0.0.1:" .. up.port, 1, true), line)
        assert.truthy(line:find("unable to get local issuer certificate", 1, true), line)
        t.eventually(function() return #srv:log_matching("certificate verify failed") == 2 end,
                     5, "one log line per refused connection")
      end)
    end

    it("relays with insecure=1 and warns once, however many connections", function()
      local up, blob = setup_up()
      local srv = proxy{ handler = "proxy", args = { upstream = "tls://127.0.0.1:" .. up.port,
                                                     ca = pki.wrong, insecure = 1 } }
      for i = 1, 3 do
        curl_body(blob, "curl " .. i .. " with insecure=1", url(srv, "blob.bin"))
        assert.matches("^resumed=", (up:conn()))
      end
      local warns = srv:log_matching("certificate verification is off")
      assert.equal(1, #warns, srv:stderr())
      assert.truthy(warns[1]:find(" warn tls: 127.0.0.1:" .. up.port, 1, true), warns[1])
      assert.equal(0, #srv:log_matching("certificate verify failed"))
    end)

    it("resumes the upstream's TLS session on the next connection", function()
      local up = setup_up()
      local srv = proxy{ handler = "proxy",
                         args = { upstream = "tls://127.0.0.1:" .. up.port, ca = pki.ca } }
      local seen = {}
      for i = 1, 3 do
        curl_body("<h1>echokit</h1>\n", "curl " .. i, url(srv))
        seen[i] = up:conn("connection " .. i)
      end
      assert.matches("^resumed=0 ", seen[1])
      assert.matches("^resumed=1 ", seen[2])
      assert.matches("^resumed=1 ", seen[3])
    end)
  end)

  it("shows the resumption in conn:tls() of an echokit.connect connection", function()
    local up = start_peer("echo", pki.cert, pki.key)
    local srv = t.start{ handler = "tests/handlers/tls_proxy_resume.lua",
                         args = { upstream = "tls://127.0.0.1:" .. up.port, ca = pki.ca } }
    local c = srv:connect()
    for i = 1, 3 do
      local line = t.ask(c, "hello " .. i, 10)
      local f = t.parse_kv(line)
      assert.equal(i == 1 and "false" or "true", f.resumed, line)
      assert.equal("ok", f.verify, line)
      assert.matches("^TLSv1%.3$", f.version, nil, nil, line)
      assert.truthy(line:find("subject=/CN=localhost", 1, true), line)
      assert.matches(i == 1 and "^resumed=0 " or "^resumed=1 ", up:conn())
    end
  end)

  it("resumes after an upstream that closes without close_notify after echokit's", function()
    -- The order is fixed here: the client's EOF makes echokit send its
    -- close_notify, then the server answers and closes the TCP connection
    -- without one of its own (as most servers do).
    local up = start_peer("echo", pki.cert, pki.key, "abrupt")
    local srv = proxy{ handler = "proxy",
                       args = { upstream = "tls://127.0.0.1:" .. up.port, ca = pki.ca } }
    for i = 1, 3 do
      local c = srv:connect()
      t.send_all(c, "hi\n")
      assert(c:shutdown("send"))
      assert.same({ "hi\nEOF after 3 bytes\n", "closed" }, { t.recv_until_closed(c, 10) })
      c:close()
      assert.matches(i == 1 and "^resumed=0 " or "^resumed=1 ", up:conn(), nil, nil,
                     "upstream connection " .. i)
    end
  end)

  describe("with redis", function()
    it("carries redis-cli --tls to a plain redis-server", function()
      local redis = peers.start_redis()
      local srv = proxy{ handler = "proxy", tls_listener = true,
                         args = { upstream = "unix:" .. redis.path } }
      assert.equal("OK", tls_cli(srv:port(), "SET", "tls:key", "value through TLS"))
      assert.equal("value through TLS", tls_cli(srv:port(), "GET", "tls:key"))
      -- what redis itself holds
      local r = assert_ok(run({ "redis-cli", "-s", redis.path, "GET", "tls:key" }, 5))
      assert.equal("value through TLS\n", r.out)
      -- redis-cli checks the listener's certificate too
      r = run({ "redis-cli", "--tls", "--cacert", pki.wrong, "-h", "127.0.0.1", "-p",
                tostring(srv:port()), "PING" }, 10)
      assert.falsy(r.out:find("PONG", 1, true), r.out)
      assert.truthy((r.out .. r.err):find("certificate verify failed", 1, true), r.out .. r.err)
    end)

    it("carries plain redis-cli to redis-server --tls-port", function()
      local redis = start_redis_tls()
      local srv = proxy{ handler = "proxy",
                         args = { upstream = "tls://127.0.0.1:" .. redis.port, ca = pki.ca } }
      assert.equal("OK", cli(srv:port(), "SET", "k", "v over a TLS upstream"))
      assert.equal("v over a TLS upstream", cli(srv:port(), "GET", "k"))
      assert.equal("v over a TLS upstream", tls_cli(redis.port, "GET", "k"))
      -- plain redis-cli straight to the TLS port gets nothing
      local r = run({ "redis-cli", "-h", "127.0.0.1", "-p", tostring(redis.port), "PING" }, 10)
      assert.falsy(r.out:find("PONG", 1, true), r.out)
    end)

    it("applies a latency toxic to the plaintext of a TLS upstream (chaos)", function()
      local redis = start_redis_tls()
      local lat = 0.3
      local srv = proxy{ handler = "chaos", args = {
        upstream = "tls://127.0.0.1:" .. redis.port, ca = pki.ca, latency = lat } }
      local plain = proxy{ handler = "chaos", args = {
        upstream = "tls://127.0.0.1:" .. redis.port, ca = pki.ca } }
      -- best of 3 each, so that one slow process start does not decide
      local function best(port, f)
        local m = math.huge
        for _ = 1, 3 do
          local out, r = f(port, "PING")
          assert.equal("PONG", out)
          m = math.min(m, r.elapsed)
        end
        return m
      end
      local direct = best(redis.port, tls_cli)
      local untoxic = best(plain:port(), cli)
      local slow = best(srv:port(), cli)
      local what = ("PING direct %.3fs, through chaos without toxics %.3fs, with latency=%g %.3fs")
                   :format(direct, untoxic, lat, slow)
      -- the toxic's delay is a strict lower bound. The rest of a run is a
      -- redis-cli process's start and handshake, which a loaded machine
      -- stretches by more than a few hundredths: the comparisons with the
      -- other two runs allow half the toxic's delay for that.
      assert(slow >= lat, what)
      assert(slow - direct >= lat / 2, what)
      assert(slow - untoxic >= lat / 2, what)
      assert(slow < untoxic + lat + t.T(1), what)
      assert(untoxic < direct + t.T(0.25), what)
      -- the data went to redis and back in the clear on echokit's side only
      assert.equal("OK", cli(srv:port(), "SET", "via", "chaos"))
      assert.equal("chaos", tls_cli(redis.port, "GET", "via"))
    end)
  end)

  it("slices and delays for a TLS client (chaos behind a tls:// listener)", function()
    local dir, _, small = www()
    local http = peers.start_http(dir)
    -- 32 KiB in 1 KiB slices 20 ms apart: 0.6 s when the response reaches
    -- the proxy in one or two reads (a read's first slice goes at once)
    local sliced = proxy{ handler = "chaos", tls_listener = true, args = {
      upstream = "127.0.0.1:" .. http.port, slicer = 1024, slice_delay = 0.02 } }
    local slow = proxy{ handler = "chaos", tls_listener = true, args = {
      upstream = "127.0.0.1:" .. http.port, latency = 0.3 } }
    local base = proxy{ handler = "chaos", tls_listener = true, args = {
      upstream = "127.0.0.1:" .. http.port } }
    local function fetch(srv, what)
      local r = curl_body(small, what, "--cacert", pki.ca, "-w", "", url(srv, "small.bin"))
      return r.elapsed
    end
    local b = math.min(fetch(base, "no toxics"), fetch(base, "no toxics"))
    local s = fetch(sliced, "slicer")
    local l = math.min(fetch(slow, "latency"), fetch(slow, "latency"))
    local what = ("32 KiB over TLS: no toxics %.3fs, slicer %.3fs, latency=0.3 %.3fs"):format(b, s, l)
    assert(s >= 0.4, what)
    assert(l >= 0.3, what)
    assert(l - b >= 0.3 - t.T(0.05), what)
    assert(l < b + 0.3 + t.T(1), what)
  end)

  it("relays 16 MiB both ways TLS to TLS, and carries a half-close", function()
    local up = start_peer("echo", pki.cert, pki.key)
    local srv = proxy{ handler = "proxy", tls_listener = true,
                       args = { upstream = "tls://127.0.0.1:" .. up.port, ca = pki.ca } }
    local n = 16 * MiB
    local r = run({ PYTHON, PEER, "client", "127.0.0.1", tostring(srv:port()), pki.ca,
                    "localhost", tostring(n) }, 60,
                  { env = { TLS_PEER_TIMEOUT = tostring(t.T(50)) } })
    assert_ok(r, "tls_peer.py client through the proxy")
    -- the upstream's answer, written after it read EOF, reached the client
    assert.matches("^ok 16777216 bytes each way.*EOF after 16777216 bytes", r.out)
    assert.matches("^resumed=0 version=TLS", (up:conn()))
  end)

  describe("control API", function()
    local function admin_of(srv)
      for _, line in ipairs(srv.stdout_lines) do
        local a = line:match("^admin listening on (.+)$")
        if a then return a end
      end
      error("no 'admin listening on' line; stdout: " .. table.concat(srv.stdout_lines, "\n"))
    end

    -- curl -X METHOD http://ADMIN/PATH -d BODY: status, decoded body (or raw).
    local function api(admin, method, path, body)
      local argv = { "-X", method, "-w", "\n%{http_code}", "http://" .. admin .. path }
      if body then
        for _, a in ipairs({ "-H", "Content-Type: application/json", "--data-binary", body }) do
          argv[#argv + 1] = a
        end
      end
      local r = assert_ok(curl(table.unpack(argv)), method .. " " .. path)
      local raw, status = r.out:match("^(.*)\n(%d%d%d)$")
      assert(status, "no status from curl: " .. r.out)
      local ok, json = pcall(cjson.decode, raw)
      return tonumber(status), ok and json or raw
    end

    it("creates a proxy to a TLS upstream with upstream_tls, toxics apply", function()
      local up = start_peer("echo", pki.cert, pki.key)
      local srv = peers.front(t.start{ opts = { "--admin", "127.0.0.1:0" } })
      local admin = admin_of(srv)
      local upstream = "tls://127.0.0.1:" .. up.port
      local st, p = api(admin, "POST", "/proxies", cjson.encode {
        name = "tls", upstream = upstream, listen = "127.0.0.1:0",
        upstream_tls = { ca = pki.ca } })
      assert.equal(201, st, cjson.encode(p))
      assert.equal(upstream, p.upstream)
      local port = tonumber(p.listen:match(":(%d+)$"))
      local base = line_rtt(port, "hello over TLS")
      assert.matches("^resumed=0 ", (up:conn()))
      st, p = api(admin, "POST", "/proxies/tls/toxics", cjson.encode {
        name = "slow", type = "latency", stream = "downstream", attributes = { latency = 300 } })
      assert.equal(200, st, cjson.encode(p))
      local slow = line_rtt(port, "slowly over TLS")
      assert.matches("^resumed=1 ", (up:conn()))
      local what = ("round trip %.3fs, with latency 300 ms %.3fs"):format(base, slow)
      assert(slow >= 0.3, what)
      assert(slow < base + 0.3 + t.T(1), what)

      -- the same upstream verified against the wrong CA: refused, logged
      st, p = api(admin, "POST", "/proxies", cjson.encode {
        name = "wrong", upstream = upstream, listen = "127.0.0.1:0",
        upstream_tls = { ca = pki.wrong } })
      assert.equal(201, st, cjson.encode(p))
      local c = assert(socket.connect("127.0.0.1", tonumber(p.listen:match(":(%d+)$"))))
      c:settimeout(t.T(10))
      t.send_all(c, "never echoed\n")
      assert.same({ "", "closed" }, { t.recv_until_closed(c, 10) })
      assert.matches("^failed: ", (up:conn()))
      srv:await_log("certificate verify failed")

      -- bad TLS options: 400 with a reason; nothing is created
      for _, case in ipairs({
        { { ca = pki.dir .. "/no-such-ca.pem" }, upstream, "no%-such%-ca%.pem" },
        { { ca = pki.ca }, "127.0.0.1:" .. up.port, "upstream_tls needs a tls:// upstream" },
        { { cafile = pki.ca }, upstream, "unknown tls option cafile" },
      }) do
        st, p = api(admin, "POST", "/proxies", cjson.encode {
          name = "bad", upstream = case[2], listen = "127.0.0.1:0", upstream_tls = case[1] })
        assert.equal(400, st, cjson.encode(p))
        assert.equal("table", type(p), tostring(p))
        assert.matches(case[3], p.error)
      end
      st = api(admin, "GET", "/proxies/bad")
      assert.equal(404, st)
      -- the good proxy is untouched
      assert.equal("still here", (function()
        local cc = assert(socket.connect("127.0.0.1", port))
        cc:settimeout(t.T(10))
        t.send_all(cc, "still here\n")
        local l = t.recv_line(cc)
        cc:close()
        return l
      end)())
    end)
  end)
end)
