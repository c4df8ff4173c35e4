-- The debugging proxy and TLS (-H debug tls=mitm|passthrough), with real
-- peers: curl, through the proxy, to Python's http.server behind TLS with a
-- certificate from a test CA (tests/support/pki.lua); the proxy's CA from
-- `echokit --make-ca`. tshark reads the proxy's plaintext pcap and, with its
-- key log, a dumpcap capture of the encrypted side.
local t = require "echokit_test"
local socket = require "socket"
local peers = require "peers"

local BODY = "hello over TLS\n"
local pki = {} -- the certificates and the served directory, made once

setup(function()
  local p = require("pki").new("echokit-tlsdebug")
  pki.pki, pki.dir = p, p.dir
  -- the proxy's CA, which the clients of tls=mitm trust
  peers.assert_ok(peers.run({ t.bin, "--make-ca", p:path("ek") }, 30), "echokit --make-ca")
  pki.ca, pki.ca_key = p:path("ek/echokit-ca.pem"), p:path("ek/echokit-ca-key.pem")
  -- a separate CA for the upstream's certificate (localhost, 127.0.0.1)
  local ca = p:ca("test-ca", { key = "test-ca.key", subj = "/CN=echokit test upstream CA" })
  local up = p:leaf("upstream", { ca = ca, key = "upstream.key", subj = "/CN=localhost",
                                  san = "DNS:localhost,IP:127.0.0.1" })
  pki.test_ca, pki.cert, pki.key = ca.cert, up.cert, up.key
  pki.www = p:path("www")
  assert(os.execute("mkdir " .. peers.shq(pki.www)))
  peers.write_file(pki.www .. "/index.html", BODY)
  peers.cleanup() -- the helpers above have exited; their files go
end)

teardown(function()
  if pki.pki then pki.pki:remove() end
end)

local function start_https()
  return peers.start_http(pki.www, pki.cert, pki.key)
end

local function start_debug(args)
  return t.start{ handler = "debug", args = args }
end

-- tls=mitm in front of the HTTPS upstream on port, trusting the test CA
local function start_mitm(port, extra)
  local a = { upstream = "tls://127.0.0.1:" .. port, ca = pki.test_ca, tls = "mitm",
              ca_cert = pki.ca, ca_key = pki.ca_key }
  for k, v in pairs(extra or {}) do a[k] = v end
  return start_debug(a)
end

-- curl https://localhost:PORT/ with localhost on 127.0.0.1 (so SNI is
-- localhost); { how, code, out, err }
local function curl(port, extra)
  local argv = { "curl", "-sS", "--max-time", tostring(t.T(10)),
                 "--resolve", ("localhost:%d:127.0.0.1"):format(port) }
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = ("https://localhost:%d/"):format(port)
  return peers.run(argv, 15)
end

local function fetch(port, ca, what)
  local r = peers.assert_ok(curl(port, { "--cacert", ca }), what)
  assert.equal(BODY, r.out)
end

local function find(evs, pred)
  local out = {}
  for _, e in ipairs(evs) do
    if pred(e) then out[#out + 1] = e end
  end
  return out
end

local CLOSE = "%] close 127%.0%.0%.1:%d+ after "

describe("debug proxy, tls=mitm", function()
  after_each(peers.teardown)

  it("shows curl's HTTPS as plaintext, and what each side negotiated", function()
    local up = start_https()
    local dir = peers.tmpdir()
    local proxy = start_mitm(up.port, { pcap = dir .. "/plain.pcap", events = dir .. "/ev.jsonl",
                                        alpn = "http/1.1" })
    fetch(proxy:port(), pki.ca, "curl through tls=mitm")
    proxy:await_log(CLOSE)
    -- the text dump: both handshakes, then the request in clear
    proxy:await_log("%] client tls: TLSv1%.3 TLS_[%w_]+, sni localhost, alpn http/1%.1$")
    proxy:await_log("%] upstream tls: TLSv1%.3 TLS_[%w_]+, alpn http/1%.1, " ..
                    "certificate /CN=localhost %(verify ok%)$")
    assert.truthy(proxy:stderr():find("|GET / HTTP/1.1..|", 1, true),
      "no hexdump of the request in:\n" .. t.clip(proxy:stderr(), 4000))
    proxy:stop()

    local evs = peers.debug_events(dir .. "/ev.jsonl")
    local tls = find(evs, function(e) return e.event == "tls" end)
    assert.equal(2, #tls)
    local side = {}
    for _, e in ipairs(tls) do side[e.side] = e end
    assert.equal("TLSv1.3", side.client.version)
    assert.matches("^TLS_", side.client.cipher)
    assert.equal("localhost", side.client.sni)
    assert.equal("http/1.1", side.client.alpn)
    assert.equal("TLSv1.3", side.upstream.version)
    assert.equal("http/1.1", side.upstream.alpn)
    assert.equal("ok", side.upstream.verify)
    assert.equal("/CN=localhost", side.upstream.peer)
    local data = find(evs, function(e) return e.event == "data" and e.dir == "client->upstream" end)
    assert.equal("text", data[1].encoding)
    assert.matches("^GET / HTTP/1%.1\r\nHost: localhost:%d+\r\n", data[1].data)

    local out = peers.tshark({ "-r", dir .. "/plain.pcap", "-d", "tcp.port==" .. up.port .. ",http",
                         "-Y", "http", "-T", "fields", "-e", "http.request.method",
                         "-e", "http.request.uri", "-e", "http.response.code" })
    assert.matches("GET\t/\t\n", out)
    assert.matches("\t\t200\n", out)
  end)

  -- dumpcap on lo for port and a marker port: { h, path, marker }, or nil
  -- and why when capturing is not permitted here.
  local function start_capture(port, path)
    local marker = peers.closed_port()
    local h = peers.spawn({ "dumpcap", "-i", "lo", "-P", "-w", path,
                            "-f", ("tcp port %d or tcp port %d"):format(port, marker) })
    local state = t.eventually(function()
      if peers.helper_stderr(h):find("Capturing on") then return "capturing" end
      if h.p:wait(0) then return "exited" end
      return false
    end, 10, "dumpcap capturing")
    if state == "exited" then return nil, peers.helper_stderr(h) end
    return { h = h, path = path, marker = marker }
  end

  -- The TCP ports in a pcap file written so far (IPv4 over Ethernet, as
  -- dumpcap writes lo).
  local function ports_in(path)
    local data, ports = t.read_file(path), {}
    if #data < 24 then return ports end
    local magic, link = string.unpack("<I4", data), string.unpack("<I4", data, 21)
    assert(magic == 0xa1b2c3d4 or magic == 0xa1b23c4d, "not a pcap file: " .. path)
    assert(link == 1, "link type " .. link .. " in " .. path)
    local pos = 25
    while pos + 16 <= #data do
      local incl = string.unpack("<I4", data, pos + 8)
      local ip = pos + 16 + 14
      if pos + 16 + incl > #data + 1 then break end
      local ihl = (data:byte(ip) & 0x0f) * 4
      local sport, dport = string.unpack(">I2I2", data, ip + ihl)
      ports[sport], ports[dport] = true, true
      pos = pos + 16 + incl
    end
    return ports
  end

  -- Packets reach dumpcap in order but in batches: once a SYN to the
  -- marker port (refused) is in the file, all that came before is too.
  local function stop_capture(cap)
    local s = assert(socket.tcp())
    s:settimeout(t.T(5))
    s:connect("127.0.0.1", cap.marker)
    s:close()
    t.eventually(function() return ports_in(cap.path)[cap.marker] end, 10,
      "the marker packet in dumpcap's file")
    cap.h.p:kill("TERM")
    peers.wait_helper(cap.h, 10, "dumpcap")
  end

  it("writes a key log with which tshark decrypts a capture of the client's side", function()
    local up = start_https()
    local dir = peers.tmpdir()
    local keys = dir .. "/keys.log"
    local proxy = start_mitm(up.port, { keylog = keys, dump = "none" })
    local wire = dir .. "/wire.pcap"
    local cap, why = start_capture(proxy:port(), wire)
    fetch(proxy:port(), pki.ca, "curl through tls=mitm with keylog=")
    proxy:await_log(CLOSE)

    -- NSS key log lines: TLS 1.3's five secrets for each of the two sessions
    local text = t.read_file(keys)
    assert.equal("\n", text:sub(-1))
    local labels = {}
    for line in text:gmatch("[^\n]*") do
      if line ~= "" then
        local label, random, secret = line:match("^([%u_%d]+) (%x+) (%x+)$")
        assert(label, "not a key log line: " .. line)
        assert.equal(64, #random)
        assert(#secret == 64 or #secret == 96, "secret of " .. #secret .. " hex digits")
        labels[label] = (labels[label] or 0) + 1
      end
    end
    assert.same({ CLIENT_HANDSHAKE_TRAFFIC_SECRET = 2, SERVER_HANDSHAKE_TRAFFIC_SECRET = 2,
                  CLIENT_TRAFFIC_SECRET_0 = 2, SERVER_TRAFFIC_SECRET_0 = 2,
                  EXPORTER_SECRET = 2 }, labels)

    if not cap then
      io.stderr:write("tls_debug_spec: capturing on lo is not permitted here, so the " ..
                      "decryption of a live capture is skipped; dumpcap said:\n" .. why .. "\n")
      return
    end
    stop_capture(cap)
    local function get(extra)
      local argv = { "-r", wire, "-d", "tcp.port==" .. proxy:port() .. ",tls" }
      for _, a in ipairs(extra) do argv[#argv + 1] = a end
      for _, a in ipairs({ "-Y", 'http.request.method == "GET"', "-T", "fields",
                           "-e", "http.request.method", "-e", "http.request.uri" }) do
        argv[#argv + 1] = a
      end
      return peers.tshark(argv)
    end
    -- the wire carried ciphertext: no HTTP without the keys, the request with them
    assert.equal("", get({}))
    assert.equal("GET\t/\n", get({ "-o", "tls.keylog_file:" .. keys }))
  end)

  it("logs why a client's handshake failed and goes on serving", function()
    local up = start_https()
    local proxy = start_mitm(up.port, { dump = "none" })
    -- curl does not know echokit's CA
    local r = curl(proxy:port())
    assert.equal(60, r.code, "curl without --cacert: " .. r.err) -- CURLE_PEER_FAILED_VERIFICATION
    proxy:await_log(CLOSE .. ".*, client error: tls handshake: tlsv1 alert unknown ca$")
    fetch(proxy:port(), pki.ca, "curl after a failed client")
    t.eventually(function() return #proxy:log_matching(CLOSE) == 2 end, 5, "two close lines")
  end)

  it("refuses incomplete or unknown TLS arguments at start-up", function()
    local function refused(args, pattern)
      local r = t.run{ handler = "debug", args = args }
      assert.equal(2, r.code, r.stderr)
      assert.matches(pattern, r.stderr)
    end
    local tls_up = "tls://127.0.0.1:" .. peers.closed_port()
    refused({ upstream = tls_up, tls = "mitm", ca_cert = pki.ca },
            "debug: tls=mitm needs ca_cert=FILE and ca_key=FILE")
    refused({ upstream = tls_up, tls = "decrypt", ca_cert = pki.ca, ca_key = pki.ca_key },
            "debug: tls must be mitm or passthrough %(got decrypt%)")
    refused({ upstream = tls_up }, "debug: upstream=tls://[%d.:]+ speaks TLS: give ca_cert=FILE " ..
            "ca_key=FILE .* or tls=passthrough")
    refused({ upstream = tls_up, tls = "mitm", ca_cert = pki.ca_key, ca_key = pki.ca_key },
            "debug: tls: .*echokit%-ca%-key%.pem: not a PEM certificate")
    -- both PEM, but the key is another's: found when the handler loads
    refused({ upstream = tls_up, tls = "mitm", ca_cert = pki.ca, ca_key = pki.key },
            "debug: tls: .*upstream%.key.*does not match")
    refused({ upstream = "127.0.0.1:1", keylog = pki.dir .. "/k" },
            "debug: keylog= needs tls=mitm")
  end)
end)

describe("debug proxy, tls=passthrough", function()
  after_each(peers.teardown)

  it("relays TLS untouched and shows the ClientHello's SNI and ALPN", function()
    local up = start_https()
    local dir = peers.tmpdir()
    -- a plain upstream: passthrough is the default
    local proxy = start_debug({ upstream = "127.0.0.1:" .. up.port, events = dir .. "/ev.jsonl" })
    fetch(proxy:port(), pki.test_ca, "curl through passthrough, TLS end to end")
    proxy:await_log("%] client hello: TLSv1%.3, sni localhost, alpn h2,http/1%.1$")
    proxy:await_log(CLOSE)
    -- a tls:// upstream relayed as it is
    local proxy2 = start_debug({ upstream = "tls://127.0.0.1:" .. up.port, tls = "passthrough",
                                 dump = "none" })
    fetch(proxy2:port(), pki.test_ca, "curl through tls=passthrough to a tls:// upstream")
    proxy2:await_log("%] client hello: TLSv1%.3, sni localhost, alpn h2,http/1%.1$")
    proxy:stop()

    local evs = peers.debug_events(dir .. "/ev.jsonl")
    local hello = find(evs, function(e) return e.event == "client_hello" end)
    assert.equal(1, #hello)
    assert.same({ "TLSv1.3", "localhost", "h2,http/1.1", false },
                { hello[1].version, hello[1].sni, hello[1].alpn, hello[1].truncated })
    assert(hello[1].length > 0)
    assert.equal(0, #find(evs, function(e) return e.event == "tls" end))
    -- the bytes relayed are TLS records, not HTTP
    local data = find(evs, function(e) return e.event == "data" end)
    assert.equal("base64", data[1].encoding)
    assert.matches("^FgMB", data[1].data) -- 16 03 01: a handshake record
  end)
end)
