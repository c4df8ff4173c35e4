-- Fakes of the runtime for specs of handler code without the binary: a
-- connection whose write returns what the test says, a manual clock, and
-- timers that fire when the test turns the loop.
--
--   local fakes = require "fakes"
--   local loop = fakes.loop()            -- loop.timer(seconds, fn), loop.now()
--   local c = fakes.conn{ full = { [3] = true } }   -- the 3rd write returns false
--   loop:advance(0)                      -- fires the timers due now
--   loop:turn(c, handler)                -- one loop turn: timers due, then
--                                        -- handler.on_drain if c wants one
local M = {}

---------------------------------------------------------------------------
-- Timers and a clock
---------------------------------------------------------------------------
local Loop = {}
Loop.__index = Loop

function M.loop()
  local loop = setmetatable({ t = 0, timers = {}, created = 0 }, Loop)
  loop.timer = function(seconds, fn)
    assert(type(seconds) == "number" and seconds >= 0, "timer: bad seconds")
    local tm = { at = loop.t + seconds, fn = fn, pending = true }
    function tm.cancel()
      local was = tm.pending
      tm.pending = false
      return was
    end
    loop.timers[#loop.timers + 1] = tm
    loop.created = loop.created + 1
    return tm
  end
  loop.now = function() return loop.t end
  return loop
end

-- Timers still pending.
function Loop:pending()
  local n = 0
  for _, tm in ipairs(self.timers) do if tm.pending then n = n + 1 end end
  return n
end

-- Moves the clock on by `dt` and fires the timers due, earliest first. Timers
-- set by those callbacks wait for the next call, even with a zero delay, as
-- libev runs them at the next turn of the loop.
function Loop:advance(dt)
  self.t = self.t + (dt or 0)
  local due = {}
  for _, tm in ipairs(self.timers) do
    if tm.pending and tm.at <= self.t then due[#due + 1] = tm end
  end
  table.sort(due, function(a, b) return a.at < b.at end)
  for _, tm in ipairs(due) do
    if tm.pending then
      tm.pending = false
      tm.fn(tm)
    end
  end
  local keep = {}
  for _, tm in ipairs(self.timers) do if tm.pending then keep[#keep + 1] = tm end end
  self.timers = keep
end

---------------------------------------------------------------------------
-- A connection
---------------------------------------------------------------------------
local Conn = {}
Conn.__index = Conn

-- o.full = { [n] = true }: the n-th write returns false (above high water).
-- o.quota = bytes: write returns false once this many bytes were written since
-- the last c:new_turn() (the runtime's per-callback quota).
function M.conn(o)
  o = o or {}
  return setmetatable({
    id = o.id or 1, out = {}, writes = 0, full = o.full or {}, quota = o.quota,
    turn_bytes = 0, paused = false, closed = false, want_drain = false,
    events = {},
  }, Conn)
end

function Conn:write(data)
  if self.closed then return nil, "closed" end
  assert(type(data) == "string", "write: not a string")
  self.writes = self.writes + 1
  self.out[#self.out + 1] = data
  self.turn_bytes = self.turn_bytes + #data
  local full = self.full[self.writes] or (self.quota and self.turn_bytes >= self.quota)
  if full then self.want_drain = true return false end
  return true
end

function Conn:output() return table.concat(self.out) end
function Conn:pause() if self.closed then return nil, "closed" end self.paused = true return true end
function Conn:resume() if self.closed then return nil, "closed" end self.paused = false return true end
function Conn:close()
  if not self.closed then
    self.closed = true
    self.events[#self.events + 1] = "close"
  end
end
function Conn:buffered() return 0 end
function Conn:new_turn() self.turn_bytes = 0 end
function Conn:__tostring() return "[conn " .. self.id .. " fake]" end

-- One turn of the loop for `c` running `handler`: its quota starts again, the
-- timers due now fire, and on_drain is called if a write returned false.
function Loop:turn(c, handler)
  c:new_turn()
  self:advance(0)
  if c.want_drain and not c.closed then
    c.want_drain = false
    if handler.on_drain then handler.on_drain(c) end
  end
end

---------------------------------------------------------------------------
-- A proxy's runtime (for echokit.toxics)
---------------------------------------------------------------------------
-- A fake `echokit` module for a proxy handler: a clock the test sets
-- (rt.clock) or runs on with rt:advance(to); connections that record each
-- write and the clock at it; echokit.connect makes the upstream connection,
-- kept as rt.last_server.
--
--   local rt = fakes.proxy_runtime()
--   package.loaded["echokit"] = rt.echokit
--   local client, server, h = rt:open(handler, rt:conn("client"))
local Runtime = {}
Runtime.__index = Runtime

function M.proxy_runtime()
  local rt = setmetatable({ clock = 0, timers = {} }, Runtime)
  rt.echokit = {
    now = function() return rt.clock end,
    log = function() end,
    timer = function(seconds, fn)
      local tm = { at = rt.clock + seconds, fn = fn }
      function tm.cancel(self)
        local was = not self.done
        self.done = true
        return was
      end
      rt.timers[#rt.timers + 1] = tm
      return tm
    end,
    -- the upstream is of the kind of the client opened last
    connect = function(_, handler)
      local s = rt:conn("server", rt.flows)
      s.handler = handler
      rt.last_server = s
      return s
    end,
  }
  return rt
end

function Runtime:reset() self.clock, self.timers = 0, {} end

-- Runs timers in time order, also those set on the way, until the clock
-- reaches `to` (bounded).
function Runtime:advance(to)
  for _ = 1, 100000 do
    local best
    for _, tm in ipairs(self.timers) do
      if not tm.done and tm.at <= to and (not best or tm.at < best.at) then best = tm end
    end
    if not best then break end
    self.clock = math.max(self.clock, best.at)
    best.done = true
    best.fn(best)
  end
  self.clock = math.max(self.clock, to)
end

-- A connection recording its writes ({ data, at }) and how it ended
-- (c.ended: "shutdown", "close" or "reset"); its write returns false while
-- c.full is set. `flow`: a UDP flow, on which shutdown is an error.
function Runtime:conn(name, flow)
  local rt = self
  local c = { name = name, writes = {}, paused = false, ended = nil, flow = flow }
  function c.write(this, data)
    this.writes[#this.writes + 1] = { data = data, at = rt.clock }
    return not this.full
  end
  function c.pause(this) this.paused = true end
  function c.resume(this) this.paused = false end
  function c.shutdown(this)
    if flow then error("shutdown: not supported on a UDP flow") end
    this.ended = this.ended or "shutdown"
  end
  function c.close(this) this.ended = this.ended or "close" end
  function c.reset(this) this.ended = "reset" end
  function c.data(this)
    local out = {}
    for i, w in ipairs(this.writes) do out[i] = w.data end
    return table.concat(out)
  end
  return c
end

-- Connects `client` through handler h (a fresh set of timers); returns the
-- client, the upstream connection h opened (nil if none) and h.
function Runtime:open(h, client)
  self.timers = {}
  self.last_server = nil
  self.flows = client.flow
  h.on_connect(client)
  return client, self.last_server, h
end

return M
