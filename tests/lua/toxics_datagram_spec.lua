-- echokit.toxics on datagrams (a UDP proxy's set), without the binary: a
-- fake `echokit` with a clock moved by hand and fake flows that record each
-- write (one write, one datagram) and when. Checks that datagrams are never
-- cut or joined, what each type means on them, and what a datagram set
-- refuses.

local clock, timers = 0, {}

local fake = {}
function fake.now() return clock end
function fake.log() end
function fake.timer(seconds, fn)
  local t = { at = clock + seconds, fn = fn }
  function t.cancel(self) self.done = true end
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

local function new_flow(name)
  local c = { name = name, writes = {} }
  function c.write(self, data)
    self.writes[#self.writes + 1] = { data = data, at = clock }
    return true
  end
  function c.pause() end
  function c.resume() end
  function c.shutdown() error("shutdown: not supported on a UDP flow") end
  function c.close(self) self.ended = self.ended or "close" end
  function c.reset(self) self.ended = "reset" end
  return c
end

local last_server
function fake.connect(_, handler)
  local s = new_flow("server")
  s.handler = handler
  last_server = s
  return s
end

package.loaded["echokit"] = fake
local toxics = require "echokit.toxics"

local function open(set)
  timers = {}
  local h = toxics.handler { upstream = "udp://127.0.0.1:1", toxics = set }
  local client = new_flow("client")
  h.on_connect(client)
  return client, last_server, h
end

local function sizes(flow)
  local out = {}
  for i, w in ipairs(flow.writes) do out[i] = #w.data end
  return out
end

describe("echokit.toxics on datagrams", function()
  before_each(function() clock, timers = 0, {} end)

  it("a datagram set refuses the types that need a byte stream and protocol matchers", function()
    local set = toxics.set { datagram = true }
    for _, ty in ipairs { "slicer", "slow_close", "http_status", "resp_error", "slow_open" } do
      local ok, err, kind = set:add { type = ty }
      assert.is_nil(ok, ty .. " was taken")
      assert.equal("bad", kind)
      assert.matches("needs a byte stream, and this proxy relays datagrams", err)
    end
    local ok, err = set:add { type = "latency", attributes = { match = { resp = { command = "GET" } } } }
    assert.is_nil(ok)
    assert.matches("a resp matcher frames messages", err)
    assert(set:add { type = "loss", attributes = { match = function() return true end } })
    assert(set:add { type = "truncate", attributes = { bytes = 1 } })
    -- and an update cannot aim one at a protocol either
    ok, err = set:update("truncate_downstream", { attributes = { match = { bytes = "x" } } })
    assert.is_nil(ok)
    assert.matches("frames messages", err)
    -- a stream set still takes them
    assert(toxics.set():add { type = "slicer" })
  end)

  it("a type of one's own says why it needs a byte stream", function()
    assert.has_error(function() toxics.define("bad_bs", { bytestream = true }) end,
      "toxics.define: def.bytestream must be a string (why the type needs a byte stream)")
    toxics.define("joiner", { bytestream = "joins chunks", attributes = {} })
    local ok, err = toxics.set { datagram = true }:add { type = "joiner" }
    assert.is_nil(ok)
    assert.matches("^joiner joins chunks: it needs a byte stream", err)
  end)

  it("empty datagrams pass, also when delayed", function()
    local set = toxics.set { datagram = true }
    assert(set:add { type = "latency", attributes = { latency = 0.1 } })
    local client, server = open(set)
    server.handler.on_data(server, "")
    server.handler.on_data(server, "a")
    advance(1)
    assert.same({ 0, 1 }, sizes(client))
  end)

  it("bandwidth paces whole datagrams, each #d / rate after the one before", function()
    local set = toxics.set { datagram = true }
    assert(set:add { type = "bandwidth", attributes = { rate = 1 } }) -- 1000 bytes/s
    local client, server = open(set)
    for _ = 1, 3 do server.handler.on_data(server, string.rep("x", 300)) end
    advance(5)
    assert.same({ 300, 300, 300 }, sizes(client))
    for i, w in ipairs(client.writes) do assert.near(0.3 * i, w.at, 1e-9) end
  end)

  it("limit_data passes the datagrams that fit, drops the next and closes both flows", function()
    local set = toxics.set { datagram = true }
    assert(set:add { type = "limit_data", stream = "upstream", attributes = { bytes = 100 } })
    local client, server, h = open(set)
    h.on_data(client, string.rep("a", 40))
    h.on_data(client, string.rep("b", 40))
    assert.is_nil(client.ended)
    h.on_data(client, string.rep("c", 40))
    assert.same({ 40, 40 }, sizes(server))
    assert.equal("close", client.ended)
    assert.equal("close", server.ended)
  end)

  it("a datagram pair closes, never shuts down, when a direction ends", function()
    local set = toxics.set { datagram = true }
    assert(set:add { type = "latency", attributes = { latency = 0.01 } })
    local client, server = open(set)
    server.handler.on_data(server, "x")
    server.handler.on_close(server, nil) -- the upstream flow was closed cleanly
    advance(1)
    assert.equal("close", client.ended)
  end)
end)
