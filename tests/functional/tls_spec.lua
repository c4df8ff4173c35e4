-- TLS against real clients: openssl s_client and Python's ssl module
-- (tests/support/tls_client.py). Certificates are made with the openssl CLI
-- (tests/support/pki.lua) once for the file. Every wait is bounded (harness
-- timeouts, scaled by ECHOKIT_SLOW / valgrind).
local t = require "echokit_test"
local peers = require "peers"
local pki = require "pki"

local PY = "/usr/bin/python3"
local CLIENT = "tests/support/tls_client.py"
local INFO = "tests/handlers/tls_info.lua"
local MiB = 1024 * 1024

local run, assert_ok, shq = peers.run, peers.assert_ok, peers.shq

---------------------------------------------------------------------------
-- Certificates: a CA, leaves for a.test and b.test, a client certificate the
-- CA signed, one nobody signed, an expired leaf (openssl x509 -days -1).
---------------------------------------------------------------------------
local certs

local function sh(cmd, what)
  local r = run({ "sh", "-ec", cmd }, 30)
  assert_ok(r, what or cmd)
  return r
end

local function make_certs()
  local p = pki.new("echokit-tls")
  local ca = p:ca("ca", { subj = "/CN=echokit test CA" })
  local a = p:leaf("a", { ca = ca, subj = "/CN=a.test", san = "DNS:a.test" })
  local b = p:leaf("b", { ca = ca, subj = "/CN=b.test", san = "DNS:b.test" })
  local client = p:leaf("client", { ca = ca, subj = "/CN=test client/O=echokit tests",
                                    eku = "clientAuth" })
  local expired = p:leaf("expired", { ca = ca, subj = "/CN=localhost", san = "DNS:localhost",
                                      days = -1 })
  local stranger = p:self_signed("stranger", { subj = "/CN=stranger" })
  return { pki = p, dir = p.dir, ca = ca.cert, ca_key = ca.key,
           a = a.cert, a_key = a.key, b = b.cert, b_key = b.key,
           client = client.cert, client_key = client.key,
           stranger = stranger.cert, stranger_key = stranger.key,
           expired = expired.cert, expired_key = expired.key }
end

---------------------------------------------------------------------------
-- Clients
---------------------------------------------------------------------------

-- Runs tls_client.py; returns { key = last value, all = { key = {values} }, raw = }.
local function client(port, mode, opts, timeout)
  timeout = timeout or 10
  local argv = { PY, CLIENT, tostring(port), mode, "--timeout", tostring(t.T(timeout)) }
  for _, o in ipairs(opts or {}) do argv[#argv + 1] = tostring(o) end
  local r = run(argv, timeout + 5)
  assert_ok(r, "tls_client.py " .. mode)
  local res = { all = {}, raw = r.out }
  for line in r.out:gmatch("[^\n]+") do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then
      res[k] = v
      res.all[k] = res.all[k] or {}
      table.insert(res.all[k], v)
    end
  end
  return res
end

-- The SHA-256 fingerprint --tls-self-signed logged.
local function logged_fingerprint(srv)
  local _, fp = srv:await_log("self%-signed certificate.-SHA%-256 fingerprint ([%x:]+)")
  assert(fp and #fp == 95, "fingerprint: " .. tostring(fp))
  return fp
end

-- One line round trip on a plain luasocket client of an echoing handler.
local function round_trip(c, line)
  t.send_all(c, line .. "\n")
  return t.recv_line(c, 5)
end

-- `openssl s_client` run to its end with stdin at EOF: it handshakes, prints
-- what it saw and exits.
local function s_client_info(port, args)
  local argv = { "openssl", "s_client", "-connect", "127.0.0.1:" .. port }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local r = run(argv, 15)
  return r.out .. r.err, r
end

---------------------------------------------------------------------------

describe("tls", function()
  setup(function() certs = make_certs() end)
  teardown(function() if certs then certs.pki:remove() end end)
  after_each(peers.teardown)

  describe("--tls-self-signed echo", function()
    it("answers python ssl; the client sees the fingerprint the server logged", function()
      local srv = t.start{ handler = "echo", listen = { "tls://127.0.0.1:0" },
                           opts = { "--tls-self-signed" } }
      assert.is_true(srv:addr().tls)
      assert.equal("listening on tls://127.0.0.1:" .. srv:port(), srv.stdout_lines[1])
      local fp = logged_fingerprint(srv)
      local r = client(srv:port(), "echo", { "--size", 1000 })
      assert.equal("ok", r.handshake, r.raw)
      assert.equal(fp, r.fingerprint)
      assert.equal("1000 ok", (r.echo:match("^%d+ %a+")))
    end)

    it("answers openssl s_client: a line comes back", function()
      local srv = t.start{ handler = "echo", listen = { "tls://127.0.0.1:0" },
                           opts = { "--tls-self-signed" } }
      local fp = logged_fingerprint(srv)
      local r = client(srv:port(), "sclient", {
        "--send", "hello over s_client", "--send", "second line", "--",
        "-connect", "127.0.0.1:" .. srv:port(), "-quiet", "-no_ign_eof" })
      assert.same({ "hello over s_client", "second line" }, r.all.echoed, r.raw)
      assert.equal("0", r.exit, r.raw)
      -- and s_client's own view of the certificate: the same fingerprint
      local out = s_client_info(srv:port())
      local pem = out:match("(%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-.-%-%-%-%-%-END CERTIFICATE%-%-%-%-%-)")
      assert(pem, "no certificate in s_client's output:\n" .. t.clip(out))
      local f = io.popen("printf '%s\\n' " .. shq(pem) ..
                         " | openssl x509 -noout -fingerprint -sha256")
      local got = f:read("a")
      f:close()
      assert.equal(fp, got:match("Fingerprint=([%x:]+)"))
      assert.truthy(out:find("CN = localhost", 1, true), out)
    end)

    it("TLS 1.3: data in the segment of the client's Finished is echoed", function()
      local srv = t.start{ handler = "echo", listen = { "tls://127.0.0.1:0" },
                           opts = { "--tls-self-signed" } }
      for _ = 1, 3 do
        local r = client(srv:port(), "echo", { "--tls", "1.3", "--coalesce", "--size", 1 }, 5)
        assert.equal("TLSv1.3", r.version, r.raw)
        assert.equal("1 ok", (r.echo or "none"):match("^%d+ %a+"), r.raw)
      end
    end)

    for _, v in ipairs({ "1.2", "1.3" }) do
      it("TLS " .. v .. ": 1 B, 64 KiB and 16 MiB come back byte-exact", function()
        local srv = t.start{ handler = "echo", listen = { "tls://127.0.0.1:0" },
                             opts = { "--tls-self-signed" } }
        local r = client(srv:port(), "echo", { "--tls", v, "--size", 1, "--size", 65536,
                                               "--size", 16 * MiB }, 30)
        assert.equal("TLSv" .. v, r.version, r.raw)
        local sizes = {}
        for _, e in ipairs(r.all.echo or {}) do
          assert(e:match("^%d+ ok "), "echo: " .. e .. "\n" .. r.raw)
          sizes[#sizes + 1] = tonumber(e:match("^%d+"))
        end
        assert.same({ 1, 65536, 16 * MiB }, sizes)
      end)
    end
  end)

  describe("half-close", function()
    for _, v in ipairs({ "1.2", "1.3" }) do
      it("TLS " .. v .. ": data then close_notify: the whole echo, then the server's " ..
         "close_notify", function()
        local srv = t.start{ handler = "echo", listen = { "tls://127.0.0.1:0" },
                             opts = { "--tls-self-signed" } }
        -- 100 B and its close_notify in one segment (the server reads both at
        -- once); 3 MiB sent while the echo comes back
        for _, case in ipairs({ { 100, "--coalesce" }, { 3 * MiB } }) do
          local size = case[1]
          local r = client(srv:port(), "halfclose", { "--tls", v, "--size", size, case[2] }, 15)
          assert.equal("yes", r.sent_close_notify, r.raw)
          assert.equal(size .. " ok", r.echo, r.raw)
          assert.equal("close_notify", r["end"], r.raw)
        end
      end)
    end

    it("conn:shutdown after a write: the client reads the data, then close_notify, " ..
       "and can still send", function()
      local srv = t.start{ handler = "tests/handlers/tls_shut.lua",
                           listen = { "tls://127.0.0.1:0" }, opts = { "--tls-self-signed" } }
      local r = client(srv:port(), "shutfirst", { "--send", "hello", "--after", "still here" })
      assert.equal("last words for hello\n", r.received:gsub("\\n", "\n"), r.raw)
      -- close_notify, not a bare TCP EOF (which the client reports as "eof")
      assert.equal("close_notify", r.all["end"][1], r.raw)
      assert.equal("yes", r.sent_after, r.raw)
      local id = srv:await_log("shut down conn (%d+)"):match("conn (%d+)")
      srv:await_log("after shutdown conn " .. id .. " got %[still here|%]")
      srv:await_log("eof conn " .. id)
      srv:await_log("closed conn " .. id .. " reason=nil")
    end)
  end)

  describe("SNI and ALPN", function()
    local function two_certs(extra)
      local opts = { "--tls-cert", certs.a, "--tls-key", certs.a_key,
                     "--tls-cert", certs.b, "--tls-key", certs.b_key }
      for _, o in ipairs(extra or {}) do opts[#opts + 1] = o end
      return t.start{ handler = INFO, listen = { "tls://127.0.0.1:0" }, opts = opts }
    end

    it("s_client -servername b.test gets b's certificate; no SNI gets the first", function()
      local srv = two_certs()
      local out = s_client_info(srv:port(), { "-servername", "b.test" })
      assert.truthy(out:find("subject=CN = b.test", 1, true), out)
      out = s_client_info(srv:port(), { "-noservername" })
      assert.truthy(out:find("subject=CN = a.test", 1, true), out)
      out = s_client_info(srv:port(), { "-servername", "a.test" })
      assert.truthy(out:find("subject=CN = a.test", 1, true), out)
      -- python, verifying against the CA with the names: both verify
      for _, name in ipairs({ "a.test", "b.test" }) do
        local r = client(srv:port(), "lines", { "--ca", certs.ca, "--sni", name,
                                                "--send", "info" })
        assert.equal("ok", r.handshake, r.raw)
        assert.equal(name, r.subject_cn)
        assert.equal("version=TLSv1.3 sni=" .. name .. " alpn=nil server=true resumed=false",
                     r.reply)
      end
    end)

    it("--tls-alpn h2,http/1.1: a client offering http/1.1 gets it, and so does the " ..
       "handler", function()
      local srv = two_certs({ "--tls-alpn", "h2,http/1.1" })
      local r = client(srv:port(), "lines", { "--alpn", "http/1.1", "--sni", "a.test",
                                              "--tls", "1.2", "--send", "info" })
      assert.equal("http/1.1", r.alpn, r.raw)
      assert.equal("version=TLSv1.2 sni=a.test alpn=http/1.1 server=true resumed=false",
                   r.reply)
      r = client(srv:port(), "lines", { "--alpn", "spdy/1,h2", "--send", "info" })
      assert.equal("h2", r.alpn, r.raw)
      assert.equal("version=TLSv1.3 sni=nil alpn=h2 server=true resumed=false", r.reply)
      -- on_tls ran before on_connect, conn:tls() already filled in both
      local tls_line = srv:await_log("on_tls conn %d+ version=TLSv1.2 sni=a.test alpn=http/1.1")
      local conn_line = srv:await_log("on_connect conn %d+ version=TLSv1.2 sni=a.test")
      local log = srv:stderr()
      assert(log:find(tls_line, 1, true) < log:find(conn_line, 1, true), log)
    end)
  end)

  describe("client certificates (--tls-client-ca)", function()
    local function start_ca()
      return t.start{ handler = INFO, listen = { "tls://127.0.0.1:0" },
                      opts = { "--tls-cert", certs.a, "--tls-key", certs.a_key,
                               "--tls-client-ca", certs.ca } }
    end

    it("accepts a client whose certificate the CA signed; the handler sees it", function()
      local srv = start_ca()
      local r = client(srv:port(), "lines", { "--cert", certs.client, "--key", certs.client_key,
                                              "--send", "peer", "--send", "echo me" })
      assert.same({ "subject=/CN=test client/O=echokit tests issuer=/CN=echokit test CA " ..
                    "verify=ok san=", "echo me" }, r.all.reply, r.raw)
    end)

    -- What the client sees: TLS 1.2 fails in the handshake; in 1.3 the
    -- client's handshake is done before the server checks, and its first
    -- read gets the alert.
    for _, case in ipairs({
      { name = "without a certificate", opts = {},
        log = "peer did not return a certificate",
        ["1.2"] = { handshake = "failed: SSLV3_ALERT_HANDSHAKE_FAILURE" },
        ["1.3"] = { ["end"] = "error: TLSV13_ALERT_CERTIFICATE_REQUIRED" } },
      { name = "with a certificate no CA signed", opts = { "--cert", "stranger", "--key",
        "stranger_key" }, log = "certificate verify failed: self%-signed certificate",
        ["1.2"] = { handshake = "failed: TLSV1_ALERT_UNKNOWN_CA" },
        ["1.3"] = { ["end"] = "error: TLSV1_ALERT_UNKNOWN_CA" } },
    }) do
      for _, v in ipairs({ "1.2", "1.3" }) do
        it("refuses a client " .. case.name .. " (TLS " .. v .. "), serves the next", function()
          local srv = start_ca()
          local opts = { "--tls", v, "--send", "peer" }
          for i = 1, #case.opts, 2 do
            opts[#opts + 1] = case.opts[i]
            opts[#opts + 1] = certs[case.opts[i + 1]]
          end
          local r = client(srv:port(), "lines", opts)
          for k, want in pairs(case[v]) do
            assert.equal(want, (r[k] or ""):sub(1, #want), k .. ":\n" .. r.raw)
          end
          assert.is_nil(r.raw:find("reply=subject", 1, true), r.raw)
          srv:await_log("%[conn %d+ 127%.0%.0%.1:%d+%] tls handshake failed: " ..
                        case.log)
          assert.equal(0, #srv:log_matching("on_connect"), "reached Lua: " .. srv:stderr())
          -- still serving
          r = client(srv:port(), "lines", { "--cert", certs.client, "--key", certs.client_key,
                                            "--send", "after" })
          assert.equal("after", r.reply, r.raw)
        end)
      end
    end
  end)

  describe("STARTTLS", function()
    local function start_smtp()
      return t.start{ handler = "tests/handlers/tls_starttls.lua",
                      opts = { "--tls-self-signed" } }
    end

    it("openssl s_client -starttls smtp upgrades and gets its lines echoed", function()
      local srv = start_smtp()
      local r = client(srv:port(), "sclient", {
        "--send", "hello after starttls", "--send", "another", "--",
        "-connect", "127.0.0.1:" .. srv:port(), "-starttls", "smtp", "-quiet", "-no_ign_eof" })
      assert.same({ "hello after starttls", "another" }, r.all.echoed, r.raw)
      srv:await_log("starttls done conn %d+ TLSv1%.3")
    end)

    for _, v in ipairs({ "1.2", "1.3" }) do
      it("python: the clear dialogue, then TLS " .. v .. " on the same connection", function()
        local srv = start_smtp()
        local fp = logged_fingerprint(srv)
        local r = client(srv:port(), "lines", { "--starttls", "--tls", v,
                                                "--send", "secret line", "--send", "QUIT" })
        assert.equal("220 ready", r.greeting, r.raw)
        assert.equal("250-hi", r.ehlo1)
        assert.equal("250 STARTTLS", r.ehlo2)
        assert.equal("220 go ahead", r.starttls)
        assert.equal("TLSv" .. v, r.version)
        assert.equal(fp, r.fingerprint)
        assert.same({ "secret line", "221 bye" }, r.all.reply)
        srv:await_log("starttls done conn %d+ TLSv" .. v:gsub("%.", "%%."))
      end)
    end

    it("a plain client that never says STARTTLS stays in the clear", function()
      local srv = start_smtp()
      local c = srv:connect()
      assert.equal("220 ready", t.recv_line(c))
      assert.equal("500 first STARTTLS", round_trip(c, "hello"))
    end)
  end)

  describe("bad input", function()
    -- A TLS listener and a plain one, a bystander on the plain one.
    local function start_two()
      local srv = t.start{ handler = INFO, listen = { "tls://127.0.0.1:0", "127.0.0.1:0" },
                           opts = { "--tls-self-signed", "--handshake-timeout", "0.5" } }
      local bystander = srv:connect(2)
      assert.equal("before", round_trip(bystander, "before"))
      return srv, bystander
    end

    local function still_serving(srv, bystander, what)
      assert.equal("during " .. what, round_trip(bystander, "during " .. what))
      local r = client(srv:port(1), "lines", { "--send", "after " .. what })
      assert.equal("after " .. what, r.reply, r.raw)
      assert.is_true(srv:alive())
    end

    it("a plaintext HTTP request on the TLS port is refused and logged", function()
      local srv, bystander = start_two()
      local c = srv:connect(1)
      t.send_all(c, "GET / HTTP/1.0\r\n\r\n")
      local data, err = t.recv_until_closed(c, 5)
      assert.equal("closed", err)
      assert.is_nil(data:find("HTTP/1.0", 1, true), "the request came back: " .. data)
      srv:await_log("%[conn %d+ 127%.0%.0%.1:%d+%] tls handshake failed: " ..
                    "http request")
      still_serving(srv, bystander, "http")
    end)

    it("a TLS client on a plain echo port fails on its own hello echoed; the server " ..
       "lives", function()
      local srv = t.start{ handler = "echo" }
      local bystander = srv:connect()
      assert.equal("before", round_trip(bystander, "before"))
      local r = client(srv:port(), "lines", { "--send", "x" }, 5)
      -- the server sent the ClientHello back: no ServerHello, a failure
      assert.truthy((r.handshake or ""):match("^failed: "), r.raw)
      assert.equal("during", round_trip(bystander, "during"))
      local c = srv:connect()
      assert.equal("after", round_trip(c, "after"))
      assert.is_true(srv:alive())
    end)

    it("garbage bytes are refused with the reason logged", function()
      local srv, bystander = start_two()
      local c = srv:connect(1)
      t.send_all(c, ("\0\1\2garbage\255"):rep(20))
      local _, err = t.recv_until_closed(c, 5)
      assert.equal("closed", err)
      srv:await_log("tls handshake failed: wrong version number")
      still_serving(srv, bystander, "garbage")
    end)

    it("a truncated ClientHello, then close", function()
      local srv, bystander = start_two()
      local r = client(srv:port(1), "hello", { "--cut", 60 })
      assert.equal("60", r.sent, r.raw)
      assert(tonumber(r.hello_len) > 60, r.raw)
      srv:await_log("tls handshake failed: closed by the peer")
      assert.equal(0, #srv:log_matching("unknown error"), srv:stderr())
      still_serving(srv, bystander, "truncated")
    end)

    it("a client that sends nothing is closed after --handshake-timeout", function()
      local srv, bystander = start_two()
      local c = srv:connect(1)
      local t0 = t.now()
      local data, err = t.recv_until_closed(c, 5)
      local dt = t.now() - t0
      assert.equal("", data)
      assert.equal("closed", err)
      assert(dt >= 0.4, "closed after " .. dt .. " s, before the 0.5 s timeout")
      assert(dt < t.T(3), "closed only after " .. dt .. " s")
      srv:await_log("tls handshake failed: timeout: tls handshake")
      still_serving(srv, bystander, "silent")
    end)

    it("an expired certificate is served; a verifying client refuses it", function()
      local srv = t.start{ handler = INFO, listen = { "tls://127.0.0.1:0" },
                           opts = { "--tls-cert", certs.expired, "--tls-key", certs.expired_key } }
      local r = client(srv:port(), "lines", { "--ca", certs.ca, "--sni", "localhost",
                                              "--send", "x" })
      assert.truthy((r.handshake or ""):find("certificate has expired", 1, true), r.raw)
      srv:await_log("tls handshake failed: .*alert certificate expired")
      -- without verification it is the same certificate, and it works
      r = client(srv:port(), "lines", { "--send", "unverified" })
      assert.equal("unverified", r.reply, r.raw)
    end)
  end)

  describe("start-up errors", function()
    local function exit2(opts, what)
      local r = t.run{ handler = "echo", listen = { "tls://127.0.0.1:0" }, opts = opts }
      assert(r.how == "exited" and r.code == 2, string.format(
        "%s: expected exit 2, got %s %s\nstderr:\n%s", what, r.how, r.code, r.stderr))
      assert.is_nil(r.stdout:find("listening on", 1, true), what .. ": it listened")
      return r.stderr
    end

    it("a key that does not match its certificate: exit 2 naming both files", function()
      local err = exit2({ "--tls-cert", certs.a, "--tls-key", certs.b_key }, "mismatch")
      assert.truthy(err:find(certs.b_key, 1, true), err)
      assert.truthy(err:find("does not match", 1, true), err)
      assert.truthy(err:find(certs.a, 1, true), err)
    end)

    it("an unreadable or missing key: exit 2 naming it", function()
      local err = exit2({ "--tls-cert", certs.a, "--tls-key", certs.dir }, "directory key")
      assert.truthy(err:find("--tls-key " .. certs.dir, 1, true), err)
      local missing = certs.dir .. "/no-such-key.pem"
      err = exit2({ "--tls-cert", certs.a, "--tls-key", missing }, "missing key")
      assert.truthy(err:find(missing, 1, true), err)
      assert.truthy(err:find("No such file", 1, true), err)
    end)

    it("a file with no certificate in it: exit 2 naming it", function()
      local err = exit2({ "--tls-cert", certs.dir .. "/a.csr", "--tls-key", certs.a_key }, "no PEM")
      -- a.csr: PEM, but a request, not a certificate
      assert.truthy(err:find("--tls-cert " .. certs.dir .. "/a.csr: no PEM certificate", 1, true),
                    err)
    end)

    it("--tls-cert without --tls-key: exit 2", function()
      local err = exit2({ "--tls-cert", certs.a }, "no key")
      assert.truthy(err:find("--tls-key", 1, true), err)
    end)
  end)

  describe("--make-ca", function()
    it("writes the CA and its key (mode 0600) and will not overwrite them", function()
      local dir = peers.tmpdir()
      local r = t.run{ opts = { "--make-ca", dir } }
      assert.same({ "exited", 0 }, { r.how, r.code }, r.stderr)
      local ca, key = dir .. "/echokit-ca.pem", dir .. "/echokit-ca-key.pem"
      assert.truthy(r.stdout:find(ca, 1, true), r.stdout)
      local st = sh("stat -c %a " .. shq(key) .. " && openssl x509 -in " .. shq(ca) ..
                    " -noout -text && openssl pkey -in " .. shq(key) .. " -noout",
                    "inspecting the CA")
      assert.equal("600", st.out:match("^(%d+)"))
      assert.truthy(st.out:find("CA:TRUE", 1, true), st.out)
      -- the key is the certificate's
      local a = sh("openssl x509 -in " .. shq(ca) .. " -noout -pubkey").out
      local b = sh("openssl pkey -in " .. shq(key) .. " -pubout").out
      assert.equal(a, b)
      local before = t.read_file(ca) .. t.read_file(key)
      r = t.run{ opts = { "--make-ca", dir } }
      assert(r.how == "exited" and r.code ~= 0, "second --make-ca: " .. r.how .. " " ..
             tostring(r.code))
      assert.truthy(r.stderr:find(ca, 1, true), r.stderr)
      assert.truthy(r.stderr:find("already exists", 1, true), r.stderr)
      assert.equal(before, t.read_file(ca) .. t.read_file(key))
    end)
  end)
end)
