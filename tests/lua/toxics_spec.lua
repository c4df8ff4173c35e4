-- echokit.toxics without the binary: a fake `echokit` module with a clock the
-- test moves by hand, and fake connections that record what is written to
-- them and when. Deterministic checks of ordering, timing, slice sizes,
-- pacing, back-pressure and changes of the set while data is held.

local fakes = require "fakes"
local rt = fakes.proxy_runtime()
package.loaded["echokit"] = rt.echokit
local toxics = require "echokit.toxics"

-- A proxied connection through `set`: client, server, handler.
local function open(set)
  return rt:open(toxics.handler { upstream = "127.0.0.1:1", toxics = set }, rt:conn("client"))
end

local function from_server(server, data) server.handler.on_data(server, data) end

describe("echokit.toxics", function()
  before_each(function() rt:reset() end)

  it("latency with jitter: every chunk delayed within bounds, order kept", function()
    math.randomseed(7)
    local set = toxics.set()
    assert(set:add { type = "latency", attributes = { latency = 0.1, jitter = 0.05 } })
    local client, server = open(set)
    local sent = {}
    for i = 1, 200 do
      rt.clock = i * 0.001
      sent[i] = string.format("%03d;", i)
      from_server(server, sent[i])
    end
    rt:advance(10)
    assert.equal(table.concat(sent), client:data())
    local i = 0
    for _, w in ipairs(client.writes) do
      for _ in w.data:gmatch(";") do
        i = i + 1
        local delay = w.at - i * 0.001
        assert(delay >= 0.05 - 1e-9, "chunk " .. i .. " delayed only " .. delay)
        assert(delay <= 0.15 + 0.2, "chunk " .. i .. " delayed " .. delay)
      end
    end
  end)

  it("slicer: slices of average_size +- size_variation, delay apart", function()
    math.randomseed(3)
    local set = toxics.set()
    assert(set:add { type = "slicer", attributes = { average_size = 20, size_variation = 5,
                                                      delay = 0.01 } })
    local client, server = open(set)
    local data = string.rep("abcdefghij", 100)
    from_server(server, data)
    rt:advance(100)
    assert.equal(data, client:data())
    local sizes = {}
    for i, w in ipairs(client.writes) do
      if i < #client.writes then
        assert(#w.data >= 15 and #w.data <= 25, "a slice of " .. #w.data .. " bytes")
      end
      sizes[#sizes + 1] = #w.data
      if i > 1 then
        assert.near(0.01, w.at - client.writes[i - 1].at, 1e-9)
      end
    end
    local distinct = {}
    for _, n in ipairs(sizes) do distinct[n] = true end
    assert(next(distinct, next(distinct)), "size_variation made every slice the same size")
  end)

  it("bandwidth paces the bytes at the rate", function()
    local set = toxics.set()
    assert(set:add { type = "bandwidth", attributes = { rate = 100 } })  -- 100 KB/s
    local client, server = open(set)
    from_server(server, string.rep("x", 50000))
    rt:advance(0.25)
    local early = #client:data()
    assert(early >= 20000 and early <= 30000, early .. " bytes after 0.25 s at 100 KB/s")
    rt:advance(10)
    assert.equal(50000, #client:data())
    assert.near(0.5, client.writes[#client.writes].at, 1e-9)
  end)

  it("pauses the source while a direction holds more than queue_limit", function()
    local set = toxics.set()
    assert(set:add { type = "latency", attributes = { latency = 1 } })
    local client, server = open(set)
    local chunk = string.rep("y", 64 * 1024)
    for _ = 1, 20 do from_server(server, chunk) end       -- 1.25 MiB held
    assert.is_true(server.paused)
    rt:advance(2)
    assert.is_false(server.paused)
    assert.equal(20 * #chunk, #client:data())
  end)

  it("pauses the source while the destination is full, until on_drain", function()
    local set = toxics.set()
    local client, server, h = open(set)
    client.full = true
    from_server(server, "abc")
    assert.is_true(server.paused)
    client.full = false
    h.on_drain(client)
    assert.is_false(server.paused)
  end)

  it("a toxic removed while holding data passes it on at once, in order", function()
    local set = toxics.set()
    assert(set:add { name = "a", type = "latency", attributes = { latency = 5 } })
    assert(set:add { name = "b", type = "latency", attributes = { latency = 0.5 } })
    local client, server = open(set)
    from_server(server, "one;")
    rt.clock = 0.1
    from_server(server, "two;")
    assert.equal("", client:data())
    assert(set:remove("a"))                   -- "one;two;" move on to b: out at 0.6
    rt.clock = 0.2
    from_server(server, "three;")             -- through b only: out at 0.7
    rt:advance(0.65)
    assert.equal("one;two;", client:data())
    rt:advance(1)
    assert.equal("one;two;three;", client:data())
  end)

  it("a toxic added to an open connection applies to what comes next", function()
    local set = toxics.set()
    local client, server = open(set)
    from_server(server, "now;")
    assert.equal("now;", client:data())
    assert(set:add { type = "latency", attributes = { latency = 1 } })
    from_server(server, "later;")
    assert.equal("now;", client:data())
    rt:advance(1)
    assert.equal("now;later;", client:data())
  end)

  it("toxicity 0 never applies, 1 always does", function()
    local set = toxics.set()
    assert(set:add { type = "latency", toxicity = 0, attributes = { latency = 1 } })
    local client, server = open(set)
    from_server(server, "fast")
    assert.equal("fast", client:data())
    assert(set:update("latency_downstream", { toxicity = 1 }))
    from_server(server, "slow")
    assert.equal("fast", client:data())
    rt:advance(1)
    assert.equal("fastslow", client:data())
  end)

  it("limit_data passes exactly N bytes through later toxics, then closes both", function()
    local set = toxics.set()
    assert(set:add { type = "limit_data", attributes = { bytes = 10 } })
    assert(set:add { name = "slow", type = "latency", attributes = { latency = 0.2 } })
    local client, server = open(set)
    from_server(server, "0123456")
    from_server(server, "789abcdef")
    assert.is_nil(client.ended)
    rt:advance(1)
    assert.equal("0123456789", client:data())
    assert.equal("close", client.ended)
    assert.equal("close", server.ended)
  end)

  it("limit_data with bytes=0 passes nothing and closes at the first chunk", function()
    local set = toxics.set()
    assert(set:add { type = "limit_data", attributes = { bytes = 0 } })
    local client, server = open(set)
    rt:advance(1)
    assert.is_nil(client.ended)                 -- nothing arrived yet: nothing happens
    from_server(server, "x")
    rt:advance(1)
    assert.equal("", client:data())
    assert.equal("close", client.ended)
    assert.equal("close", server.ended)
    assert.equal(0, set:count())
  end)

  it("timeout=0: the end of the stream closes both sides and forgets the pair", function()
    for _, how in ipairs { "eof", "close" } do
      local set = toxics.set()
      assert(set:add { type = "timeout", stream = "upstream", attributes = { timeout = 0 } })
      local client, server, h = open(set)
      server.handler.on_connect(server)
      h.on_data(client, "dropped")
      rt:advance(10)
      assert.equal("", server:data())
      assert.is_nil(server.ended)
      if how == "eof" then h.on_eof(client) else h.on_close(client, nil) end
      assert.equal("close", server.ended, how)
      assert.equal(0, set:count(), how)
    end
  end)

  it("timeout: each chunk starts the wait again", function()
    local set = toxics.set()
    assert(set:add { type = "timeout", stream = "upstream", attributes = { timeout = 1 } })
    local client, server, h = open(set)
    for i = 1, 5 do
      rt:advance(i * 0.8)
      h.on_data(client, "chunk")
    end
    rt:advance(4.0 + 0.99)                          -- the last chunk came at 4.0
    assert.is_nil(client.ended)
    rt:advance(4.0 + 1.01)
    assert.equal("close", client.ended)
    assert.equal("close", server.ended)
    assert.equal("", server:data())
  end)

  it("a removed timeout toxic closes the connections it held; a new toxicity does not", function()
    local set = toxics.set()
    assert(set:add { name = "t", type = "timeout", attributes = { timeout = 0 } })
    local client, server = open(set)
    assert(set:update("t", { toxicity = 0.5 }))  -- a new draw replaces the stub: no cleanup
    assert.is_nil(client.ended)
    assert.equal(1, set:count())
    assert(set:remove("t"))
    assert.equal("close", client.ended)
    assert.equal("close", server.ended)
    assert.equal(0, set:count())
    -- Other toxics being removed leave the connection open.
    assert(set:add { type = "latency", attributes = { latency = 1 } })
    client = open(set)
    assert(set:remove("latency_downstream"))
    assert.is_nil(client.ended)
  end)

  it("slow_close delays the end of the stream", function()
    local set = toxics.set()
    assert(set:add { type = "slow_close", attributes = { delay = 0.3 } })
    local client, server = open(set)
    from_server(server, "bye")
    server.handler.on_eof(server)
    rt:advance(0.29)
    assert.is_nil(client.ended)
    rt:advance(0.31)
    assert.equal("shutdown", client.ended)
    assert.equal("bye", client:data())
  end)

  it("checks attribute types and converts the control API's units", function()
    local set = toxics.set()
    local t, err, kind = set:add { type = "latency", attributes = { latency = "1" } }
    assert.is_nil(t)
    assert.equal("bad", kind)
    assert.matches("must be a number", err)
    t = assert(set:add { type = "latency", api = true, attributes = { latency = 250, jitter = 10 } })
    assert.near(0.25, t.attributes.latency, 1e-12)
    assert.near(0.01, t.attributes.jitter, 1e-12)
    t = assert(set:add { type = "slicer", api = true, attributes = { delay = 1000 } })
    assert.near(0.001, t.attributes.delay, 1e-12)
    local _, _, k2 = set:add { type = "latency" }
    assert.equal("exists", k2)
    local _, _, k3 = set:add { type = "nope" }
    assert.equal("type", k3)
    local _, _, k4 = set:add { type = "latency", name = "x", stream = "both" }
    assert.equal("stream", k4)
  end)

  it("forgets a connection pair however it ends", function()
    local set = toxics.set()
    assert(set:add { type = "latency", attributes = { latency = 0.1 } })
    -- Both sides end cleanly: the client half-closes, the server answers and closes.
    local client, server, h = open(set)
    server.handler.on_connect(server)
    h.on_eof(client)
    assert.equal("shutdown", server.ended)
    from_server(server, "last words")
    server.handler.on_eof(server)
    server.handler.on_close(server, nil)
    rt:advance(1)
    assert.equal("last words", client:data())
    assert.equal("close", client.ended)              -- after the delayed bytes
    assert.equal(1, set:count())
    h.on_close(client, "timeout")           -- a UDP flow ends by its idle timeout
    assert.equal(0, set:count())
    -- The client resets: the server is closed at once.
    client, server, h = open(set)
    h.on_close(client, "reset")
    assert.equal("close", server.ended)
    assert.equal(0, set:count())
    -- The upstream refuses: the client is closed.
    client, server = open(set)
    server.handler.on_close(server, "refused")
    assert.equal("close", client.ended)
    assert.equal(0, set:count())
    -- A toxic resets the pair.
    client, server, h = open(set)
    assert(set:add { type = "reset_peer", stream = "upstream" })
    from_server(server, "held in the latency")
    assert.equal(1, #rt.timers)
    h.on_data(client, "x")
    assert.equal(0, set:count())
    assert.equal("reset", client.ended)
    assert.equal("reset", server.ended)
    -- The timer of the torn-down pair was cancelled.
    for _, t in ipairs(rt.timers) do assert(t.done, "a timer outlived its pair") end
    rt:advance(1)
    assert.equal("", client:data())
  end)

  it("a user-defined toxic gets start, data, eof and its attributes", function()
    local seen = {}
    toxics.define("tagger", {
      attributes = { tag = ">" },
      start = function(self) seen[#seen + 1] = "start " .. self.stream end,
      data = function(self, d) self:send(self.attributes.tag .. d) end,
      eof = function(self) seen[#seen + 1] = "eof"; self:send_eof() end,
    })
    local set = toxics.set()
    assert(set:add { type = "tagger", stream = "upstream", attributes = { tag = "#" } })
    local client, server, h = open(set)
    h.on_data(client, "hi")
    h.on_eof(client)
    assert.equal("#hi", server:data())
    assert.equal("shutdown", server.ended)
    assert.same({ "start upstream", "eof" }, seen)
    assert.has_error(function() toxics.define("bad name!", {}) end)
  end)

end)

-- A connection from `host` (conn:peer()) with TLS server name `sni` (nil: a
-- plain connection); `datagram` marks a flow of datagrams.
local function open_as(set, host, sni, datagram)
  local client = rt:conn("client")
  client.peer = function() return host, 5000 end
  client.tls = function() return sni and { sni = sni } or nil end
  return rt:open(toxics.handler { upstream = "127.0.0.1:1", toxics = set, datagram = datagram },
                 client)
end

-- n chunks "001;" ... through the upstream direction.
local function send_numbered(h, client, n)
  for i = 1, n do h.on_data(client, string.format("%03d;", i)) end
end

local function numbers(data)
  local out = {}
  for x in data:gmatch("(%d+);") do out[#out + 1] = tonumber(x) end
  return out
end

-- Bounds for a binomial count: mean +- 5 standard deviations (never
-- exact luck; a correct toxic fails this about once in 3.5 million runs).
local function binomial(n, p)
  local sd = math.sqrt(n * p * (1 - p))
  return n * p - 5 * sd, n * p + 5 * sd
end

describe("echokit.toxics: aimed faults", function()
  before_each(function() rt:reset() end)

  it("client= applies a toxic to clients in the range only (IPv4 and IPv6)", function()
    local set = toxics.set()
    assert(set:add { type = "latency", stream = "upstream",
                     attributes = { latency = 1, client = "127.0.0.2/32" } })
    assert(set:add { name = "v6", type = "latency", stream = "upstream",
                     attributes = { latency = 2, client = "fd00::/8" } })
    local a, sa, ha = open_as(set, "127.0.0.2")
    local b, sb, hb = open_as(set, "127.0.0.1")
    local c, sc, hc = open_as(set, "fd00::5")
    ha.on_data(a, "a"); hb.on_data(b, "b"); hc.on_data(c, "c")
    assert.equal("", sa:data())
    assert.equal("b", sb:data())
    assert.equal("", sc:data())
    rt:advance(1)
    assert.equal("a", sa:data())
    assert.equal("", sc:data())
    rt:advance(2)
    assert.equal("c", sc:data())
  end)

  it("sni= applies to TLS clients whose server name matches; none does not match", function()
    local set = toxics.set()
    assert(set:add { type = "drop_message", stream = "upstream", attributes = { sni = "*.test" } })
    local a, sa, ha = open_as(set, "127.0.0.1", "api.test")
    local b, sb, hb = open_as(set, "127.0.0.1", "api.example")
    local c, sc, hc = open_as(set, "127.0.0.1", nil)
    ha.on_data(a, "a"); hb.on_data(b, "b"); hc.on_data(c, "c")
    assert.same({ "", "b", "c" }, { sa:data(), sb:data(), sc:data() })
  end)

  it("http_status answers matching requests, split or pipelined; the server sees the rest", function()
    local set = toxics.set()
    assert(set:add { type = "http_status", attributes = {
      status = 503, body = "down\n", headers = { ["Retry-After"] = "5" },
      match = { http = { path = "/api/*" } } } })
    local client, server, h = open_as(set, "127.0.0.1")
    local api = "GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"
    local static = "GET /static/y HTTP/1.1\r\nHost: a\r\n\r\n"
    h.on_data(client, api:sub(1, 7))
    h.on_data(client, api:sub(8) .. static .. api .. static:sub(1, 5))
    h.on_data(client, static:sub(6))
    assert.equal(static .. static, server:data())
    local out = client:data()
    local n = 0
    for _ in out:gmatch("HTTP/1.1 503 Service Unavailable\r\n") do n = n + 1 end
    assert.equal(2, n)
    assert.truthy(out:find("Retry-After: 5\r\n", 1, true))
    assert.truthy(out:find("\r\n\r\ndown\n", 1, true))
    assert.is_nil(client.ended)
  end)

  it("resp_error answers matching commands; drop, delay and corrupt act on matching messages only", function()
    local resp = require "echokit.resp"
    local set = toxics.set()
    assert(set:add { type = "resp_error", attributes = { message = "ERR nope",
                                                         match = { resp = { command = "GET" } } } })
    local client, server, h = open_as(set, "127.0.0.1")
    h.on_data(client, resp.command("SET", "k", "v") .. resp.command("GET", "k"):sub(1, 9))
    h.on_data(client, resp.command("GET", "k"):sub(10) .. "PING\r\n")
    assert.equal(resp.command("SET", "k", "v") .. "PING\r\n", server:data())
    assert.equal("-ERR nope\r\n", client:data())

    set = toxics.set()
    assert(set:add { name = "d", type = "delay_message", stream = "upstream",
                     attributes = { delay = 1, match = { bytes = "^slow" } } })
    assert(set:add { name = "x", type = "drop_message", stream = "upstream",
                     attributes = { match = { bytes = "^drop" } } })
    assert(set:add { name = "c", type = "corrupt", stream = "upstream",
                     attributes = { count = 3, match = { bytes = "^bad" } } })
    client, server, h = open_as(set, "127.0.0.1")
    h.on_data(client, "a\ndrop me\nb\nbad line\nc\n")
    assert.equal("a\nb\n", server:data():sub(1, 4))
    local got = server:data()
    assert.equal(#"a\nb\nbad line\nc\n", #got)
    assert.not_equal("a\nb\nbad line\nc\n", got)
    h.on_data(client, "slow\nfast\n")
    local before = #server:data()
    rt:advance(0.5)
    assert.equal(before, #server:data())   -- "fast" waits behind "slow" (a byte stream)
    rt:advance(1)
    assert.equal("slow\nfast\n", server:data():sub(-10))
  end)

  it("a message cut short by the end of the stream passes on as it is", function()
    local set = toxics.set()
    assert(set:add { type = "drop_message", stream = "upstream", attributes = { match = { bytes = "x" } } })
    local client, server, h = open_as(set, "127.0.0.1")
    h.on_data(client, "x\npartial")
    h.on_eof(client)
    assert.equal("partial", server:data())
    assert.equal("shutdown", server.ended)
  end)

  it("a matcher's held bytes move on when the toxic is removed", function()
    local set = toxics.set()
    assert(set:add { type = "drop_message", stream = "upstream", attributes = { match = { bytes = "x" } } })
    local client, server, h = open_as(set, "127.0.0.1")
    h.on_data(client, "ab")
    assert.equal("", server:data())
    assert(set:remove("drop_message_upstream"))
    assert.equal("ab", server:data())
  end)

  it("a function matcher sees each chunk and the source connection", function()
    local set = toxics.set()
    local conns = {}
    assert(set:add { type = "drop_message", stream = "upstream", attributes = {
      match = function(_, data, conn) conns[conn] = true; return data:find("secret") ~= nil end } })
    local client, server, h = open_as(set, "127.0.0.1")
    h.on_data(client, "one;")
    h.on_data(client, "a secret;")
    h.on_data(client, "two;")
    assert.equal("one;two;", server:data())
    assert.is_true(conns[client])
  end)

  it("refuse resets new connections of the clients aimed at, not open ones", function()
    local set = toxics.set()
    local open_one = open_as(set, "127.0.0.2")
    assert(set:add { type = "refuse", attributes = { client = "127.0.0.2" } })
    assert.is_nil(open_one.ended)
    local a = open_as(set, "127.0.0.2")
    local b = open_as(set, "127.0.0.1")
    assert.equal("reset", a.ended)
    assert.is_nil(b.ended)
  end)

  it("slow_open connects upstream after the delay; what the client sent waits", function()
    local set = toxics.set()
    assert(set:add { type = "slow_open", attributes = { delay = 0.5 } })
    local client, server, h = open_as(set, "127.0.0.1")
    assert.is_nil(server)
    assert.is_true(client.paused)
    h.on_data(client, "early")
    rt:advance(0.49)
    assert.is_nil(rt.last_server)
    rt:advance(0.5)
    server = rt.last_server
    assert.equal("early", server:data())
    assert.is_false(client.paused)
    h.on_data(client, "+late")
    assert.equal("early+late", server:data())
  end)

  it("slow_open: a client gone while waiting cancels the connect", function()
    local set = toxics.set()
    assert(set:add { type = "slow_open", attributes = { delay = 0.5 } })
    local client, _, h = open_as(set, "127.0.0.1")
    h.on_close(client, "reset by peer")
    rt:advance(1)
    assert.is_nil(rt.last_server)
    assert.equal(0, set:count())
  end)

  it("limit_time closes (fin) or resets (rst) the connection after the duration", function()
    for _, mode in ipairs { "fin", "rst" } do
      local set = toxics.set()
      assert(set:add { type = "limit_time", attributes = { duration = 1, mode = mode } })
      local client, server = open_as(set, "127.0.0.1")
      local t0 = rt.clock
      rt:advance(t0 + 0.99)
      assert.is_nil(client.ended)
      rt:advance(t0 + 1.0)
      local want = mode == "fin" and "close" or "reset"
      assert.equal(want, client.ended)
      assert.equal(want, server.ended)
    end
  end)

  it("malformed aims and attributes are refused and change nothing", function()
    local set = toxics.set()
    local bad = {
      { type = "latency", attributes = { match = { http = { path = 1 } } }, stream = "upstream" },
      { type = "latency", attributes = { client = "10.0.0.0/40" } },
      { type = "latency", attributes = { sni = 5 } },
      { type = "http_status", attributes = { match = { resp = {} } } },
      { type = "http_status", stream = "downstream" },
      { type = "http_status", attributes = { status = 42 } },
      { type = "http_status", attributes = { headers = { ["X"] = "a\r\nb" } } },
      { type = "latency", stream = "downstream", attributes = { match = { http = {} } } },
      { type = "resp_error", attributes = { message = "a\nb" } },
      { type = "loss", attributes = { probability = 1.5 } },
      { type = "corrupt", attributes = { count = 0 } },
      { type = "limit_time", attributes = { mode = "kill" } },
    }
    for _, o in ipairs(bad) do
      local t, err, kind = set:add(o)
      assert.is_nil(t)
      assert.equal("bad", kind, err)
    end
    assert.same({}, set:list())
    assert(set:add { type = "latency", stream = "upstream", attributes = { match = { http = {} } } })
    local t, err = set:update("latency_upstream", { attributes = { match = { bytes = "%" } } })
    assert.is_nil(t)
    assert.truthy(err:find("match.bytes", 1, true))
  end)
end)

-- A datagram flow through one toxic of `kind` on the upstream direction, the
-- random generator seeded with `seed` first (nil: left as it is): client,
-- server, handler.
local function datagram_toxic(seed, kind, attributes)
  if seed then math.randomseed(seed) end
  local set = toxics.set()
  assert(set:add { type = kind, stream = "upstream", attributes = attributes })
  return open_as(set, "127.0.0.1", nil, true)
end

describe("echokit.toxics: datagram faults (one chunk = one datagram)", function()
  before_each(function() rt:reset() end)

  local N = 2000

  it("loss drops each chunk with its probability", function()
    local client, server, h = datagram_toxic(11, "loss", { probability = 0.3 })
    send_numbered(h, client, N)
    local got = numbers(server:data())
    local lo, hi = binomial(N, 0.7)
    assert(#got >= lo and #got <= hi, #got .. " of " .. N .. " kept at loss 0.3")
    for i = 2, #got do assert(got[i] > got[i - 1], "loss reordered") end
    assert.equal(#got, #server.writes)   -- datagrams keep their boundaries
  end)

  it("duplicate sends a chunk twice with its probability", function()
    local client, server, h = datagram_toxic(12, "duplicate", { probability = 0.2 })
    send_numbered(h, client, N)
    local got = numbers(server:data())
    local lo, hi = binomial(N, 0.2)
    local extra = #got - N
    assert(extra >= lo and extra <= hi, extra .. " duplicates of " .. N)
    for i = 2, #got do assert(got[i] >= got[i - 1]) end
  end)

  it("reorder holds one back behind the next, or releases it after hold", function()
    local client, server, h = datagram_toxic(13, "reorder", { probability = 0.25, hold = 0.1 })
    send_numbered(h, client, N)
    local got = numbers(server:data())
    -- one may still be held at the end
    rt:advance(1)
    got = numbers(server:data())
    assert.equal(N, #got)
    local swaps = 0
    local seen = {}
    for i, x in ipairs(got) do
      seen[x] = true
      if i > 1 and x < got[i - 1] then
        swaps = swaps + 1
        assert.equal(got[i - 1] - 1, x)       -- it went right behind the next one
      end
    end
    for i = 1, N do assert(seen[i], "lost " .. i) end
    -- a held chunk is released by the next one, which is itself never held:
    -- the expected share of swaps is p / (1 + p)
    local lo, hi = binomial(N, 0.25 / 1.25)
    assert(swaps >= lo and swaps <= hi, swaps .. " swaps of " .. N)

    -- no next datagram: the held one leaves after `hold`
    client, server, h = datagram_toxic(1, "reorder", { probability = 1, hold = 0.1 })
    h.on_data(client, "only")
    assert.equal("", server:data())
    rt:advance(rt.clock + 0.1)
    assert.equal("only", server:data())
  end)

  it("corrupt flips one byte of a chunk with its probability; sizes kept", function()
    local client, server, h = datagram_toxic(14, "corrupt", { probability = 0.1 })
    local sent = {}
    for i = 1, N do
      sent[i] = string.format("%05d-payload", i)
      h.on_data(client, sent[i])
    end
    local bad = 0
    for i, w in ipairs(server.writes) do
      assert.equal(#sent[i], #w.data)
      if w.data ~= sent[i] then
        bad = bad + 1
        local diff = 0
        for j = 1, #w.data do if w.data:byte(j) ~= sent[i]:byte(j) then diff = diff + 1 end end
        assert.equal(1, diff)
      end
    end
    assert.equal(N, #server.writes)
    local lo, hi = binomial(N, 0.1)
    assert(bad >= lo and bad <= hi, bad .. " corrupted of " .. N)
  end)

  it("truncate cuts each chunk to N bytes", function()
    local client, server, h = datagram_toxic(nil, "truncate", { bytes = 4 })
    h.on_data(client, "abcdefgh")
    h.on_data(client, "xy")
    h.on_data(client, "")
    assert.same({ "abcd", "xy" }, { server.writes[1].data, server.writes[2].data })
  end)

  it("latency keeps datagrams in order unless the jitter exceeds the gap", function()
    local function run(jitter, datagram)
      math.randomseed(15)
      local set = toxics.set()
      assert(set:add { type = "latency", stream = "upstream",
                       attributes = { latency = 0.1, jitter = jitter } })
      local client, server, h = open_as(set, "127.0.0.1", nil, datagram)
      for i = 1, 200 do
        rt.clock = i * 0.01                       -- 10 ms apart
        h.on_data(client, string.format("%03d;", i))
      end
      rt:advance(10)
      local got = numbers(server:data())
      assert.equal(200, #got)
      local swaps = 0
      for i = 2, #got do if got[i] < got[i - 1] then swaps = swaps + 1 end end
      return swaps
    end
    assert.equal(0, run(0.004, true))      -- jitter < gap / 2: no overtaking
    assert(run(0.05, true) > 0, "datagrams with 50 ms jitter 10 ms apart never reordered")
    assert.equal(0, run(0.05, false))      -- a byte stream keeps its order
  end)

  it("the datagram types need no end of stream and keep no stream state", function()
    math.randomseed(16)
    local set = toxics.set()
    for _, t in ipairs { "loss", "duplicate", "reorder", "corrupt", "truncate" } do
      assert(set:add { type = t, stream = "upstream",
                       attributes = t == "truncate" and { bytes = 100 } or { probability = 0 } })
    end
    local client, server, h = open_as(set, "127.0.0.1", nil, true)
    for i = 1, 10 do h.on_data(client, "d" .. i) end
    assert.equal(10, #server.writes)
    h.on_close(client, "timeout")           -- a UDP flow ends by its idle timeout
    assert.equal(0, set:count())
  end)
end)

describe("echokit.toxics: updates of aimed toxics", function()
  before_each(function() rt:reset() end)

  it("an update with the same match keeps the stub and its partial message", function()
    local set = toxics.set()
    assert(set:add { type = "drop_message", stream = "upstream",
                     attributes = { match = { http = { path = "/x" } } } })
    local client, server, h = open_as(set, "127.0.0.1")
    h.on_data(client, "GET /x HTTP/1.1\r\nHo")
    -- the control API's workers sync sends every attribute again, equal
    assert(set:update("drop_message_upstream", { attributes = { match = { http = { path = "/x" } } } }))
    h.on_data(client, "st: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert.equal("GET /y HTTP/1.1\r\nHost: a\r\n\r\n", server:data())
    -- a different match re-aims: the partial message moves on, the new one applies
    h.on_data(client, "GET /y HTTP/1.1\r\n")
    assert(set:update("drop_message_upstream", { attributes = { match = { http = { path = "/y" } } } }))
    assert.equal("GET /y HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\n", server:data())
    h.on_data(client, "GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert.equal("GET /y HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
                 server:data())
  end)
end)
