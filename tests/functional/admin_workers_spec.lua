-- The control API with --workers: worker 0 answers it, every worker applies
-- what it changes (a listener of its own per proxy, SO_REUSEPORT; the same
-- toxics, also on connections already open). Driven by toxiproxy's Node
-- client; the traffic checked here. Every wait is bounded and scales with
-- ECHOKIT_SLOW.
local t = require "echokit_test"
local socket = require "socket"

local N = 16 -- connections per check: all on one of 2 workers has odds 2^-15

local function npm_prefix()
  local prefix = os.getenv("ECHOKIT_NPM_PREFIX") or (t.src .. "/build/npm")
  local pkg = prefix .. "/node_modules/toxiproxy-node-client/package.json"
  local f = io.open(pkg)
  if f then f:close() return prefix end
  if os.getenv("ECHOKIT_SKIP_NPM") == "1" then return nil end
  error("toxiproxy-node-client is not installed (" .. pkg .. "): run scripts/deps.sh test " ..
        "(or scripts/npm-deps.sh " .. prefix .. "), or set ECHOKIT_SKIP_NPM=1 to skip " ..
        "this check knowingly")
end

-- One step through the Node client (tests/toxiproxy/workers_cli.js): its
-- output's first line.
local function client(prefix, admin, ...)
  local args = { ... }
  for i, a in ipairs(args) do args[i] = "'" .. a .. "'" end
  local cmd = string.format("cd %s && NODE_PATH=%s/node_modules timeout %d node " ..
                            "tests/toxiproxy/workers_cli.js http://%s %s 2>&1", t.src, prefix,
                            math.floor(t.T(30)), admin, table.concat(args, " "))
  local p = io.popen(cmd)
  local out = p:read("a")
  local _, _, status = p:close()
  assert(status == 0, "the Node client failed (" .. cmd .. "):\n" .. out)
  return out:match("^([^\n]*)")
end

-- The pids in `ss -p` lines for TCP sockets on local port `port`.
local function ss_pids(flags, port)
  local f = assert(io.popen("ss -Hnp" .. flags .. " '( sport = :" .. port .. " )'"))
  local pids = {}
  for line in f:lines() do
    for pid in line:gmatch("pid=(%d+)") do pids[tonumber(pid)] = true end
  end
  f:close()
  return pids
end

-- Opens N connections to addr; each has done one round trip.
local function open_all(addr)
  local host, port = addr:match("^(.+):(%d+)$")
  local cs = {}
  for i = 1, N do
    cs[i] = assert(socket.connect(host, tonumber(port)))
    cs[i]:settimeout(t.T(5))
  end
  return cs
end

-- Round trips on every connection at once: the shortest and longest, in
-- seconds.
local function round_trips(cs)
  local t0 = t.now()
  for _, c in ipairs(cs) do t.send_all(c, "ping\n") end
  local lo, hi = math.huge, 0
  for _, c in ipairs(cs) do
    assert.equal("ping", t.recv_line(c, 5))
    local d = t.now() - t0
    lo, hi = math.min(lo, d), math.max(hi, d)
  end
  return lo, hi
end

local function close_all(cs)
  for _, c in ipairs(cs) do c:close() end
end

describe("--admin with --workers 2", function()
  after_each(t.teardown)

  it("applies proxies and toxics in every worker, on open connections too", function()
    local prefix = npm_prefix()
    if not prefix then
      pending("ECHOKIT_SKIP_NPM=1: the toxiproxy-node-client check is skipped")
      return
    end
    local up = t.start { handler = "echo" }
    local srv = t.start { opts = { "--admin", "127.0.0.1:0", "--workers", "2" } }
    local admin
    for _, line in ipairs(srv.stdout_lines) do
      admin = admin or line:match("^admin listening on (.+)$")
    end
    assert(admin, "no 'admin listening on' line: " .. table.concat(srv.stdout_lines, "\n"))
    local workers = t.eventually(function()
      local c = t.children(srv:pid())
      return #c == 2 and c, "workers: " .. #c
    end, 5, "2 workers forked")
    -- Worker 0 holds the API's socket (beside the master); the other not.
    local api_pids = t.eventually(function()
      local p = ss_pids("tl", admin:match(":(%d+)$"))
      return (p[workers[1]] or p[workers[2]]) and p, "no worker on the API's socket yet"
    end, 5, "worker 0 serving the API")
    local other = api_pids[workers[1]] and workers[2] or workers[1]
    assert.is_nil(api_pids[other])

    local listen = client(prefix, admin, "create", "echo", "127.0.0.1:" .. up:port())
    local port = assert(tonumber(listen:match("^127%.0%.0%.1:(%d+)$")), listen)
    assert.is_true(port > 0, "the API reports the bound port")
    t.eventually(function()
      local p = ss_pids("tl", port)
      return p[workers[1]] and p[workers[2]], "not both listening yet"
    end, 5, "both workers listening on the proxy's port")

    -- Connections open before the toxic, on both workers.
    local held = open_all(listen)
    local _, hi = round_trips(held)
    assert.is_true(hi < 0.3, "no latency yet: " .. hi)
    t.eventually(function()
      local p = ss_pids("t state established", port)
      return p[workers[1]] and p[workers[2]], "accepted by one worker only"
    end, 5, "both workers accepting the proxy's connections")

    assert.equal("latency_downstream", client(prefix, admin, "latency", "echo", "300"))
    -- The open connections, those on the non-API worker too, get it.
    t.eventually(function()
      local lo = round_trips(held)
      return lo >= 0.29, "shortest round trip " .. lo
    end, 10, "the latency on the connections already open")
    -- And new connections, on both workers.
    local fresh = open_all(listen)
    local lo = round_trips(fresh)
    assert.is_true(lo >= 0.29, "every new connection delayed: shortest " .. lo)
    local p = ss_pids("t state established", port)
    assert.is_true(p[workers[1]] and p[workers[2]], "new connections on both workers")
    close_all(fresh)

    client(prefix, admin, "untoxic", "echo", "latency_downstream")
    t.eventually(function()
      local _, h = round_trips(held)
      return h < 0.25, "longest round trip " .. h
    end, 10, "the latency gone from every open connection")
    close_all(held)

    -- Worker 0 killed: its replacement starts from the published
    -- configuration, listens on the proxy's port and knows the proxy.
    local api = api_pids[workers[1]] and workers[1] or workers[2]
    srv:expect_errors("worker 0 %(pid %d+%) killed by signal 9 %(SIGKILL%)")
    os.execute("kill -KILL " .. api)
    local again = t.eventually(function()
      local c = t.children(srv:pid())
      local new
      for _, pid in ipairs(c) do if pid ~= other and pid ~= api then new = pid end end
      return #c == 2 and new, "workers: " .. table.concat(c, " ")
    end, 5, "worker 0 replaced")
    t.eventually(function()
      local l = ss_pids("tl", port)
      return l[again] and l[other], "the replacement not listening yet"
    end, 5, "the replacement listening on the proxy's port")
    workers = { again, other }

    client(prefix, admin, "delete", "echo")
    t.eventually(function()
      local l = ss_pids("tl", port)
      return next(l) == nil, "still listening"
    end, 5, "no worker listening on the deleted proxy's port")
    local c = socket.connect("127.0.0.1", port)
    assert.is_nil(c, "the deleted proxy's port refuses")
    assert.is_true(srv:alive())
    local now = t.children(srv:pid())
    table.sort(now)
    table.sort(workers)
    assert.same(workers, now)
  end)
end)
