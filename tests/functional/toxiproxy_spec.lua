-- The control API (--admin): toxiproxy's HTTP API, driven by toxiproxy's own
-- Node client library and by raw HTTP for bad input. Every wait is bounded.
local t = require "echokit_test"
local socket = require "socket"
local cjson = require "cjson"
local peers = require "peers"

-- An echo upstream, and echokit with --admin in front of it.
local function setup(o)
  o = o or {}
  local up = t.start { handler = "echo" }
  local opts = { "--admin", "127.0.0.1:0" }
  for _, v in ipairs(o.opts or {}) do opts[#opts + 1] = v end
  local args = o.args
  if args then args.upstream = "127.0.0.1:" .. up:port() end
  local srv = peers.front(t.start { handler = o.handler, args = args, opts = opts,
                                    expect_errors = o.expect_errors })
  local admin
  for _, line in ipairs(srv.stdout_lines) do
    admin = admin or line:match("^admin listening on (.+)$")
  end
  assert(admin, "no 'admin listening on' line; stdout: " .. table.concat(srv.stdout_lines, "\n"))
  srv.admin = admin
  return srv, up
end

-- One HTTP/1.1 request (Connection: close); returns status, decoded JSON body
-- (or the raw body when it is not JSON), raw body.
local function request(srv, method, path, body, headers)
  local host, port = srv.admin:match("^(.+):(%d+)$")
  local c = assert(socket.connect(host, tonumber(port)))
  c:settimeout(t.T(5))
  local h = { method .. " " .. path .. " HTTP/1.1", "Host: " .. srv.admin, "Connection: close" }
  for k, v in pairs(headers or {}) do h[#h + 1] = k .. ": " .. v end
  if body then
    h[#h + 1] = "Content-Type: application/json"
    h[#h + 1] = "Content-Length: " .. #body
  end
  t.send_all(c, table.concat(h, "\r\n") .. "\r\n\r\n" .. (body or ""))
  local resp, err = t.recv_until_closed(c, 5)
  c:close()
  local status = tonumber(resp:match("^HTTP/1%.1 (%d%d%d)"))
  assert(status, "no HTTP response (" .. tostring(err) .. "): " .. resp)
  local raw = resp:match("\r\n\r\n(.*)$") or ""
  local ok, json = pcall(cjson.decode, raw)
  return status, ok and json or raw, raw
end

-- Round trip of one line through addr ("HOST:PORT"); seconds, or nil, err.
local function round_trip(addr)
  local host, port = addr:match("^(.+):(%d+)$")
  local c, err = socket.connect(host, tonumber(port))
  if not c then return nil, err end
  c:settimeout(t.T(5))
  local t0 = t.now()
  c:send("ping\n")
  local line
  line, err = c:receive("*l")
  c:close()
  if line ~= "ping" then return nil, err end
  return t.now() - t0
end

-- A round trip that must succeed: seconds (fails clearly otherwise).
local function rt(addr, what)
  local secs, err = round_trip(addr)
  assert(secs, string.format("%s: no round trip through %s: %s", what or "relay", addr,
                             tostring(err)))
  return secs
end

local stats, settle = t.stats, t.settle

local function connect(addr)
  local host, port = addr:match("^(.+):(%d+)$")
  local c = assert(socket.connect(host, tonumber(port)))
  c:settimeout(t.T(5))
  return c
end

local function create(srv, name, upstream, listen)
  local st, p = request(srv, "POST", "/proxies", cjson.encode {
    name = name, upstream = upstream, listen = listen or "127.0.0.1:0" })
  assert.equal(201, st, cjson.encode(p))
  return p
end

-- Where toxiproxy-node-client is installed (at set-up time, by scripts/deps.sh
-- test through scripts/npm-deps.sh); nil, the test marked pending, when it is
-- not and ECHOKIT_SKIP_NPM=1 says to skip it knowingly.
local function node_client_prefix()
  local prefix = os.getenv("ECHOKIT_NPM_PREFIX") or (t.src .. "/build/npm")
  local pkg = prefix .. "/node_modules/toxiproxy-node-client/package.json"
  local f = io.open(pkg)
  if f then
    f:close()
    return prefix
  end
  if os.getenv("ECHOKIT_SKIP_NPM") == "1" then
    pending("ECHOKIT_SKIP_NPM=1: the toxiproxy-node-client check is skipped")
    return nil
  end
  error("toxiproxy-node-client is not installed (" .. pkg .. "): run scripts/deps.sh test " ..
        "(or scripts/npm-deps.sh " .. prefix .. "), or set ECHOKIT_SKIP_NPM=1 to skip " ..
        "this check knowingly")
end

-- Runs tests/toxiproxy/<script> under node with the client from `prefix`
-- and the given arguments (bounded by timeout); it must exit 0 having printed
-- its TAP plan ("1..N").
local function run_node_test(prefix, script, ...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = peers.shq(a) end
  local cmd = string.format("cd %s && NODE_PATH=%s/node_modules timeout %d node " ..
                            "tests/toxiproxy/%s %s 2>&1", peers.shq(t.src), peers.shq(prefix),
                            math.floor(t.T(60)), script, table.concat(args, " "))
  local p = io.popen(cmd)
  local out = p:read("a")
  local _, _, status = p:close()
  assert(status == 0 and out:find("\n1%.%.%d+\n"), "the Node client test failed:\n" .. out)
end

describe("control API", function()
  after_each(peers.teardown)

  it("is driven by toxiproxy's Node client (toxiproxy-node-client)", function()
    local prefix = node_client_prefix()
    if not prefix then return end
    local srv, up = setup()
    run_node_test(prefix, "client_test.js", "http://" .. srv.admin, up:port(), t.slow)
  end)

  it("takes echokit's aimed faults from toxiproxy's Node client as extensions", function()
    local prefix = node_client_prefix()
    if not prefix then return end
    local srv, up = setup()
    local web = peers.start_static_http()
    run_node_test(prefix, "aimed_test.js", "http://" .. srv.admin, up:port(), web.port, t.slow)
    peers.assert_no_api_request(web)
  end)

  it("answers malformed aimed faults with a 400 that says what is wrong", function()
    local srv, up = setup()
    local p = create(srv, "aim", "127.0.0.1:" .. up:port())
    local path = "/proxies/aim/toxics"
    local cases = {
      { '{"type":"latency","stream":"upstream","attributes":{"match":{"http":{"path":5}}}}',
        "match.http.path must be a string" },
      { '{"type":"latency","stream":"upstream","attributes":{"match":{"htp":{}}}}', "unknown key 'htp'" },
      { '{"type":"latency","stream":"upstream","attributes":{"match":{"http":{"path":null}}}}',
        "match.http.path must be a string" },
      { '{"type":"latency","attributes":{"match":{"http":{}}}}', "stream must be upstream" },
      { '{"type":"latency","attributes":{"match":"x"}}', "match must be a function or a table" },
      { '{"type":"latency","attributes":{"match":{"bytes":"[a"}}}', "match.bytes: " },
      { '{"type":"latency","attributes":{"client":"1.2.3.4/40"}}', "prefix length" },
      { '{"type":"latency","attributes":{"client":7}}', "client must be a string" },
      { '{"type":"latency","attributes":{"sni":[]}}', "sni must be a string" },
      { '{"type":"http_status","attributes":{"status":99}}', "status of http_status" },
      { '{"type":"http_status","stream":"downstream"}', "upstream stream only" },
      { '{"type":"http_status","attributes":{"headers":{"X":"a\\r\\nb"}}}', "headers of http_status" },
      { '{"type":"resp_error","attributes":{"match":{"http":{}}}}', "must be a resp matcher" },
      { '{"type":"loss","attributes":{"probability":-1}}', "between 0 and 1" },
      { '{"type":"limit_time","attributes":{"mode":"boom"}}', "fin or rst" },
      { '{"type":"limit_time","attributes":{"duration":-5}}', "between 0 and" },
      { '{"type":"corrupt","attributes":{"count":1.5}}', "whole number" },
    }
    for _, case in ipairs(cases) do
      local st, body = request(srv, "POST", path, case[1])
      assert.equal(400, st, case[1] .. " -> " .. cjson.encode(body))
      assert(body.error:find(case[2], 1, true), case[1] .. ": " .. body.error)
    end
    local _, list = request(srv, "GET", path)
    assert.same({}, list)
    -- an update with a malformed matcher changes nothing
    local st = request(srv, "POST", path, '{"name":"m","type":"drop_message","stream":"upstream",' ..
                       '"attributes":{"match":{"bytes":"^drop"}}}')
    assert.equal(200, st)
    local st2, body2 = request(srv, "POST", path .. "/m", '{"attributes":{"match":{"bytes":"%"}}}')
    assert.equal(400, st2)
    assert.matches("match.bytes", body2.error, 1, true)
    local _, toxic = request(srv, "GET", path .. "/m")
    assert.equal("^drop", toxic.attributes.match.bytes)
    local c = connect(p.listen)
    t.send_all(c, "drop this\nkeep\n")
    assert.equal("keep", t.recv_line(c, 5))
    c:close()
  end)

  it("answers bad input with toxiproxy's error shape; running proxies carry on", function()
    local srv, up = setup()
    local upstream = "127.0.0.1:" .. up:port()
    local p = create(srv, "good", upstream)
    rt(p.listen, "a new proxy")
    local path = "/proxies/good/toxics"
    local cases = {
      { "POST", "/proxies", "{not json", 400, "^bad request body: " },
      { "POST", "/proxies", "[1,2]", 400, "^bad request body: proxy must be a JSON object" },
      { "POST", "/proxies", '{"upstream":"' .. upstream .. '"}', 400, "^missing required field: name" },
      { "POST", "/proxies", '{"name":"x"}', 400, "^missing required field: upstream" },
      { "POST", "/proxies", '{"name":5,"upstream":"a:1"}', 400, "name must be a string" },
      { "POST", "/proxies", '{"name":"good","upstream":"' .. upstream .. '"}', 409, "^proxy already exists$" },
      { "POST", "/proxies", cjson.encode { name = "taken", upstream = upstream, listen = p.listen },
        500, "[Aa]ddress already in use" },
      { "POST", "/proxies", '{"name":"bad","upstream":"a:1","listen":"127.0.0.1:http"}', 400, "^listen: " },
      -- No name lookup on the event loop: only numeric addresses and localhost.
      { "POST", "/proxies", '{"name":"bad","upstream":"a:1","listen":"nonexistent.invalid:1234"}', 400,
        "^listen: .*'nonexistent%.invalid' is not a numeric address" },
      { "GET", "/proxies/nope", nil, 404, "^proxy not found$" },
      { "POST", path, "{", 400, "^bad request body: " },
      { "POST", path, '{"type":"frobnicate"}', 400, "^invalid toxic type$" },
      { "POST", path, '{"type":"latency","stream":"sideways"}', 400, "^stream was invalid" },
      { "POST", path, '{"type":"latency","attributes":{"latency":"100"}}', 400,
        "attribute latency of latency must be a number" },
      { "POST", path, '{"type":"latency","toxicity":"all"}', 400, "toxicity must be a number" },
      { "POST", path, '{"type":"latency","attributes":[1]}', 400, "attributes must be a JSON object" },
      { "POST", path, '{"type":"latency","attributes":{"latency":NaN}}', 400, "^bad request body: " },
      { "POST", path, '{"type":"latency","attributes":{"latency":0x10}}', 400, "^bad request body: " },
      { "POST", "/proxies", string.rep("[", 100) .. string.rep("]", 100), 400, "^bad request body: " },
      { "GET", path .. "/nope", nil, 404, "^toxic not found$" },
      { "DELETE", path .. "/nope", nil, 404, "^toxic not found$" },
      { "PUT", "/proxies", "{}", 405, "not allowed" },
      { "GET", "/nowhere", nil, 404, "no route" },
    }
    for _, case in ipairs(cases) do
      local st, body = request(srv, case[1], case[2], case[3])
      local what = case[1] .. " " .. case[2] .. " " .. tostring(case[3])
      assert.equal(case[4], st, what .. " -> " .. cjson.encode(body))
      assert.equal("table", type(body), what .. ": body is not JSON: " .. tostring(body))
      assert.equal(case[4], body.status, what)
      assert.matches(case[5], body.error, nil, nil, what)
    end
    -- A duplicate toxic name: 409, and the first one stays.
    local st = request(srv, "POST", path, '{"type":"latency","attributes":{"latency":1}}')
    assert.equal(200, st)
    local st2, body2 = request(srv, "POST", path, '{"type":"latency","attributes":{"latency":9}}')
    assert.equal(409, st2)
    assert.equal("toxic already exists", body2.error)
    local _, toxic = request(srv, "GET", path .. "/latency_downstream")
    assert.equal(1, toxic.attributes.latency)
    -- Browsers are turned away, as toxiproxy does.
    local st3 = request(srv, "GET", "/proxies", nil, { ["User-Agent"] = "Mozilla/5.0" })
    assert.equal(403, st3)
    -- Nothing broke: the proxy relays, the list shows exactly it.
    rt(p.listen, "the running proxy after bad requests")
    local _, list = request(srv, "GET", "/proxies")
    assert.same({ "good" }, (function() local n = {} for k in pairs(list) do n[#n + 1] = k end return n end)())
  end)

  it("changes the chaos handler's toxics at run time", function()
    local srv = setup { handler = "chaos", args = {} }
    local main = srv:addr().host .. ":" .. srv:port()
    -- Without toxics: what the machine takes. A removed latency of 0.5 s must
    -- be gone again: well under base + 0.5 s (generous, as the machine may
    -- be loaded; the lower bound with the toxic is strict).
    local base = rt(main, "no toxics")
    local gone = base + t.T(0.3)
    local st, p = request(srv, "GET", "/proxies/chaos")
    assert.equal(200, st)
    assert.same({}, p.toxics)
    st = request(srv, "POST", "/proxies/chaos/toxics",
                 '{"name":"slow","type":"latency","stream":"upstream","attributes":{"latency":500}}')
    assert.equal(200, st)
    local slow = rt(main, "latency 500 ms")
    assert(slow >= 0.49, "latency added through the API did not apply: " .. slow)
    st = request(srv, "DELETE", "/proxies/chaos/toxics/slow")
    assert.equal(204, st)
    local after = rt(main, "latency removed")
    assert(after < gone, string.format("a removed latency still applies: %.3fs (%.3fs before)",
                                       after, base))
    st = request(srv, "POST", "/proxies/chaos", '{"enabled":false}')
    assert.equal(200, st)
    local ok = round_trip(main)
    assert.is_nil(ok, "a disabled proxy relayed")
    st = request(srv, "POST", "/proxies/chaos/toxics",
                 '{"name":"slow","type":"latency","stream":"upstream","attributes":{"latency":500}}')
    assert.equal(200, st)
    st = request(srv, "POST", "/reset")
    assert.equal(204, st)
    after = rt(main, "after /reset")
    assert(after < gone, string.format("/reset left a latency: %.3fs (%.3fs before)", after, base))
  end)

  it("changes toxics of open connections; a removed toxic lets go of what it held", function()
    local srv, up = setup()
    local p = create(srv, "live", "127.0.0.1:" .. up:port())
    local host, port = p.listen:match("^(.+):(%d+)$")
    local c = assert(socket.connect(host, tonumber(port)))
    c:settimeout(t.T(5))
    t.send_all(c, "before\n")
    assert.equal("before", t.recv_line(c))
    -- Added while the connection is open: it applies to it.
    local st = request(srv, "POST", "/proxies/live/toxics",
                       '{"name":"slow","type":"latency","attributes":{"latency":200}}')
    assert.equal(200, st)
    local t0 = t.now()
    t.send_all(c, "slow\n")
    assert.equal("slow", t.recv_line(c))
    assert(t.now() - t0 >= 0.19, "latency added to an open connection did not apply")
    -- Made long, then removed while a line waits in it: the line comes at once.
    st = request(srv, "POST", "/proxies/live/toxics/slow", '{"attributes":{"latency":5000}}')
    assert.equal(200, st)
    t0 = t.now()
    t.send_all(c, "held 1\nheld 2\n")
    t.expect_silence(c, 0.2, "a line inside a 5 s latency")
    st = request(srv, "DELETE", "/proxies/live/toxics/slow")
    assert.equal(204, st)
    assert.equal("held 1", t.recv_line(c, 2))
    assert.equal("held 2", t.recv_line(c, 2))
    assert(t.now() - t0 < 2, "the held lines waited for the removed toxic")
    c:close()
  end)

  it("a delayed connection holds up nobody else", function()
    local srv, up = setup()
    local upstream = "127.0.0.1:" .. up:port()
    local slow = create(srv, "slow", upstream)
    local fast = create(srv, "fast", upstream)
    local delay = t.T(2)
    local st = request(srv, "POST", "/proxies/slow/toxics", cjson.encode {
      type = "latency", attributes = { latency = math.floor(delay * 1000) } })
    assert.equal(200, st)
    local c = connect(slow.listen)
    local t0 = t.now()
    t.send_all(c, "slow\n")
    -- While that line waits out its delay, other proxies and the API answer:
    -- each of their replies comes before the slow line.
    for i = 1, 5 do
      rt(fast.listen, "the other proxy")
      assert.equal(200, (request(srv, "GET", "/proxies/slow")))
      local ready = socket.select({ c }, nil, 0)
      assert(not ready[1], string.format(
        "the delayed line came before reply %d of the others (%.3fs): they were held up", i,
        t.now() - t0))
    end
    assert.equal("slow", t.recv_line(c, delay + 3))
    assert(t.now() - t0 >= delay - 0.01, "the slow line came early")
    c:close()
  end)

  it("timeout=0 holds data, closes at the end of stream and when removed (as toxiproxy)", function()
    local srv, up = setup { handler = "tests/handlers/stats.lua" }
    local ctl = srv:connect()
    settle(ctl, "baseline")
    local p = create(srv, "held", "127.0.0.1:" .. up:port())
    local st = request(srv, "POST", "/proxies/held/toxics",
                       '{"name":"stall","type":"timeout","stream":"upstream","attributes":{"timeout":0}}')
    assert.equal(200, st)
    -- Clients that send and go away: nothing of theirs may stay open.
    for i = 1, 3 do
      local c = connect(p.listen)
      t.send_all(c, "dropped " .. i .. "\n")
      c:close()
    end
    settle(ctl, "connections through timeout=0 closed after their clients left")
    -- A client that half-closes is closed by the proxy.
    local c = connect(p.listen)
    t.send_all(c, "dropped\n")
    c:shutdown("send")
    local rest, err = t.recv_until_closed(c, 3)
    assert.equal("", rest)
    assert.equal("closed", err)
    c:close()
    -- A held connection is closed when the toxic is removed.
    c = connect(p.listen)
    t.send_all(c, "held\n")
    t.expect_silence(c, 0.2, "a connection behind timeout=0")
    st = request(srv, "DELETE", "/proxies/held/toxics/stall")
    assert.equal(204, st)
    rest, err = t.recv_until_closed(c, 3)
    assert.equal("", rest)
    assert.equal("closed", err)
    c:close()
    settle(ctl, "every connection closed")
  end)

  it("leaves no connection or registry reference behind (latency, slicer, delete)", function()
    local srv, up = setup { handler = "tests/handlers/stats.lua" }
    local ctl = srv:connect()
    local base = settle(ctl, "baseline")
    local p = create(srv, "refs", "127.0.0.1:" .. up:port())
    assert.equal(200, (request(srv, "POST", "/proxies/refs/toxics",
      '{"type":"latency","stream":"downstream","attributes":{"latency":20}}')))
    assert.equal(200, (request(srv, "POST", "/proxies/refs/toxics",
      '{"type":"slicer","stream":"upstream","attributes":{"average_size":3,"delay":1000}}')))
    local clients = {}
    for i = 1, 4 do
      local c = connect(p.listen)
      t.send_all(c, "line " .. i .. "\n")
      assert.equal("line " .. i, t.recv_line(c, 3))
      clients[i] = c
    end
    -- One leaves with data still held in the toxics, one half-closes.
    t.send_all(clients[1], "in flight\n")
    clients[1]:close()
    clients[2]:shutdown("send")
    assert.equal("closed", select(2, t.recv_until_closed(clients[2], 3)))
    for _, c in ipairs(clients) do c:close() end
    settle(ctl, "proxied connections closed")
    assert.equal(204, (request(srv, "DELETE", "/proxies/refs")))
    local after = settle(ctl, "after the proxy was deleted")
    assert(after.refs == base.refs, string.format(
      "%d registry references held, %d at the baseline (leak of %d)",
      after.refs, base.refs, after.refs - base.refs))
  end)

  it("populate: all or nothing, also when a listen address cannot be bound", function()
    local srv, up = setup()
    local upstream = "127.0.0.1:" .. up:port()
    local function names()
      local _, list = request(srv, "GET", "/proxies")
      local n = {}
      for k in pairs(list) do n[#n + 1] = k end
      table.sort(n)
      return n
    end
    -- A bad entry anywhere: nothing is applied.
    local st, body = request(srv, "POST", "/populate", cjson.encode {
      { name = "one", upstream = upstream, listen = "127.0.0.1:0" },
      { name = "two", listen = "127.0.0.1:0" } })
    assert.equal(400, st)
    assert.equal("missing required field: upstream at proxy 2", body.error)
    assert.equal(400, body.status)
    assert.same({}, body.proxies)
    assert.same({}, names())
    -- Two proxies already there, one with a toxic and a client.
    local kept = create(srv, "kept", upstream)
    local other = create(srv, "other", upstream)
    assert.equal(200, (request(srv, "POST", "/proxies/kept/toxics",
                               '{"name":"slow","type":"latency","attributes":{"latency":1}}')))
    local c = connect(kept.listen)
    t.send_all(c, "before\n")
    assert.equal("before", t.recv_line(c))
    local _, before = request(srv, "GET", "/proxies")
    -- A listen address that cannot be bound, after entries that would
    -- replace "kept", disable "other" and add "one": none of it happens,
    -- and the answer lists no proxies.
    st, body = request(srv, "POST", "/populate", cjson.encode {
      { name = "kept", upstream = "127.0.0.1:1", listen = kept.listen },
      { name = "other", upstream = upstream, enabled = false },
      { name = "one", upstream = upstream, listen = "127.0.0.1:0" },
      { name = "two", upstream = upstream, listen = srv.admin },
      { name = "three", upstream = upstream, listen = "127.0.0.1:0" } })
    assert.equal(500, st, cjson.encode(body))
    assert.matches("[Aa]ddress already in use", body.error)
    assert.equal(500, body.status)
    assert.same({}, body.proxies)
    local _, after = request(srv, "GET", "/proxies")
    assert.same(before, after)
    rt(kept.listen, "the proxy a failed populate would have replaced")
    rt(other.listen, "the proxy a failed populate would have disabled")
    t.send_all(c, "after\n")
    assert.equal("after", t.recv_line(c), "a connection through the kept proxy")
    c:close()
    -- Success: 201 and every proxy; "kept" reuses its own address.
    st, body = request(srv, "POST", "/populate", cjson.encode {
      { name = "kept", upstream = "127.0.0.1:1", listen = kept.listen },
      { name = "one", upstream = upstream, listen = "127.0.0.1:0" },
      { name = "two", upstream = upstream } })
    assert.equal(201, st, cjson.encode(body))
    assert.is_nil(body.error)
    assert.equal(3, #body.proxies)
    assert.equal(kept.listen, body.proxies[1].listen)
    assert.same({}, body.proxies[1].toxics)
    assert.same({ "kept", "one", "other", "two" }, names())
  end)

  it("checks every number: out of range is a 400 and changes nothing", function()
    local srv, up = setup()
    local upstream = "127.0.0.1:" .. up:port()
    local p = create(srv, "nums", upstream)
    local path = "/proxies/nums/toxics"
    assert.equal(200, (request(srv, "POST", path,
      '{"name":"lat","type":"latency","toxicity":0.5,"attributes":{"latency":10}}')))
    local _, before = request(srv, "GET", "/proxies")
    local function toxic(attrs, extra)
      return '{"name":"new","type":"' .. attrs[1] .. '","attributes":' .. attrs[2] ..
             (extra or "") .. "}"
    end
    local cases = {
      -- 1e999 reads as infinity: once stored, no listing could be written.
      { "POST", path, '{"type":"latency","toxicity":1e999}', "toxicity: number out of range" },
      { "POST", path, '{"type":"latency","toxicity":-1e999}', "toxicity: number out of range" },
      { "POST", path, '{"type":"latency","toxicity":1.5}', "toxicity must be between 0 and 1" },
      { "POST", path, '{"type":"latency","toxicity":-0.1}', "toxicity must be between 0 and 1" },
      { "POST", path, toxic { "latency", '{"latency":1e999}' }, "attributes%.latency: number out of range" },
      { "POST", path, toxic { "latency", '{"latency":-1}' }, "latency of latency must be between 0 and" },
      { "POST", path, toxic { "latency", '{"jitter":1e12}' }, "jitter of latency must be between 0 and" },
      { "POST", path, toxic { "bandwidth", '{"rate":-5}' }, "rate of bandwidth must be between 0 and" },
      { "POST", path, toxic { "slicer", '{"average_size":2.5}' }, "average_size of slicer must be a whole number" },
      { "POST", path, toxic { "slicer", '{"size_variation":-1}' }, "size_variation of slicer must be between" },
      { "POST", path, toxic { "slicer", '{"delay":1e300}' }, "delay of slicer must be between" },
      { "POST", path, toxic { "slow_close", '{"delay":-3}' }, "delay of slow_close must be between" },
      { "POST", path, toxic { "timeout", '{"timeout":-1}' }, "timeout of timeout must be between" },
      { "POST", path, toxic { "reset_peer", '{"timeout":1e10}' }, "timeout of reset_peer must be between" },
      { "POST", path, toxic { "limit_data", '{"bytes":0.5}' }, "bytes of limit_data must be a whole number" },
      { "POST", path, toxic { "limit_data", '{"bytes":-1}' }, "bytes of limit_data must be between" },
      -- Unknown attributes are kept and shown, so they must be writable too.
      { "POST", path, toxic { "latency", '{"extra":1e999}' }, "attributes%.extra: number out of range" },
      { "POST", path, toxic { "latency", '{"extra":{"deep":[1,-1e999]}}' }, "attributes%.extra%.deep%.2: number" },
      { "POST", path .. "/lat", '{"toxicity":1e999}', "toxicity: number out of range" },
      { "POST", path .. "/lat", '{"toxicity":2}', "toxicity must be between 0 and 1" },
      { "PATCH", path .. "/lat", '{"attributes":{"latency":-10}}', "latency of latency must be between" },
      { "PATCH", path .. "/lat", '{"attributes":{"latency":20,"jitter":1e999}}', "attributes%.jitter: number" },
      { "PATCH", path .. "/lat", '{"toxicity":1,"attributes":{"latency":-1}}', "latency of latency must be between" },
      { "POST", "/proxies", cjson.encode { name = "x", upstream = upstream } :sub(1, -2) .. ',"n":1e999}',
        "n: number out of range" },
      { "PATCH", "/proxies/nums", '{"enabled":false,"n":-1e999}', "n: number out of range" },
      { "POST", "/populate", '[{"name":"x","upstream":"' .. upstream .. '","n":1e999}]',
        "1%.n: number out of range" },
      { "POST", "/populate", "1e999", "body: number out of range" },
      { "POST", "/populate", "{}", "expected a JSON array of proxies" },
      { "POST", "/populate", '{"name":"x"}', "expected a JSON array of proxies" },
    }
    for _, case in ipairs(cases) do
      local what = case[1] .. " " .. case[2] .. " " .. case[3]
      local st, body = request(srv, case[1], case[2], case[3])
      assert.equal(400, st, what .. " -> " .. tostring(cjson.encode(body)))
      assert.equal(400, body.status, what)
      assert.matches("^bad request body: .*" .. case[4], body.error, nil, nil, what)
      local st2, now = request(srv, "GET", "/proxies")
      assert.equal(200, st2, "the listing after " .. what .. ": " .. tostring(now))
      assert.same(before, now, "state changed by " .. what)
    end
    -- The edges are fine.
    assert.equal(200, (request(srv, "POST", path,
      '{"name":"edge","type":"limit_data","toxicity":0,"attributes":{"bytes":0}}')))
    assert.equal(200, (request(srv, "PATCH", path .. "/edge", '{"toxicity":1}')))
    assert.equal(200, (request(srv, "GET", "/proxies")))
    assert.equal(204, (request(srv, "DELETE", path .. "/edge")))
    rt(p.listen, "the proxy after the refused numbers")
  end)

  it("a failed proxy update leaves it exactly as it was", function()
    local srv, up = setup()
    local upstream = "127.0.0.1:" .. up:port()
    local p = create(srv, "moving", upstream)
    local q = create(srv, "sitting", upstream)
    assert.equal(200, (request(srv, "POST", "/proxies/moving/toxics",
                               '{"name":"slow","type":"latency","attributes":{"latency":1}}')))
    local c = connect(p.listen)
    t.send_all(c, "before\n")
    assert.equal("before", t.recv_line(c))
    local _, before = request(srv, "GET", "/proxies/moving")
    local cases = {
      -- A taken port: toxiproxy answers 500 (its error has no status); the
      -- proxy used to stay disabled with the new address.
      { cjson.encode { listen = q.listen }, 500, "^listen .*[Aa]ddress already in use" },
      { cjson.encode { listen = q.listen, upstream = "127.0.0.1:1" }, 500, "[Aa]ddress already in use" },
      { cjson.encode { listen = srv.admin, enabled = true }, 500, "[Aa]ddress already in use" },
      { cjson.encode { listen = "127.0.0.1:http" }, 400, "^listen: " },
      { cjson.encode { listen = "nonexistent.invalid:1" }, 400, "not a numeric address" },
      { cjson.encode { upstream = "nope", enabled = false }, 400, "^bad request body: .*upstream \"nope\"" },
      { cjson.encode { upstream = "127.0.0.1:0" }, 400, "upstream .*bad port 0" },
      { cjson.encode { upstream = "" }, 400, "upstream must not be empty" },
      { cjson.encode { listen = "", enabled = false }, 400, "listen must not be empty" },
      { '{"enabled":"no","listen":"127.0.0.1:0"}', 400, "enabled must be a boolean" },
    }
    for _, case in ipairs(cases) do
      local st, body = request(srv, "PATCH", "/proxies/moving", case[1])
      assert.equal(case[2], st, case[1] .. " -> " .. cjson.encode(body))
      assert.equal(case[2], body.status, case[1])
      assert.matches(case[3], body.error, nil, nil, case[1])
      local _, now = request(srv, "GET", "/proxies/moving")
      assert.same(before, now, "the proxy changed after " .. case[1])
      rt(p.listen, "the proxy after " .. case[1])
      t.send_all(c, "still\n")
      assert.equal("still", t.recv_line(c), "the open connection after " .. case[1])
    end
    rt(q.listen, "the proxy whose port was asked for")
    -- A disabled proxy that cannot come back on its address stays disabled.
    assert.equal(200, (request(srv, "PATCH", "/proxies/moving", '{"enabled":false}')))
    local _, off = request(srv, "GET", "/proxies/moving")
    local st, body = request(srv, "PATCH", "/proxies/moving",
                             cjson.encode { enabled = true, listen = q.listen })
    assert.equal(500, st, cjson.encode(body))
    local _, still = request(srv, "GET", "/proxies/moving")
    assert.same(off, still)
    -- A free address: it moves, the old one stops answering, the toxic stays.
    st, body = request(srv, "PATCH", "/proxies/moving", '{"enabled":true,"listen":"127.0.0.1:0"}')
    assert.equal(200, st, cjson.encode(body))
    assert.are_not.equal(p.listen, body.listen)
    assert.equal("slow", body.toxics[1].name)
    rt(body.listen, "the moved proxy")
    assert.is_nil(round_trip(p.listen), "the old address still relays")
    c:close()
  end)

  it("never takes a unix socket another service listens on", function()
    local srv, up = setup()
    local upstream = "127.0.0.1:" .. up:port()
    local path = t.unix_path("api")
    local other = t.start { handler = "echo", listen = { "unix:" .. path } }
    local oc = other:connect()
    local p = create(srv, "tcp", upstream)
    local _, before = request(srv, "GET", "/proxies")
    local want = "address in use: something is listening on " .. path
    local st, body = request(srv, "POST", "/proxies", cjson.encode {
      name = "thief", upstream = upstream, listen = "unix:" .. path })
    assert.equal(500, st, cjson.encode(body))
    assert.truthy(body.error:find(want, 1, true), body.error)
    st, body = request(srv, "PATCH", "/proxies/tcp", cjson.encode { listen = "unix:" .. path })
    assert.equal(500, st, cjson.encode(body))
    assert.truthy(body.error:find(want, 1, true), body.error)
    st, body = request(srv, "POST", "/populate", cjson.encode {
      { name = "thief", upstream = upstream, listen = "unix:" .. path } })
    assert.equal(500, st, cjson.encode(body))
    assert.truthy(body.error:find(want, 1, true), body.error)
    local _, after = request(srv, "GET", "/proxies")
    assert.same(before, after)
    rt(p.listen, "the proxy asked to move onto the socket")
    -- The other service kept its socket: its old and new clients reach it.
    t.send_all(oc, "mine\n")
    assert.equal("mine", t.recv_line(oc))
    local oc2 = other:connect()
    t.send_all(oc2, "still mine\n")
    assert.equal("still mine", t.recv_line(oc2))
    oc:close()
    oc2:close()
  end)

  it("reset is all or nothing", function()
    local srv, up = setup()
    local upstream = "127.0.0.1:" .. up:port()
    local a = create(srv, "a", upstream)
    create(srv, "b", upstream)
    for _, n in ipairs { "a", "b" } do
      assert.equal(200, (request(srv, "POST", "/proxies/" .. n .. "/toxics",
                                 '{"name":"slow","type":"latency","attributes":{"latency":1}}')))
      assert.equal(200, (request(srv, "PATCH", "/proxies/" .. n, '{"enabled":false}')))
    end
    -- a's address is taken meanwhile (by another proxy, which is allowed
    -- while a is disabled): a cannot come back.
    local c = create(srv, "c", upstream, a.listen)
    local _, before = request(srv, "GET", "/proxies")
    local st, body = request(srv, "POST", "/reset")
    assert.equal(500, st, cjson.encode(body))
    assert.matches("[Aa]ddress already in use", body.error)
    local _, after = request(srv, "GET", "/proxies")
    assert.same(before, after)
    rt(c.listen, "the proxy holding the address")
    -- Once it is free, reset does it all.
    assert.equal(204, (request(srv, "DELETE", "/proxies/c")))
    assert.equal(204, (request(srv, "POST", "/reset")))
    local _, list = request(srv, "GET", "/proxies")
    for _, n in ipairs { "a", "b" } do
      assert.is_true(list[n].enabled, n)
      assert.same({}, list[n].toxics, n)
      rt(list[n].listen, "proxy " .. n .. " after reset")
    end
  end)

  it("checks an upstream's shape when the proxy is made", function()
    local srv = setup()
    local cases = {
      { '{"name":"u","upstream":"nope"}', "upstream \"nope\": expected HOST:PORT" },
      { '{"name":"u","upstream":"127.0.0.1:99999"}', "bad port 99999" },
      { '{"name":"u","upstream":":80"}', "no host" },
      { '{"name":"u","upstream":"unix:"}', "empty unix socket path" },
      { '{"name":"u","upstream":"a:1","enabled":false,"listen":"here"}', "^listen: here: expected" },
    }
    for _, case in ipairs(cases) do
      local st, body = request(srv, "POST", "/proxies", case[1])
      assert.equal(400, st, case[1] .. " -> " .. cjson.encode(body))
      assert.matches(case[2], body.error, nil, nil, case[1])
    end
    local _, list = request(srv, "GET", "/proxies")
    assert.same({}, list)
  end)

  it("runs the custom toxic from the README, also when added through the API", function()
    local readme = t.read_file(t.src .. "/README.md")
    local code = readme:match("<!%-%- drop_nth%.lua %-%->\n```lua\n(.-)```")
    assert(code, "README.md has no drop_nth.lua example")
    local path = os.tmpname() .. "_drop_nth.lua"
    local f = assert(io.open(path, "w"))
    f:write(code)
    f:close()
    finally(function() os.remove(path) end)
    local srv, up = setup { handler = path, args = { n = 3 } }
    local c = srv:connect()
    for i = 1, 7 do
      t.send_all(c, "req " .. i .. "\n")
      if i % 3 == 0 then
        t.expect_silence(c, 0.2, "request " .. i .. " (every 3rd is dropped)")
      else
        assert.equal("req " .. i, t.recv_line(c, 2))
      end
    end
    -- The type is known to the control API too.
    local p = create(srv, "custom", "127.0.0.1:" .. up:port())
    local st, toxic = request(srv, "POST", "/proxies/custom/toxics",
                              '{"type":"drop_nth","stream":"upstream","attributes":{"n":2}}')
    assert.equal(200, st, cjson.encode(toxic))
    assert.equal(2, toxic.attributes.n)
    st = request(srv, "POST", "/proxies/custom/toxics",
                 '{"name":"x","type":"drop_nth","attributes":{"n":"two"}}')
    assert.equal(400, st)
    local host, port = p.listen:match("^(.+):(%d+)$")
    local c2 = assert(socket.connect(host, tonumber(port)))
    c2:settimeout(t.T(5))
    t.send_all(c2, "one\n")
    assert.equal("one", t.recv_line(c2))
    t.send_all(c2, "two\n")
    t.expect_silence(c2, 0.2, "the 2nd request with n=2")
    c2:close()
  end)

  it("with --admin and no --listen, only the control API listens", function()
    local srv = t.start { listen = {}, opts = { "--admin", "127.0.0.1:0" } }
    peers.front(srv)
    local line = srv.p:readline(t.T(5))
    srv.admin = line and line:match("^admin listening on (.+)$")
    assert(srv.admin, "expected the admin line, got " .. tostring(line))
    local st, v = request(srv, "GET", "/version")
    assert.equal(200, st)
    assert.equal("echokit", v.server)
    local more = srv.p:readline(0.2)
    assert.is_nil(more, "another listener was opened: " .. tostring(more))
  end)

  it("reports an admin address it cannot use", function()
    local up = t.start { handler = "echo" }
    local r = t.run { opts = { "--admin", "127.0.0.1:" .. up:port() } }
    assert.equal(1, r.code)
    assert.matches("echokit: %-%-admin: cannot listen on .*already in use", r.stderr)
    r = t.run { opts = { "--admin", "127.0.0.1:nope" } }
    assert.equal(2, r.code)
    assert.matches("%-%-admin 127.0.0.1:nope: bad port", r.stderr)
    r = t.run { opts = { "--admin", "127.0.0.1:" .. up:port(), "--workers", "2" } }
    assert.equal(1, r.code)
    assert.matches("echokit: %-%-admin: cannot listen on .*already in use", r.stderr)
  end)
end)
