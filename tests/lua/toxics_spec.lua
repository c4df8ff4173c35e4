-- echokit.toxics without the binary: a fake `echokit` module with a clock the
-- test moves by hand, and fake connections that record what is written to
-- them and when. Deterministic checks of ordering, timing, slice sizes,
-- pacing, back-pressure and changes of the set while data is held.

-- Fake runtime ------------------------------------------------------------
local clock, timers = 0, {}

local fake = {}
function fake.now() return clock end
function fake.log() end
function fake.timer(seconds, fn)
  local t = { at = clock + seconds, fn = fn }
  function t.cancel(self)
    local was = not self.done
    self.done = true
    return was
  end
  timers[#timers + 1] = t
  return t
end

-- Runs timers in time order until the clock reaches `to` (bounded).
local function advance(to)
  for _ = 1, 100000 do
    local best
    for _, t in ipairs(timers) do
      if not t.done and t.at <= to and (not best or t.at < best.at) then best = t end
    end
    if not best then break end
    clock = math.max(clock, best.at)
    best.done = true
    best.fn(best)
  end
  clock = math.max(clock, to)
end

local function new_conn(name)
  local c = { name = name, writes = {}, paused = false, ended = nil }
  function c.write(self, data)
    self.writes[#self.writes + 1] = { data = data, at = clock }
    return not self.full
  end
  function c.pause(self) self.paused = true end
  function c.resume(self) self.paused = false end
  function c.shutdown(self) self.ended = self.ended or "shutdown" end
  function c.close(self) self.ended = self.ended or "close" end
  function c.reset(self) self.ended = "reset" end
  function c.data(self)
    local out = {}
    for i, w in ipairs(self.writes) do out[i] = w.data end
    return table.concat(out)
  end
  return c
end

local last_server
function fake.connect(_, handler)
  local s = new_conn("server")
  s.handler = handler
  last_server = s
  return s
end

package.loaded["echokit"] = fake
local toxics = require "echokit.toxics"

-- A proxied connection through `set`: client, server, handler.
local function open(set)
  timers = {}
  local h = toxics.handler { upstream = "127.0.0.1:1", toxics = set }
  local client = new_conn("client")
  h.on_connect(client)
  return client, last_server, h
end

local function from_server(server, data) server.handler.on_data(server, data) end

describe("echokit.toxics", function()
  before_each(function() clock, timers = 0, {} end)

  it("latency with jitter: every chunk delayed within bounds, order kept", function()
    math.randomseed(7)
    local set = toxics.set()
    assert(set:add { type = "latency", attributes = { latency = 0.1, jitter = 0.05 } })
    local client, server = open(set)
    local sent = {}
    for i = 1, 200 do
      clock = i * 0.001
      sent[i] = string.format("%03d;", i)
      from_server(server, sent[i])
    end
    advance(10)
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
    advance(100)
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
    advance(0.25)
    local early = #client:data()
    assert(early >= 20000 and early <= 30000, early .. " bytes after 0.25 s at 100 KB/s")
    advance(10)
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
    advance(2)
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
    clock = 0.1
    from_server(server, "two;")
    assert.equal("", client:data())
    assert(set:remove("a"))                   -- "one;two;" move on to b: out at 0.6
    clock = 0.2
    from_server(server, "three;")             -- through b only: out at 0.7
    advance(0.65)
    assert.equal("one;two;", client:data())
    advance(1)
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
    advance(1)
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
    advance(1)
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
    advance(1)
    assert.equal("0123456789", client:data())
    assert.equal("close", client.ended)
    assert.equal("close", server.ended)
  end)

  it("limit_data with bytes=0 passes nothing and closes at the first chunk", function()
    local set = toxics.set()
    assert(set:add { type = "limit_data", attributes = { bytes = 0 } })
    local client, server = open(set)
    advance(1)
    assert.is_nil(client.ended)                 -- nothing arrived yet: nothing happens
    from_server(server, "x")
    advance(1)
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
      advance(10)
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
      advance(i * 0.8)
      h.on_data(client, "chunk")
    end
    advance(4.0 + 0.99)                          -- the last chunk came at 4.0
    assert.is_nil(client.ended)
    advance(4.0 + 1.01)
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
    advance(0.29)
    assert.is_nil(client.ended)
    advance(0.31)
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
    advance(1)
    assert.equal("last words", client:data())
    assert.equal("close", client.ended)              -- after the delayed bytes
    assert.equal(1, set:count())
    h.on_close(client, nil)
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
    assert.equal(1, #timers)
    h.on_data(client, "x")
    assert.equal(0, set:count())
    assert.equal("reset", client.ended)
    assert.equal("reset", server.ended)
    -- The timer of the torn-down pair was cancelled.
    for _, t in ipairs(timers) do assert(t.done, "a timer outlived its pair") end
    advance(1)
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
