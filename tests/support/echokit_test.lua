-- echokit_test: the functional-test harness (Neovim's clear() style).
--
--   local t = require "echokit_test"
--   describe("echo", function()
--     after_each(t.teardown)                     -- stop servers, check exits and logs
--     it("echoes", function()
--       local srv = t.start{ handler = "echo" }    -- fresh binary, --listen 127.0.0.1:0
--       local c = srv:connect()
--       t.send_all(c, "hi")
--       assert.equal("hi", t.recv_n(c, 2))
--     end)
--   end)
--
-- Every server started in a test is stopped after it with SIGTERM; the test
-- fails if the shutdown hangs, if the exit status is not 0, or if the server
-- logged an `error`-level line that the test did not announce with
-- srv:expect_errors(pattern). Nothing here sleeps to synchronise: waits are on
-- sockets, pipes or bounded polls of a condition, each with a timeout and a
-- message saying what did not happen.
--
-- Environment: ECHOKIT_BIN (the binary), ECHOKIT_SRC (repo root; the server
-- runs there so `tests/handlers/x.lua` paths resolve), ECHOKIT_WRAPPER (a
-- command prefix such as `valgrind --error-exitcode=99 -q`; timeouts are
-- stretched when set).
local socket = require "socket"
local unix = require "socket.unix"
local proc = require "proc"

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

M.bin = os.getenv("ECHOKIT_BIN")
M.src = os.getenv("ECHOKIT_SRC") or (here .. "/../..")
M.wrapper = os.getenv("ECHOKIT_WRAPPER")
if M.wrapper == "" then M.wrapper = nil end
-- How much slower than a release build the server runs: ECHOKIT_SLOW, which
-- ctest sets for the sanitizer build; 10 under a wrapper (valgrind), else 1.
M.slow = tonumber(os.getenv("ECHOKIT_SLOW") or "") or (M.wrapper and 10 or 1)
M.now = proc.now
M.proc = proc

-- A timeout stretched for slow runs (sanitizers, valgrind).
function M.T(seconds) return seconds * M.slow end

local function fail(fmt, ...)
  error(string.format(fmt, ...), 3)
end

local function words(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end
M.read_file = read_file

-- Abbreviate a long text for a failure message.
local function clip(s, n)
  n = n or 2000
  s = tostring(s)
  if #s <= n then return s end
  return s:sub(1, n) .. string.format("... (%d bytes more)", #s - n)
end
M.clip = clip

---------------------------------------------------------------------------
-- Log lines: `2026-11-26T23:00:00.123Z LEVEL message` (LEVEL debug/info/warn/error)
---------------------------------------------------------------------------
local LEVELS = { debug = true, info = true, warn = true, warning = true, error = true,
                 fatal = true, crit = true, critical = true, panic = true }
local FATAL = { error = true, fatal = true, crit = true, critical = true, panic = true }

-- Returns level (lower case), message; or nil for a line that is not a log line
-- (traceback continuation, stray output).
function M.parse_log_line(line)
  local ts, level, msg = line:match("^(%d%d%d%d%-%d%d%-%d%dT[%d:%.]+Z?)%s+(%a+)%s+(.*)$")
  if not ts then
    level, msg = line:match("^%S+%s+(%a+)%s+(.*)$")
  end
  if level and LEVELS[level:lower()] then
    return level:lower(), msg
  end
  return nil
end

---------------------------------------------------------------------------
-- Server object
---------------------------------------------------------------------------
local Server = {}
Server.__index = Server

local running = {}   -- servers started in the current test
local tmpfiles = {}  -- paths to remove after the test
local unix_seq = 0

-- A fresh path for a unix socket (not created).
function M.unix_path(tag)
  unix_seq = unix_seq + 1
  local dir = os.getenv("TMPDIR") or "/tmp"
  local p = string.format("%s/echokit-test-%s-%d-%d.sock", dir, tag or "s",
                          math.floor(proc.now() * 1000) % 1000000, unix_seq)
  os.remove(p)
  tmpfiles[#tmpfiles + 1] = p
  return p
end

local function tmpname()
  local p = os.tmpname()
  tmpfiles[#tmpfiles + 1] = p
  return p
end

-- Builds argv: o.wrap + $ECHOKIT_WRAPPER + binary + options + handler + (-- args).
local function build_argv(o)
  assert(M.bin and M.bin ~= "", "ECHOKIT_BIN is not set (path of the echokit binary)")
  local argv = {}
  for _, w in ipairs(o.wrap or {}) do argv[#argv + 1] = w end
  if M.wrapper then
    for _, w in ipairs(words(M.wrapper)) do argv[#argv + 1] = w end
  end
  argv[#argv + 1] = M.bin
  for _, l in ipairs(o.listen or {}) do
    argv[#argv + 1] = "--listen"
    argv[#argv + 1] = l
  end
  if o.handler then
    argv[#argv + 1] = "--handler"
    argv[#argv + 1] = o.handler
  end
  local budget = false
  for _, a in ipairs(o.opts or {}) do
    argv[#argv + 1] = tostring(a)
    if a == "--cpu-budget" then budget = true end
  end
  -- In a slow run (sanitizers, valgrind) code runs several to tens of times
  -- slower: the default 1 s CPU budget per callback would stop handlers that
  -- are fine natively. Tests of the budget itself give --cpu-budget explicitly.
  -- (Not for a subcommand, `echokit replay ...`, which has options of its own.)
  if M.slow > 1 and not budget and (o.opts or {})[1] ~= "replay" then
    argv[#argv + 1] = "--cpu-budget"
    argv[#argv + 1] = tostring(M.slow)
  end
  if o.args then
    argv[#argv + 1] = "--"
    local keys = {}
    for k in pairs(o.args) do
      if type(k) == "string" then keys[#keys + 1] = k end
    end
    table.sort(keys)
    for _, k in ipairs(keys) do argv[#argv + 1] = k .. "=" .. tostring(o.args[k]) end
    for _, v in ipairs(o.args) do argv[#argv + 1] = tostring(v) end
  end
  return argv
end
M.build_argv = build_argv

local parse_listen_line
function parse_listen_line(line)
  local rest = line:match("^listening on (.+)$")
  if not rest then return nil end
  -- a TLS listener: its address, marked (clients of srv:connect speak TCP)
  local tls_rest = rest:match("^tls://(.+)$")
  if tls_rest then
    local a = parse_listen_line("listening on " .. tls_rest)
    if a then a.tls, a.text = true, rest end
    return a
  end
  -- a UDP listener: kind "udp" (srv:udp() gives a client)
  local udp_rest = rest:match("^udp://(.+)$")
  if udp_rest then
    local a = parse_listen_line("listening on " .. udp_rest)
    if a then a.kind, a.text = "udp", rest end
    return a
  end
  local path = rest:match("^unix:(.+)$")
  if path then return { kind = "unix", path = path, text = rest } end
  local h6, p6 = rest:match("^%[(.+)%]:(%d+)$")
  if h6 then return { kind = "tcp", host = h6, port = tonumber(p6), v6 = true, text = rest } end
  local h, p = rest:match("^([^:]+):(%d+)$")
  if h then return { kind = "tcp", host = h, port = tonumber(p), text = rest } end
  return nil
end

-- t.start{ handler=, args={k=v,...}, listen={...}, opts={...}, expect_errors={pat,...},
--          env={NAME=value}, timeout= }  -> Server.
-- Spawns the binary and waits (bounded) for one `listening on` line per listener.
function M.start(o)
  o = o or {}
  o.listen = o.listen or { "127.0.0.1:0" }
  local argv = build_argv(o)
  local errpath = tmpname()
  local p, err = proc.spawn(argv, { stderr = errpath, cwd = M.src, env = o.env })
  if not p then error("cannot start echokit: " .. tostring(err), 2) end
  local srv = setmetatable({
    p = p, argv = argv, errpath = errpath, addrs = {}, stdout_lines = {},
    clients = {}, allowed = {}, started = proc.now(), stopped = nil, grace = 5,
  }, Server)
  for i, a in ipairs(o.opts or {}) do
    if a == "--grace" then srv.grace = tonumber(o.opts[i + 1]) or srv.grace end
  end
  for _, pat in ipairs(o.expect_errors or {}) do srv.allowed[#srv.allowed + 1] = pat end
  running[#running + 1] = srv

  local deadline = proc.now() + (o.timeout or M.T(10))
  while #srv.addrs < #o.listen do
    local left = deadline - proc.now()
    local line, why
    if left > 0 then line, why = p:readline(left) else why = "timeout" end
    if not line then
      local how, code = p:wait(0.5)
      if not how then p:kill("KILL"); how, code = p:wait(5) end
      srv.stopped = { how = how, code = code, forced = true }
      error(string.format(
        "echokit did not print %d 'listening on' line(s) (%s after %d); exit: %s %s\n" ..
        "argv: %s\nstdout so far:\n%s\nstderr:\n%s",
        #o.listen, why, #srv.addrs, tostring(how), tostring(code), table.concat(argv, " "),
        table.concat(srv.stdout_lines, "\n"), clip(read_file(errpath))), 2)
    end
    srv.stdout_lines[#srv.stdout_lines + 1] = line
    local a = parse_listen_line(line)
    if a then srv.addrs[#srv.addrs + 1] = a end
  end
  return srv
end

-- t.run(opts, timeout) -> { how=, code=, stdout=, stderr=, elapsed= }
-- Runs the binary to completion (for --check, usage and load errors); kills it
-- and fails if it does not exit within the timeout.
function M.run(o, timeout)
  o = o or {}
  local argv = build_argv(o)
  local errpath = tmpname()
  local t0 = proc.now()
  local p, err = proc.spawn(argv, { stderr = errpath, cwd = M.src })
  if not p then error("cannot start echokit: " .. tostring(err), 2) end
  timeout = timeout or M.T(10)
  local out = p:readall(timeout)
  local how, code = p:wait(math.max(0.1, timeout - (proc.now() - t0)))
  if not how then
    p:kill("KILL")
    p:wait(5)
    error(string.format("echokit %s did not exit within %gs\nstdout:\n%s\nstderr:\n%s",
      table.concat(argv, " "), timeout, clip(out), clip(read_file(errpath))), 2)
  end
  return { how = how, code = code, stdout = out, stderr = read_file(errpath),
           elapsed = proc.now() - t0, argv = argv }
end

function Server:pid() return self.p:pid() end

function Server:addr(i) return self.addrs[i or 1] end

function Server:port(i)
  local a = self.addrs[i or 1]
  assert(a and a.kind == "tcp", "listener " .. tostring(i or 1) .. " is not TCP")
  return a.port
end

-- A connected luasocket client for listener i (default 1) with the given
-- timeout (default 5 s). It is closed after the test if still open.
function Server:connect(i, timeout)
  local a = self.addrs[i or 1]
  assert(a, "no listener " .. tostring(i or 1))
  local c, err
  if a.kind == "unix" then
    c = assert(unix.stream())
    c:settimeout(M.T(timeout or 5))
    local ok
    ok, err = c:connect(a.path)
    if not ok then c:close(); c = nil end
  else
    c = assert(a.v6 and socket.tcp6() or socket.tcp())
    c:settimeout(M.T(timeout or 5))
    local ok
    ok, err = c:connect(a.host, a.port)
    if not ok then c:close(); c = nil end
  end
  if not c then
    error(string.format("cannot connect to %s: %s\nstderr:\n%s", a.text, tostring(err),
      clip(self:stderr())), 2)
  end
  self.clients[#self.clients + 1] = c
  return c
end

-- A raw connection attempt: client or nil, err (no failure).
function Server:try_connect(i, timeout)
  local a = self.addrs[i or 1]
  local c = a.kind == "unix" and unix.stream() or (a.v6 and socket.tcp6() or socket.tcp())
  c:settimeout(timeout or 1)
  local ok, err = c:connect(a.path or a.host, a.port)
  if not ok then c:close(); return nil, err end
  self.clients[#self.clients + 1] = c
  return c
end

-- A TCP client whose own address is src (e.g. "127.0.0.2": all of 127/8 is
-- local), connected to listener i; client or nil, err. Closed after the test.
function Server:connect_from(src, i, timeout)
  local a = self.addrs[i or 1]
  assert(a and a.kind == "tcp" and not a.v6, "listener " .. tostring(i or 1) .. " is not IPv4")
  local c = assert(socket.tcp())
  c:settimeout(M.T(timeout or 5))
  local ok, err = c:bind(src, 0)
  if ok then ok, err = c:connect(a.host, a.port) end
  if not ok then c:close(); return nil, err end
  self.clients[#self.clients + 1] = c
  return c
end

function Server:stderr() return read_file(self.errpath) end

-- Parsed log lines: { {level=, msg=, line=}, ... }
function Server:log()
  local out = {}
  for line in self:stderr():gmatch("[^\n]+") do
    local level, msg = M.parse_log_line(line)
    out[#out + 1] = { level = level, msg = msg, line = line }
  end
  return out
end

-- Announce error-level lines this test provokes (Lua patterns on the message).
function Server:expect_errors(...)
  for _, p in ipairs({ ... }) do self.allowed[#self.allowed + 1] = p end
end

-- Waits (bounded) until a stderr line matches the Lua pattern; returns the
-- line and its captures. Fails with the stderr seen so far.
function Server:await_log(pattern, timeout)
  local deadline = proc.now() + M.T(timeout or 5)
  repeat
    for line in self:stderr():gmatch("[^\n]+") do
      if line:find(pattern) then return line, line:match(pattern) end
    end
    socket.sleep(0.01)   -- polls a file for a condition, bounded by the deadline
  until proc.now() > deadline
  error(string.format("no stderr line matching %q within %gs; stderr:\n%s",
    pattern, M.T(timeout or 5), clip(self:stderr(), 4000)), 2)
end

-- Lines matching a pattern (no waiting).
function Server:log_matching(pattern)
  local out = {}
  for line in self:stderr():gmatch("[^\n]+") do
    if line:find(pattern) then out[#out + 1] = line end
  end
  return out
end

function Server:vmrss()
  return assert(self.p:vmrss())
end

-- True while the process has not exited.
function Server:alive()
  if self.stopped then return false end
  local how, code = self.p:wait(0)
  if how then
    self.stopped = { how = how, code = code }
    return false
  end
  return true
end

-- Sends a signal (default TERM) and waits (bounded) for the exit.
-- Returns how ("exited"/"signaled"), code, elapsed seconds. Fails if it hangs.
function Server:stop(sig, timeout)
  if self.stopped then return self.stopped.how, self.stopped.code, 0 end
  timeout = timeout or M.T(self.grace + 5)
  local t0 = proc.now()
  self.p:kill(sig or "TERM")
  local how, code = self.p:wait(timeout)
  local elapsed = proc.now() - t0
  if not how then
    self.p:kill("KILL")
    local h2, c2 = self.p:wait(5)
    self.stopped = { how = h2, code = c2, hung = true }
    error(string.format("echokit did not exit within %gs of SIG%s (killed); stderr:\n%s",
      timeout, tostring(sig or "TERM"), clip(self:stderr(), 4000)), 2)
  end
  self.stopped = { how = how, code = code, elapsed = elapsed }
  return how, code, elapsed
end

-- Waits (bounded) for the process to exit on its own.
function Server:wait_exit(timeout)
  if self.stopped then return self.stopped.how, self.stopped.code end
  local how, code = self.p:wait(M.T(timeout or 5))
  if not how then
    error(string.format("echokit did not exit within %gs; stderr:\n%s",
      M.T(timeout or 5), clip(self:stderr(), 4000)), 2)
  end
  self.stopped = { how = how, code = code }
  return how, code
end

-- The error-level lines not announced with expect_errors.
function Server:unexpected_errors()
  local bad = {}
  for _, l in ipairs(self:log()) do
    if l.level and FATAL[l.level] then
      local ok = false
      for _, pat in ipairs(self.allowed) do
        if l.msg:find(pat) then ok = true break end
      end
      if not ok then bad[#bad + 1] = l.line end
    elseif l.line:match("^==%d+==") then
      bad[#bad + 1] = l.line   -- valgrind report
    end
  end
  return bad
end

---------------------------------------------------------------------------
-- after_each: stop every server of the test, check exits and logs
---------------------------------------------------------------------------
function M.teardown()
  local problems = {}
  local servers = running
  running = {}
  for _, srv in ipairs(servers) do
    for _, c in ipairs(srv.clients) do pcall(c.close, c) end
    srv.clients = {}
    if not srv.stopped then
      local ok, err = pcall(srv.stop, srv, "TERM")
      if not ok then
        problems[#problems + 1] = "shutdown hung: " .. tostring(err)
      end
    end
    local st = srv.stopped or {}
    if not st.forced and not st.hung and not srv.exit_checked and
       not (st.how == "exited" and st.code == 0) then
      problems[#problems + 1] = string.format(
        "echokit (%s) ended with %s %s, expected exit 0; stderr:\n%s",
        table.concat(srv.argv, " "), tostring(st.how), tostring(st.code),
        clip(srv:stderr(), 4000))
    end
    local bad = srv:unexpected_errors()
    if #bad > 0 then
      problems[#problems + 1] = "unexpected error-level log lines:\n  " ..
        table.concat(bad, "\n  ") .. "\nfull stderr:\n" .. clip(srv:stderr(), 4000)
    end
  end
  for _, p in ipairs(tmpfiles) do os.remove(p) end
  tmpfiles = {}
  if #problems > 0 then
    error(table.concat(problems, "\n\n"), 0)
  end
end

-- Mark that the test itself checked the exit status (e.g. a crash test).
function Server:exit_checked_by_test() self.exit_checked = true end


---------------------------------------------------------------------------
-- Client helpers (luasocket)
---------------------------------------------------------------------------

-- Random bytes from /dev/urandom.
function M.random_bytes(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local parts, left = {}, n
  while left > 0 do
    local s = assert(f:read(math.min(left, 1 << 20)))
    parts[#parts + 1] = s
    left = left - #s
  end
  f:close()
  return table.concat(parts)
end

-- Compares two byte strings without printing megabytes on failure.
function M.assert_bytes(expected, got, what)
  if expected == got then return end
  local n = math.min(#expected, #got)
  local first = n + 1
  for i = 1, n, 4096 do
    local j = math.min(n, i + 4095)
    if expected:sub(i, j) ~= got:sub(i, j) then
      for k = i, j do
        if expected:byte(k) ~= got:byte(k) then first = k break end
      end
      break
    end
  end
  error(string.format("%s: bytes differ: expected %d bytes, got %d; first difference at " ..
    "offset %d (expected %q, got %q)", what or "data", #expected, #got, first - 1,
    expected:sub(first, first + 15), got:sub(first, first + 15)), 2)
end

-- Sends everything (blocking with the socket's timeout). Fails on error.
function M.send_all(c, data)
  local i = 1
  while i <= #data do
    local last, err, partial = c:send(data, i)
    if not last then
      if err ~= "timeout" or not partial or partial < i then
        error(string.format("send failed after %d of %d bytes: %s", i - 1, #data, err), 2)
      end
      last = partial
    end
    i = last + 1
  end
end

-- Receives exactly n bytes; fails with what arrived otherwise.
function M.recv_n(c, n, timeout)
  if timeout then c:settimeout(M.T(timeout)) end
  local d, err, partial = c:receive(n)
  if not d then
    error(string.format("expected %d bytes, got %d then %s: %q", n, #(partial or ""),
      tostring(err), clip(partial or "", 200)), 2)
  end
  return d
end

-- Receives one line (without its LF / CRLF); fails otherwise.
function M.recv_line(c, timeout)
  if timeout then c:settimeout(M.T(timeout)) end
  local d, err, partial = c:receive("*l")
  if not d then
    error(string.format("expected a line, got %s after %q", tostring(err),
      clip(partial or "", 200)), 2)
  end
  return d
end

-- Sends one command line to a line-based test handler and returns its reply
-- line (timeout in seconds, default 3; recv_line scales it under a wrapper).
function M.ask(c, line, timeout)
  M.send_all(c, line .. "\n")
  return M.recv_line(c, timeout or 3)
end

-- Receives until the peer closes (bounded). Returns data, err where err is
-- "closed" for a clean end; fails on timeout.
function M.recv_until_closed(c, timeout)
  c:settimeout(M.T(timeout or 5))
  local d, err, partial = c:receive("*a")
  if d then return d, "closed" end
  if err == "timeout" then
    error(string.format("peer did not close within %gs; got %d bytes: %q",
      M.T(timeout or 5), #(partial or ""), clip(partial or "", 200)), 2)
  end
  return partial or "", err
end

-- Asserts that nothing arrives within `secs` (the socket must stay silent).
function M.expect_silence(c, secs, what)
  c:settimeout(secs)
  local d, err, partial = c:receive(1)
  if d or (partial and #partial > 0) then
    error(string.format("%s: expected no data for %gs, got %q", what or "socket", secs,
      d or partial), 2)
  end
  if err ~= "timeout" then
    error(string.format("%s: expected silence for %gs, got %s", what or "socket", secs, err), 2)
  end
end

-- Interleaved send/receive of `data` on one connection, comparing the echo as
-- it arrives, so neither side's buffers deadlock. Options:
--   timeout  overall bound (s, default 30)
--   chunk    max bytes per send call (default 256 KiB)
--   expect   the bytes expected back (default = data)
--   sent     bytes of `data` already sent before the call (default 0)
--   progress function(sent, received) called after each step
-- Returns received byte count; fails on mismatch, early close or timeout.
function M.exchange(c, data, o)
  o = o or {}
  local expect = o.expect or data
  local timeout = M.T(o.timeout or 30)
  local chunk = o.chunk or (256 * 1024)
  local deadline = proc.now() + timeout
  local sent, got = o.sent or 0, 0
  c:settimeout(0)
  local rset = { c }
  while got < #expect do
    local left = deadline - proc.now()
    if left <= 0 then
      error(string.format("exchange timed out after %gs: sent %d of %d, received %d of %d",
        timeout, sent, #data, got, #expect), 2)
    end
    local wset = sent < #data and { c } or {}
    local r, w = socket.select(rset, wset, math.min(left, 1))
    if w and #w > 0 and sent < #data then
      local last, err, partial = c:send(data, sent + 1, math.min(#data, sent + chunk))
      last = last or partial
      if not last and err ~= "timeout" then
        error(string.format("send failed after %d bytes: %s", sent, tostring(err)), 2)
      end
      if last and last > sent then sent = last end
      if err and err ~= "timeout" then
        error(string.format("send failed after %d bytes: %s", sent, tostring(err)), 2)
      end
    end
    if r and #r > 0 then
      local d, err, partial = c:receive(math.min(#expect - got, 1 << 20))
      d = d or partial
      if d and #d > 0 then
        if expect:sub(got + 1, got + #d) ~= d then
          local e = expect:sub(got + 1, got + #d)
          local k = 1
          while e:byte(k) == d:byte(k) do k = k + 1 end
          error(string.format("echo differs at offset %d (sent %d, received %d)",
            got + k - 1, sent, got + #d), 2)
        end
        got = got + #d
      end
      if err == "closed" and got < #expect then
        error(string.format("connection closed after %d of %d bytes (sent %d)",
          got, #expect, sent), 2)
      elseif err and err ~= "timeout" and err ~= "closed" then
        error(string.format("receive failed after %d bytes: %s", got, err), 2)
      end
    end
    if o.progress then o.progress(sent, got) end
  end
  return got
end

-- Polls `fn` until it returns a truthy value (bounded); returns that value.
-- For conditions that have no event to wait on (a counter in stats()).
function M.eventually(fn, timeout, what)
  local deadline = proc.now() + M.T(timeout or 5)
  local last
  repeat
    local v = { fn() }
    if v[1] then return table.unpack(v) end
    last = v[2]
    socket.sleep(0.02)
  until proc.now() > deadline
  error(string.format("%s did not happen within %gs (last: %s)", what or "condition",
    M.T(timeout or 5), tostring(last)), 2)
end

-- The line where a marker comment sits in a file of the repo (for checking
-- that an error message names the right line).
function M.line_of(relpath, marker)
  local n = 0
  for line in io.lines(M.src .. "/" .. relpath) do
    n = n + 1
    if line:find(marker, 1, true) then return n end
  end
  error("marker " .. marker .. " not found in " .. relpath)
end

-- Parses `k=v k=v` (stats lines) into a table of numbers/strings.
function M.parse_kv(line)
  local t = {}
  for k, v in line:gmatch("([%w_]+)=(%S*)") do t[k] = tonumber(v) or v end
  return t
end

-- Asks `ctl`, a connection to a handler with a stats command
-- (tests/handlers/stats.lua: `statsgc` collects garbage first), for
-- echokit.stats(); returns them parsed.
function M.stats(ctl, cmd)
  M.send_all(ctl, (cmd or "statsgc") .. "\n")
  local line = M.recv_line(ctl, 5)
  assert(line:match("^stats "), line)
  return M.parse_kv(line)
end

-- Waits (bounded) until only `ctl` is open; returns the stats.
function M.settle(ctl, what)
  return M.eventually(function()
    local s = M.stats(ctl)
    if s.connections_open == 1 then return s end
    return false, "connections_open=" .. tostring(s.connections_open)
  end, 5, what or "all clients gone")
end

-- A raw recv(2) on a luasocket client: data | nil, errno, strerror.
function M.raw_recv(c, n)
  return proc.recv(c:getfd(), n or 65536)
end

-- The pids whose parent is pid (a --workers parent's workers).
function M.children(pid)
  local out = {}
  local f = assert(io.popen("pgrep -P " .. math.tointeger(pid)))
  for line in f:lines() do out[#out + 1] = tonumber(line) end
  f:close()
  return out
end

-- True once pid has exited (gone, or a zombie nobody reaped yet).
function M.pid_gone(pid)
  local f = io.open("/proc/" .. math.tointeger(pid) .. "/stat")
  if not f then return true end
  local stat = f:read("a") or ""
  f:close()
  return stat:match("^%d+ %b() (%a)") == "Z"
end

-- A luasocket UDP client connected to srv's UDP listener i (from src if
-- given); closed after the test.
function M.udp_client(srv, i, src)
  local a = srv:addr(i)
  assert(a.kind == "udp", "listener is not UDP")
  local u = assert(a.v6 and socket.udp6() or socket.udp())
  if src then assert(u:setsockname(src, 0)) end
  assert(u:setpeername(a.host, a.port))
  u:settimeout(M.T(5))
  srv.clients[#srv.clients + 1] = u
  return u
end

-- One datagram out, its answer back (bounded by the client's timeout).
function M.udp_ask(u, d)
  assert(u:send(d))
  local r, err = u:receive()
  assert(r, string.format("no answer to %q: %s", d, tostring(err)))
  return r
end

return M
