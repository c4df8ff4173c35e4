-- echokit.http: an incremental HTTP/1.1 request parser, a response writer, and
-- a handler builder that does keep-alive, pipelining and 100-continue.
--
-- Pure Lua with no dependency on the runtime (the handler builder only needs a
-- connection object with write/close), so it is unit-tested by busted alone.
--
-- API (stable):
--
--   local http = require "echokit.http"
--
--   local p = http.parser(opts)      -- one per connection
--     opts.max_header  bytes of request line + headers (default 8192)     -> 431
--     opts.max_headers number of header lines (default 100)               -> 431
--     opts.max_body    bytes of body, Content-Length or chunked (1 MiB)   -> 413
--     opts.max_framing bytes of chunked framing in one body: chunk-size lines
--                      with their extensions and the CRLFs (64 KiB)       -> 413
--     opts.on_headers  function(req) called once a request's head is parsed,
--                      before its body is read (to send 100 Continue)
--   p:feed(data)                     -- append bytes, any chunk boundaries
--   p:next()  -> req                 -- the next complete request, in order
--             -> nil                 -- need more bytes
--             -> nil, err, status    -- protocol error: answer `status` and close;
--                                       every later call returns the same error
--   p:finish() -> nil | nil, err, 400  -- the peer ended its input: an error if it
--                                       stopped in the middle of a request
--   p:pending() -> bytes buffered but not yet part of a returned request
--   p:leftover() -> those bytes, removed from the parser (after a request that
--                   switches protocols, e.g. a WebSocket upgrade)
--   p:in_head() -> true while part of a request head has arrived and the head
--                  is not complete
--
--   req = { method = "GET", target = "/a?b=1", path = "/a", query = "b=1" or nil,
--           version = "1.1" or "1.0", headers = { ["content-type"] = "..." },
--           header_list = { {"Content-Type", "..."}, ... },   -- as sent, in order
--           body = "", chunked = bool, keep_alive = bool, expect_continue = bool }
--   (repeated headers are joined with ", " in req.headers; a repeated Host is a 400)
--
--   http.response(status, headers, body [, opts]) -> string
--     headers: { Name = "v" } or { {"Name", "v"}, ... } (or nil). Content-Length is
--     added unless given or opts.chunked; opts.close adds "Connection: close";
--     opts.head leaves the body out (answer to HEAD). Raises on CR/LF in a header.
--   http.chunk(data) -> one chunk of a chunked body ("" gives the last chunk)
--   http.reason(status) -> "Not Found" etc.
--   http.query(qs) -> { key = "value", ... } (percent- and +-decoded)
--   http.unescape(s) -> percent-decoded string
--
--   http.handler(fn, opts) -> a handler table (on_connect, on_data, on_drain,
--                                               on_eof, on_close)
--     fn(req, conn) returns status, headers, body (body a string, or nil for none).
--     Requests on a connection are answered in order (pipelining); keep-alive as
--     HTTP/1.1 and 1.0 say; "Expect: 100-continue" gets its interim response;
--     protocol errors get their status, "Connection: close", and the connection
--     is closed. An error raised by fn is logged and answered with 500 + close.
--     Requests are answered through echokit.pipeline: when an answer's write
--     returns false (above high water) the requests behind it wait, with
--     reading paused, until on_drain; after opts.max_answers answers (default
--     64) or 1 MiB in one callback they wait for the next turn of the loop.
--     opts: the parser options above, plus opts.server (the Server header,
--     default "echokit"; false for none), opts.header_timeout (seconds a
--     request head may take, from the connection's start or the first byte of
--     a later request until its blank line; default 30, 0 = none): past it
--     the client gets 408 and the connection is closed, logged at info level
--     at most once per 10 s.
local pipeline = require "echokit.pipeline"

local M = {}

M.HEADER_TIMEOUT = 30
M.MAX_ANSWERS = 64
M.MAX_HEADER = 8192
M.MAX_HEADERS = 100
M.MAX_BODY = 1024 * 1024
M.MAX_FRAMING = 64 * 1024

local REASONS = {
  [100] = "Continue", [101] = "Switching Protocols",
  [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [206] = "Partial Content",
  [301] = "Moved Permanently", [302] = "Found", [304] = "Not Modified",
  [307] = "Temporary Redirect", [308] = "Permanent Redirect",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [411] = "Length Required", [413] = "Content Too Large", [414] = "URI Too Long",
  [415] = "Unsupported Media Type", [417] = "Expectation Failed",
  [426] = "Upgrade Required", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
  [505] = "HTTP Version Not Supported",
}

function M.reason(status)
  return REASONS[status] or "Unknown"
end

-- RFC 9110 token characters (method and header names).
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

---------------------------------------------------------------------------
-- Parser
---------------------------------------------------------------------------
local Parser = {}
Parser.__index = Parser

function M.parser(opts)
  opts = opts or {}
  local p = setmetatable({
    max_header = opts.max_header or M.MAX_HEADER,
    max_headers = opts.max_headers or M.MAX_HEADERS,
    max_body = opts.max_body or M.MAX_BODY,
    max_framing = opts.max_framing or M.MAX_FRAMING,
    on_headers = opts.on_headers,
    buf = "", pos = 1,
    state = "head",
    -- per-request state, reset when a request is returned
    req = nil, head_bytes = 0, nheaders = 0, remaining = 0, parts = nil, body_len = 0,
    framing = 0,   -- bytes of chunked framing in this body
    err = nil, status = nil,
  }, Parser)
  return p
end

function Parser:feed(data)
  if self.err or data == "" then return end
  if self.pos > 1 then
    self.buf = self.buf:sub(self.pos) .. data
    self.pos = 1
  else
    self.buf = self.buf .. data
  end
end

function Parser:pending()
  return #self.buf - self.pos + 1
end

-- Whether part of a request head has arrived and the head is not complete
-- (what a header timeout measures; blank lines before a request do not count).
function Parser:in_head()
  if self.err or self.state ~= "head" then return false end
  return self.req ~= nil or self.buf:find("[^\r\n]", self.pos) ~= nil
end

function Parser:leftover()
  local rest = self.buf:sub(self.pos)
  self.buf, self.pos = "", 1
  return rest
end

function Parser:fail(err, status)
  self.err, self.status, self.state = err, status, "error"
  self.buf, self.pos = "", 1
  return nil, err, status
end

-- Takes one line (without LF and a CR before it) from the buffer, or nil when
-- no complete line is buffered. `limit` bounds the bytes a line may take, counted
-- in self.head_bytes; returns false when it is passed. The second result tells
-- whether the line ended with CR LF (chunked framing requires it).
function Parser:line(limit)
  local buf, pos = self.buf, self.pos
  local e = buf:find("\n", pos, true)
  if not e then
    if self.head_bytes + (#buf - pos + 1) > limit then return false end
    return nil
  end
  self.head_bytes = self.head_bytes + (e - pos + 1)
  if self.head_bytes > limit then return false end
  self.pos = e + 1
  local stop = e - 1
  local crlf = stop >= pos and buf:byte(stop) == 13
  if crlf then stop = stop - 1 end
  return buf:sub(pos, stop), crlf
end

-- s without the spaces and tabs around it. find from the front and a byte loop
-- from the back: linear, where match("^[ \t]*(.-)[ \t]*$") is quadratic in a
-- long run of inner blanks.
local function trim(s)
  local i = s:find("[^ \t]")
  if not i then return "" end
  local j = #s
  while true do
    local b = s:byte(j)
    if b ~= 32 and b ~= 9 then break end
    j = j - 1
  end
  return s:sub(i, j)
end
M.trim = trim

local function request_line(p, line)
  local method, target, version = line:match("^(%S+) (%S+) HTTP/(%d+%.%d+)$")
  if not method then return p:fail("bad request line", 400) end
  if not method:match(TOKEN) then return p:fail("bad method", 400) end
  if target:find("[%z\1-\32\127]") then return p:fail("bad request target", 400) end
  if version ~= "1.1" and version ~= "1.0" then
    if version:match("^1%.") then version = "1.1"   -- a later 1.x is answered as 1.1
    else return p:fail("HTTP version not supported", 505) end
  end
  local path, query = target, nil
  local q = target:find("?", 1, true)
  if q then path, query = target:sub(1, q - 1), target:sub(q + 1) end
  p.req = { method = method, target = target, path = path, query = query,
            version = version, headers = {}, header_list = {}, body = "",
            chunked = false, keep_alive = false, expect_continue = false }
  return true
end

local function header_line(p, line)
  if line:byte(1) == 32 or line:byte(1) == 9 then
    return p:fail("obsolete header line folding", 400)
  end
  local name, value = line:match("^([^:]*):(.*)$")
  if not name or not name:match(TOKEN) then
    return p:fail("bad header line", 400)
  end
  value = trim(value)
  if value:find("[%z\1-\8\10-\31\127]") then
    return p:fail("bad header value", 400)
  end
  p.nheaders = p.nheaders + 1
  if p.nheaders > p.max_headers then return p:fail("too many header lines", 431) end
  local req = p.req
  req.header_list[#req.header_list + 1] = { name, value }
  local key = name:lower()
  local old = req.headers[key]
  -- RFC 9112 3.2: more than one Host line is a 400
  if old and key == "host" then return p:fail("more than one Host header", 400) end
  req.headers[key] = old and (old .. ", " .. value) or value
  return true
end

-- Lower-case comma-separated tokens of a header value as a set.
local function tokens(v)
  local set = {}
  if v then
    for tok in v:gmatch("[^,%s]+") do set[tok:lower()] = true end
  end
  return set
end

-- The head is complete: decide how the body is framed (RFC 9112 section 6).
local function head_done(p)
  local req, h = p.req, p.req.headers
  if req.version == "1.1" and not h.host then
    return p:fail("missing Host header", 400)
  end
  local conn = tokens(h.connection)
  if req.version == "1.1" then req.keep_alive = not conn.close
  else req.keep_alive = conn["keep-alive"] == true and not conn.close end

  local te, cl = h["transfer-encoding"], h["content-length"]
  if te then
    if cl then return p:fail("both Content-Length and Transfer-Encoding", 400) end
    local codings = {}
    for c in te:gmatch("[^,%s]+") do codings[#codings + 1] = c:lower() end
    if codings[#codings] ~= "chunked" then
      return p:fail("unsupported transfer coding", #codings == 0 and 400 or 501)
    end
    if #codings > 1 then return p:fail("unsupported transfer coding", 501) end
    req.chunked = true
    -- RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing: close after it
    if req.version == "1.0" then req.keep_alive = false end
    p.state = "chunk_size"
  elseif cl then
    -- repeated identical values ("5, 5") are allowed, differing ones are not
    local n
    for v in (cl .. ","):gmatch("([^,]*),") do
      v = trim(v)
      if not v:match("^%d+$") or #v > 15 then return p:fail("bad Content-Length", 400) end
      local k = tonumber(v)
      if n and k ~= n then return p:fail("conflicting Content-Length", 400) end
      n = k
    end
    if n > p.max_body then return p:fail("body too large", 413) end
    p.remaining = n
    p.state = n > 0 and "body" or "done"
  else
    p.state = "done"
  end

  local expect = h.expect
  if expect then
    if expect:lower() ~= "100-continue" then
      return p:fail("unsupported expectation", 417)
    end
    req.expect_continue = req.version == "1.1" and p.state ~= "done"
  end
  p.parts, p.body_len, p.framing = {}, 0, 0
  if p.on_headers then p.on_headers(req) end
  return true
end

-- Moves up to `n` body bytes from the buffer; returns how many.
function Parser:take(n)
  local avail = #self.buf - self.pos + 1
  if n > avail then n = avail end
  if n > 0 then
    self.parts[#self.parts + 1] = self.buf:sub(self.pos, self.pos + n - 1)
    self.pos = self.pos + n
  end
  return n
end

function Parser:next()
  if self.err then return nil, self.err, self.status end
  while true do
    local state = self.state
    if state == "head" then
      local line = self:line(self.max_header)
      if line == false then return self:fail("request header too large", 431) end
      if line == nil then
        -- Refuse at once what can never become a request line (a TLS hello,
        -- binary noise) instead of waiting for a line end that may not come.
        if not self.req then
          local bad = self.buf:find("[^!#$%%&'*+%-.^_`|~%w\r\n]", self.pos)
          if bad and self.buf:byte(bad) ~= 32 then return self:fail("bad request line", 400) end
        end
        return nil
      end
      if line:find("\r", 1, true) then return self:fail("bare CR in request head", 400) end
      if not self.req then
        -- RFC 9112 2.2: ignore empty lines before the request line
        if line ~= "" then
          local ok, err, st = request_line(self, line)
          if not ok then return nil, err, st end
        end
      elseif line == "" then
        local ok, err, st = head_done(self)
        if not ok then return nil, err, st end
      else
        local ok, err, st = header_line(self, line)
        if not ok then return nil, err, st end
      end
    elseif state == "body" then
      self.remaining = self.remaining - self:take(self.remaining)
      if self.remaining > 0 then return nil end
      self.state = "done"
    elseif state == "chunk_size" then
      self.head_bytes = 0
      local line, crlf = self:line(1024)
      if line == false then return self:fail("bad chunk size line", 400) end
      if line == nil then return nil end
      -- RFC 9112 7.1: chunked framing ends its lines with CR LF; a bare CR or LF
      -- is read differently by different parsers (request smuggling)
      if not crlf or line:find("\r", 1, true) then
        return self:fail("chunk size line not ended by CRLF", 400)
      end
      self.framing = self.framing + self.head_bytes
      if self.framing > self.max_framing then return self:fail("too much chunked framing", 413) end
      local hex = line:match("^(%x+)[ \t]*;") or line:match("^(%x+)[ \t]*$")
      if not hex then return self:fail("bad chunk size", 400) end
      hex = hex:gsub("^0+(.)", "%1")
      if #hex > 12 then return self:fail("body too large", 413) end
      local n = tonumber(hex, 16)
      if n == 0 then
        self.state = "trailers"
        self.head_bytes = 0
      else
        self.body_len = self.body_len + n
        if self.body_len > self.max_body then return self:fail("body too large", 413) end
        self.remaining = n
        self.state = "chunk_data"
      end
    elseif state == "chunk_data" then
      self.remaining = self.remaining - self:take(self.remaining)
      if self.remaining > 0 then return nil end
      self.state = "chunk_end"
    elseif state == "chunk_end" then
      local b = self.buf:byte(self.pos)
      if not b then return nil end
      if b ~= 13 then return self:fail("bad chunk terminator", 400) end
      local b2 = self.buf:byte(self.pos + 1)
      if not b2 then return nil end
      if b2 ~= 10 then return self:fail("bad chunk terminator", 400) end
      self.pos = self.pos + 2
      self.framing = self.framing + 2
      if self.framing > self.max_framing then return self:fail("too much chunked framing", 413) end
      self.state = "chunk_size"
    elseif state == "trailers" then
      local line, crlf = self:line(self.max_header)
      if line == false then return self:fail("trailer section too large", 431) end
      if line == nil then return nil end
      if not crlf or line:find("\r", 1, true) then
        return self:fail("trailer line not ended by CRLF", 400)
      end
      if line == "" then
        self.state = "done"
      elseif not line:match("^[!#$%%&'*+%-.^_`|~%w]+:") then
        return self:fail("bad trailer line", 400)
      end
    elseif state == "done" then
      local req = self.req
      req.body = #self.parts == 1 and self.parts[1] or table.concat(self.parts)
      self.req, self.parts, self.head_bytes, self.nheaders, self.framing = nil, nil, 0, 0, 0
      self.state = "head"
      return req
    else
      return nil, self.err, self.status
    end
  end
end

function Parser:finish()
  if self.err then return nil, self.err, self.status end
  if self.req or self.state ~= "head" then
    return self:fail("truncated request", 400)
  end
  -- bytes of a request line that never ended (blank lines alone are fine)
  if self.buf:find("[^\r\n]", self.pos) then
    return self:fail("truncated request", 400)
  end
  return nil
end

---------------------------------------------------------------------------
-- Response writer
---------------------------------------------------------------------------
local function check_field(s, what)
  s = tostring(s)
  if s:find("[\r\n%z]") then error("CR, LF or NUL in HTTP " .. what .. ": " .. ("%q"):format(s), 3) end
  return s
end

local function each_header(headers, fn)
  if not headers then return end
  if headers[1] ~= nil then
    for _, kv in ipairs(headers) do fn(kv[1], kv[2]) end
  else
    local keys = {}
    for k in pairs(headers) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do fn(k, headers[k]) end
  end
end

function M.response(status, headers, body, opts)
  opts = opts or {}
  status = math.tointeger(status)
  if not status or status < 100 or status > 999 then
    error("bad HTTP status: " .. tostring(status), 2)
  end
  body = body or ""
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, M.reason(status)) }
  local has_length, has_conn = false, false
  each_header(headers, function(k, v)
    k, v = check_field(k, "header name"), check_field(v, "header value")
    local lk = k:lower()
    if lk == "content-length" or lk == "transfer-encoding" then has_length = true end
    if lk == "connection" then has_conn = true end
    out[#out + 1] = k .. ": " .. v .. "\r\n"
  end)
  local bodyless = status < 200 or status == 204 or status == 304
  if not has_length and not opts.chunked and not bodyless then
    out[#out + 1] = "Content-Length: " .. #body .. "\r\n"
  elseif opts.chunked and not has_length then
    out[#out + 1] = "Transfer-Encoding: chunked\r\n"
  end
  if opts.close and not has_conn then out[#out + 1] = "Connection: close\r\n" end
  out[#out + 1] = "\r\n"
  if not opts.head and not bodyless then out[#out + 1] = body end
  return table.concat(out)
end

function M.chunk(data)
  return ("%x\r\n%s\r\n"):format(#data, data)
end

function M.unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function M.query(qs)
  local t = {}
  if not qs then return t end
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = M.unescape((k:gsub("+", " ")))
    t[k] = M.unescape((v:gsub("+", " ")))
  end
  return t
end

---------------------------------------------------------------------------
-- Handler builder
---------------------------------------------------------------------------
local date_cache, date_at = nil, nil
local function http_date()
  local now = os.time()
  if now ~= date_at then
    date_at, date_cache = now, os.date("!%a, %d %b %Y %H:%M:%S GMT", now)
  end
  return date_cache
end

local function log_error(fmt, ...)
  local ok, echokit = pcall(require, "echokit")
  if ok and type(echokit) == "table" and echokit.log then
    echokit.log("error", fmt, ...)
  else
    io.stderr:write(fmt:format(...), "\n")
  end
end

-- The headers every answer carries: the caller's, then Date and Server.
local function with_defaults(headers, server)
  local list = {}
  local seen = {}
  each_header(headers, function(k, v)
    list[#list + 1] = { k, v }
    seen[tostring(k):lower()] = true
  end)
  if not seen.date then list[#list + 1] = { "Date", http_date() } end
  if server and not seen.server then list[#list + 1] = { "Server", server } end
  return list
end

function M.handler(fn, opts)
  opts = opts or {}
  local server = opts.server
  if server == nil then server = "echokit" end
  local header_timeout = opts.header_timeout
  if header_timeout == nil then header_timeout = M.HEADER_TIMEOUT end
  local note = pipeline.limited_log("info", 10, { timer = opts.timer, log = opts.log })

  local function answer_error(conn, status, err)
    conn.http_done = true
    local body = M.reason(status) .. ": " .. tostring(err) .. "\n"
    conn:write(M.response(status, with_defaults({ { "Content-Type", "text/plain" } }, server),
                          body, { close = true }))
    conn:close()
  end

  local function eof(conn)
    local _, err, status = conn.http_parser:finish()
    if err then answer_error(conn, status, err) else conn.http_done = true conn:close() end
  end

  -- One step of the pipeline: answers the next complete request. Returns
  -- write's result and the answer's size, or nil when no request is complete
  -- (then a head in progress runs the header clock) or the connection is done.
  local function step(conn)
    if conn.http_done then return nil end
    local p = conn.http_parser
    local req, err, status = p:next()
    if not req then
      if err then
        answer_error(conn, status, err)
      elseif conn.http_eof then
        -- the peer has half-closed and every request before it is answered
        eof(conn)
      elseif p:in_head() then
        conn.http_deadline:start()
      end
      return nil
    end
    local ok, st, headers, body = xpcall(fn, debug.traceback, req, conn)
    if not ok then
      log_error("%s %s %s: %s", tostring(conn), req.method, req.target, tostring(st))
      answer_error(conn, 500, "the handler failed")
      return nil
    end
    local close = not req.keep_alive
    if headers then
      each_header(headers, function(k, v)
        if tostring(k):lower() == "connection" and tokens(v).close then close = true end
      end)
    end
    local r = M.response(st, with_defaults(headers, server), body,
                         { close = close, head = req.method == "HEAD" })
    local written = conn:write(r)
    if close then
      conn.http_done = true
      conn:close()
      return nil
    end
    return written, #r
  end

  return {
    on_connect = function(conn)
      conn.http_parser = M.parser{
        max_header = opts.max_header, max_headers = opts.max_headers,
        max_body = opts.max_body, max_framing = opts.max_framing,
        on_headers = function(req)
          conn.http_deadline:stop()
          if req.expect_continue then conn:write("HTTP/1.1 100 Continue\r\n\r\n") end
        end,
      }
      conn.http_pipeline = pipeline.new(conn, step, {
        max_steps = opts.max_answers or M.MAX_ANSWERS, timer = opts.timer,
      })
      conn.http_deadline = pipeline.deadline(header_timeout, function()
        if conn.http_done then return end
        note("%s request head not complete after %gs (header_timeout): 408", tostring(conn),
             header_timeout)
        answer_error(conn, 408, ("request head not complete after %gs"):format(header_timeout))
      end, { timer = opts.timer, now = opts.now })
      -- the first request's head is timed from the connection's start
      conn.http_deadline:start()
    end,
    on_data = function(conn, data)
      conn.http_parser:feed(data)
      conn.http_pipeline:run()
    end,
    on_drain = function(conn)
      conn.http_pipeline:drain()
    end,
    on_eof = function(conn)
      -- requests still waiting to be answered go first: the pipeline's step
      -- finishes once they are
      conn.http_eof = true
      conn.http_pipeline:run()
    end,
    on_close = function(conn)
      conn.http_pipeline:stop()
      conn.http_deadline:cancel()
    end,
  }
end

return M
