-- --metrics ADDR: GET /metrics in Prometheus's text format, counted in C
-- per worker and summed on a scrape; checked by promtool and by a real
-- Prometheus scraping echokit.
local t = require "echokit_test"
local socket = require "socket"
local proc = require "proc"
local cjson = require "cjson"

-- The address printed on the "WHAT listening on" line (metrics, admin).
local function printed_addr(srv, what)
  for _, l in ipairs(srv.stdout_lines) do
    local h, p = l:match("^" .. what .. " listening on ([^:]+):(%d+)$")
    if h then return h, tonumber(p) end
  end
  error("no '" .. what .. " listening on' line in: " .. table.concat(srv.stdout_lines, " | "))
end

local function metrics_addr(srv) return printed_addr(srv, "metrics") end

-- One HTTP GET; returns status, body.
local function get(host, port, path)
  local c = assert(socket.connect(host, port))
  c:settimeout(t.T(5))
  assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
  local all, err, part = c:receive("*a")
  c:close()
  all = all or part
  assert(all and #all > 0, "no answer: " .. tostring(err))
  local status = tonumber(all:match("^HTTP/1%.1 (%d+)"))
  return status, all:match("\r\n\r\n(.*)$"), all
end

local function scrape(srv)
  local h, p = metrics_addr(srv)
  local status, body = get(h, p, "/metrics")
  assert.equal(200, status)
  local m = {}
  for line in body:gmatch("[^\n]+") do
    local k, v = line:match("^([^#][^ ]*) (%S+)$")
    if k then m[k] = tonumber(v) end
  end
  return m, body
end

local function await_metric(srv, key, want, timeout)
  return t.eventually(function()
    local v = scrape(srv)[key]
    return v == want, key .. " = " .. tostring(v)
  end, timeout or 5, key .. " == " .. want)
end

local function echo_n(srv, n)
  for i = 1, n do
    local c = srv:connect()
    assert.equal("m" .. i, t.ask(c, "m" .. i))
    c:close()
  end
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

-- promtool check metrics on an exposition text: asserts it passes.
local function promtool_ok(body)
  local path = os.tmpname()
  local f = assert(io.open(path, "w")); f:write(body); f:close()
  local p = io.popen("promtool check metrics < " .. path .. " 2>&1; echo rc=$?")
  local out = p:read("a"); p:close()
  os.remove(path)
  assert.truthy(out:match("rc=0"), "promtool check metrics:\n" .. out)
end

-- The control API (--admin): one JSON request; returns status, decoded body.
local function admin_addr(srv) return printed_addr(srv, "admin") end

local function api(srv, method, path, body)
  local h, p = admin_addr(srv)
  local c = assert(socket.connect(h, p))
  c:settimeout(t.T(5))
  body = body and cjson.encode(body)
  local head = method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
  if body then
    head = head .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n"
  end
  t.send_all(c, head .. "\r\n" .. (body or ""))
  local resp = t.recv_until_closed(c, 5)
  c:close()
  local status = tonumber(resp:match("^HTTP/1%.1 (%d%d%d)"))
  assert(status, "no HTTP answer: " .. resp)
  local raw = resp:match("\r\n\r\n(.*)$") or ""
  local ok, json = pcall(cjson.decode, raw)
  return status, ok and json or raw
end

-- An echo upstream and echokit with --admin and --metrics.
local function admin_setup()
  local up = t.start { handler = "echo" }
  local srv = t.start { opts = { "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0" } }
  return srv, up
end

local function add_proxy(srv, name, up)
  local st, p = api(srv, "POST", "/proxies",
                    { name = name, upstream = "127.0.0.1:" .. up:port(), listen = "127.0.0.1:0" })
  assert.equal(201, st, cjson.encode(p))
  return p
end

describe("--metrics", function()
  after_each(t.teardown)

  it("counts accepted connections and their bytes per listener, promtool-clean", function()
    local srv = t.start { opts = { "--metrics", "127.0.0.1:0" } }
    echo_n(srv, 5)
    await_metric(srv, "echokit_connections_accepted_total", 5)
    await_metric(srv, 'echokit_connections_closed_total{reason="clean"}', 5)
    local m, body = scrape(srv)
    assert.equal(0, m.echokit_connections_open)
    local l = srv:addr().text
    assert.equal(15, m['echokit_received_bytes_total{listener="' .. l .. '"}'])
    assert.equal(1, m['echokit_build_info{version="' .. body:match('version="([^"]+)"') ..
      '",lua="' .. body:match('lua="([^"]+)"') .. '",openssl="' ..
      body:match('openssl="([^"]+)"') .. '"}'])
    assert.truthy(m.echokit_start_time_seconds > 1.6e9)
    assert.equal(0, m.echokit_worker_restarts_total)
    assert.equal(0, m.echokit_reloads_total)
    assert.truthy(m.echokit_lua_heap_bytes > 0)
    promtool_ok(body) -- promtool's own check of the format and naming conventions
  end)

  it("counts closes by reason", function()
    local srv = t.start { handler = "tests/handlers/boom.lua",
                          -- the idle timeout scales too: under valgrind a round trip
                          -- of echo_n takes longer than 0.3 s
                          opts = { "--metrics", "127.0.0.1:0",
                                   "--idle-timeout", tostring(0.3 * t.slow),
                                   "--cpu-budget", tostring(0.2 * t.slow) } }
    srv:expect_errors("BOOM", "boom", "CPU budget", "on_data")
    echo_n(srv, 2)
    -- error
    local c = srv:connect(); c:send("!"); t.recv_until_closed(c, 5)
    -- budget
    c = srv:connect(); c:send("~"); t.recv_until_closed(c, 10)
    -- reset: the client aborts with an RST
    c = srv:connect()
    assert.equal("x", t.ask(c, "x"))
    c:setoption("linger", { on = true, timeout = 0 }); c:close()
    -- timeout: an idle client
    c = srv:connect(); t.recv_until_closed(c, 5)
    local base = "echokit_connections_closed_total{reason=\""
    await_metric(srv, base .. 'clean"}', 2)
    await_metric(srv, base .. 'error"}', 1)
    await_metric(srv, base .. 'budget"}', 1)
    await_metric(srv, base .. 'reset"}', 1)
    await_metric(srv, base .. 'timeout"}', 1)
    local m = scrape(srv)
    assert.equal(6, m.echokit_connections_accepted_total)
    assert.equal(2, m.echokit_callback_errors_total)
    assert.equal(1, m.echokit_cpu_budget_exceeded_total)
  end)

  it("answers 404 to other paths and 400 to other methods", function()
    local srv = t.start { opts = { "--metrics", "127.0.0.1:0" } }
    local h, p = metrics_addr(srv)
    assert.equal(404, (get(h, p, "/")))
    assert.equal(404, (get(h, p, "/metricsx")))
    assert.equal(200, (get(h, p, "/metrics?x=1")))
    local c = assert(socket.connect(h, p))
    c:send("POST /metrics HTTP/1.1\r\n\r\n")
    assert.truthy(c:receive("*l"):match("^HTTP/1%.1 400"))
    c:close()
  end)

  it("is an error (exit 1) on a taken port", function()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    local r = t.run { opts = { "--metrics", "127.0.0.1:" .. port } }
    s:close()
    assert.equal(1, r.code)
    assert.truthy(r.stderr:match("%-%-metrics: cannot listen on"), r.stderr)
  end)

  it("sums the workers and keeps a killed worker's counts", function()
    local srv = t.start { handler = "tests/handlers/spin.lua",
                          opts = { "--workers", "2", "--metrics", "127.0.0.1:0" } }
    srv:expect_errors("worker %d %(pid %d+%) killed by signal 9")
    local seen, n = {}, 0
    for _ = 1, 60 do
      local c = srv:connect()
      seen[tonumber(t.ask(c, "pid"))] = true
      c:close()
      n = n + 1
      local k = 0
      for _ in pairs(seen) do k = k + 1 end
      if k == 2 and n >= 6 then break end
    end
    local pids = {}
    for pid in pairs(seen) do pids[#pids + 1] = pid end
    assert.equal(2, #pids, "both workers served")
    await_metric(srv, "echokit_connections_accepted_total", n)
    os.execute("kill -KILL " .. pids[1])
    await_metric(srv, "echokit_worker_restarts_total", 1)
    assert.equal(n, scrape(srv).echokit_connections_accepted_total)
    for i = 1, 4 do assert.equal("a" .. i, t.ask(srv:connect(), "a" .. i, 5)) end
    await_metric(srv, "echokit_connections_accepted_total", n + 4)
  end)

  it("keeps counting across a reload: the new workers add to the sums", function()
    local srv = t.start { handler = "echo",
                          opts = { "--workers", "2", "--metrics", "127.0.0.1:0" } }
    echo_n(srv, 5)
    await_metric(srv, "echokit_connections_accepted_total", 5)
    -- an open connection keeps an old worker finishing while new ones serve
    local held = srv:connect()
    assert.equal("held", t.ask(held, "held"))
    os.execute("kill -HUP " .. srv:pid())
    srv:await_log("reload: handler echo loaded")
    await_metric(srv, "echokit_reloads_total", 1)
    echo_n(srv, 4)
    assert.equal("still", t.ask(held, "still"))         -- the old worker still counts
    held:close()
    await_metric(srv, "echokit_connections_accepted_total", 10)
    srv:await_log("reload: old worker %d+ %(pid %d+%) finished")
    await_metric(srv, "echokit_connections_open", 0)    -- no gauge left behind
    assert.equal(10, scrape(srv).echokit_connections_accepted_total)
  end)

  it("counts control-API proxies: connections, bytes each way, toxics", function()
    local srv, up = admin_setup()
    local p = add_proxy(srv, "p1", up)
    local st = api(srv, "POST", "/proxies/p1/toxics",
                   { name = "lag", type = "latency", attributes = { latency = 20 } })
    assert.equal(200, st)
    local host, port = p.listen:match("^(.+):(%d+)$")
    local n, msg = 4, "hello, proxy\n"
    for _ = 1, n do
      local c = assert(socket.connect(host, tonumber(port)))
      c:settimeout(t.T(5))
      t.send_all(c, msg)
      assert.equal(msg:sub(1, -2), c:receive("*l"))
      c:close()
    end
    local lbl = '{proxy="p1"}'
    await_metric(srv, "echokit_proxy_connections_total" .. lbl, n)
    await_metric(srv, "echokit_proxy_upstream_bytes_total" .. lbl, n * #msg)
    await_metric(srv, "echokit_proxy_downstream_bytes_total" .. lbl, n * #msg)
    local m, body = scrape(srv)
    assert.equal(1, m["echokit_proxy_toxics" .. lbl])
    promtool_ok(body)
    -- the gauge follows the set
    assert.equal(204, (api(srv, "DELETE", "/proxies/p1/toxics/lag")))
    await_metric(srv, "echokit_proxy_toxics" .. lbl, 0)
    -- a deleted proxy's series go; its slot serves the next name
    assert.equal(204, (api(srv, "DELETE", "/proxies/p1")))
    add_proxy(srv, "p2", up)
    t.eventually(function()
      local mm = scrape(srv)
      return mm["echokit_proxy_connections_total" .. lbl] == nil and
             mm['echokit_proxy_connections_total{proxy="p2"}'] == 0, "p1 gone, p2 at 0"
    end, 5, "p1 gone and p2 counted from 0")
  end)

  it("escapes proxy names in labels; promtool accepts them", function()
    local srv, up = admin_setup()
    local name = 'we"ird\\na\nme'
    local p = add_proxy(srv, name, up)
    local host, port = p.listen:match("^(.+):(%d+)$")
    local c = assert(socket.connect(host, tonumber(port)))
    c:settimeout(t.T(5))
    t.send_all(c, "x\n")
    assert.equal("x", c:receive("*l"))
    c:close()
    local lbl = '{proxy="we\\"ird\\\\na\\nme"}'
    await_metric(srv, "echokit_proxy_connections_total" .. lbl, 1)
    await_metric(srv, "echokit_proxy_upstream_bytes_total" .. lbl, 2)
    local _, body = scrape(srv)
    promtool_ok(body)
  end)

  it("counts at most 32 proxies and says so once", function()
    local srv, up = admin_setup()
    local list = {}
    for i = 1, 40 do
      list[i] = { name = "q" .. i, upstream = "127.0.0.1:" .. up:port(), enabled = false }
    end
    local st = api(srv, "POST", "/populate", list)
    assert.equal(201, st)
    srv:await_log("more than 32 proxies")
    local _, body = scrape(srv)
    local rows = 0
    for _ in body:gmatch("\necho" .. "kit_proxy_connections_total{") do rows = rows + 1 end
    assert.equal(32, rows)
    local warned = 0
    for l in srv:stderr():gmatch("[^\n]+") do
      if l:find("more than 32 proxies", 1, true) then warned = warned + 1 end
    end
    assert.equal(1, warned)
    promtool_ok(body)
  end)

  for _, workers in ipairs { "1", "2" } do
    it("counts the chaos handler's own proxy (--workers " .. workers .. ")", function()
      local up = t.start { handler = "echo" }
      local srv = t.start { handler = "chaos",
                            args = { upstream = "127.0.0.1:" .. up:port(), latency = "0.01" },
                            opts = { "--metrics", "127.0.0.1:0", "--workers", workers } }
      for i = 1, 4 do
        local c = srv:connect()
        assert.equal("m" .. i, t.ask(c, "m" .. i))
        c:close()
      end
      local lbl = '{proxy="chaos"}'
      await_metric(srv, "echokit_proxy_connections_total" .. lbl, 4)
      await_metric(srv, "echokit_proxy_upstream_bytes_total" .. lbl, 12)
      await_metric(srv, "echokit_proxy_downstream_bytes_total" .. lbl, 12)
      local m, body = scrape(srv)
      assert.equal(1, m["echokit_proxy_toxics" .. lbl]) -- each worker's set, not their sum
      promtool_ok(body)
    end)
  end

  it("is scraped by a real Prometheus", function()
    local srv = t.start { opts = { "--metrics", "127.0.0.1:0" } }
    local h, p = metrics_addr(srv)
    local dir = os.tmpname(); os.remove(dir)
    assert(os.execute("mkdir -p " .. dir .. "/data"))
    finally(function() os.execute("rm -rf " .. dir) end)
    local cf = assert(io.open(dir .. "/prometheus.yml", "w"))
    cf:write(string.format([[
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: echokit
    static_configs:
      - targets: ["%s:%d"]
]], h, p))
    cf:close()
    local port = free_port()
    local prom = assert(proc.spawn({ "prometheus", "--config.file=" .. dir .. "/prometheus.yml",
      "--storage.tsdb.path=" .. dir .. "/data", "--web.listen-address=127.0.0.1:" .. port },
      { stderr = dir .. "/log" }))
    finally(function() prom:kill("KILL"); prom:wait(5) end)
    echo_n(srv, 7)
    await_metric(srv, "echokit_connections_accepted_total", 7)
    t.eventually(function()
      local ok, status, body = pcall(get, "127.0.0.1", port,
        "/api/v1/query?query=echokit_connections_accepted_total")
      if not ok then return false, status end
      return status == 200 and body:match('"value":%[[%d.]+,"7"%]'), tostring(body)
    end, 30, "Prometheus reporting echokit_connections_accepted_total 7")
  end)
end)
