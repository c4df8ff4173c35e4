-- echokit.pipeline without the binary: the answer loop against a fake
-- connection whose write returns false where the test says, fake timers for
-- the next turn, the deadline on a manual clock, and the rate-limited log.
local pipeline = require "echokit.pipeline"
local fakes = require "fakes"

-- A handler of one-line requests "a\n" answered "<a>": its step takes one
-- request from the connection's queue.
local function lines_handler(loop, opts)
  local h = {}
  local function step(conn)
    local q = conn.queue
    if q.head > #q then return nil end
    local req = q[q.head]
    q.head = q.head + 1
    if req == "quit" then
      conn:write("<bye>")
      conn:close()
      return nil
    end
    if req == "boom" then error("boom in the step") end
    local answer = "<" .. req .. ">"
    return conn:write(answer), #answer
  end
  opts = opts or {}
  opts.timer = opts.timer or (loop and loop.timer) or false
  h.on_connect = function(conn)
    conn.queue = { head = 1 }
    conn.pl = pipeline.new(conn, step, opts)
  end
  h.on_data = function(conn, reqs)
    for _, r in ipairs(reqs) do conn.queue[#conn.queue + 1] = r end
    return conn.pl:run()
  end
  h.on_drain = function(conn) return conn.pl:drain() end
  h.on_close = function(conn) conn.pl:stop() end
  return h
end

local function numbered(n, from)
  local t = {}
  for i = 1, n do t[i] = tostring((from or 0) + i) end
  return t
end

local function answers(from, to)
  local t = {}
  for i = from, to do t[#t + 1] = "<" .. i .. ">" end
  return table.concat(t)
end

describe("echokit.pipeline", function()
  it("answers everything in order while write returns true", function()
    local loop = fakes.loop()
    local h = lines_handler(loop)
    local c = fakes.conn()
    h.on_connect(c)
    assert.is_true(h.on_data(c, numbered(10)))
    assert.equal(answers(1, 10), c:output())
    assert.is_nil(c.pl:waiting())
    assert.is_false(c.paused)
    assert.equal(0, loop:pending())
  end)

  it("stops at the first false, pauses reading, and goes on in on_drain", function()
    local loop = fakes.loop()
    local h = lines_handler(loop)
    local c = fakes.conn{ full = { [3] = true, [7] = true } }
    h.on_connect(c)
    assert.is_false(h.on_data(c, numbered(10)))
    assert.equal(answers(1, 3), c:output())
    assert.equal("drain", c.pl:waiting())
    assert.is_true(c.paused)
    -- more input meanwhile is kept, not answered
    assert.is_false(h.on_data(c, numbered(2, 10)))
    assert.equal(answers(1, 3), c:output())
    assert.equal(0, loop:pending())
    -- a drain when nothing waits is nothing
    assert.is_true(h.on_drain(c))
    assert.equal(answers(1, 7), c:output())
    assert.equal("drain", c.pl:waiting())
    assert.is_true(h.on_drain(c))
    assert.equal(answers(1, 12), c:output())
    assert.is_nil(c.pl:waiting())
    assert.is_false(c.paused)
    assert.is_false(h.on_drain(c))
    assert.equal(answers(1, 12), c:output())
  end)

  it("stops after max_steps in one callback and goes on at the next turn", function()
    local loop = fakes.loop()
    local h = lines_handler(loop, { max_steps = 4 })
    local c = fakes.conn()
    h.on_connect(c)
    assert.is_false(h.on_data(c, numbered(10)))
    assert.equal(answers(1, 4), c:output())
    assert.equal("turn", c.pl:waiting())
    assert.is_true(c.paused)
    assert.equal(1, loop:pending())
    loop:advance(0)
    assert.equal(answers(1, 8), c:output())
    assert.equal("turn", c.pl:waiting())
    loop:advance(0)
    assert.equal(answers(1, 10), c:output())
    assert.is_nil(c.pl:waiting())
    assert.is_false(c.paused)
    assert.equal(0, loop:pending())
  end)

  it("stops after max_bytes in one callback", function()
    local loop = fakes.loop()
    local h = lines_handler(loop, { max_bytes = 10 })
    local c = fakes.conn()
    h.on_connect(c)
    h.on_data(c, numbered(9))        -- answers of 3 bytes: 4 of them pass 10
    assert.equal(answers(1, 4), c:output())
    loop:advance(0)
    assert.equal(answers(1, 8), c:output())
    loop:advance(0)
    assert.equal(answers(1, 9), c:output())
  end)

  it("waits for on_drain, not the next turn, when the bound and a false come together", function()
    local loop = fakes.loop()
    local h = lines_handler(loop, { max_steps = 2 })
    local c = fakes.conn{ full = { [2] = true } }
    h.on_connect(c)
    h.on_data(c, numbered(5))
    assert.equal("drain", c.pl:waiting())
    assert.equal(0, loop:pending())
    loop:advance(0)
    assert.equal(answers(1, 2), c:output())
    h.on_drain(c)
    assert.equal(answers(1, 4), c:output())
    assert.equal("turn", c.pl:waiting())
    -- a drain while waiting for the turn goes on at once; the timer is dropped
    h.on_drain(c)
    assert.equal(answers(1, 5), c:output())
    assert.equal(0, loop:pending())
  end)

  it("stops when a step closes the connection, and after on_close", function()
    local loop = fakes.loop()
    local h = lines_handler(loop, { max_steps = 2 })
    local c = fakes.conn()
    h.on_connect(c)
    h.on_data(c, { "1", "2", "3", "quit", "4" })
    assert.equal("turn", c.pl:waiting())
    loop:advance(0)
    assert.equal(answers(1, 3) .. "<bye>", c:output())
    assert.is_true(c.closed)
    -- the runtime calls on_close; what is left is never answered
    h.on_close(c)
    h.on_drain(c)
    loop:advance(0)
    h.on_data(c, { "5" })
    assert.equal(answers(1, 3) .. "<bye>", c:output())

    -- closed by the peer while waiting for the next turn: the timer is cancelled
    local c2 = fakes.conn()
    h.on_connect(c2)
    h.on_data(c2, numbered(5))
    assert.equal(1, loop:pending())
    c2:close()
    h.on_close(c2)
    assert.equal(0, loop:pending())
    assert.equal(answers(1, 2), c2:output())

    -- a write that answers nil, "closed" ends the loop
    local c3 = fakes.conn()
    h.on_connect(c3)
    c3.closed = true
    assert.is_true(h.on_data(c3, numbered(3)))
    assert.equal("", c3:output())
  end)

  it("closes the connection and names it when a step raises at the next turn", function()
    local loop = fakes.loop()
    local h = lines_handler(loop, { max_steps = 1 })
    local c = fakes.conn{ id = 9 }
    h.on_connect(c)
    h.on_data(c, { "1", "boom", "2" })
    assert.has_error(function() loop:advance(0) end)
    assert.is_true(c.closed)
    local ok, err = pcall(function()
      local c2 = fakes.conn{ id = 10 }
      h.on_connect(c2)
      h.on_data(c2, { "1", "boom" })
      loop:advance(0)
    end)
    assert.is_false(ok)
    assert.truthy(err:find("[conn 10 fake]", 1, true), err)
    assert.truthy(err:find("boom in the step", 1, true), err)
    -- raised in on_data itself, the error goes to the caller (the runtime)
    local c3 = fakes.conn()
    h.on_connect(c3)
    assert.has_error(function() h.on_data(c3, { "boom" }) end)
  end)

  it("without a timer, only write's false stops it", function()
    local h = lines_handler(nil, { max_steps = 2, timer = false })
    local c = fakes.conn{ full = { [5] = true } }
    h.on_connect(c)
    h.on_data(c, numbered(8))
    assert.equal(answers(1, 5), c:output())
    h.on_drain(c)
    assert.equal(answers(1, 8), c:output())
  end)

  it("works with a runtime that returns false once a callback wrote its quota", function()
    -- the runtime's rule: write returns false once ~quota bytes were written in
    -- this callback, and on_drain comes at the next turn of the loop
    local loop = fakes.loop()
    local h = lines_handler(loop, { max_bytes = 1 << 30 })
    local c = fakes.conn{ quota = 100 }
    h.on_connect(c)
    h.on_data(c, numbered(1000))
    local turns, most = 0, #c:output()
    while c.pl:waiting() do
      local before = #c:output()
      loop:turn(c, h)
      most = math.max(most, #c:output() - before)
      turns = turns + 1
      assert(turns < 1000, "no progress")
    end
    assert.equal(answers(1, 1000), c:output())
    -- every callback stopped at its first false: the quota plus one answer
    assert(most < 100 + 8, "a callback wrote " .. most)
    assert(turns > 30, "turns: " .. turns)
  end)

  it("bounds each callback by its own count even if write always returns true", function()
    local loop = fakes.loop()
    local h = lines_handler(loop)   -- the defaults
    local c = fakes.conn()
    h.on_connect(c)
    h.on_data(c, numbered(5000))
    local per = { c.writes }
    while c.pl:waiting() do
      local before = c.writes
      loop:advance(0)
      per[#per + 1] = c.writes - before
    end
    assert.equal(answers(1, 5000), c:output())
    for _, n in ipairs(per) do assert(n <= pipeline.MAX_STEPS, n) end
    assert.equal(5, #per)
  end)
end)

describe("echokit.pipeline.deadline", function()
  it("expires `seconds` after start unless stopped, and starts afresh", function()
    local loop = fakes.loop()
    local fired = {}
    local d = pipeline.deadline(30, function(e) fired[#fired + 1] = e end,
                                { timer = loop.timer, now = loop.now })
    d:start()
    assert.equal(0, d:since())
    loop:advance(10)
    d:start()                        -- already running: keeps its start
    assert.equal(0, d:since())
    loop:advance(19.5)
    assert.same({}, fired)
    loop:advance(0.5)
    assert.same({ 30 }, fired)
    assert.is_nil(d:since())
    -- stopped in time: nothing; started again later: a full 30 s from then
    d:start()
    loop:advance(20)
    d:stop()
    loop:advance(5)
    d:start()                        -- at 55
    loop:advance(10)                 -- the first timer (due at 60) finds 10 s gone
    assert.same({ 30 }, fired)
    assert.equal(1, loop:pending())
    loop:advance(19)
    assert.same({ 30 }, fired)
    loop:advance(1)
    assert.same({ 30, 30 }, fired)
  end)

  it("keeps at most one timer however often it is started and stopped", function()
    local loop = fakes.loop()
    local d = pipeline.deadline(5, function() end, { timer = loop.timer, now = loop.now })
    for _ = 1, 1000 do
      d:start()
      loop:advance(0.001)
      d:stop()
    end
    assert.equal(1, loop.created)
    d:cancel()
    assert.equal(0, loop:pending())
    d:start()
    assert.equal(0, loop:pending())
  end)

  it("never runs without seconds", function()
    local loop = fakes.loop()
    for _, s in ipairs({ 0, false }) do
      local d = pipeline.deadline(s or nil, function() error("fired") end,
                                  { timer = loop.timer, now = loop.now })
      d:start()
      assert.is_nil(d:since())
      loop:advance(1e9)
    end
    assert.equal(0, loop.created)
  end)
end)

describe("echokit.pipeline.limited_log", function()
  it("logs the first line, counts the rest of the interval, then opens again", function()
    local loop = fakes.loop()
    local lines = {}
    local note = pipeline.limited_log("info", 10, {
      timer = loop.timer,
      log = function(level, fmt, ...) lines[#lines + 1] = level .. " " .. fmt:format(...) end,
    })
    for i = 1, 200 do note("timeout %d", i) end
    assert.same({ "info timeout 1" }, lines)
    loop:advance(10)
    assert.same({ "info timeout 1", "info 199 more like it in the last 10s, the last: timeout 200" },
                lines)
    note("timeout %d", 201)          -- still within the quiet interval the count began
    loop:advance(10)
    assert.equal("info 1 more like it in the last 10s, the last: timeout 201", lines[3])
    loop:advance(10)
    note("timeout %d", 202)
    assert.equal("info timeout 202", lines[4])
    assert.equal(4, #lines)
  end)
end)

describe("echokit.pipeline.seconds", function()
  it("reads a duration argument, or raises naming it", function()
    assert.equal(30, pipeline.seconds(nil, 30, "t"))
    assert.equal(1.5, pipeline.seconds("1.5", 30, "t"))
    assert.equal(0, pipeline.seconds("0", 30, "t"))
    for _, bad in ipairs({ "soon", "-1", "inf", "nan", "1e999", "" }) do
      local ok, err = pcall(pipeline.seconds, bad, 30, "header_timeout")
      assert.is_false(ok)
      assert.truthy(err:find("header_timeout: not a number of seconds: " .. bad, 1, true), err)
    end
  end)
end)
