-- echokit.resp: the Redis protocol (RESP2): an incremental parser for commands
-- (arrays of bulk strings, and inline commands as redis-cli and telnet send
-- them) or for any RESP2 value (replies), and an encoder.
--
-- Pure Lua; tested by busted without the binary.
--
--   local resp = require "echokit.resp"
--
--   local p = resp.parser(opts)     -- one per connection
--     opts.values     parse any RESP2 value (replies) instead of commands
--     opts.max_bulk   bytes in one bulk string (default 16 MiB)
--     opts.max_array  elements in one array (default 1048576)
--     opts.max_inline bytes in an inline command or any protocol line (64 KiB)
--     opts.max_depth  nesting of arrays in values mode (default 32)
--     opts.max_command bytes of one whole command or value: the sum of its bulk
--                     lengths plus 64 per array element (default 64 MiB) ->
--                     "Protocol error: command too big (max_command)"
--   p:feed(data)
--   p:next() -> value          -- the next complete command / value
--            -> nil            -- need more bytes
--            -> nil, err       -- protocol error (text as Redis words it, without
--                                 "ERR "); the parser stays failed
--   A command is an array of strings: { "SET", "k", "v" } (inline ones too).
--   Values: bulk and simple strings are Lua strings, integers Lua integers,
--   errors { err = "ERR ..." }, arrays Lua tables (with .n), nil bulk/array resp.null.
--
--   resp.encode(v) -> bytes: a string is a bulk string, an integer an integer,
--     resp.null a nil bulk, resp.status(s) a simple string, resp.error(s) an
--     error, a table an array (length .n or #); booleans are 1/0.
--   resp.status(s), resp.error(s), resp.null, resp.OK (= resp.status("OK"))
--   resp.command(...) -> the bytes of a command, as clients send it
local framing = require "echokit.framing"

local M = {}

M.MAX_COMMAND = 64 * 1024 * 1024
M.ELEMENT_CHARGE = 64   -- bytes charged per array element against max_command
M.MAX_BULK = 16 * 1024 * 1024
M.MAX_ARRAY = 1024 * 1024
M.MAX_INLINE = 64 * 1024

M.null = setmetatable({}, { __name = "resp.null", __tostring = function() return "(nil)" end })

local Status = { __name = "resp.status" }
local Error = { __name = "resp.error" }

function M.status(s) return setmetatable({ status = s }, Status) end
function M.error(s) return setmetatable({ err = s }, Error) end
M.OK = M.status("OK")

---------------------------------------------------------------------------
-- Parser
---------------------------------------------------------------------------
local Buffer = framing.Buffer
local Parser = setmetatable({}, { __index = Buffer })
Parser.__index = Parser

function M.parser(opts)
  opts = opts or {}
  -- the shared buffer: fed chunks are joined (and parsed) once `want` bytes are there
  return framing.buffer(Parser, {
    values = opts.values or false,
    max_bulk = opts.max_bulk or M.MAX_BULK,
    max_array = opts.max_array or M.MAX_ARRAY,
    max_inline = opts.max_inline or M.MAX_INLINE,
    max_depth = opts.max_depth or 32,
    max_command = opts.max_command or M.MAX_COMMAND,
    stack = {},               -- arrays being filled: { t = {}, n = count }
    total = 0,                -- bytes charged to the command or value in progress
  })
end

-- Bytes not yet consumed by returned values.
function Parser:pending()
  return #self.buf - self.pos + 1 + self.avail
end

function Parser:fail(err)
  self.stack, self.total = {}, 0
  return Buffer.fail(self, err)
end

local TOO_BIG = "Protocol error: command too big (max_command)"

-- Splits an inline command into words: blanks separate, "double quotes" take
-- \n \r \t \" \\ \xHH escapes, 'single quotes' take \' (as Redis does).
local ESC = { n = "\n", r = "\r", t = "\t", b = "\b", a = "\a" }
local function split_inline(line)
  local words, i, n = {}, 1, #line
  while true do
    i = line:find("[^ \t]", i)
    if not i then return words end
    local c = line:sub(i, i)
    local w = {}
    if c == '"' or c == "'" then
      i = i + 1
      while true do
        if i > n then return nil end
        local ch = line:sub(i, i)
        if ch == "\\" and c == '"' then
          local e = line:sub(i + 1, i + 1)
          local hex = line:match("^x(%x%x)", i + 1)
          if hex then w[#w + 1] = string.char(tonumber(hex, 16)); i = i + 4
          else w[#w + 1] = ESC[e] or e; i = i + 2 end
        elseif ch == "\\" and line:sub(i + 1, i + 1) == "'" then
          w[#w + 1] = "'"; i = i + 2
        elseif ch == c then
          i = i + 1
          -- a closing quote must be followed by a blank or the end
          if i <= n and not line:sub(i, i):match("[ \t]") then return nil end
          break
        else
          w[#w + 1] = ch; i = i + 1
        end
      end
    else
      local e = line:find("[ \t]", i) or n + 1
      w[1] = line:sub(i, e - 1)
      i = e
    end
    words[#words + 1] = table.concat(w)
  end
end

-- Delivers a finished value to the array being filled, or returns it.
local function deliver(self, v)
  local stack = self.stack
  while true do
    local top = stack[#stack]
    if not top then return v end
    local t = top.t
    t.n = t.n + 1
    t[t.n] = v
    if t.n < top.n then return nil end
    stack[#stack] = nil
    v = t
  end
end

function Parser:next()
  if self.err then return nil, self.err end
  while true do
    local have = self:fill()
    if not have then return nil end
    local buf, pos = self.buf, self.pos
    local first = buf:byte(pos)
    local inline = not self.values and #self.stack == 0 and first ~= 42   -- '*'
    -- an inline command ends at LF (CR LF or LF, as telnet sends); RESP lines at CR LF
    local e = buf:find(inline and "\n" or "\r\n", pos, true)
    if not e then
      -- a RESP line may still end in CR LF with the CR as the last byte here
      if have > self.max_inline + (inline and 0 or 1) then
        return self:fail(inline and "Protocol error: too big inline request"
                                 or "Protocol error: too big line")
      end
      self.want = have + 1   -- more than is buffered: fill() joins or waits
      goto continue
    end
    if e - pos > self.max_inline then
      return self:fail(inline and "Protocol error: too big inline request"
                               or "Protocol error: too big line")
    end
    local line = buf:sub(pos + 1, e - 1)
    local v, done = nil, false
    if inline then
      local stop = e - 1
      if stop >= pos and buf:byte(stop) == 13 then stop = stop - 1 end
      local words = split_inline(buf:sub(pos, stop))
      if not words then return self:fail("Protocol error: unbalanced quotes in request") end
      self.pos, self.want = e + 1, 1
      if #words > 0 then
        words.n = #words
        return words
      end
      -- an empty line is skipped, as Redis does
    elseif first == 36 then                                             -- '$' bulk
      local len = line:match("^%-?%d+$") and tonumber(line)
      if not len or len < -1 or len > self.max_bulk then
        return self:fail("Protocol error: invalid bulk length")
      end
      if len > 0 and self.total + len > self.max_command then return self:fail(TOO_BIG) end
      if len == -1 then
        if not self.values then return self:fail("Protocol error: invalid bulk length") end
        self.pos = e + 2
        v, done = M.null, true
      else
        local stop = e + 2 + len
        if #buf < stop + 1 then
          self.want = stop + 2 - pos
          goto continue
        end
        if buf:sub(stop, stop + 1) ~= "\r\n" then
          return self:fail("Protocol error: bulk string not terminated by CRLF")
        end
        v, done = buf:sub(e + 2, stop - 1), true
        self.pos = stop + 2
        self.total = self.total + len
      end
    elseif first == 42 then                                             -- '*' array
      local count = line:match("^%-?%d+$") and tonumber(line)
      if not count or count < -1 or count > self.max_array then
        return self:fail("Protocol error: invalid multibulk length")
      end
      if not self.values and #self.stack > 0 then
        return self:fail("Protocol error: expected '$', got '*'")
      end
      self.pos = e + 2
      if count == -1 then
        v, done = self.values and M.null or nil, self.values
      elseif count == 0 then
        v, done = { n = 0 }, self.values   -- "*0" is no command: skipped
      else
        if #self.stack >= self.max_depth then
          return self:fail("Protocol error: arrays nested too deep")
        end
        self.total = self.total + count * M.ELEMENT_CHARGE
        if self.total > self.max_command then return self:fail(TOO_BIG) end
        self.stack[#self.stack + 1] = { t = { n = 0 }, n = count }
      end
    elseif not self.values then
      return self:fail(("Protocol error: expected '$', got '%s'"):format(string.char(first)))
    elseif first == 43 then                                             -- '+'
      v, done = line, true
      self.pos = e + 2
    elseif first == 45 then                                             -- '-'
      v, done = M.error(line), true
      self.pos = e + 2
    elseif first == 58 then                                             -- ':'
      v = line:match("^[-+]?%d+$") and math.tointeger(tonumber(line))
      if not v then return self:fail("Protocol error: invalid integer") end
      done = true
      self.pos = e + 2
    else
      return self:fail(("Protocol error: unknown type byte '%s'"):format(string.char(first)))
    end
    self.want = 1
    if done then
      local out = deliver(self, v)
      if out ~= nil then
        self.total = 0
        return out
      end
    end
    ::continue::
  end
end

---------------------------------------------------------------------------
-- Encoder
---------------------------------------------------------------------------
local function encode(v, out)
  local tv = type(v)
  if tv == "string" then
    out[#out + 1] = "$" .. #v .. "\r\n"
    out[#out + 1] = v
    out[#out + 1] = "\r\n"
  elseif math.type(v) == "integer" then
    out[#out + 1] = ":" .. v .. "\r\n"
  elseif tv == "number" then
    local s = ("%.17g"):format(v)
    out[#out + 1] = "$" .. #s .. "\r\n" .. s .. "\r\n"
  elseif tv == "boolean" then
    out[#out + 1] = v and ":1\r\n" or ":0\r\n"
  elseif v == M.null or v == nil then
    out[#out + 1] = "$-1\r\n"
  elseif getmetatable(v) == Status then
    if v.status:find("[\r\n]") then error("CR or LF in a RESP simple string", 3) end
    out[#out + 1] = "+" .. v.status .. "\r\n"
  elseif getmetatable(v) == Error then
    out[#out + 1] = "-" .. v.err:gsub("[\r\n]+", " ") .. "\r\n"
  elseif tv == "table" then
    local n = v.n or #v
    out[#out + 1] = "*" .. n .. "\r\n"
    for i = 1, n do encode(v[i], out) end
  else
    error("cannot encode a " .. tv .. " as RESP", 3)
  end
end

function M.encode(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

function M.command(...)
  return M.encode(table.pack(...))
end

return M
