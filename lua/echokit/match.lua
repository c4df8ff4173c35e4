-- echokit.match: which messages, and which clients, a toxic hits.
--
-- Pure Lua; tested by busted without the binary.
--
--   local match = require "echokit.match"
--
--   local m, err = match.compile(spec)   -- err: a sentence naming the bad field
--     spec: function(self, data, conn) -> truthy   each chunk (a datagram for UDP)
--           { http = { method = "GET", path = GLOB, header = { Name = GLOB } } }
--           { resp = { command = "GET", key = GLOB } }
--           { websocket = { opcode = "text" | "binary" | "ping" | "pong" | "close" } }
--           { bytes = "LUA PATTERN" }        a line ("\n"-framed, CR dropped)
--     A protocol table may add fn = function(self, raw, conn, msg): both must
--     hold. GLOBs are echokit.glob patterns; method and command compare exact
--     (the command without regard to case); a header absent does not match.
--   m.kind      "chunk" | "http" | "resp" | "websocket" | "lines"
--   m:framer(direction) -> a framer for one direction of one connection
--     ("upstream": client -> server, whose requests and masked frames are
--     parsed; "downstream": server -> client)
--   m:test(stub, raw, conn, msg) -> bool
--
--   framer:push(data) -> raw, n   for i = 1, n: framer.stops[i], framer.msgs[i]
--     (arrays reused by the next push): message i is raw:sub(previous stop
--     + 1, stop); bytes after the last stop stay held until the rest of
--     their message comes. raw is data itself when nothing was held (no
--     copy). A stream the parser cannot frame (a protocol error, a message
--     over the bound below, an HTTP Upgrade or CONNECT) passes on unframed
--     from there: its entries have msg = nil, which never matches.
--   An HTTP request that cannot match by its head passes on as its body
--   arrives (entries with msg = nil, then the request at its end).
--   framer.miss(framer, data), when not nil: true when no message of data
--     can match (a `bytes` pattern that finds nothing in a read of whole
--     lines): data then passes as it is, instead of through push
--   framer:rest() -> the bytes held (the end of the stream came, or the
--     toxic goes), emptied
--
--   match.cidr(spec) -> fn(host) -> bool | nil, err   "10.0.0.0/8", "::1",
--     "fd00::/8", "127.0.0.2" (one address); an IPv4 range also matches the
--     same addresses written as IPv4-mapped IPv6 (::ffff:a.b.c.d)
local glob = require "echokit.glob"
local http = require "echokit.http"
local resp = require "echokit.resp"
local websocket = require "echokit.websocket"
local framing = require "echokit.framing"

local M = {}

-- Bytes one message may take while it is held for matching: past it the
-- stream passes on unframed (the toxic then leaves that connection alone).
M.MAX_MESSAGE = 1024 * 1024
M.MAX_LINE = 16 * 1024
M.QUICK_HEAD = 8192     -- the parser's max_header

---------------------------------------------------------------------------
-- Addresses
---------------------------------------------------------------------------

-- The 4 bytes of a dotted IPv4 address, or nil.
local function ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local t = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) }
  for _, x in ipairs(t) do if x > 255 or #tostring(x) > 3 then return nil end end
  return string.char(t[1], t[2], t[3], t[4])
end

-- The 16 bytes of an IPv6 address (with :: and a trailing dotted quad), or nil.
local function ipv6(s)
  s = s:gsub("%%.*$", "")                 -- a zone id (fe80::1%lo)
  local head, quad = s:match("^(.*:)(%d+%.%d+%.%d+%.%d+)$")
  if head then
    local b = ipv4(quad)
    if not b then return nil end
    s = head .. string.format("%x:%x", b:byte(1) * 256 + b:byte(2), b:byte(3) * 256 + b:byte(4))
  end
  if s:find("[^%x:]") then return nil end
  local function split(part, out)
    if part == "" then return true end
    for g in (part .. ":"):gmatch("([^:]*):") do
      if not g:match("^%x%x?%x?%x?$") then return false end
      out[#out + 1] = tonumber(g, 16)
    end
    return true
  end
  local groups = {}
  local left, right = s:match("^(.-)::(.*)$")
  if left then
    local l, r = {}, {}
    if right:find("::", 1, true) or not split(left, l) or not split(right, r) then return nil end
    if #l + #r >= 8 then return nil end
    for _, g in ipairs(l) do groups[#groups + 1] = g end
    for _ = 1, 8 - #l - #r do groups[#groups + 1] = 0 end
    for _, g in ipairs(r) do groups[#groups + 1] = g end
  elseif not split(s, groups) or #groups ~= 8 then
    return nil
  end
  local bytes = {}
  for i = 1, 8 do bytes[i] = string.pack(">I2", groups[i]) end
  return table.concat(bytes)
end

local MAPPED = string.rep("\0", 10) .. "\255\255"

-- Bytes of an address as conn:peer() gives it; an IPv4-mapped IPv6 one as
-- its IPv4 bytes.
local function addr_bytes(host)
  if type(host) ~= "string" then return nil end
  local b = ipv4(host)
  if b then return b end
  b = ipv6(host)
  if b and b:sub(1, 12) == MAPPED then return b:sub(13) end
  return b
end
M.addr_bytes = addr_bytes

function M.cidr(spec)
  if type(spec) ~= "string" then return nil, "client must be a string (CIDR)" end
  local addr, bits = spec:match("^([^/]+)/(%d+)$")
  if not addr then addr = spec end
  local b = ipv4(addr) or ipv6(addr)
  if not b then return nil, string.format("client %q is not an address or CIDR range", spec) end
  if b:sub(1, 12) == MAPPED and #b == 16 then
    b = b:sub(13)
    if bits then bits = tostring(tonumber(bits) - 96) end
  end
  local n = bits and tonumber(bits) or #b * 8
  if n < 0 or n > #b * 8 then
    return nil, string.format("client %q: prefix length must be 0 to %d", spec, #b * 8)
  end
  local full, part = n // 8, n % 8
  local prefix = b:sub(1, full)
  local mask = part > 0 and (0xff << (8 - part)) & 0xff or nil
  local want = mask and (b:byte(full + 1) & mask)
  local len = #b
  return function(host)
    local h = addr_bytes(host)
    if not h or #h ~= len then return false end
    if h:sub(1, full) ~= prefix then return false end
    return not mask or (h:byte(full + 1) & mask) == want
  end
end

---------------------------------------------------------------------------
-- Framers: a parser over one direction, and the byte boundaries of messages
---------------------------------------------------------------------------
local Framer = {}
Framer.__index = Framer

-- Bytes a framing.Buffer-based parser holds, consumed or not.
local function buffered(p)
  return #p.buf - p.pos + 1 + p.avail
end

local function new_framer(next_fn, pending_fn, p)
  return setmetatable({ p = p, next = next_fn, pending = pending_fn, held = "",
                        broken = false, fed = 0, base = 0, stops = {}, msgs = {} }, Framer)
end

-- Positions are counted from the start of the stream: `fed` bytes went to
-- the parser, of which it still holds pending(p) unconsumed (a parser also
-- consumes the part of a message it has read, so only the count at the
-- return of a message marks its end); `base` is where `held` starts.
function Framer:push(data)
  local raw = self.held == "" and data or self.held .. data
  local total = #raw
  local stops, msgs = self.stops, self.msgs
  if self.broken then
    self.held = ""
    self.base = self.base + total
    stops[1], msgs[1] = total, nil
    return raw, 1
  end
  -- at a message boundary only: nothing held, no request body streaming
  if self.quick and self.held == "" and self.in_body == nil then
    local n = self.quick(data, stops, msgs)
    if n then
      -- counted as fed to the parser and consumed by it
      self.fed = self.fed + total
      self.base = self.base + total
      return raw, n
    end
  end
  local p = self.p
  p:feed(data)
  self.fed = self.fed + #data
  local n, stop = 0, 0
  while true do
    local msg, err = self.next(self, p)
    if msg == nil then
      if err then self.broken = err end
      break
    end
    stop = self.fed - self.pending(p) - self.base
    n = n + 1
    stops[n], msgs[n] = stop, msg
    if self.broken then break end  -- the message switched protocols
  end
  if self.broken then
    if stop < total then
      n = n + 1
      stops[n], msgs[n] = total, nil
    end
    self.held, self.p = "", nil
    self.base = self.base + total
    return raw, n
  end
  if self.passing and self:passing() then
    -- the message in progress cannot match: what it has so far goes on
    local now = self.fed - self.pending(p) - self.base
    if now > stop then
      n = n + 1
      stops[n], msgs[n] = now, nil
      stop = now
    end
  end
  self.base = self.base + stop
  if stop == 0 then
    self.held = raw
  elseif stop < total then
    self.held = raw:sub(stop + 1)
  else
    self.held = ""
  end
  return raw, n
end

function Framer:rest()
  local r = self.held
  self.held = ""
  return r
end

-- Whole requests without a body or with a Content-Length one, in a read
-- that holds nothing else, while nothing is held: cut here without the
-- parser, for a matcher that reads the method and path only. Anything else
-- (chunked bodies, Expect, Upgrade, a partial request, a request line the
-- pattern does not take) is left to the parser: returns nil.
local find, sub, byte, lower, match = string.find, string.sub, string.byte, string.lower,
                                      string.match
local REQUEST_LINE = "^([!#$%%&'*+%-.^_`|~%w]+) (%S+) HTTP/1%.([01])\r\n"
local function quick_http(data, stops, msgs)
  local n, total, pos = 0, #data, 1
  while pos <= total do
    local _, le, method, target, minor = find(data, REQUEST_LINE, pos)
    if not le then return nil end
    local he = find(data, "\r\n\r\n", le - 1, true)
    if not he or he - pos > M.QUICK_HEAD then return nil end
    -- the header lines, each after a "\n", names in lower case
    local head = "\n" .. lower(sub(data, le + 1, he + 1))
    if find(head, "\ntransfer-encoding", 1, true) or find(head, "\nupgrade", 1, true) or
       find(head, "\nexpect", 1, true) or find(head, "\n[ \t]") or find(head, "\r[^\n]") then
      return nil
    end
    local stop = he + 3
    local cl = find(head, "\ncontent-length", 1, true)
    if cl then
      local len = match(head, "^\ncontent%-length:[ \t]*(%d+)[ \t]*\r", cl)
      if not len or #len > 9 or find(head, "\ncontent-length", cl + 1, true) then
        return nil
      end
      stop = stop + tonumber(len)
      if stop > total then return nil end
    end
    if method == "CONNECT" then return nil end
    local conn = match(head, "\nconnection:([^\r]*)")
    local keep
    if minor == "1" then keep = not (conn and find(conn, "close", 1, true))
    else keep = conn ~= nil and find(conn, "keep-alive", 1, true) ~= nil and
                not find(conn, "close", 1, true) end
    local q = find(target, "?", 1, true)
    n = n + 1
    stops[n] = stop
    msgs[n] = { method = method, target = target, path = q and sub(target, 1, q - 1) or target,
                version = "1." .. minor, keep_alive = keep, quick = true }
    pos = stop + 1
  end
  return n
end

-- early(req): whether a request could match, asked once its head is in;
-- a request that cannot passes on as its body arrives instead of being
-- held (a client that waits for "100 Continue" gets it from the server).
-- quick: whole requests may be cut by quick_http.
local function http_framer(early, quick)
  local f
  local p = http.parser { max_body = M.MAX_MESSAGE,
                          on_headers = early and function(req) f.in_body = req end }
  f = new_framer(function(fr, q)
    local req, err = q:next()
    if req then
      fr.in_body = nil
      if req.headers.upgrade or req.method == "CONNECT" then fr.broken = "protocol switch" end
    end
    return req, err
  end, function(q) return q:pending() end, p)
  if early then
    f.passing = function(fr) return fr.in_body ~= nil and not early(fr.in_body) end
  end
  if quick then f.quick = quick_http end
  return f
end

local function resp_framer(values)
  local p = resp.parser { values = values, max_bulk = M.MAX_MESSAGE,
                          max_command = M.MAX_MESSAGE, max_inline = M.MAX_LINE }
  return new_framer(function(_, q) return q:next() end, function(q) return q:pending() end, p)
end

-- Whole lines in a read that ends with one, while nothing is held: cut
-- here without the parser (which then holds nothing either), as it would
-- cut them. Returns the count, or nil to leave the read to the parser.
local function quick_lines(data, stops, msgs)
  local n, total = 0, #data
  if byte(data, total) ~= 10 then return nil end
  local pos = 1
  while pos <= total do
    local e = find(data, "\n", pos, true)
    local stop = e - 1
    if stop >= pos and byte(data, stop) == 13 then stop = stop - 1 end
    if stop - pos + 1 > M.MAX_LINE then return nil end
    n = n + 1
    stops[n], msgs[n] = e, sub(data, pos, stop)
    pos = e + 1
  end
  return n
end

-- framer:miss(data), for a `bytes` pattern without fn: true when data is
-- whole lines, short enough for quick_lines, nothing is held, and the
-- pattern finds nothing in data (from each line's start when it begins
-- with "^"); data is then counted as passed, no line cut out or framed.
-- A line is a run of data's bytes, so a match in a line is a match in
-- data; a pattern that looks past a line's ends ("$" at its end, a
-- frontier %f) has no miss (nil): such reads are framed.
local function lines_miss(pat)
  if find(pat, "%f", 1, true) or byte(pat, #pat) == 36 then return nil end
  local anchored = byte(pat, 1) == 94
  -- "^P" matching at a line's start is P matching in data: one search
  -- over the whole read first, a search per line only when P is found
  local body = anchored and sub(pat, 2) or pat
  local max = M.MAX_LINE
  return function(fr, data)
    local total = #data
    if fr.held ~= "" or fr.broken or total > max or byte(data, total) ~= 10 then
      return false
    end
    if find(data, body) then
      if not anchored then return false end
      local pos = 1
      while pos <= total do
        if find(data, pat, pos) then return false end
        pos = find(data, "\n", pos, true) + 1
      end
    end
    fr.fed = fr.fed + total
    fr.base = fr.base + total
    return true
  end
end

local function lines_framer(pat)
  local p = framing.lines { max = M.MAX_LINE }
  local f = new_framer(function(_, q) return q:next() end, buffered, p)
  f.quick = quick_lines
  if pat then f.miss = lines_miss(pat) end
  return f
end

-- Frames after the opening handshake: what comes before the first blank
-- line (the upgrade request or the 101 answer) is passed on as a message
-- that never matches.
local function websocket_framer(direction)
  local p = websocket.parser { masked = direction == "upstream", max_message = M.MAX_MESSAGE }
  local f = new_framer(function(fr, q)
    if fr.head then
      local buf = fr.headbuf
      local e = buf:find("\r\n\r\n", 1, true)
      if not e then
        if #buf > 65536 then return nil, "handshake too long" end
        return nil
      end
      fr.head = false
      fr.headbuf = nil
      q:feed(buf:sub(e + 4))
      return { type = "handshake" }
    end
    return q:next()
  end, nil, p)
  f.head, f.headbuf = true, ""
  f.pending = function(q)
    if f.head then return #f.headbuf end
    return buffered(q)
  end
  -- Before the head ends, bytes go to headbuf instead of the parser.
  local feed = p.feed
  p.feed = function(q, data)
    if f.head then f.headbuf = f.headbuf .. data else feed(q, data) end
  end
  return f
end

---------------------------------------------------------------------------
-- Matchers
---------------------------------------------------------------------------
local Matcher = {}
Matcher.__index = Matcher

function Matcher:framer(direction)
  local k = self.kind
  if k == "http" then
    return http_framer(not self.fn and self.check, not self.fn and not self.headers)
  end
  if k == "resp" then return resp_framer(direction == "downstream") end
  if k == "websocket" then return websocket_framer(direction) end
  if k == "lines" then return lines_framer(not self.fn and self.pattern) end
  return nil
end

function Matcher:test(stub, raw, conn, msg)
  if self.kind ~= "chunk" and msg == nil then return false end
  if self.check and not self.check(msg) then return false end
  if self.fn then return self.fn(stub, raw, conn, msg) and true or false end
  return true
end

local function glob_of(v, what)
  if type(v) ~= "string" then return nil, what .. " must be a string (a glob)" end
  local f, err = glob.compile(v)
  if not f then return nil, what .. ": " .. err end
  return f
end

-- glob_of for a field that may be absent: nil, nil when it is.
local function optional_glob(v, what)
  if v == nil then return nil end
  return glob_of(v, what)
end

local function only(t, known, what)
  if type(t) ~= "table" then return what .. " must be a table" end
  for k in pairs(t) do
    if not known[k] then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      return string.format("%s: unknown key '%s' (known: %s)", what, tostring(k),
                           table.concat(names, ", "))
    end
  end
end

local OPCODES = { text = true, binary = true, ping = true, pong = true, close = true }
local OPNUM = { [1] = "text", [2] = "binary", [8] = "close", [9] = "ping", [10] = "pong" }

local function compile_http(s)
  local err = only(s, { method = true, path = true, header = true }, "match.http")
  if err then return nil, err end
  if s.method ~= nil and type(s.method) ~= "string" then
    return nil, "match.http.method must be a string"
  end
  local path
  path, err = optional_glob(s.path, "match.http.path")
  if err then return nil, err end
  local headers = {}
  if s.header ~= nil then
    if type(s.header) ~= "table" then return nil, "match.http.header must be a table" end
    for name, v in pairs(s.header) do
      if type(name) ~= "string" then return nil, "match.http.header: names must be strings" end
      local g
      g, err = glob_of(v, "match.http.header." .. name)
      if not g then return nil, err end
      headers[#headers + 1] = { name:lower(), g }
    end
  end
  local method = s.method
  return function(req)
    if method and req.method ~= method then return false end
    if path and not path(req.path) then return false end
    for _, h in ipairs(headers) do
      local v = req.headers[h[1]]
      if not v or not h[2](v) then return false end
    end
    return true
  end
end

local function compile_resp(s)
  local err = only(s, { command = true, key = true }, "match.resp")
  if err then return nil, err end
  if s.command ~= nil and type(s.command) ~= "string" then
    return nil, "match.resp.command must be a string"
  end
  local key
  key, err = optional_glob(s.key, "match.resp.key")
  if err then return nil, err end
  local command = s.command and s.command:upper()
  return function(cmd)
    if type(cmd) ~= "table" then return false end
    local c = cmd[1]
    if command and (type(c) ~= "string" or c:upper() ~= command) then return false end
    if key and (type(cmd[2]) ~= "string" or not key(cmd[2])) then return false end
    return true
  end
end

local function compile_websocket(s)
  local err = only(s, { opcode = true }, "match.websocket")
  if err then return nil, err end
  local op = s.opcode
  if type(op) == "number" then op = OPNUM[op] end
  if s.opcode ~= nil and not OPCODES[op] then
    return nil, "match.websocket.opcode must be text, binary, ping, pong or close (or 1, 2, 8, 9, 10)"
  end
  return function(ev)
    if ev.type == "handshake" then return false end
    return op == nil or ev.type == op
  end
end

local function compile_bytes(pat)
  if type(pat) ~= "string" then return nil, "match.bytes must be a string (a Lua pattern)" end
  if #pat > glob.MAX_PATTERN then return nil, "match.bytes: pattern too long" end
  local ok, err = pcall(string.find, "", pat)
  if not ok then return nil, "match.bytes: " .. tostring(err):gsub("^.-:%d+: ", "") end
  return function(line) return line:find(pat) ~= nil end
end

local KINDS = { http = { "http", compile_http }, resp = { "resp", compile_resp },
                websocket = { "websocket", compile_websocket }, bytes = { "lines", compile_bytes } }

function M.compile(spec)
  if type(spec) == "function" then
    return setmetatable({ kind = "chunk", fn = spec }, Matcher)
  end
  if type(spec) ~= "table" then
    return nil, "match must be a function or a table (http, resp, websocket or bytes)"
  end
  local err = only(spec, { http = true, resp = true, websocket = true, bytes = true, fn = true },
                   "match")
  if err then return nil, err end
  if spec.fn ~= nil and type(spec.fn) ~= "function" then
    return nil, "match.fn must be a function"
  end
  local m
  for key, k in pairs(KINDS) do
    if spec[key] ~= nil then
      if m then return nil, "match: give one of http, resp, websocket, bytes" end
      local check
      check, err = k[2](spec[key])
      if not check then return nil, err end
      m = setmetatable({ kind = k[1], check = check, fn = spec.fn }, Matcher)
      -- an http matcher that reads headers needs the parser's request
      m.headers = key == "http" and spec.http.header ~= nil and next(spec.http.header) ~= nil
      if key == "bytes" then m.pattern = spec.bytes end
    end
  end
  if not m then
    if spec.fn then return setmetatable({ kind = "chunk", fn = spec.fn }, Matcher) end
    return nil, "match: give one of http, resp, websocket, bytes"
  end
  return m
end

return M
