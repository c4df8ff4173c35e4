-- Toxics (echokit.toxics) through the chaos handler, each measured from a
-- real client: an echokit echo server is the upstream, a chaos proxy sits in
-- front of it, luasocket talks to the proxy. Every wait is bounded.
local t = require "echokit_test"
local socket = require "socket"
local peers = require "peers"

local function upstream(opts)
  return t.start { handler = "echo", opts = opts }
end

-- A chaos proxy in front of `up` with the given handler arguments; stopped
-- before the upstream (peers.front).
local function chaos(up, args, o)
  args.upstream = "127.0.0.1:" .. up:port()
  return peers.start_chaos(args, o)
end

-- Waits (bounded) until c is readable, then takes what has arrived: a
-- string, or nil, err ("closed", "timeout", "connection reset by peer"...).
local function recv_some(c, timeout)
  local r = socket.select({ c }, nil, t.T(timeout or 5))
  if not r[1] then return nil, "timeout" end
  c:settimeout(0)
  local d, err, partial = c:receive(65536)
  if d then return d end
  if partial and #partial > 0 then return partial end
  return nil, err
end

local function mean(xs)
  local s = 0
  for _, x in ipairs(xs) do s = s + x end
  return s / #xs
end

describe("toxics", function()
  after_each(peers.teardown)

  it("latency adds latency +- jitter to every chunk and keeps their order", function()
    local up = upstream()
    local px = chaos(up, { latency = 0.05, jitter = 0.01 })
    local function round_trips(c)
      local samples = {}
      for i = 1, 30 do
        local t0 = t.now()
        t.send_all(c, "ping " .. i .. "\n")
        assert.equal("ping " .. i, t.recv_line(c, 2))
        samples[#samples + 1] = t.now() - t0
      end
      table.sort(samples)
      return samples
    end
    -- The same round trips straight to the upstream: what the machine adds.
    local base = mean(round_trips(up:connect()))
    local c = px:connect()
    local samples = round_trips(c)
    local m = mean(samples)
    -- Lower bounds are the toxic's promise; the upper one only catches a
    -- toxic that adds far too much (generous: the machine may be loaded).
    assert(samples[1] >= 0.039, "a round trip took less than latency - jitter: " .. samples[1])
    assert(m >= 0.045, string.format("mean round trip %.4fs, latency is 0.05s", m))
    assert(m <= 0.05 + base + t.T(0.05),
           string.format("mean round trip %.4fs, latency 0.05s, %.4fs without the proxy", m, base))
    -- A burst of chunks, each delayed independently, arrives in order.
    local lines = {}
    for i = 1, 200 do
      lines[#lines + 1] = string.format("%04d\n", i)
      t.send_all(c, lines[#lines])
    end
    local want = table.concat(lines)
    t.assert_bytes(want, t.recv_n(c, #want, 5), "burst through latency")
  end)

  it("bandwidth never exceeds the rate and does not fall far below it", function()
    local up = upstream()
    local px = chaos(up, { bandwidth = 200 })            -- 200 KB/s downstream
    local data = t.random_bytes(200 * 1000)              -- one second's worth
    -- The same transfer straight to the upstream: what the machine takes.
    local direct = up:connect()
    local t0 = t.now()
    t.send_all(direct, data)
    t.assert_bytes(data, t.recv_n(direct, #data, 10), "straight to the upstream")
    local base = t.now() - t0
    local c = px:connect()
    t0 = t.now()
    t.send_all(c, data)
    t.assert_bytes(data, t.recv_n(c, #data, 10), "through bandwidth")
    local took = t.now() - t0
    -- At most 200 KB/s (strict: 1 s less 15 %); not much slower than the
    -- rate plus the machine's own time (generous: it may be loaded).
    assert(took >= 1 / 1.15, string.format("%.1f KB/s through bandwidth=200", 200 / took))
    assert(took <= 1 / 0.85 + base + t.T(0.5),
           string.format("200 KB took %.3fs through bandwidth=200 (%.3fs directly)", took, base))
  end)

  it("slicer delivers the data in slices of average_size, delay apart", function()
    local up = upstream()
    local px = chaos(up, { slicer = 10, slice_delay = 0.05 })
    local c = px:connect()
    local data = string.rep("0123456789", 10)
    local t0 = t.now()
    t.send_all(c, data)
    local got, reads = {}, {}
    while #table.concat(got) < #data do
      local d, err = recv_some(c, 3)
      assert(d, "slicer: stream ended early: " .. tostring(err))
      got[#got + 1] = d
      reads[#reads + 1] = #d
    end
    assert.equal(data, table.concat(got))
    for _, n in ipairs(reads) do
      assert(n % 10 == 0, "a read of " .. n .. " bytes: slices are 10 bytes")
    end
    -- a loaded machine may deschedule the reader across a few slices, so the
    -- reads show only that slices came apart; the time shows the delays
    assert(#reads >= 3, "10 slices 50 ms apart came in " .. #reads .. " reads")
    assert(t.now() - t0 >= 0.9 * 9 * 0.05, "10 slices 50 ms apart took " .. (t.now() - t0))
  end)

  it("reset_peer resets the client (ECONNRESET) after the timeout", function()
    local up = upstream()
    local px = chaos(up, { reset_peer = 0.2, stream = "upstream" })
    -- luasocket reports a reset as "closed"; Python tells ECONNRESET apart.
    local how, after = peers.stream_end(px:port(), nil, "hello\n")
    assert.equal("ECONNRESET", how)
    assert(after >= 0.19, "reset after " .. after .. "s, timeout was 0.2s")
  end)

  it("timeout holds the data, then closes the connection", function()
    local up = upstream()
    local px = chaos(up, { timeout = 0.4 })
    local c = px:connect()
    local t0 = t.now()
    t.send_all(c, "hello\n")
    local data, err = t.recv_until_closed(c, 3)
    assert.equal("", data)
    assert.equal("closed", err)
    assert(t.now() - t0 >= 0.35, "closed after " .. (t.now() - t0) .. "s, timeout was 0.4s")
  end)

  it("limit_data=0 closes at the first chunk, passing nothing", function()
    local up = upstream()
    local px = chaos(up, { limit_data = 0 })
    local c = px:connect()
    t.expect_silence(c, 0.2, "limit_data=0 before any data")   -- open until data comes
    t.send_all(c, "hello\n")
    local got, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert.equal("", got)
  end)

  it("limit_data delivers exactly N bytes, then closes", function()
    local up = upstream()
    local px = chaos(up, { limit_data = 1000 })
    local c = px:connect()
    local data = t.random_bytes(3000)
    t.send_all(c, data)
    local got, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    t.assert_bytes(data:sub(1, 1000), got, "limit_data")
  end)

  it("slow_close delays the end of the stream", function()
    local up = upstream()
    local px = chaos(up, { slow_close = 0.3 })
    local c = px:connect()
    t.send_all(c, "bye\n")
    assert.equal("bye", t.recv_line(c, 2))
    local t0 = t.now()
    c:shutdown("send")                 -- the echo server closes; the proxy waits
    local rest, err = t.recv_until_closed(c, 3)
    assert.equal("", rest)
    assert.equal("closed", err)
    assert(t.now() - t0 >= 0.25, "closed after " .. (t.now() - t0) .. "s, delay was 0.3s")
  end)

  it("down drops every connection", function()
    local up = upstream { "-v" }                -- logs each connection it accepts
    local px = chaos(up, { down = 1 })
    for _ = 1, 5 do
      local c, err = px:try_connect(nil, t.T(3))
      local d
      if c then
        pcall(c.send, c, "x")
        d, err = recv_some(c, 3)
      end
      assert.is_nil(d)
      assert.truthy(err == "closed" or err == "connection reset by peer", err)
    end
    -- and the upstream was never bothered. Barrier: a connection of ours
    -- straight to it is logged after any the proxy could have made (the
    -- proxy saw all five before we connect, the upstream accepts in order).
    local direct = up:connect()
    t.send_all(direct, "barrier\n")
    assert.equal("barrier", t.recv_line(direct, 3))
    local _, port = direct:getsockname()
    up:await_log(":" .. port .. "%] open$")
    local opens = up:log_matching("%] open$")
    assert.equal(1, #opens, "the upstream saw connections: " .. table.concat(opens, "\n"))
  end)

  it("toxicity 0.5 applies to roughly half of many connections", function()
    local up = upstream()
    local px = chaos(up, { down = 1, toxicity = 0.5 })
    local n, hit = 120, 0
    for _ = 1, n do
      -- A dropped connection may already fail in connect (reset at once).
      local c = px:try_connect(nil, t.T(3))
      local d
      if c then
        pcall(c.send, c, "x")
        d = recv_some(c, 3)
        c:close()
      end
      if d ~= "x" then hit = hit + 1 end
    end
    -- Binomial(120, 0.5): sd 5.5; 30..90 is more than 5 sd either way.
    assert(hit >= 30 and hit <= 90, hit .. " of " .. n .. " connections dropped")
  end)

  it("a connection that cannot reach the upstream is closed, later ones carry on", function()
    local up = upstream()
    local px = chaos(up, { latency = 0.01 })
    local port = up:port()
    local c1 = px:connect()
    t.send_all(c1, "one\n")
    assert.equal("one", t.recv_line(c1, 2))
    c1:close()
    up:stop()
    local c2 = px:connect()
    local d, err = t.recv_until_closed(c2, 3)
    assert.equal("", d)
    assert.truthy(err == "closed" or err == "connection reset by peer", err)
    px:await_log("upstream 127.0.0.1:" .. port .. ": refused")
    -- The upstream comes back on its port: the same proxy relays again.
    t.start { handler = "echo", listen = { "127.0.0.1:" .. port } }
    local c3 = px:connect()
    t.send_all(c3, "again\n")
    assert.equal("again", t.recv_line(c3, 3))
  end)

  it("holds a client that sends faster than the bandwidth allows (memory bounded)", function()
    local up = upstream()
    local px = chaos(up, { bandwidth = 100, stream = "upstream" })
    local c = px:connect()
    c:settimeout(0.2)
    local chunk = string.rep("x", 65536)
    local sent, t0 = 0, t.now()
    -- Send until the proxy stops taking data (bounded: 64 MiB or 5 s).
    while sent < 64 * 1024 * 1024 and t.now() - t0 < 5 * t.slow do
      local last, err, partial = c:send(chunk)
      sent = sent + (last or partial or 0)
      if not last then break end
    end
    assert(sent < 16 * 1024 * 1024, "the proxy took " .. sent .. " bytes from a fast client")
    assert(px:alive())
    c:setoption("linger", { on = true, timeout = 0 })   -- leave with a reset
    c:close()
  end)

  it("rejects bad arguments at load time", function()
    local r = t.run { handler = "chaos", args = { upstream = "127.0.0.1:1", latency = "soon" } }
    assert.equal(2, r.code)
    assert.matches("latency=soon is not a number", r.stderr)
    r = t.run { handler = "chaos", args = { upstream = "127.0.0.1:1", frobnicate = "1" } }
    assert.equal(2, r.code)
    assert.matches("unknown argument 'frobnicate'", r.stderr)
    r = t.run { handler = "chaos", args = { upstream = "127.0.0.1:1", latency = 1, stream = "sideways" } }
    assert.equal(2, r.code)
    assert.matches("stream was invalid", r.stderr)
  end)
end)
