-- echokit.toxics on datagrams (a UDP proxy's set), without the binary: a
-- fake `echokit` with a clock moved by hand and fake flows that record each
-- write (one write, one datagram) and when. Checks that datagrams are never
-- cut or joined, what each type means on them, and what a datagram set
-- refuses.

local fakes = require "fakes"
local rt = fakes.proxy_runtime()
package.loaded["echokit"] = rt.echokit
local toxics = require "echokit.toxics"

local function open(set)
  return rt:open(toxics.handler { upstream = "udp://127.0.0.1:1", toxics = set },
                 rt:conn("client", true))
end

-- A pair through a datagram set holding the one toxic `def` (set:add's).
local function open_with(def)
  local set = toxics.set { datagram = true }
  assert(set:add(def))
  return open(set)
end

local function sizes(flow)
  local out = {}
  for i, w in ipairs(flow.writes) do out[i] = #w.data end
  return out
end

describe("echokit.toxics on datagrams", function()
  before_each(function() rt:reset() end)

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
    local client, server = open_with { type = "latency", attributes = { latency = 0.1 } }
    server.handler.on_data(server, "")
    server.handler.on_data(server, "a")
    rt:advance(1)
    assert.same({ 0, 1 }, sizes(client))
  end)

  it("bandwidth paces whole datagrams, each #d / rate after the one before", function()
    local client, server = open_with { type = "bandwidth", attributes = { rate = 1 } } -- 1000 bytes/s
    for _ = 1, 3 do server.handler.on_data(server, string.rep("x", 300)) end
    rt:advance(5)
    assert.same({ 300, 300, 300 }, sizes(client))
    for i, w in ipairs(client.writes) do assert.near(0.3 * i, w.at, 1e-9) end
  end)

  it("limit_data passes the datagrams that fit, drops the next and closes both flows", function()
    local client, server, h = open_with { type = "limit_data", stream = "upstream", attributes = { bytes = 100 } }
    h.on_data(client, string.rep("a", 40))
    h.on_data(client, string.rep("b", 40))
    assert.is_nil(client.ended)
    h.on_data(client, string.rep("c", 40))
    assert.same({ 40, 40 }, sizes(server))
    assert.equal("close", client.ended)
    assert.equal("close", server.ended)
  end)

  it("a datagram pair closes, never shuts down, when a direction ends", function()
    local client, server = open_with { type = "latency", attributes = { latency = 0.01 } }
    server.handler.on_data(server, "x")
    server.handler.on_close(server, nil) -- the upstream flow was closed cleanly
    rt:advance(1)
    assert.equal("close", client.ended)
  end)
end)
