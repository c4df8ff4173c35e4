-- echokit.toxics: faults applied to proxied traffic, one direction at a time.
--
--   local toxics = require "echokit.toxics"
--   local set = toxics.set()
--   set:add{ type = "latency", stream = "downstream", attributes = { latency = 0.1 } }
--   return toxics.handler{ upstream = "127.0.0.1:6379", toxics = set }
--
-- A *set* holds named toxics for the two directions of a proxy: `upstream`
-- (client -> server) and `downstream` (server -> client). Every connection the
-- proxy carries runs each direction through a chain of *stubs*, one per toxic,
-- in the order the toxics were added. A stub gets the bytes the previous one
-- passed on (`data`), the end of the stream (`eof`), and passes them on with
-- `self:send` / `self:send_eof`, now or later. Delays are timers on the event
-- loop, never sleeps, and a stub's output leaves in the order it was sent.
-- Changes to a set (add, update, remove) reach the connections already open.
--
-- Datagrams: a set made with toxics.set{ datagram = true } (a UDP proxy's)
-- carries each datagram as one chunk, never cut or joined; it refuses the
-- types whose def has `bytestream` (a reason) and protocol matchers.
--
-- Toxicity: when a connection starts (or a toxic is added or updated), each of
-- its stubs draws once whether it applies; a stub that does not apply passes
-- everything through.
--
-- The types: toxiproxy's at the end of this file, echokit's own (answers,
-- message, datagram, open and lifetime faults) in echokit.faults; what
-- decides which messages and clients a toxic hits in echokit.match.
--
-- Units here follow echokit's rule: durations in seconds. The control API
-- (echokit.toxiproxy) converts toxiproxy's milliseconds (microseconds for the
-- slicer's delay) with the `api` factor in each attribute's spec.
--
-- Writing a toxic: toxics.define(name, def), where def has
--   attributes = { n = 3, ... }           names and defaults; a value may also be
--                                         { default = 0, api = 0.001 } (factor the
--                                         control API multiplies by)
--   start(self)        the stub begins (connection start, or toxic added)
--   data(self, bytes)  bytes arrived; default: self:send(bytes)
--   eof(self)          the stream ended; default: self:send_eof()
--   stop(self)         the stub ends (timers it made are cancelled anyway)
--   cleanup(self)      the toxic was removed while the connection is open
--                      (after stop; not called when the connection ends);
--                      may close or reset the connection
--   frame = MATCH                         the matcher used when a toxic of the
--                                         type has none (http_status: every
--                                         HTTP request); a given one must be
--                                         of the same protocol
--   stream = "upstream"                   the only direction it acts on
-- and self offers self.attributes (live: updates show), self.stream, self.name,
-- self.client, self.server (the two connections; server is nil before
-- start), self.datagram (true when each chunk is a datagram: order between
-- chunks is not kept by the network), self:send(data [, delay [, unordered]]),
-- self:pace(data, gap), self:send_eof([delay]), self:timer(seconds, fn),
-- self:close(), self:reset(). data(self, bytes, msg) gets, for a toxic with a
-- protocol matcher, one whole matched message and what the parser made of it.
--
-- Aiming (every type): the attributes `match`, `client` and `sni` narrow what
-- a toxic hits (echokit.match): `match` a function(self, data, conn) or a
-- protocol matcher ({ http = {...} }, { resp = {...} }, { websocket = {...} },
-- { bytes = PATTERN }): only matching chunks or messages reach the toxic's
-- data, the rest pass on untouched and in order; `client` a CIDR range of
-- client addresses and `sni` a glob on the server name a TLS client asked
-- for (a client without one does not match): the toxic applies to those
-- clients' connections only.
local echokit = require "echokit"
local match = require "echokit.match"
local glob = require "echokit.glob"

local M = {}

-- Bytes held in a direction's stubs before its source is paused.
M.queue_limit = 1024 * 1024

local STREAMS = { upstream = true, downstream = true }

---------------------------------------------------------------------------
-- Toxic types
---------------------------------------------------------------------------
local types = {}
M.types = types

-- toxics.define(name, def): registers a toxic type (see the header). Raises
-- on misuse; a name already defined is replaced.
function M.define(name, def)
  if type(name) ~= "string" or not name:match("^[%w_%-]+$") then
    error("toxics.define: name must be a word (letters, digits, _ and -)", 2)
  end
  if type(def) ~= "table" then error("toxics.define: def must be a table", 2) end
  if def.frame ~= nil then
    local m, err = match.compile(def.frame)
    if not m then error("toxics.define: def.frame: " .. err, 2) end
    def.frame_kind = m.kind
  end
  if def.stream ~= nil and not STREAMS[def.stream] then
    error("toxics.define: def.stream must be upstream or downstream", 2)
  end
  if def.bytestream ~= nil and type(def.bytestream) ~= "string" then
    error("toxics.define: def.bytestream must be a string (why the type needs a byte stream)", 2)
  end
  for _, k in ipairs { "start", "data", "eof", "stop", "cleanup", "validate" } do
    if def[k] ~= nil and type(def[k]) ~= "function" then
      error("toxics.define: def." .. k .. " must be a function", 2)
    end
  end
  local specs = {}
  for attr, v in pairs(def.attributes or {}) do
    if type(v) == "table" then
      specs[attr] = { default = v.default, api = v.api }
    else
      specs[attr] = { default = v }
    end
  end
  types[name] = { name = name, def = def, specs = specs }
end

-- Checks and completes an attribute table for type ty. Unknown attributes are
-- kept (toxiproxy ignores them too); a known one must have its default's type.
-- `scale` true multiplies by each spec's api factor. Returns attrs or nil, err.
local function check_attributes(ty, given, base, scale)
  local out = {}
  for k, v in pairs(base or {}) do out[k] = v end
  for k, spec in pairs(ty.specs) do
    if out[k] == nil then out[k] = spec.default end
  end
  if given ~= nil and type(given) ~= "table" then
    return nil, "attributes must be an object"
  end
  for k, v in pairs(given or {}) do
    if type(k) ~= "string" then return nil, "attribute names must be strings" end
    local spec = ty.specs[k]
    if spec and spec.default ~= nil and type(v) ~= type(spec.default) then
      return nil, string.format("attribute %s of %s must be a %s (got %s)", k, ty.name,
                                type(spec.default), type(v))
    end
    if spec and type(v) == "number" then
      if v ~= v or v == math.huge or v == -math.huge then
        return nil, string.format("attribute %s of %s must be finite", k, ty.name)
      end
      if scale and spec.api then v = v * spec.api end
    end
    out[k] = v
  end
  if ty.def.validate then
    local ok, err = ty.def.validate(out)
    if not ok then return nil, err end
  end
  return out
end

---------------------------------------------------------------------------
-- Stubs: one toxic on one direction of one connection
---------------------------------------------------------------------------
local Stub = {}
Stub.__index = Stub

local function now() return echokit.now() end

-- Emits queued items that are due; re-arms the timer for the next one.
local function flush_due(stub)
  stub.qtimer = nil
  local q = stub.queue
  local t = now() + 0.0005 -- libev may fire a hair early
  while q.head <= q.tail and not stub.dead do
    local item = q[q.head]
    if item.at > t then break end
    q[q.head] = nil
    q.head = q.head + 1
    if item.data then
      stub.dir.queued = stub.dir.queued - #item.data
      stub.dir:emit(stub, item.data)
    else
      stub.dir:emit_eof(stub)
    end
  end
  if stub.dead then return end
  stub.dir:check_queue()
  if q.head <= q.tail then
    local wait = q[q.head].at - now()
    stub.qtimer = echokit.timer(wait > 0 and wait or 0, function() stub:_guard(flush_due, stub) end)
  end
end

-- Queues an item (data string or false for EOF) for time `at`, after every
-- item already queued; `unordered` (datagrams) lets it leave before queued
-- items due later, as a network reorders packets.
local function enqueue(stub, data, at, unordered)
  local q = stub.queue
  if q.head > q.tail and at <= now() then
    if data then stub.dir:emit(stub, data) else stub.dir:emit_eof(stub) end
    return
  end
  local i = q.tail + 1
  if not unordered then
    if q.tail >= q.head and q[q.tail].at > at then at = q[q.tail].at end
  else
    while i > q.head and q[i - 1].at > at do
      q[i] = q[i - 1]
      i = i - 1
    end
  end
  q.tail = q.tail + 1
  q[i] = { data = data, at = at }
  if data then
    stub.dir.queued = stub.dir.queued + #data
    stub.dir:check_queue()
  end
  if stub.qtimer and i == q.head then
    -- it is due before the item the timer waits for
    stub.qtimer:cancel()
    stub.qtimer = nil
  end
  if not stub.qtimer then
    local wait = q[q.head].at - now()
    stub.qtimer = echokit.timer(wait > 0 and wait or 0, function() stub:_guard(flush_due, stub) end)
  end
end

local function tail_at(stub)
  local q = stub.queue
  if q.tail >= q.head then
    local at = q[q.tail].at
    if at > now() then return at end
  end
  return now()
end

-- Passes data on after `delay` seconds (default 0), after what is queued
-- (unordered: only after what is due before it).
function Stub:send(data, delay, unordered)
  -- an empty chunk is nothing on a byte stream, but an empty datagram is one
  if self.dead or (data == "" and not self.datagram) then return end
  local q = self.queue
  if (delay == nil or delay <= 0) and q.head > q.tail then
    -- nothing waits: on at once (the common case, without a clock read)
    return self.dir:emit(self, data)
  end
  enqueue(self, data, now() + (delay or 0), unordered)
end

-- Passes data on `gap` seconds after the previous item leaves (a link that is
-- busy for `gap` seconds per item: bandwidth, slicer).
function Stub:pace(data, gap)
  if self.dead or (data == "" and not self.datagram) then return end
  enqueue(self, data, tail_at(self) + (gap or 0))
end

-- Passes the end of the stream on after `delay` seconds and what is queued.
function Stub:send_eof(delay)
  if self.dead then return end
  self.sent_eof = true
  enqueue(self, false, now() + (delay or 0))
end

-- A one-shot timer cancelled when the stub stops. fn runs guarded: an error
-- in it is logged and resets the connection.
function Stub:timer(seconds, fn)
  local t
  t = echokit.timer(seconds, function()
    self.timers[t] = nil
    self:_guard(fn, self)
  end)
  self.timers[t] = true
  return t
end

-- Closes both connections after what they already hold is flushed.
function Stub:close() self.dir.pair:close() end

-- Resets both connections (TCP RST).
function Stub:reset() self.dir.pair:reset() end

-- Runs fn(...) for a timer; an error resets the connection pair.
function Stub:_guard(fn, ...)
  if self.dead then return end
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then
    echokit.log("error", "toxic %s (%s): %s", self.name, self.type, tostring(err))
    self.dir.pair:reset()
  end
end

function Stub:_stop()
  if self.dead then return end
  self.dead = true
  if self.qtimer then self.qtimer:cancel(); self.qtimer = nil end
  for t in pairs(self.timers) do t:cancel() end
  self.timers = {}
  if self.active and self.def.stop then pcall(self.def.stop, self) end
end

-- Takes the queued items (for a stub being removed: they move on now).
function Stub:_drain_queue()
  local out = {}
  local q = self.queue
  for i = q.head, q.tail do
    out[#out + 1] = q[i].data
    if q[i].data then self.dir.queued = self.dir.queued - #q[i].data end
  end
  self.queue = { head = 1, tail = 0 }
  -- what a datagram toxic held back, then a partial message being framed
  if self.held_back then out[#out + 1] = self.held_back; self.held_back = nil end
  if self.framer then
    local rest = self.framer:rest()
    if rest ~= "" then out[#out + 1] = rest end
  end
  return out
end

-- Data through a protocol matcher: runs of messages that do not match
-- pass on as one piece (the chunk itself when it is all of them); each
-- matching message goes to the toxic's data.
local function framed_in(self, data)
  local framer = self.framer
  local raw, n = framer:push(data)
  local stops, msgs = framer.stops, framer.msgs
  local m, fn = self.matcher, self.def.data
  local check, mfn = m.check, m.fn
  local conn = mfn and self.dir:src()
  local from, start = 1, 1
  for i = 1, n do
    local stop, msg = stops[i], msgs[i]
    msgs[i] = nil
    -- m:test, inlined: this loop runs for every message
    if msg ~= nil and (not check or check(msg)) and
       (not mfn or mfn(self, raw:sub(start, stop), conn, msg)) then
      if start > from then self:send(raw:sub(from, start - 1)) end
      local bytes = raw:sub(start, stop)
      if fn then fn(self, bytes, msg) else self:send(bytes) end
      if self.dead then return end
      from = stop + 1
    end
    start = stop + 1
  end
  if start > from then
    self:send((from == 1 and start > #raw) and raw or raw:sub(from, start - 1))
  end
end

function Stub:_in(data)
  if not self.active then return self:send(data) end
  local framer = self.framer
  if framer then
    -- a read the matcher proves holds no matching message: on unframed
    local miss = framer.miss
    if miss and miss(framer, data) then return self:send(data) end
    return framed_in(self, data)
  end
  local m = self.matcher
  if m and not m:test(self, data, self.dir:src()) then return self:send(data) end
  if self.def.data then
    self.def.data(self, data)
  else
    self:send(data)
  end
end

function Stub:_eof()
  self.got_eof = true
  -- a message cut short by the end of the stream passes on as it is
  if self.framer then
    local rest = self.framer:rest()
    if rest ~= "" then self:send(rest) end
  end
  if self.active and self.def.eof then
    self.def.eof(self)
  else
    self:send_eof()
  end
end

-- Whether a toxic aimed at some clients (client=, sni=) hits this pair's.
local function aimed_at(toxic, pair)
  if toxic.client_ok and not toxic.client_ok(pair:peer_host()) then return false end
  if toxic.sni_ok then
    local sni = pair:sni()
    if not sni or not toxic.sni_ok(sni) then return false end
  end
  return true
end

local function new_stub(dir, toxic)
  local ty = types[toxic.type]
  local stub = setmetatable({
    dir = dir, toxic = toxic, def = ty.def, type = toxic.type, name = toxic.name,
    stream = toxic.stream, attributes = toxic.attributes,
    client = dir.pair.client, server = dir.pair.server, datagram = dir.pair.datagram,
    queue = { head = 1, tail = 0 }, timers = {}, matcher = toxic.matcher,
    active = aimed_at(toxic, dir.pair) and math.random() < (toxic.toxicity or 1),
  }, Stub)
  if stub.active and toxic.matcher then stub.framer = toxic.matcher:framer(dir.name) end
  return stub
end

local function start_stub(stub)
  if stub.active and stub.def.start and not stub.dead then
    local ok, err = xpcall(stub.def.start, debug.traceback, stub)
    if not ok then
      echokit.log("error", "toxic %s (%s): %s", stub.name, stub.type, tostring(err))
      stub.dir.pair:reset()
    end
  end
end

---------------------------------------------------------------------------
-- Directions: src -> stubs -> dst
---------------------------------------------------------------------------
local Dir = {}
Dir.__index = Dir

-- Next hop after stub (nil = from the source).
function Dir:emit(stub, data)
  local i = stub and stub.index + 1 or 1
  local nxt = self.stubs[i]
  if nxt then return nxt:_in(data) end
  local dst = self.pair[self.dst_key] -- self:dst(), inlined: it runs for every read
  if not dst then
    -- the server is not connected yet (slow_open): kept for it
    local early = self.pair.early
    if early and self.name == "upstream" then early[#early + 1] = data end
    return
  end
  self.bytes = self.bytes + #data
  if dst:write(data) == false then self:hold("dst", true) end
end

function Dir:emit_eof(stub)
  local i = stub and stub.index + 1 or 1
  local nxt = self.stubs[i]
  if nxt then return nxt:_eof() end
  if self.eof_done then return end
  self.eof_done = true
  -- datagrams have no half-close: the end of a direction ends the pair
  if self.close_on_eof or self.pair.datagram then return self.pair:close() end
  local dst = self:dst()
  if not dst then
    local early = self.pair.early
    if early and self.name == "upstream" then early[#early + 1] = false end
    return
  end
  if self.src_closed then dst:close() else dst:shutdown() end
end

function Dir:dst() return self.pair[self.dst_key] end
function Dir:src() return self.pair[self.src_key] end

-- Pause the source while any reason holds (a full destination, a long queue).
function Dir:hold(why, on)
  self.holds[why] = on or nil
  local src = self:src()
  if not src then return end
  if next(self.holds) then src:pause() else src:resume() end
end

function Dir:check_queue()
  if self.queued > M.queue_limit then
    if not self.holds.queue then self:hold("queue", true) end
  elseif self.holds.queue and self.queued <= M.queue_limit / 4 then
    self:hold("queue", false)
  end
end

-- Builds (or rebuilds after a change of the set) the chain of stubs. Stubs of
-- toxics still in the set are kept; removed ones stop and what they held moves
-- on to the stub after them, so nothing is lost or reordered.
function Dir:rebuild()
  local old = self.stubs
  local by_toxic = {}
  for _, s in ipairs(old) do by_toxic[s.toxic] = s end
  local new, started = {}, {}
  for _, toxic in ipairs(self.pair.set.chain[self.name]) do
    local s = by_toxic[toxic]
    if s and s.generation == toxic.generation then
      by_toxic[toxic] = nil
    else
      s = new_stub(self, toxic)
      s.generation = toxic.generation
      started[#started + 1] = s
    end
    new[#new + 1] = s
    s.index = #new
  end
  local in_chain = {}
  for _, toxic in ipairs(self.pair.set.chain[self.name]) do in_chain[toxic] = true end
  -- Stubs leaving: stop them, keep their queues for the stub that follows.
  -- A stub whose toxic left the set (not one replaced after a change of
  -- toxicity) gets its cleanup, as toxiproxy's CleanupToxic: whether or not
  -- its toxicity drew it active, as there.
  local moved, removed = {}, {}
  for i, s in ipairs(old) do
    if by_toxic[s.toxic] == s then
      s:_stop()
      if s.def.cleanup and not in_chain[s.toxic] then removed[#removed + 1] = s end
      local items = s:_drain_queue()
      -- An end of stream the toxic kept back goes on now.
      if s.got_eof and not s.sent_eof then items[#items + 1] = false end
      local after
      for j = i + 1, #old do
        if by_toxic[old[j].toxic] ~= old[j] then after = old[j]; break end
      end
      moved[#moved + 1] = { after = after, items = items }
    end
  end
  self.stubs = new
  for _, s in ipairs(removed) do
    local ok, err = xpcall(s.def.cleanup, debug.traceback, s)
    if not ok then
      echokit.log("error", "toxic %s (%s): %s", s.name, s.type, tostring(err))
      self.pair:reset()
    end
    if self.pair.dead then return end
  end
  for _, s in ipairs(started) do start_stub(s) end
  for _, m in ipairs(moved) do
    local idx = m.after and m.after.index or #new + 1
    for _, item in ipairs(m.items) do
      if self.pair.dead then return end
      local prev = { index = idx - 1 }
      if item then self:emit(prev, item) else self:emit_eof(prev) end
    end
  end
  self:check_queue()
end

function Dir:stop()
  for _, s in ipairs(self.stubs) do s:_stop() end
end

---------------------------------------------------------------------------
-- Pairs: a client, its server connection and the two directions
---------------------------------------------------------------------------
local Pair = {}
Pair.__index = Pair

function Pair:close()
  if self.dead then return end
  self:teardown()
  self.client:close()
  if self.server then self.server:close() end
end

function Pair:reset()
  if self.dead then return end
  self:teardown()
  self.client:reset()
  if self.server then self.server:reset() end
end

-- The client's address (conn:peer()), asked once.
function Pair:peer_host()
  if self.host == nil then
    local c = self.client
    self.host = (c.peer and c:peer()) or false
  end
  return self.host or nil
end

-- The server name a TLS client asked for (conn:tls().sni), or nil.
function Pair:sni()
  if self.sni_name == nil then
    local c = self.client
    local info = c.tls and c:tls()
    self.sni_name = type(info) == "table" and info.sni or false
  end
  return self.sni_name or nil
end

function Pair:teardown()
  if self.dead then return end
  self.dead = true
  if self.open_timer then self.open_timer:cancel(); self.open_timer = nil end
  self.set.pairs[self] = nil
  self.up:stop()
  self.down:stop()
  -- The bytes each way, once per connection (--metrics).
  if self.metrics then self.metrics:bytes(self.up.bytes, self.down.bytes) end
end

local function new_dir(pair, name, src_key, dst_key)
  return setmetatable({ pair = pair, name = name, src_key = src_key, dst_key = dst_key,
                        stubs = {}, holds = {}, queued = 0, bytes = 0 }, Dir)
end

---------------------------------------------------------------------------
-- Sets: the named toxics of a proxy
---------------------------------------------------------------------------
local Set = {}
Set.__index = Set

-- toxics.set([{ datagram = true }]): an empty set. A datagram set (a UDP
-- proxy's) refuses the types that need a byte stream (def.bytestream) and
-- protocol matchers, which frame messages across chunks.
function M.set(o)
  return setmetatable({ chain = { upstream = {}, downstream = {} }, pairs = {},
                        datagram = type(o) == "table" and o.datagram == true }, Set)
end

-- The toxics gauge of the set's --metrics handle, if it has one.
local function count_toxics(set)
  local m = set.metrics
  if m then m:toxics(#set.chain.upstream + #set.chain.downstream) end
end

-- set:set_metrics(handle or nil): the set's proxy counters
-- (echokit.metrics_proxy): the toxics gauge follows the set, and connections
-- through it and their bytes (relayed, counted at each connection's end) add
-- to the handle. Returns the previous handle.
function Set:set_metrics(m)
  local old = self.metrics
  self.metrics = m
  count_toxics(self)
  return old
end

function Set:find(name)
  for _, s in ipairs { "upstream", "downstream" } do
    for i, t in ipairs(self.chain[s]) do
      if t.name == name then return t, s, i end
    end
  end
end

-- The aim of a toxic from its attributes match, client and sni (see the
-- header): sets toxic.matcher, toxic.client_ok, toxic.sni_ok. Returns true,
-- or nil and why (nothing changed then).
local function aim(toxic, ty, attrs, stream, datagram)
  local def = ty.def
  local m, err
  if attrs.match ~= nil then
    m, err = match.compile(attrs.match)
    if not m then return nil, err end
    if datagram and m.kind ~= "chunk" then
      return nil, string.format("match: a %s matcher frames messages across a byte stream; " ..
                                "on datagrams (a UDP proxy) only a function matcher works",
                                m.kind)
    end
    if def.frame_kind and m.kind ~= def.frame_kind then
      return nil, string.format("%s answers %s messages: its match must be a %s matcher",
                                ty.name, def.frame_kind, def.frame_kind)
    end
  elseif def.frame then
    m = match.compile(def.frame)
  end
  if m and (m.kind == "http" or m.kind == "resp") and stream ~= "upstream" then
    return nil, string.format("a %s matcher reads requests: the toxic's stream must be upstream",
                              m.kind)
  end
  local client, sni
  if attrs.client ~= nil then
    client, err = match.cidr(attrs.client)
    if not client then return nil, err end
  end
  if attrs.sni ~= nil then
    if type(attrs.sni) ~= "string" then return nil, "sni must be a string (a glob)" end
    sni, err = glob.compile(attrs.sni)
    if not sni then return nil, "sni: " .. err end
  end
  toxic.matcher, toxic.client_ok, toxic.sni_ok = m, client, sni
  return true
end

local AIM = { match = true, client = true, sni = true }

-- Whether two attribute values are equal, tables compared by content
-- (bounded by the JSON decoder's depth, or a table a handler built).
local function same_value(a, b, depth)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or (depth or 0) > 32 then return false end
  for k, v in pairs(a) do
    if not same_value(v, b[k], (depth or 0) + 1) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function changed(set, stream)
  local list = {}
  for p in pairs(set.pairs) do list[#list + 1] = p end
  for _, p in ipairs(list) do
    if not p.dead then p[stream == "upstream" and "up" or "down"]:rebuild() end
  end
end

-- set:add{ name=, type=, stream=, toxicity=, attributes= [, api=true] }
-- Returns the toxic, or nil, message, kind where kind is "type" (unknown
-- type), "exists" (name taken), "stream" or "bad" (a value of the wrong type).
-- With api=true attributes are in the control API's units.
function Set:add(o)
  if type(o) ~= "table" then return nil, "toxic must be an object", "bad" end
  local stream = o.stream
  local ty = type(o.type) == "string" and types[o.type]
  if stream == nil then stream = ty and ty.def.stream or "downstream" end
  if type(stream) ~= "string" or not STREAMS[stream] then
    return nil, "stream was invalid, can be either upstream or downstream", "stream"
  end
  if not ty then
    return nil, "invalid toxic type", "type"
  end
  if ty.def.stream and stream ~= ty.def.stream then
    return nil, string.format("%s acts on the %s stream only", o.type, ty.def.stream), "bad"
  end
  if self.datagram and ty.def.bytestream then
    return nil, string.format("%s %s: it needs a byte stream, and this proxy relays datagrams (UDP)",
                              o.type, ty.def.bytestream), "bad"
  end
  local name = o.name
  if name == nil or name == "" then name = o.type .. "_" .. stream end
  if type(name) ~= "string" then return nil, "name must be a string", "bad" end
  local toxicity = o.toxicity
  if toxicity == nil then toxicity = 1 end
  if type(toxicity) ~= "number" or toxicity ~= toxicity then
    return nil, "toxicity must be a number", "bad"
  end
  if self:find(name) then return nil, "toxic already exists", "exists" end
  local attrs, err = check_attributes(types[o.type], o.attributes, nil, o.api)
  if not attrs then return nil, err, "bad" end
  local toxic = { name = name, type = o.type, stream = stream, toxicity = toxicity,
                  attributes = attrs, generation = 1 }
  local ok, aerr = aim(toxic, ty, attrs, stream, self.datagram)
  if not ok then return nil, aerr, "bad" end
  table.insert(self.chain[stream], toxic)
  count_toxics(self)
  changed(self, stream)
  return toxic
end

-- set:update(name, { toxicity=, attributes= [, api=true] }): changes a toxic
-- in place. Returns it, or nil, message, kind ("missing" or "bad").
function Set:update(name, o)
  local toxic, stream = self:find(name)
  if not toxic then return nil, "toxic not found", "missing" end
  if type(o) ~= "table" then return nil, "toxic must be an object", "bad" end
  local toxicity = o.toxicity
  if toxicity == nil then toxicity = toxic.toxicity end
  if type(toxicity) ~= "number" or toxicity ~= toxicity then
    return nil, "toxicity must be a number", "bad"
  end
  local ty = types[toxic.type]
  local attrs, err = check_attributes(ty, o.attributes, toxic.attributes, o.api)
  if not attrs then return nil, err, "bad" end
  -- Re-aimed (stubs start again) only when an aim really changed: the
  -- workers' sync updates every toxic with what it already has.
  local reaim = false
  for k in pairs(AIM) do
    if not same_value(attrs[k], toxic.attributes[k]) then reaim = true end
  end
  if reaim then
    local probe = {}
    local ok, aerr = aim(probe, ty, attrs, stream, self.datagram)
    if not ok then return nil, aerr, "bad" end
    toxic.matcher, toxic.client_ok, toxic.sni_ok = probe.matcher, probe.client_ok, probe.sni_ok
  end
  -- The attribute table is shared with the running stubs: change it in place.
  for k in pairs(toxic.attributes) do toxic.attributes[k] = nil end
  for k, v in pairs(attrs) do toxic.attributes[k] = v end
  if toxicity ~= toxic.toxicity or reaim then
    toxic.toxicity = toxicity
    toxic.generation = toxic.generation + 1 -- stubs draw (and aim) again
    changed(self, stream)
  end
  return toxic
end

-- set:remove(name): true, or nil, "toxic not found", "missing".
function Set:remove(name)
  local toxic, stream, i = self:find(name)
  if not toxic then return nil, "toxic not found", "missing" end
  table.remove(self.chain[stream], i)
  count_toxics(self)
  changed(self, stream)
  return true
end

-- set:clear(): removes every toxic.
function Set:clear()
  self.chain = { upstream = {}, downstream = {} }
  count_toxics(self)
  changed(self, "upstream")
  changed(self, "downstream")
end

-- set:list(): the toxics, upstream ones first, each in order of addition.
function Set:list()
  local out = {}
  for _, s in ipairs { "upstream", "downstream" } do
    for _, t in ipairs(self.chain[s]) do out[#out + 1] = t end
  end
  return out
end

-- set:close_all(how): closes ("close") or resets ("reset") every connection.
function Set:close_all(how)
  local list = {}
  for p in pairs(self.pairs) do list[#list + 1] = p end
  for _, p in ipairs(list) do
    if how == "reset" then p:reset() else p:close() end
  end
end

-- set:count(): connections open through the set.
function Set:count()
  local n = 0
  for _ in pairs(self.pairs) do n = n + 1 end
  return n
end

---------------------------------------------------------------------------
-- The proxy handler
---------------------------------------------------------------------------

-- toxics.handler{ upstream = ADDR or function() return ADDR end, toxics = set,
--                 down = function() return bool end,
--                 connect_opts = OPTS or function() return OPTS end }
-- `down` (optional) is asked at each new connection: true drops (resets) it.
-- A callback table (usable as a handler, or with echokit.listen): each client
-- gets a connection to upstream, both directions run through the set.
function M.handler(o)
  local set = o.toxics or M.set()
  local function upstream()
    if type(o.upstream) == "function" then return o.upstream() end
    return o.upstream
  end
  local h = {}

  -- Connects pair to the upstream; what the client sent meanwhile (a
  -- slow_open) goes first.
  local function connect(pair)
    local client = pair.client
    local addr = upstream()
    local copts = o.connect_opts
    if type(copts) == "function" then copts = copts() end
    pair.server = echokit.connect(addr, {
      on_connect = function(server) server.connected = true end,
      on_data = function(_, data) if not pair.dead then pair.down:emit(nil, data) end end,
      on_eof = function()
        if not pair.dead then pair.down:emit_eof(nil) end
      end,
      on_drain = function() if not pair.dead then pair.up:hold("dst", false) end end,
      on_close = function(server, reason)
        pair.server_gone = true
        if pair.dead then return end
        if reason and (not server.connected or reason == "refused") then
          echokit.log("warn", "%s: upstream %s: %s", tostring(client), addr, reason)
        end
        if reason or pair.client_gone then
          pair:teardown()
          client:close()
          return
        end
        -- A clean close: what the server sent still travels through the
        -- toxics, then the client is closed.
        pair.down.src_closed = true
        pair.up:stop()
        if not pair.down.eof_done then pair.down:emit_eof(nil) end
      end,
    }, copts)
    for _, s in ipairs(pair.up.stubs) do s.server = pair.server end
    for _, s in ipairs(pair.down.stubs) do s.server = pair.server end
    local early = pair.early
    pair.early = nil
    for _, item in ipairs(early or {}) do
      if pair.dead then return end
      if item then
        pair.up.bytes = pair.up.bytes + #item
        if pair.server:write(item) == false then pair.up:hold("dst", true) end
      elseif pair.up.src_closed then
        pair.server:close()
      else
        pair.server:shutdown()
      end
    end
  end

  function h.on_connect(client)
    local m = set.metrics
    if m then m:connection() end
    if o.down and o.down() then return client:reset() end
    local pair = setmetatable({ client = client, set = set, metrics = m,
                                datagram = o.datagram or set.datagram or client.datagram == true },
                         Pair)
    pair.up = new_dir(pair, "upstream", "client", "server")
    pair.down = new_dir(pair, "downstream", "server", "client")
    client.toxic_pair = pair
    set.pairs[pair] = true
    pair.opening = true
    pair.up:rebuild()
    if not pair.dead then pair.down:rebuild() end
    pair.opening = false
    if pair.dead then return end
    local wait = pair.open_delay
    if not wait then return connect(pair) end
    -- slow_open: the client waits, paused, for the upstream connection
    pair.early = {}
    pair.up:hold("open", true)
    pair.open_timer = echokit.timer(wait, function()
      pair.open_timer = nil
      if pair.dead then return end
      connect(pair)
      if not pair.dead then pair.up:hold("open", false) end
    end)
  end

  function h.on_data(client, data)
    local pair = client.toxic_pair
    if pair and not pair.dead then pair.up:emit(nil, data) end
  end

  function h.on_eof(client)
    local pair = client.toxic_pair
    if pair and not pair.dead then pair.up:emit_eof(nil) end
  end

  function h.on_drain(client)
    local pair = client.toxic_pair
    if pair and not pair.dead then pair.down:hold("dst", false) end
  end

  function h.on_close(client, reason)
    local pair = client.toxic_pair
    if not pair then return end
    pair.client_gone = true
    if pair.dead then return end
    if reason or not pair.server or pair.server_gone then
      pair:teardown()
      if pair.server then pair.server:close() end
      return
    end
    pair.up.src_closed = true
    pair.down:stop()
    if not pair.up.eof_done then pair.up:emit_eof(nil) end
  end

  h.toxics = set
  return h
end

---------------------------------------------------------------------------
-- Built-in toxics (toxiproxy's, with its attribute names)
---------------------------------------------------------------------------
local MS, US = 0.001, 0.000001

-- latency: every chunk waits latency +- jitter seconds. On a byte stream
-- chunks keep their order; datagrams may overtake one another when the
-- jitter exceeds the gap between them, as on a real network.
M.define("latency", {
  attributes = { latency = { default = 0, api = MS }, jitter = { default = 0, api = MS } },
  data = function(self, data)
    local a = self.attributes
    local d = a.latency
    if a.jitter > 0 then d = d + (math.random() * 2 - 1) * a.jitter end
    self:send(data, d > 0 and d or 0, self.datagram)
  end,
})

-- bandwidth: at most rate KB/s (1 KB = 1000 bytes, as toxiproxy), in pieces of
-- a tenth of a second's worth; datagrams whole, each leaving once the link
-- has carried the one before it.
M.define("bandwidth", {
  attributes = { rate = 0 },
  data = function(self, data)
    local rate = self.attributes.rate * 1000
    if rate <= 0 then return self:send(data) end
    if self.datagram then return self:pace(data, #data / rate) end
    local piece = math.max(1, math.floor(rate / 10))
    for i = 1, #data, piece do
      local p = data:sub(i, i + piece - 1)
      self:pace(p, #p / rate)
    end
  end,
})

-- slicer: chunks cut into slices of average_size +- size_variation bytes,
-- delay seconds apart.
M.define("slicer", {
  bytestream = "cuts chunks into slices",
  attributes = { average_size = 0, size_variation = 0, delay = { default = 0, api = US } },
  data = function(self, data)
    local a = self.attributes
    local avg = math.floor(a.average_size)
    if avg <= 0 then return self:send(data) end
    local var = math.min(math.floor(a.size_variation), avg - 1)
    local i = 1
    while i <= #data do
      local n = avg
      if var > 0 then n = avg + math.random(-var, var) end
      self:pace(data:sub(i, i + n - 1), i == 1 and 0 or a.delay)
      i = i + n
    end
  end,
})

-- slow_close: the end of the stream waits delay seconds.
M.define("slow_close", {
  bytestream = "delays the end of a stream",
  attributes = { delay = { default = 0, api = MS } },
  eof = function(self) self:send_eof(self.attributes.delay) end,
})

-- timeout: nothing gets through. The connection is closed once timeout
-- seconds pass without data (0 = never; each chunk starts the wait again),
-- at the end of the stream, and when the toxic is removed: toxiproxy's
-- timeout toxic, so that a client that gives up frees the connection.
local function arm_timeout(self)
  if self.wait then
    self.wait:cancel()
    self.timers[self.wait] = nil
    self.wait = nil
  end
  local t = self.attributes.timeout
  if t > 0 then self.wait = self:timer(t, function() self:close() end) end
end

M.define("timeout", {
  attributes = { timeout = { default = 0, api = MS } },
  start = arm_timeout,
  data = arm_timeout,
  eof = function(self) self:close() end,
  cleanup = function(self) self:close() end,
})

-- reset_peer: when data first arrives, wait timeout seconds, then reset the
-- connection (TCP RST). Data from then on is dropped.
M.define("reset_peer", {
  attributes = { timeout = { default = 0, api = MS } },
  data = function(self)
    if self.armed then return end
    self.armed = true
    local t = self.attributes.timeout
    if t > 0 then self:timer(t, function() self:reset() end) else self:reset() end
  end,
})

-- limit_data: bytes bytes get through, then the connection is closed (with
-- bytes = 0, at the first chunk: toxiproxy's limit_data). Datagrams are not
-- cut: those that fit whole pass, the first that does not is dropped and
-- the flows are closed.
M.define("limit_data", {
  attributes = { bytes = 0 },
  start = function(self) self.passed = 0 end,
  data = function(self, data)
    if self.done then return end
    local left = self.attributes.bytes - self.passed
    if self.datagram then
      if #data <= left and left > 0 then
        self.passed = self.passed + #data
        return self:send(data)
      end
      self.done = true
      return self:send_eof() -- on datagrams: closes both flows, after what is queued
    end
    if #data < left then
      self.passed = self.passed + #data
      return self:send(data)
    end
    self.done = true
    if left > 0 then
      self.passed = self.passed + left
      self:send(data:sub(1, left))
    end
    -- Once the bytes have left the toxics after this one, close.
    self.dir.close_on_eof = true
    self:send_eof()
  end,
  eof = function(self)
    if not self.done then self:send_eof() end
  end,
})

-- down: the connection is dropped (reset) as soon as it starts, and open
-- connections are reset when the toxic is added.
M.define("down", {
  attributes = {},
  start = function(self) self:reset() end,
})


-- echokit's own types (lua/echokit/faults.lua)
for name, def in pairs(require "echokit.faults") do M.define(name, def) end

return M
