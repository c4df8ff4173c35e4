-- Faults aimed at a message or a client, and open and lifetime faults,
-- through the chaos handler against real peers: curl and Python's
-- http.server (whose request log shows what reached it), redis-cli and
-- redis-server, luasocket clients bound to 127.0.0.1 and 127.0.0.2. Every
-- wait is bounded; timings are compared with each other or with the toxic's
-- own value.
local t = require "echokit_test"
local socket = require "socket"
local peers = require "peers"

local chaos = peers.start_chaos

local function curl(port, path)
  local r = peers.run({ "curl", "-s", "-S", "-i", "--max-time", tostring(t.T(10)),
                        "http://127.0.0.1:" .. port .. path }, 15)
  peers.assert_ok(r, "curl " .. path)
  return r.out
end

-- Round trips of `n` lines through c; returns the times.
local function round_trips(c, n)
  local out = {}
  for i = 1, n do
    local t0 = t.now()
    t.send_all(c, "ping " .. i .. "\n")
    assert.equal("ping " .. i, t.recv_line(c, 5))
    out[i] = t.now() - t0
  end
  return out
end

-- Reads until the peer ends the connection; returns how ("closed" or the
-- error) and the seconds since t0.
local function await_end(c, t0, timeout)
  local deadline = t.now() + t.T(timeout)
  while t.now() < deadline do
    local r = socket.select({ c }, nil, deadline - t.now())
    if r[1] then
      c:settimeout(0)
      local d, err, partial = c:receive(65536)
      if not d and not (partial and #partial > 0) and err ~= "timeout" then
        return err, t.now() - t0
      end
    end
  end
  return "still open", t.now() - t0
end

describe("aimed faults", function()
  after_each(peers.teardown)

  it("http_status=503 on path=/api/*: curl gets 503, the upstream never sees it; /static/y passes", function()
    local web = peers.start_static_http()
    local px = chaos { upstream = "127.0.0.1:" .. web.port, http_status = "503",
                       ["http_status.path"] = "/api/*", ["http_status.body"] = "injected\n",
                       ["http_status.set_header.Retry-After"] = "7" }
    local out = curl(px:port(), "/api/x")
    assert.matches("^HTTP/1.1 503 Service Unavailable\r\n", out)
    assert.matches("\r\nRetry%-After: 7\r\n", out)
    assert.matches("\r\n\r\ninjected\n$", out)
    out = curl(px:port(), "/static/y")
    assert.matches("^HTTP/1.0 200 OK\r\n", out)
    assert.matches("\r\n\r\nstatic file\n$", out)
    -- the upstream's request log: /static/y is there, /api/x never was
    peers.assert_no_api_request(web)
  end)

  it("resp_error on command=GET: redis-cli GET fails, SET works; redis never sees the GET", function()
    local redis = peers.start_redis()
    local px = chaos { upstream = "unix:" .. redis.path, resp_error = "ERR injected by echokit",
                       ["resp_error.command"] = "GET" }
    local cli = { "redis-cli", "-h", "127.0.0.1", "-p", tostring(px:port()) }
    local function redis_cli(...)
      local argv = { table.unpack(cli) }
      for _, a in ipairs { ... } do argv[#argv + 1] = a end
      return peers.run(argv, 10)
    end
    local r = redis_cli("SET", "k", "v")
    peers.assert_ok(r, "SET through the proxy")
    assert.equal("OK\n", r.out)
    r = redis_cli("GET", "k")
    assert.matches("ERR injected by echokit", r.out .. r.err)
    assert.is_nil((r.out .. r.err):find("^v\n"))
    local info = peers.run({ "redis-cli", "-s", redis.path, "INFO", "commandstats" }, 5)
    peers.assert_ok(info, "INFO commandstats")
    assert.matches("cmdstat_set:calls=1,", info.out)
    assert.is_nil(info.out:find("cmdstat_get:", 1, true), "redis saw a GET:\n" .. info.out)
  end)

  it("client=127.0.0.2/32: a client from 127.0.0.2 is slowed, one from 127.0.0.1 is not", function()
    local up = t.start { handler = "echo" }
    local px = chaos { upstream = "127.0.0.1:" .. up:port(), latency = "0.2",
                       ["latency.client"] = "127.0.0.2/32" }
    local slow = assert(px:connect_from("127.0.0.2"))
    local fast = assert(px:connect_from("127.0.0.1"))
    local s, f = round_trips(slow, 3), round_trips(fast, 3)
    local smin, fmax = math.min(table.unpack(s)), math.max(table.unpack(f))
    assert(smin >= 0.2, "the aimed client's round trip took " .. smin .. " s, under the 0.2 s latency")
    assert(fmax < smin, string.format("the other client (%.3f s) was as slow as the aimed one (%.3f s)",
                                      fmax, smin))
  end)

  it("slow_open=0.5: the upstream sees the connection 0.5 s after the client opened it; early bytes wait", function()
    local l = assert(socket.bind("127.0.0.1", 0))
    local _, port = l:getsockname()
    local px = chaos { upstream = "127.0.0.1:" .. port, slow_open = "0.5" }
    local t0 = t.now()
    local c = assert(px:connect())
    t.send_all(c, "early\n")
    l:settimeout(t.T(5))
    local s = assert(l:accept())
    local waited = t.now() - t0
    l:close()
    s:settimeout(t.T(5))
    assert(waited >= 0.5, "the upstream connection came after " .. waited .. " s")
    assert.equal("early", s:receive("*l"))
    s:close()
  end)

  it("limit_time=1 closes (FIN) 1 s after the open; limit_time.mode=rst resets", function()
    local up = t.start { handler = "echo" }
    local px = chaos { upstream = "127.0.0.1:" .. up:port(), limit_time = "1" }
    local c = assert(px:connect())
    local t0 = t.now()
    assert.equal("hi", t.ask(c, "hi"))
    local how, after = await_end(c, t0, 5)
    assert.equal("closed", how)
    assert(after >= 0.9 and after <= 1.1 + 0.1 * (t.slow - 1),
           "closed " .. after .. " s after the open (want 1 s +- 10 %)")

    local rpx = chaos { upstream = "127.0.0.1:" .. up:port(), limit_time = "1",
                        ["limit_time.mode"] = "rst" }
    local rhow, rafter, n = peers.stream_end(rpx:port(), "127.0.0.1")
    assert.equal("ECONNRESET", rhow)
    assert.is_nil(n)
    assert(rafter >= 0.9 and rafter <= 1.1 + 0.1 * (t.slow - 1),
           "reset " .. rafter .. " s after the open (want 1 s +- 10 %)")
  end)

  it("refuse with client=: the aimed client's connection is reset at once, another's works", function()
    local up = t.start { handler = "echo" }
    local px = chaos { upstream = "127.0.0.1:" .. up:port(), refuse = "1",
                       ["refuse.client"] = "127.0.0.2" }
    local how, after = peers.stream_end(px:port(), "127.0.0.2")
    assert.equal("ECONNRESET", how)
    assert(after < 1, "the reset came after " .. tostring(after) .. " s")
    local good = assert(px:connect_from("127.0.0.1"))
    assert.equal("fine", t.ask(good, "fine"))
  end)

  it("sni=: on a tls:// listener, only clients asking for a matching name are hit", function()
    local up = t.start { handler = "echo" }
    local px = chaos({ upstream = "127.0.0.1:" .. up:port(), resp_error = "ERR for a.test",
                       ["resp_error.sni"] = "a.*" },
                     { listen = { "tls://127.0.0.1:0" }, opts = { "--tls-self-signed" } })
    local path = peers.tmpfile([[
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=float(sys.argv[3]))
c = ctx.wrap_socket(s, server_hostname=sys.argv[2] or None)
c.sendall(b"PING\r\n")
buf = b""
while not buf.endswith(b"\r\n"):
    d = c.recv(100)
    if not d: break
    buf += d
print(buf.decode().strip())
]])
    local function ask(name)
      local r = peers.run({ "python3", path, tostring(px:port()), name, tostring(t.T(5)) }, 15)
      peers.assert_ok(r, "TLS client with SNI '" .. name .. "'")
      return r.out
    end
    assert.equal("-ERR for a.test\n", ask("a.test"))
    assert.equal("PING\n", ask("b.test"))
    assert.equal("PING\n", ask(""))          -- no SNI: not aimed at
  end)

  it("malformed aims and attributes stop the start with a clear error", function()
    local cases = {
      { { loss = "2" }, "probability of loss must be between 0 and 1" },
      { { latency = "1", ["latency.client"] = "10.0.0.0/99" }, "prefix length" },
      { { drop_message = "1", ["drop_message.command"] = "GET", ["drop_message.path"] = "/x" },
        "one protocol" },
      { { drop_message = "1", ["drop_message.line"] = "%" }, "match.bytes: malformed pattern" },
      { { http_status = "42" }, "status of http_status must be" },
      { { http_status = "503", ["http_status.command"] = "GET" }, "must be a http matcher" },
      { { latency = "1", ["latency.header"] = "x" }, "give the header" },
      { { limit_time = "1", ["limit_time.mode"] = "kill" }, "mode of limit_time must be fin or rst" },
    }
    for _, case in ipairs(cases) do
      local args = case[1]
      args.upstream = "127.0.0.1:1"
      local r = t.run { handler = "chaos", args = args }
      assert.equal(2, r.code, r.stderr)
      assert(r.stderr:find(case[2], 1, true), "want '" .. case[2] .. "' in:\n" .. r.stderr)
    end
  end)
end)
