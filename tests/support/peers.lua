-- Peer processes for functional specs: helper programs (redis-server, the
-- HTTP file server, curl, tshark, ...) started and reaped per test, temp
-- files, and bounded runs of commands. Every wait is bounded.
local t = require "echokit_test"
local socket = require "socket"

local PYTHON = "/usr/bin/python3"

---------------------------------------------------------------------------
-- Helper processes (redis-server, http_server.py, curl, ...) and temp files
---------------------------------------------------------------------------
local helpers = {}   -- processes started in the current test: killed after it
local tmp = {}       -- paths removed after it

local function tmpdir()
  local p = io.popen("mktemp -d " .. (os.getenv("TMPDIR") or "/tmp") .. "/echokit-proxy-XXXXXX")
  local d = p:read("l")
  p:close()
  assert(d and d ~= "", "mktemp -d failed")
  tmp[#tmp + 1] = d
  return d
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
end

-- A temp file path (holding data if given), removed after the test.
local function tmpfile(data)
  local p = os.tmpname()
  tmp[#tmp + 1] = p
  if data then write_file(p, data) end
  return p
end

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Starts a helper process; stderr goes to a file (h.errpath).
local function spawn(argv, o)
  o = o or {}
  local errpath = os.tmpname()
  tmp[#tmp + 1] = errpath
  local p, err = t.proc.spawn(argv, { stderr = errpath, cwd = o.cwd or t.src, env = o.env })
  assert(p, "cannot start " .. argv[1] .. ": " .. tostring(err))
  local h = { p = p, argv = argv, errpath = errpath }
  helpers[#helpers + 1] = h
  return h
end

local function helper_stderr(h) return t.read_file(h.errpath) end

-- Waits (bounded) for a helper to exit; returns how, code. Kills it and fails on timeout.
local function wait_helper(h, timeout, what)
  local how, code = h.p:wait(t.T(timeout))
  if not how then
    h.p:kill("KILL")
    h.p:wait(5)
    error(string.format("%s did not finish within %gs\nargv: %s\nstderr:\n%s",
      what or h.argv[1], t.T(timeout), table.concat(h.argv, " "),
      t.clip(helper_stderr(h))), 2)
  end
  return how, code
end

-- Runs a command to completion (bounded): { how=, code=, out=, err=, argv=, elapsed= }.
local function run(argv, timeout, o)
  local h = spawn(argv, o)
  local t0 = t.now()
  local out = h.p:readall(t.T(timeout))
  local how, code = wait_helper(h, math.max(0.1, t.T(timeout) - (t.now() - t0)), argv[1])
  return { how = how, code = code, out = out, err = helper_stderr(h), argv = argv,
           elapsed = t.now() - t0 }
end

-- Fails unless the run exited 0; returns r.
local function assert_ok(r, what)
  assert(r.how == "exited" and r.code == 0, string.format(
    "%s: %s %s\nargv: %s\nstdout:\n%s\nstderr:\n%s", what or r.argv[1], tostring(r.how),
    tostring(r.code), table.concat(r.argv, " "), t.clip(r.out), t.clip(r.err)))
  return r
end

-- Runs tshark with argv (bounded: timeout, default 60 s) and returns its
-- output; it must exit 0 and write nothing to stderr but its one remark
-- when run as root.
local function tshark(argv, timeout)
  local cmd = { "tshark" }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  local r = run(cmd, timeout or 60)
  assert_ok(r, "tshark " .. table.concat(argv, " "))
  local err = r.err:gsub('Running as user "root" and group "root"%. This could be dangerous%.\n?', "")
  assert(err == "", "tshark wrote to stderr:\n" .. t.clip(err))
  return r.out
end

-- Runs a bench/ load generator (loadgen, udp_loadgen: `bin`) with args;
-- returns its exit code, its "label=..." result line parsed, the line and
-- its stderr.
local function loadgen(bin, args, timeout)
  local name = bin:match("[^/]*$")
  local r = run({ bin, table.unpack(args) }, timeout or 30)
  assert(r.how == "exited", name .. ": " .. tostring(r.how) .. "\n" .. t.clip(r.err))
  local line = r.out:match("label=[^\n]*")
  assert(line, name .. " printed no result line:\n" .. t.clip(r.out) .. "\n" .. t.clip(r.err))
  return r.code, t.parse_kv(line), line, r.err
end

-- The debug handler's events file (events=, one JSON object a line),
-- decoded: a list of tables; fails if there is none.
local function debug_events(path)
  local cjson = require "cjson"
  local out = {}
  for line in t.read_file(path):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
  assert(#out > 0, "no events in " .. path)
  return out
end

local function sha256(path)
  local r = run({ "sha256sum", path }, 30)
  assert_ok(r, "sha256sum " .. path)
  return (r.out:match("^(%x+)"))
end

local function cleanup()
  for _, h in ipairs(helpers) do
    if not h.p:wait(0) then
      h.p:kill("KILL")
      h.p:wait(5)
    end
  end
  helpers = {}
  for _, p in ipairs(tmp) do os.execute("rm -rf " .. shq(p)) end
  tmp = {}
end

local fronts = {}     -- servers in front of others (proxies): stopped first

-- Marks srv (a proxy) to be stopped before the other servers of the test, its
-- clients closed, so that no upstream waits out its grace period for a
-- connection of the proxy's. Returns srv.
local function front(srv)
  fronts[#fronts + 1] = srv
  return srv
end

-- echokit -H chaos with handler arguments `args` (upstream= and the
-- toxics) and t.start options `o`, stopped before its upstream (front).
local function start_chaos(args, o)
  o = o or {}
  o.handler = "chaos"
  o.args = args
  return front(t.start(o))
end

-- The servers marked with front first, then t.teardown (stops the other
-- echokit servers, checks every exit and log), then the helpers; a failure of
-- any is reported.
local function teardown()
  for _, s in ipairs(fronts) do
    for _, c in ipairs(s.clients) do pcall(c.close, c) end
    s.clients = {}
    if not s.stopped then pcall(s.stop, s) end
  end
  fronts = {}
  local ok, err = pcall(t.teardown)
  cleanup()
  if not ok then error(err, 0) end
end

-- A TCP port on 127.0.0.1 where nothing listens (bound once, then released).
local function closed_port()
  local s = assert(socket.tcp())
  assert(s:bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- A UDP port on 127.0.0.1 where nothing listens (bound once, then released).
local function closed_udp_port()
  local s = assert(socket.udp())
  assert(s:setsockname("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Connects from `src` (default 127.0.0.1) to 127.0.0.1:port with Python,
-- sends `data` (default "hi\n"), reads until the peer ends the stream and
-- returns how it ended: "EOF" or "ECONNRESET" (luasocket reports a reset as
-- "closed"; Python tells them apart), the seconds from the connect, and for
-- an EOF the bytes read.
local STREAM_END = [[
import socket, sys, time
s = socket.socket()
s.settimeout(float(sys.argv[3]))
s.bind((sys.argv[1], 0))
t0 = time.monotonic()
n = 0
try:
    # a reset at once may come before connect() returns
    s.connect(("127.0.0.1", int(sys.argv[2])))
    s.sendall(sys.argv[4].encode())
    while True:
        d = s.recv(65536)
        if not d: print("EOF %d after %.3f" % (n, time.monotonic() - t0)); break
        n += len(d)
except ConnectionResetError:
    print("ECONNRESET after %.3f" % (time.monotonic() - t0))
except socket.timeout:
    print("TIMEOUT")
]]
local function stream_end(port, src, data)
  local path = tmpfile(STREAM_END)
  local r = run({ PYTHON, path, src or "127.0.0.1", tostring(port), tostring(t.T(5)),
                  data or "hi\n" }, 15)
  assert_ok(r, "python client")
  local how, n, after = r.out:match("^(%u+) ?(%d*) after ([%d.]+)")
  assert(how, "python client printed: " .. r.out)
  return how, tonumber(after), tonumber(n)
end

local function addr_of(srv) return "127.0.0.1:" .. srv:port() end

---------------------------------------------------------------------------
-- Upstreams
---------------------------------------------------------------------------

-- redis-server on a unix socket only (no TCP port), no persistence.
local function start_redis()
  local dir = tmpdir()
  local path = dir .. "/redis.sock"
  local h = spawn({ "redis-server", "--port", "0", "--unixsocket", path,
                    "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                    "--dir", dir, "--logfile", dir .. "/redis.log" })
  h.path = path
  t.eventually(function()
    if h.p:wait(0) then
      error("redis-server exited at start; log:\n" .. t.read_file(dir .. "/redis.log") ..
        "\nstderr:\n" .. helper_stderr(h))
    end
    local r = run({ "redis-cli", "-s", path, "PING" }, 5)
    return r.code == 0 and r.out == "PONG\n", r.out .. r.err
  end, 10, "redis-server answering on " .. path)
  return h
end

-- tests/support/http_server.py serving dir; h.port. With cert and key
-- (PEM files), HTTPS.
local function start_http(dir, cert, key)
  local h = spawn({ PYTHON, t.src .. "/tests/support/http_server.py", dir, cert, key })
  local line, why = h.p:readline(t.T(10))
  assert(line and line:match("^%d+$"), string.format(
    "http_server.py printed no port (%s: %s); stderr:\n%s", tostring(why), tostring(line),
    t.clip(helper_stderr(h))))
  h.port = tonumber(line)
  return h
end

-- start_http serving a directory that holds only /static/y ("static file\n"),
-- for the aimed-fault tests that hit /api/* and let /static/y pass.
local function start_static_http()
  local dir = tmpdir()
  os.execute("mkdir -p " .. shq(dir .. "/static"))
  write_file(dir .. "/static/y", "static file\n")
  return start_http(dir)
end

-- Waits (bounded) until h (start_static_http) has logged GET /static/y, then
-- checks that no /api/ request ever reached it.
local function assert_no_api_request(h)
  local log = t.eventually(function()
    local l = helper_stderr(h)
    return l:find("GET /static/y", 1, true) and l, l
  end, 5, "the upstream logging GET /static/y")
  assert(not log:find("/api/", 1, true), "the upstream saw an /api/ request:\n" .. log)
end

return {
  tmpdir = tmpdir,
  write_file = write_file,
  tmpfile = tmpfile,
  shq = shq,
  spawn = spawn,
  helper_stderr = helper_stderr,
  wait_helper = wait_helper,
  run = run,
  assert_ok = assert_ok,
  tshark = tshark,
  debug_events = debug_events,
  loadgen = loadgen,
  sha256 = sha256,
  cleanup = cleanup,
  front = front,
  start_chaos = start_chaos,
  teardown = teardown,
  closed_port = closed_port,
  closed_udp_port = closed_udp_port,
  addr_of = addr_of,
  stream_end = stream_end,
  start_redis = start_redis,
  start_http = start_http,
  start_static_http = start_static_http,
  assert_no_api_request = assert_no_api_request,
}
