-- The proxy: echokit.connect, conn:pipe and the built-in proxy / line_proxy
-- handlers against real peers (redis-server, Python's http.server, curl,
-- redis-benchmark, other echokit processes). Every wait is bounded.
local t = require "echokit_test"
local socket = require "socket"

local MiB = 1024 * 1024
-- conn:pipe moves untapped traffic with splice(2); --no-splice copies through
-- user space. Tests of the relay itself run in both modes.
local MODES = { { name = "splice", opts = {} }, { name = "copy", opts = { "--no-splice" } } }
local PROXY_STATS = "tests/handlers/proxy_stats.lua"

local peers = require "peers"
local tmpdir = peers.tmpdir
local write_file = peers.write_file
local shq = peers.shq
local spawn = peers.spawn
local helper_stderr = peers.helper_stderr
local wait_helper = peers.wait_helper
local run = peers.run
local assert_ok = peers.assert_ok
local sha256 = peers.sha256
local cleanup = peers.cleanup
local teardown = peers.teardown
local closed_port = peers.closed_port
local addr_of = peers.addr_of
local start_redis = peers.start_redis
local start_http = peers.start_http

---------------------------------------------------------------------------
-- The proxy's own view (tests/handlers/proxy_stats.lua)
---------------------------------------------------------------------------

-- The last `stats open=N total=M in=X out=Y` line, parsed; nil before the first.
local function last_stats(srv)
  local lines = srv:log_matching("stats open=%d+")
  return lines[#lines] and t.parse_kv(lines[#lines])
end

-- Waits (bounded) until the last stats line satisfies pred; returns it.
local function await_stats(srv, pred, timeout, what)
  return t.eventually(function()
    local s = last_stats(srv)
    if s and pred(s) then return s end
    return false, s and string.format("open=%d total=%d in=%d out=%d", s.open, s.total,
      s["in"], s.out) or "no stats line"
  end, timeout or 5, what)
end

local function await_idle(srv, total, what)
  return await_stats(srv, function(s) return s.open == 0 and s.total >= total end, 5,
    what or ("proxy back to open=0 after " .. total .. " connections"))
end

local function start_proxy(upstream, o)
  o = o or {}
  return t.start{ handler = o.handler or PROXY_STATS, args = { upstream = upstream },
                  opts = o.opts, env = o.env }
end

---------------------------------------------------------------------------

describe("proxy to redis-server", function()
  after_each(teardown)

  it("carries redis-benchmark (20000 requests x 4 tests, 20 clients) without errors", function()
    local redis = start_redis()
    local proxy = start_proxy("unix:" .. redis.path)
    assert_ok(run({ "redis-cli", "-s", redis.path, "CONFIG", "RESETSTAT" }, 5), "RESETSTAT")
    local r = run({ "redis-benchmark", "-h", "127.0.0.1", "-p", tostring(proxy:port()),
                    "-q", "-n", "20000", "-c", "20", "-t", "ping,set,get" }, 40)
    assert_ok(r, "redis-benchmark through the proxy")
    local out = r.out:gsub("\r", "\n")
    for _, name in ipairs({ "PING_INLINE", "PING_MBULK", "SET", "GET" }) do
      assert(out:find("\n" .. name .. ": [%d.]+ requests per second") or
             out:find("^" .. name .. ": [%d.]+ requests per second"),
        "no result row for " .. name .. " in:\n" .. t.clip(out))
    end
    assert(not out:lower():find("error"), "redis-benchmark reported errors:\n" .. t.clip(out))
    -- every request reached redis exactly as sent (counted by redis itself)
    local info = run({ "redis-cli", "-s", redis.path, "INFO", "commandstats" }, 5)
    assert_ok(info, "INFO commandstats")
    local function calls(cmd)
      return tonumber(info.out:match("cmdstat_" .. cmd .. ":calls=(%d+)"))
    end
    assert.equal(40000, calls("ping"))
    assert.equal(20000, calls("set"))
    assert.equal(20000, calls("get"))
    -- ... and every proxied connection is gone again
    await_idle(proxy, 40)
  end)

  it("answers redis-cli round trips: PING, SET/GET of a binary value", function()
    local redis = start_redis()
    local proxy = start_proxy("unix:" .. redis.path)
    local port = tostring(proxy:port())
    local cli = { "redis-cli", "-h", "127.0.0.1", "-p", port }

    local r = run({ cli[1], cli[2], cli[3], cli[4], cli[5], "PING" }, 10)
    assert_ok(r, "redis-cli PING")
    assert.equal("PONG\n", r.out)

    -- every byte value, CR LF, RESP markers, a NUL run and 64 KiB of random bytes
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local value = table.concat(bytes) .. "\r\n$5\r\n*1\r\n\0\0\0\n\r" .. t.random_bytes(64 * 1024)
    local dir = tmpdir()
    write_file(dir .. "/value", value)
    r = run({ "sh", "-c", string.format("exec redis-cli -h 127.0.0.1 -p %s -x SET bin < %s",
      port, shq(dir .. "/value")) }, 10)
    assert_ok(r, "redis-cli -x SET")
    assert.equal("OK\n", r.out)

    r = run({ "sh", "-c", string.format("exec redis-cli -h 127.0.0.1 -p %s --raw GET bin > %s",
      port, shq(dir .. "/got")) }, 10)
    assert_ok(r, "redis-cli --raw GET")
    t.assert_bytes(value .. "\n", t.read_file(dir .. "/got"), "GET through the proxy")

    -- what redis holds, asked directly
    r = run({ "sh", "-c", string.format("exec redis-cli -s %s --raw GET bin > %s",
      shq(redis.path), shq(dir .. "/direct")) }, 10)
    assert_ok(r, "redis-cli GET (direct)")
    t.assert_bytes(value .. "\n", t.read_file(dir .. "/direct"), "GET from redis directly")

    r = run({ cli[1], cli[2], cli[3], cli[4], cli[5], "STRLEN", "bin" }, 10)
    assert_ok(r, "redis-cli STRLEN")
    assert.equal(tostring(#value) .. "\n", r.out)
    await_idle(proxy, 8)
  end)
end)

describe("proxy to an HTTP server", function()
  after_each(teardown)

  for _, mode in ipairs(MODES) do
    it("delivers a 64 MiB file to curl intact (" .. mode.name .. ")", function()
      local dir = tmpdir()
      os.execute(string.format("head -c %d /dev/urandom > %s", 64 * MiB, shq(dir .. "/big.bin")))
      local http = start_http(dir)
      local proxy = t.start{ handler = "proxy", opts = mode.opts,
                             args = { upstream = "127.0.0.1:" .. http.port } }
      local out = tmpdir() .. "/big.out"
      local r = run({ "curl", "-sS", "-f", "--max-time", tostring(t.T(30)), "-o", out,
                      "http://127.0.0.1:" .. proxy:port() .. "/big.bin" }, 40)
      assert_ok(r, "curl through the proxy")
      assert.equal(sha256(dir .. "/big.bin"), sha256(out))
    end)
  end

  it("serves 20 parallel 2 MiB downloads, all intact", function()
    local dir = tmpdir()
    os.execute(string.format(
      "for i in $(seq 1 20); do head -c %d /dev/urandom > %s/f$i.bin; done", 2 * MiB, shq(dir)))
    local http = start_http(dir)
    local proxy = start_proxy("127.0.0.1:" .. http.port)
    local outdir = tmpdir()
    local curls = {}
    for i = 1, 20 do
      curls[i] = spawn({ "curl", "-sS", "-f", "--max-time", tostring(t.T(30)),
                         "-o", string.format("%s/f%d.bin", outdir, i),
                         string.format("http://127.0.0.1:%d/f%d.bin", proxy:port(), i) })
    end
    for i = 1, 20 do
      local how, code = wait_helper(curls[i], 40, "curl #" .. i)
      assert(how == "exited" and code == 0, string.format("curl #%d: %s %s: %s", i,
        tostring(how), tostring(code), helper_stderr(curls[i])))
    end
    for i = 1, 20 do
      local name = string.format("/f%d.bin", i)
      t.assert_bytes(t.read_file(dir .. name), t.read_file(outdir .. name), "download " .. i)
    end
    await_idle(proxy, 40)
  end)
end)

describe("proxy half-close", function()
  after_each(teardown)

  for _, mode in ipairs(MODES) do
    it("client shuts down its sending side: it still gets the whole reply, then EOF (" ..
       mode.name .. ")", function()
      local up = t.start{ handler = "tests/handlers/upstream_reply_on_eof.lua" }
      local proxy = start_proxy(addr_of(up), { opts = mode.opts })
      local c = proxy:connect()
      local data = t.random_bytes(2 * MiB)
      t.send_all(c, data)
      assert(c:shutdown("send"))
      local got, err = t.recv_until_closed(c, 20)
      assert.equal("closed", err)
      t.assert_bytes(data .. string.format("END %d\n", #data), got, "reply after half-close")
      up:await_log("upstream eof conn %d+ after " .. #data .. " bytes")
      up:await_log("upstream closed conn %d+ reason=nil")
      c:close()
      await_idle(proxy, 2)
    end)

    it("client data and half-close before the upstream is connected are kept (" ..
       mode.name .. ")", function()
      -- a host name: the connect waits for the resolver thread, so the bytes
      -- and the EOF reach the proxy while its upstream connection is pending
      local up = t.start{ handler = "tests/handlers/upstream_reply_on_eof.lua" }
      local proxy = start_proxy("localhost:" .. up:port(), { opts = mode.opts })
      local c = proxy:connect()
      t.send_all(c, "early bird")
      assert(c:shutdown("send"))
      local got, err = t.recv_until_closed(c, 5)
      assert.equal("closed", err)
      assert.equal("early birdEND 10\n", got)
      c:close()
      await_idle(proxy, 2)
    end)

    it("upstream shuts down first: the client sees EOF and its later bytes still arrive (" ..
       mode.name .. ")", function()
      local up = t.start{ handler = "tests/handlers/upstream_shut_first.lua" }
      local proxy = start_proxy(addr_of(up), { opts = mode.opts })
      local c = proxy:connect()
      assert.equal("hello from upstream", t.recv_line(c, 5))
      -- EOF from the upstream reaches the client while the client's side is open
      local rest, err = t.recv_until_closed(c, 5)
      assert.equal("closed", err)
      assert.equal("", rest)
      t.send_all(c, "late bytes 1\n")
      up:await_log('upstream got conn %d+ 13 bytes total=13: "late bytes 1\\n"$')
      local big = ("0123456789abcde\n"):rep(64 * 1024)   -- 1 MiB after the EOF
      t.send_all(c, big)
      up:await_log("upstream got conn %d+ %d+ bytes total=" .. (13 + #big) .. ":")
      assert(c:shutdown("send"))
      up:await_log("upstream eof conn %d+ total=" .. (13 + #big) .. "$")
      up:await_log("upstream closed conn %d+ reason=nil")
      await_idle(proxy, 2)
      c:close()
    end)
  end
end)

describe("proxy upstream failures", function()
  after_each(teardown)

  it("closes the client promptly and logs why when the upstream refuses", function()
    local port = closed_port()
    local proxy = t.start{ handler = "proxy", args = { upstream = "127.0.0.1:" .. port } }
    local c = proxy:connect()
    local t0 = t.now()
    t.send_all(c, "anyone there?\n")
    c:settimeout(t.T(3))
    local d, err, partial = c:receive("*a")
    local took = t.now() - t0
    assert(d == "" or (not d and (err == "closed" or err:find("reset"))), string.format(
      "client not closed cleanly: %s %s %q", tostring(d), tostring(err), partial or ""))
    assert(took < t.T(1), "client closed only after " .. took .. " s")
    proxy:await_log("warn .*upstream 127%.0%.0%.1:" .. port .. ": refused")
    -- the server carries on: a second client gets the same treatment
    local c2 = proxy:connect()
    assert.equal("closed", select(2, t.recv_until_closed(c2, 3)))
  end)

  -- A unix socket that is missing, or whose server is gone, refuses the
  -- connect at once (inside echokit.connect), not later from the loop.
  for _, case in ipairs({ "missing", "stale" }) do
    it("closes the client when the unix upstream socket is " .. case, function()
      local path = t.unix_path("upstream-" .. case)
      if case == "stale" then
        local s = assert(require("socket.unix").stream())
        assert(s:bind(path))
        assert(s:listen(1))
        s:close()   -- the socket file stays, nobody listens
      end
      local proxy = t.start{ handler = "proxy", args = { upstream = "unix:" .. path },
                             opts = { "--grace", "1" } }
      local c = proxy:connect()
      t.send_all(c, "anyone there?\n")
      local t0 = t.now()
      c:settimeout(t.T(3))
      local d, err, partial = c:receive("*a")
      assert(d == "" or (not d and (err == "closed" or err:find("reset"))), string.format(
        "client not closed within 3 s after the upstream unix:%s refused: %s %s %q", path,
        tostring(d), tostring(err), partial or ""))
      assert(t.now() - t0 < t.T(1), "client closed only after " .. (t.now() - t0) .. " s")
      proxy:await_log("warn .*upstream unix:" .. path:gsub("%p", "%%%0") .. ": refused")
    end)
  end

  it("reaches an upstream given as localhost:PORT that listens on 127.0.0.1 only", function()
    -- When localhost resolves to several addresses (::1 first on many
    -- systems), the ones refusing are skipped; here it may be 127.0.0.1 only.
    local up = t.start{ handler = "echo" }
    local proxy = start_proxy("localhost:" .. up:port())
    local c = proxy:connect()
    t.send_all(c, "via localhost\n")
    assert.equal("via localhost", t.recv_line(c, 5))
    c:close()
    await_idle(proxy, 2)
    assert.same({}, proxy:log_matching("upstream localhost"))
  end)

  it("tries each address of a name in turn, past the ones that refuse", function()
    -- A private /etc/hosts (bind-mounted in a mount namespace of the proxy's
    -- own) gives dual.test two addresses; only the second has a listener.
    local dir = tmpdir()
    write_file(dir .. "/hosts", "127.0.0.2 dual.test\n127.0.0.3 dual.test\n")
    local wrap = { "unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                   dir .. "/hosts" }
    local probe = run({ wrap[1], wrap[2], wrap[3], wrap[4], wrap[5], wrap[6],
                        "getent", "ahostsv4", "dual.test" }, 10)
    if probe.code ~= 0 and probe.err:find("unshare") then
      pending("no mount namespaces here (" .. probe.err:gsub("\n", " ") .. ")")
      return
    end
    assert_ok(probe, "getent in the private hosts namespace")
    local order = {}
    for a in probe.out:gmatch("(%S+)%s+STREAM") do order[#order + 1] = a end
    assert.same({ "127.0.0.2", "127.0.0.3" }, order)
    local up = t.start{ handler = "echo", listen = { "127.0.0.3:0" } }
    local proxy = t.start{ handler = PROXY_STATS, wrap = wrap,
                           args = { upstream = "dual.test:" .. up:port() } }
    for i = 1, 3 do
      local c = proxy:connect()
      t.send_all(c, "fallback " .. i .. "\n")
      assert.equal("fallback " .. i, t.recv_line(c, 5))
      c:close()
    end
    await_idle(proxy, 6)
    assert.same({}, proxy:log_matching("upstream dual%.test"))
  end)

  it("gives a resolve reason for an unresolvable host", function()
    local proxy = t.start{ handler = "proxy", args = { upstream = "no-such-host.invalid:1" } }
    local c = proxy:connect()
    local _, err = t.recv_until_closed(c, 12)
    assert(err == "closed" or err:find("reset"), "client ended with " .. tostring(err))
    proxy:await_log("warn .*upstream no%-such%-host%.invalid:1: resolve: no%-such%-host%.invalid: ")
    -- the same reason reaches a handler's on_close
    local srv = t.start{ handler = "tests/handlers/proxy_connect.lua" }
    local d = srv:connect()
    t.send_all(d, "connect no-such-host.invalid:1\n")
    assert.truthy(t.recv_line(d, 12):match("^closed resolve: no%-such%-host%.invalid: .+ after "))
  end)

  it("times out a connect whose SYNs are dropped without blocking the loop", function()
    -- A listener with backlog 1 that never accepts: once its queue holds two
    -- connections the kernel drops further SYNs.
    local l = assert(socket.tcp())
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen(1))
    local _, lport = l:getsockname()
    local fillers, full = {}, false
    for _ = 1, 8 do
      local f = assert(socket.tcp())
      f:settimeout(0.25)
      fillers[#fillers + 1] = f
      local ok = f:connect("127.0.0.1", lport)
      if not ok then full = true break end
    end
    local function close_all()
      for _, f in ipairs(fillers) do f:close() end
      l:close()
    end
    if not full then
      close_all()
      error("the listen queue never filled: SYNs are not dropped here")
    end

    local ok, err = pcall(function()
      local srv = t.start{ handler = "tests/handlers/proxy_connect.lua",
                           opts = { "--connect-timeout", "0.5" } }
      local a = srv:connect()
      local b = srv:connect()
      local t0 = t.now()
      t.send_all(a, "connect 127.0.0.1:" .. lport .. "\n")
      -- meanwhile round trips on another connection are answered at once
      a:settimeout(0)
      local rounds, worst, line = 0, 0, nil
      local buf = ""
      while true do
        local d, e, partial = a:receive("*l")
        if d then line = buf .. d break end
        buf = buf .. (partial or "")
        assert(e == "timeout", "connect client: " .. tostring(e))
        assert(t.now() - t0 < t.T(5), "no answer to the connect within 5 s")
        local r0 = t.now()
        rounds = rounds + 1
        t.send_all(b, "ping " .. rounds .. "\n")
        assert.equal("ping " .. rounds, t.recv_line(b, 2))
        worst = math.max(worst, t.now() - r0)
      end
      local reason, secs = line:match("^closed (%S+) after ([%d.]+)$")
      assert(reason, "unexpected answer: " .. line)
      assert.equal("timeout", reason)
      secs = tonumber(secs)
      assert(secs >= 0.45 and secs < t.T(3), "connect timed out after " .. secs .. " s")
      assert(rounds >= 3, "only " .. rounds .. " round trips while the connect was pending")
      assert(worst < t.T(0.25), "a round trip took " .. worst .. " s while a connect was pending")
    end)
    close_all()
    if not ok then error(err, 0) end
  end)
end)

-- The stream of tests/handlers/upstream_stream.lua: lines 0 .. n-1.
local function stream_lines(n)
  local out = {}
  for i = 0, n - 1 do out[#out + 1] = string.format("%015d\n", i) end
  return table.concat(out)
end

describe("proxy teardown mid-stream", function()
  after_each(teardown)

  for _, mode in ipairs(MODES) do
    it("ends the client's stream when the upstream is SIGKILLed (" .. mode.name .. ")", function()
      local up = t.start{ handler = "tests/handlers/upstream_stream.lua" }
      local proxy = start_proxy(addr_of(up), { opts = mode.opts })
      local c = proxy:connect()
      local head = t.recv_n(c, MiB, 5)
      up:stop("KILL")
      up:exit_checked_by_test()
      local t0 = t.now()
      local rest, err = t.recv_until_closed(c, 5)
      assert.equal("closed", err)
      assert(t.now() - t0 < t.T(5))
      local all = head .. rest
      assert(#all % 16 == 0, "stream cut inside a line: " .. #all .. " bytes")
      t.assert_bytes(stream_lines(#all // 16), all, "stream before the kill")
      c:close()
      await_idle(proxy, 2)
    end)

    for _, how in ipairs({ "close", "reset" }) do
      it("closes the upstream connection when the client goes away (" .. how .. ", " ..
         mode.name .. ")", function()
        local up = t.start{ handler = "tests/handlers/upstream_stream.lua" }
        local proxy = start_proxy(addr_of(up), { opts = mode.opts })
        local c = proxy:connect()
        local head = t.recv_n(c, MiB, 5)
        t.assert_bytes(stream_lines(MiB // 16), head, "stream head")
        up:await_log("upstream open conn %d+")
        if how == "reset" then c:setoption("linger", { on = true, timeout = 0 }) end
        c:close()
        local line = up:await_log("upstream closed conn %d+ reason=")
        assert(line:find("sent=%d+"), line)
        await_idle(proxy, 2)
        proxy:await_log("client closed conn %d+ reason=")
        proxy:await_log("upstream closed conn %d+ reason=")
      end)
    end

    it("keeps memory bounded for a slow client behind a fast upstream (" .. mode.name .. ")",
       function()
      local dir = tmpdir()
      local data = t.random_bytes(64 * MiB)
      write_file(dir .. "/big.bin", data)
      local http = start_http(dir)
      -- ASan keeps freed memory in a quarantine that would count as growth
      local asan = os.getenv("ASAN_OPTIONS")
      local proxy = start_proxy("127.0.0.1:" .. http.port, { opts = mode.opts, env = {
        ASAN_OPTIONS = (asan and asan .. ":" or "") ..
                       "quarantine_size_mb=1:thread_local_quarantine_size_kb=64" } })
      await_stats(proxy, function(s) return s.open == 0 end, 5, "first stats line")
      local base = proxy:vmrss()
      local peak = base
      local c = proxy:connect()
      t.send_all(c, "GET /big.bin HTTP/1.0\r\n\r\n")
      -- not reading: wait until the proxy stops taking bytes from the upstream
      -- (bytes_in unchanged for 1 s), sampling its RSS
      local last_in, since = -1, t.now()
      local deadline = t.now() + t.T(20)
      while t.now() - since < 1 do
        assert(t.now() < deadline, "the proxy never stopped reading the upstream")
        local s = last_stats(proxy)
        local bytes_in = s and s["in"] or 0
        if bytes_in ~= last_in then last_in, since = bytes_in, t.now() end
        peak = math.max(peak, proxy:vmrss())
        socket.sleep(0.02)   -- sampling pace; the condition is the stats line above
      end
      -- kernel socket buffers take a few MiB; the proxy itself must not
      assert(last_in < 24 * MiB, "the proxy read " .. last_in .. " bytes for a client " ..
        "that reads nothing")
      -- now read everything
      c:settimeout(0)
      local parts, got = {}, 0
      local rd = t.now() + t.T(30)
      while true do
        socket.select({ c }, nil, 0.5)
        local d, e, partial = c:receive(MiB)
        d = d or partial
        if d and #d > 0 then parts[#parts + 1] = d got = got + #d end
        if e == "closed" then break end
        assert(not e or e == "timeout", "receive: " .. tostring(e))
        assert(t.now() < rd, "download did not finish within 30 s: " .. got .. " bytes")
        peak = math.max(peak, proxy:vmrss())
      end
      local all = table.concat(parts)
      local hdr_end = all:find("\r\n\r\n", 1, true)
      assert(hdr_end, "no HTTP header in " .. t.clip(all, 200))
      assert.truthy(all:sub(1, hdr_end):match("^HTTP/1%.%d 200"))
      t.assert_bytes(data, all:sub(hdr_end + 4), "body through the proxy")
      local grew = peak - base
      assert(grew < 32 * 1024, string.format("proxy RSS grew by %d KiB (base %d, peak %d) " ..
        "with a slow client", grew, base, peak))
      c:close()
      await_idle(proxy, 2)
    end)
  end
end)

describe("line_proxy", function()
  after_each(teardown)

  it("relays lines to an echo upstream and back, logging each request line", function()
    local up = t.start{ handler = "echo" }
    local proxy = t.start{ handler = "line_proxy", args = { upstream = addr_of(up) } }
    local c = proxy:connect()
    t.send_all(c, "hello one\nsecond line\r\nthi")
    assert.equal("hello one", t.recv_line(c, 5))
    assert.equal("second line", t.recv_line(c, 5))
    t.send_all(c, "rd split\n")
    assert.equal("third split", t.recv_line(c, 5))
    proxy:await_log("info %[conn %d+ [^%]]*%] > hello one$")
    proxy:await_log("info %[conn %d+ [^%]]*%] > second line$")
    proxy:await_log("info %[conn %d+ [^%]]*%] > third split$")

    -- many lines, with back-pressure: every one comes back and is logged
    local lines = {}
    for i = 1, 2000 do lines[i] = string.format("line %04d %s", i, ("x"):rep(100)) end
    local blob = table.concat(lines, "\n") .. "\n"
    t.exchange(c, blob, { timeout = 20 })
    t.eventually(function()
      local n = #proxy:log_matching("%] > line %d%d%d%d x+$")
      return n == 2000, n
    end, 5, "2000 request lines logged")

    -- a last line without LF goes out on the client's half-close
    t.send_all(c, "tail")
    assert(c:shutdown("send"))
    local rest, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert.equal("tail", rest)
  end)
end)

describe("pipe tap", function()
  after_each(teardown)

  it("sees every byte exactly once in each direction", function()
    local dir = tmpdir()
    local up = t.start{ handler = "echo" }
    local proxy = t.start{ handler = "tests/handlers/proxy_tap.lua",
                           args = { upstream = addr_of(up), dir = dir } }
    local c = proxy:connect()
    local data = t.random_bytes(8 * MiB)
    t.exchange(c, data, { timeout = 30 })
    c:close()
    local l1 = proxy:await_log("tap c2u conn %d+ bytes=")
    local l2 = proxy:await_log("tap u2c conn %d+ bytes=")
    for _, line in ipairs({ l1, l2 }) do
      local kv = t.parse_kv(line)
      assert.equal(#data, kv.bytes)
      assert.equal(0, kv.foreign)
    end
    local id = l1:match("conn (%d+)")
    t.assert_bytes(data, t.read_file(dir .. "/c2u-" .. id), "client->upstream tap")
    t.assert_bytes(data, t.read_file(dir .. "/u2c-" .. id), "upstream->client tap")
  end)

  it("loses no byte when the tap unpipes: the chunk is relayed or reaches on_data", function()
    local up = t.start{ handler = "echo" }
    local proxy = t.start{ handler = "tests/handlers/proxy_tap_unpipe.lua",
                           args = { upstream = addr_of(up) } }
    local c = proxy:connect()
    t.send_all(c, "before\n")
    assert.equal("before", t.recv_line(c, 5))
    t.send_all(c, "STOP\n")
    proxy:await_log('tap saw "STOP\\n"')
    t.send_all(c, "after\n")
    assert(c:shutdown("send"))
    local rest, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    -- which way the STOP chunk went is the server's choice; that it arrives is not
    assert.equal("STOP\nafter\n", (rest:gsub("%[lua%]", "")))
    assert.truthy(rest:find("[lua]after\n", 1, true))
  end)
end)
