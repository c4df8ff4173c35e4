-- echokit.pipeline: answering the requests a client has sent a bounded amount
-- at a time, and a deadline for a request that is still arriving.
--
-- Handlers that parse requests out of their input (HTTP requests, WebSocket
-- frames, RESP commands) share one rule of fairness: answer while conn:write
-- returns true; when it returns false, stop and go on in on_drain. A client can
-- also put a thousand requests in one packet, and a write may keep returning
-- true while the peer reads fast, so the loop stops as well after a bounded
-- amount of work in one callback and goes on at the next turn of the event
-- loop: one client's pipeline never holds up the others for long.
--
-- Pure Lua; the runtime is reached only through the connection (write, pause,
-- resume) and a timer function, so it is unit-tested with fakes.
--
--   local pipeline = require "echokit.pipeline"
--
--   conn.pl = pipeline.new(conn, step [, opts])        -- in on_connect
--     step(conn) answers at most one request (or one batch of them) and returns
--       true [, bytes]    answered; go on
--       false [, bytes]   answered, and conn:write returned false: wait for on_drain
--       nil               nothing to answer now (more input is needed), or the
--                         connection is closed or closing
--     so `return conn:write(answer), #answer` is a whole step's ending. `bytes`,
--     what the step wrote, counts against opts.max_bytes.
--     opts.max_steps  steps in one callback before going on at the next turn
--                     (default pipeline.MAX_STEPS, 1024)
--     opts.max_bytes  bytes written in one callback before that (default
--                     pipeline.MAX_BYTES, 1 MiB)
--     opts.timer      function(seconds, fn) -> object with :cancel(); default
--                     echokit.timer. Without one (outside echokit) there is no
--                     next turn to go on at, and only write's false stops the loop
--   pl:run()      from on_data, after feeding the parser: answers what can be
--                 answered now. While the pipeline waits (for on_drain or the
--                 next turn) it does nothing: the bytes stay in the parser and
--                 are answered when it goes on. True when it caught up (the
--                 last step returned nil), false when it now waits.
--   pl:drain()    from on_drain: goes on if the pipeline waits. True if it did.
--   pl:waiting()  nil, "drain" (a write returned false) or "turn" (the bound
--                 was reached; a zero-delay timer goes on)
--   pl:stop()     from on_close: no step runs again; the timer is cancelled.
--
-- While it waits, reading is paused (conn:pause), so a client cannot pile up
-- unanswered requests in memory; conn:resume() is called when it goes on.
-- An error in a step raises out of run/drain (the runtime logs it and closes
-- the connection); raised in the next-turn timer, the connection is closed and
-- the error re-raised with the connection's name for the runtime to log.
--
--   local d = pipeline.deadline(seconds, on_expire [, opts])
--     on_expire(elapsed) is called when `seconds` have passed since d:start()
--     without a d:stop() (then the clock stops). seconds nil or 0: never.
--     opts.timer, opts.now: default echokit.timer and echokit.now
--   d:start()     starts the clock unless it runs (a request has begun)
--   d:stop()      stops it (the request is in); d:start() starts it afresh
--   d:cancel()    stops it for good and cancels its timer (from on_close)
--   d:since()     when the clock started, or nil when it does not run
--   One timer at most is pending per deadline however often it is started and
--   stopped: when it fires early (stopped and started again meanwhile) it is
--   set again for the time left (libev's "be smart about timeouts").
--
--   pipeline.seconds(v, default, name) -> a duration handler argument
--     (`-- header_timeout=30`) as a number of seconds, `default` when v is nil;
--     raises "NAME: not a number of seconds: V" unless finite and >= 0
--
--   local note = pipeline.limited_log(level [, interval])
--   note(fmt, ...)  logs with echokit.log at `level`, at most once per
--                   `interval` seconds (default 10); the lines left out are
--                   counted, and their number and the last of them logged
--                   when the interval ends.
local M = {}

M.MAX_STEPS = 1024
M.MAX_BYTES = 1024 * 1024

local function runtime()
  local ok, echokit = pcall(require, "echokit")
  if ok and type(echokit) == "table" then return echokit end
  return nil
end

---------------------------------------------------------------------------
-- The answer loop
---------------------------------------------------------------------------
local Pipeline = {}
Pipeline.__index = Pipeline

function M.new(conn, step, opts)
  opts = opts or {}
  local timer = opts.timer
  if timer == nil then
    local echokit = runtime()
    timer = echokit and echokit.timer
  end
  return setmetatable({
    conn = conn, step = step, timer = timer or nil,
    max_steps = opts.max_steps or M.MAX_STEPS,
    max_bytes = opts.max_bytes or M.MAX_BYTES,
    wait = nil,        -- nil, "drain" or "turn"
    next_turn = nil,   -- the pending zero-delay timer
    busy = false,      -- inside run: a nested run does nothing
    stopped = false,
  }, Pipeline)
end

function Pipeline:waiting() return self.wait end

-- Starts waiting: reading paused until go_on.
local function hold(self, why)
  self.wait = why
  self.conn:pause()
end

local function go_on(self)
  self.wait = nil
  if self.next_turn then self.next_turn:cancel(); self.next_turn = nil end
  self.conn:resume()
  return self:run()
end

-- The zero-delay timer's function: goes on, closing the connection if a step
-- raises (no callback of its own would close it).
local function next_turn(self)
  self.next_turn = nil
  if self.stopped or self.wait ~= "turn" then return end
  local fine, err = xpcall(go_on, debug.traceback, self)
  if not fine then
    self.stopped = true
    self.conn:close()
    error(tostring(self.conn) .. " " .. tostring(err), 0)
  end
end

function Pipeline:run()
  if self.stopped or self.wait or self.busy then return false end
  self.busy = true
  local steps, bytes = 0, 0
  while true do
    local r, n = self.step(self.conn)
    if self.stopped then
      self.busy = false
      return false
    end
    if r == nil then break end
    if r == false then
      self.busy = false
      hold(self, "drain")
      return false
    end
    steps, bytes = steps + 1, bytes + (n or 0)
    if self.timer and (steps >= self.max_steps or bytes >= self.max_bytes) then
      self.busy = false
      hold(self, "turn")
      self.next_turn = self.timer(0, function() next_turn(self) end)
      return false
    end
  end
  self.busy = false
  return true
end

function Pipeline:drain()
  if self.stopped or not self.wait then return false end
  go_on(self)
  return true
end

function Pipeline:stop()
  self.stopped = true
  if self.next_turn then self.next_turn:cancel(); self.next_turn = nil end
end

---------------------------------------------------------------------------
-- Deadline for a request in progress
---------------------------------------------------------------------------
local Deadline = {}
Deadline.__index = Deadline

function M.deadline(seconds, on_expire, opts)
  opts = opts or {}
  local echokit = (not opts.timer or not opts.now) and runtime() or nil
  return setmetatable({
    seconds = (seconds and seconds > 0) and seconds or nil,
    on_expire = on_expire,
    timer = opts.timer or (echokit and echokit.timer),
    now = opts.now or (echokit and echokit.now),
    started = nil, pending = nil, cancelled = false,
  }, Deadline)
end

local function arm(self, after)
  self.pending = self.timer(after, function()
    self.pending = nil
    if self.cancelled or not self.started then return end
    local elapsed = self.now() - self.started
    if elapsed >= self.seconds then
      self.started = nil
      self.on_expire(elapsed)
    else
      arm(self, self.seconds - elapsed)
    end
  end)
end

function Deadline:start()
  if self.started or self.cancelled or not self.seconds or not self.timer then return end
  self.started = self.now()
  if not self.pending then arm(self, self.seconds) end
end

function Deadline:stop()
  self.started = nil
end

function Deadline:since()
  return self.started
end

function Deadline:cancel()
  self.cancelled, self.started = true, nil
  if self.pending then self.pending:cancel(); self.pending = nil end
end

function M.seconds(v, default, name)
  if v == nil then return default end
  local n = tonumber(v)
  if not n or n ~= n or n < 0 or n == math.huge then
    error(("%s: not a number of seconds: %s"):format(name or "seconds", tostring(v)), 2)
  end
  return n
end

---------------------------------------------------------------------------
-- A log line that cannot become a flood
---------------------------------------------------------------------------
function M.limited_log(level, interval, opts)
  interval = interval or 10
  opts = opts or {}
  local echokit = runtime()
  local log = opts.log or (echokit and echokit.log) or function(_, fmt, ...)
    io.stderr:write(fmt:format(...), "\n")
  end
  local timer = opts.timer or (echokit and echokit.timer)
  local quiet, left_out, last = false, 0, nil
  local function reopen()
    if left_out > 0 then
      log(level, "%d more like it in the last %gs, the last: " .. last[1], left_out, interval,
          table.unpack(last, 2, last.n))
      left_out, last = 0, nil
      -- the summary starts another quiet interval
      timer(interval, reopen)
    else
      quiet = false
    end
  end
  return function(fmt, ...)
    if quiet then
      left_out = left_out + 1
      last = table.pack(fmt, ...)
      return
    end
    log(level, fmt, ...)
    if timer then
      quiet = true
      timer(interval, reopen)
    end
  end
end

return M
