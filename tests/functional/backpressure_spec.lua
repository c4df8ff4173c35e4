-- Output back-pressure: bounded memory, on_drain, the hard output cap.
local t = require "echokit_test"
local socket = require "socket"

local MiB = 1024 * 1024

describe("back-pressure", function()
  after_each(t.teardown)

  it("keeps server memory bounded while a client writes 64 MiB without reading", function()
    -- echo, default --high-water. In an ASan build, freed memory waits in a
    -- quarantine (256 MB by default) and would count as growth: keep it small.
    local asan = os.getenv("ASAN_OPTIONS")
    local srv = t.start{ env = { ASAN_OPTIONS = (asan and asan .. ":" or "") ..
                                   "quarantine_size_mb=1:thread_local_quarantine_size_kb=64" } }
    local c = srv:connect()
    t.send_all(c, "warm-up")
    assert.equal("warm-up", t.recv_n(c, 7))
    local base = srv:vmrss()
    local peak = base
    local data = t.random_bytes(64 * MiB)

    -- Phase 1: write without reading until everything is written or the
    -- server stops taking bytes (no progress for 1 s), sampling its RSS.
    c:settimeout(0)
    local sent, last_progress = 0, t.now()
    local deadline = t.now() + t.T(60)
    while sent < #data and t.now() - last_progress < t.T(1) do
      assert(t.now() < deadline, "phase 1 did not end in time")
      local _, w = socket.select(nil, { c }, 0.05)
      if w and #w > 0 then
        local last, err, partial = c:send(data, sent + 1, math.min(#data, sent + MiB))
        last = last or partial
        if err and err ~= "timeout" then
          error(string.format("send failed after %d bytes: %s", sent, err))
        end
        if last and last > sent then
          sent = last
          last_progress = t.now()
        end
      end
      peak = math.max(peak, srv:vmrss())
    end

    -- Phase 2: read everything back (and send the rest), still sampling.
    t.exchange(c, data, { sent = sent, timeout = 60, progress = function()
      peak = math.max(peak, srv:vmrss())
    end })

    -- An unbounded output queue would hold close to 64 MiB (minus what the
    -- kernel's socket buffers took), so the bound is half of that.
    local grew_kib = peak - base
    assert(grew_kib < 32 * 1024, string.format(
      "server RSS grew by %d KiB (base %d KiB, peak %d KiB) while the client wrote %d " ..
      "bytes without reading", grew_kib, base, peak, sent))
  end)

  it("calls on_drain after conn:write returned false (--high-water 64k)", function()
    local srv = t.start{ handler = "tests/handlers/drain.lua", opts = { "--high-water", "64k" } }
    local c = srv:connect()
    t.send_all(c, "fill\n")
    -- read nothing until the handler has filled its queue: a client reading at
    -- the same time can keep the queue empty
    srv:await_log("filled %d+ ok=")
    local all, err = t.recv_until_closed(c, 10)
    assert.equal("closed", err)
    assert.is_nil(all:find("NEVER-FALSE", 1, true), "conn:write never returned false")
    local n, buffered = all:match("\nDRAINED after (%d+) writes buffered=(%d+)\n$")
    assert(n, "no DRAINED trailer (on_drain not called?); got " .. #all .. " bytes ending " ..
      string.format("%q", all:sub(-60)))
    n, buffered = tonumber(n), tonumber(buffered)
    assert(n >= 4, "write returned false after only " .. n .. " 16 KiB writes (< 64 KiB)")
    assert(buffered < 64 * 1024, "on_drain ran with " .. buffered .. " bytes still queued")
    local trailer = all:match("\nDRAINED after %d+ writes buffered=%d+\n$")
    assert.equal(n * 16384, #all - #trailer)
    local body = all:sub(1, n * 16384)
    for i = 1, n do
      local head = body:sub((i - 1) * 16384 + 1, (i - 1) * 16384 + 8)
      assert.equal(string.format("%08d", i), head)
    end
    srv:await_log("closed conn %d+ reason=nil")
  end)

  it("closes only the connection whose output exceeds --max-buffer", function()
    local srv = t.start{ handler = "tests/handlers/drain.lua",
                         opts = { "--high-water", "64k", "--max-buffer", "1m" } }
    -- how the overrun is logged is the server's choice; the close reason is checked below
    srv:expect_errors(".")
    local c = srv:connect()
    t.send_all(c, "flood 8388608\n")
    -- not reading: the queue has to pass the cap
    srv:await_log("closed conn %d+ reason=error")
    local all = t.recv_until_closed(c, 10)
    assert(#all < 8388608, "received all 8 MiB despite --max-buffer 1m")
    -- the server and other connections carry on
    local d = srv:connect()
    t.send_all(d, "fill\n")
    srv:await_log("filled %d+ ok=false")
    local back, err = t.recv_until_closed(d, 10)
    assert.equal("closed", err)
    assert.truthy(back:find("\nDRAINED after %d+ writes"))
  end)
end)
