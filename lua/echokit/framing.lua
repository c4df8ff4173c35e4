-- echokit.framing: cut a byte stream into messages for custom protocols --
-- delimited lines, or frames with a binary length prefix -- with a limit on
-- the size a peer can make us buffer.
--
-- Pure Lua; tested by busted without the binary.
--
--   local framing = require "echokit.framing"
--
--   local f = framing.lines{ max = 65536, delimiter = "\n" }
--   f:feed(data)
--   f:next() -> line (without the delimiter; with "\n", a CR before it is
--               dropped too) | nil (need more) | nil, "line too long"
--   f:rest() -> the bytes buffered after the last complete line
--
--   local f = framing.length_prefixed{ size = 4, little = false, max = 16 MiB,
--                                      inclusive = false }
--     size: bytes of the length field (1, 2, 4 or 8), big-endian unless little;
--     inclusive: the length counts the length field itself
--   f:feed(data)
--   f:next() -> payload | nil | nil, "frame too large" / "bad frame length"
--   f:encode(payload) -> the framed bytes, for sending
--
-- A splitter that reported an error stays failed: close the connection.
--
--   framing.buffer(class, fields) -> a new object of `class` (whose __index
--     chain ends at framing.Buffer) with the shared input buffer: feed(data),
--     fill() (join the fed chunks once `want` bytes are there), fail(err),
--     rest(). echokit.resp and echokit.websocket parse on top of it too.
local M = {}

local Base = {}
Base.__index = Base

local function new(kind, fields)
  fields.buf, fields.pos, fields.chunks, fields.avail, fields.want = "", 1, {}, 0, 1
  return setmetatable(fields, kind)
end

function Base:feed(data)
  if self.err or #data == 0 then return end
  self.chunks[#self.chunks + 1] = data
  self.avail = self.avail + #data
end

-- Joins the fed chunks into buf once `want` bytes are there (so a long frame
-- arriving in many pieces is copied once, not once per piece). Returns the
-- buffered byte count, or nil when fewer than `want` are there.
function Base:fill()
  local have = #self.buf - self.pos + 1
  if have + self.avail < self.want then return nil end
  if self.avail > 0 and have < self.want then
    self.buf = self.buf:sub(self.pos) .. table.concat(self.chunks)
    self.pos, self.chunks, self.avail = 1, {}, 0
    have = #self.buf
  end
  return have
end

function Base:fail(err)
  self.err = err
  self.buf, self.pos, self.chunks, self.avail = "", 1, {}, 0
  return nil, err
end

function Base:rest()
  local r = self.buf:sub(self.pos) .. table.concat(self.chunks)
  self.buf, self.pos, self.chunks, self.avail = "", 1, {}, 0
  return r
end

M.Buffer = Base
M.buffer = new

---------------------------------------------------------------------------
-- Lines
---------------------------------------------------------------------------
local Lines = setmetatable({}, { __index = Base })
Lines.__index = Lines

function M.lines(opts)
  opts = opts or {}
  local delim = opts.delimiter or "\n"
  assert(#delim > 0, "lines: empty delimiter")
  return new(Lines, { max = opts.max or 65536, delim = delim, k = #delim - 1,
                      scanned = 0, hit = false, tail = "" })
end

-- Chunks are only joined once one of them holds a delimiter (or one straddles
-- chunks, caught by keeping the last #delim - 1 bytes), so a long line fed a
-- byte at a time costs linear time, not quadratic.
function Lines:feed(data)
  if self.err or #data == 0 then return end
  local k = self.k
  if not self.hit then
    self.hit = data:find(self.delim, 1, true) ~= nil or
               (k > 0 and (self.tail .. data:sub(1, k)):find(self.delim, 1, true) ~= nil)
  end
  if k > 0 then
    self.tail = #data >= k and data:sub(-k) or (self.tail .. data):sub(-k)
  end
  self.chunks[#self.chunks + 1] = data
  self.avail = self.avail + #data
end

function Lines:rest()
  self.scanned, self.hit, self.tail = 0, false, ""
  return Base.rest(self)
end

function Lines:next()
  if self.err then return nil, self.err end
  while true do
    local buf, pos = self.buf, self.pos
    local from = pos + math.max(0, self.scanned - self.k)
    local s, e = buf:find(self.delim, from, true)
    if s then
      local stop = s - 1
      if self.delim == "\n" and stop >= pos and buf:byte(stop) == 13 then stop = stop - 1 end
      if stop - pos + 1 > self.max then return self:fail("line too long") end
      self.pos, self.scanned = e + 1, 0
      return buf:sub(pos, stop)
    end
    self.scanned = #buf - pos + 1
    if not self.hit then
      if self.scanned + self.avail > self.max + #self.delim then return self:fail("line too long") end
      return nil
    end
    self.buf = buf:sub(pos) .. table.concat(self.chunks)
    self.pos, self.chunks, self.avail, self.hit = 1, {}, 0, false
  end
end

---------------------------------------------------------------------------
-- Length-prefixed frames
---------------------------------------------------------------------------
local Prefixed = setmetatable({}, { __index = Base })
Prefixed.__index = Prefixed

function M.length_prefixed(opts)
  opts = opts or {}
  local size = opts.size or 4
  if size ~= 1 and size ~= 2 and size ~= 4 and size ~= 8 then
    error("length_prefixed: size must be 1, 2, 4 or 8", 2)
  end
  return new(Prefixed, {
    size = size, max = opts.max or 16 * 1024 * 1024, inclusive = opts.inclusive or false,
    fmt = (opts.little and "<" or ">") .. "I" .. size, need = nil,
  })
end

function Prefixed:next()
  if self.err then return nil, self.err end
  if not self.need then
    self.want = self.size
    if not self:fill() then return nil end
    local n = string.unpack(self.fmt, self.buf, self.pos)
    if self.inclusive then
      n = n - self.size
      if n < 0 then return self:fail("bad frame length") end
    end
    if n < 0 or n > self.max then return self:fail("frame too large") end
    self.pos = self.pos + self.size
    self.need = n
  end
  self.want = self.need
  if not self:fill() then return nil end
  local payload = self.buf:sub(self.pos, self.pos + self.need - 1)
  self.pos, self.need, self.want = self.pos + self.need, nil, 1
  return payload
end

function Prefixed:encode(payload)
  local n = #payload + (self.inclusive and self.size or 0)
  if #payload > self.max then error("frame too large", 2) end
  if self.size < 8 and n >= 1 << (8 * self.size) then error("frame too large for the length field", 2) end
  return string.pack(self.fmt, n) .. payload
end

return M
