-- echokit.websocket: RFC 6455 for servers: the opening handshake, an
-- incremental frame parser that reassembles messages, a frame writer, and a
-- handler builder that does the upgrade, ping/pong and the close handshake.
--
-- The parser and writer are pure Lua. Unmasking uses echokit.codec.mask (C)
-- when it is there (inside echokit) and a Lua loop otherwise (busted); the
-- handshake needs echokit.codec's SHA-1 and base64.
--
--   local ws = require "echokit.websocket"
--
--   ws.handshake(req [, opts]) -> response bytes (101)        -- req from echokit.http
--                              -> nil, status, err, headers   -- refuse with this answer
--     opts.protocols = { "chat", ... }: the first one the client offers is chosen
--   ws.accept_key(key) -> the Sec-WebSocket-Accept value for a Sec-WebSocket-Key
--
--   local p = ws.parser(opts)   -- frames from one peer
--     opts.max_message  bytes of one message, all fragments (default 16 MiB) -> 1009;
--                       a message may also have at most max(64, max_message / 64)
--                       fragments, so a flood of tiny or empty ones is bounded too
--     opts.masked       true (default): frames must be masked (from a client);
--                       false: must not be (from a server)
--   p:feed(data)
--   p:next() -> event | nil | nil, err, close_code
--     events: { type = "text" | "binary", data = message }   (fragments joined)
--             { type = "ping" | "pong", data = payload }
--             { type = "close", code = 1000 | nil, reason = "" }
--     errors carry the close code to send: 1002 protocol error, 1007 invalid
--     UTF-8, 1009 too big. Control frames may come between fragments.
--
--   ws.frame(opcode, payload [, fin [, mask_key]]) -> bytes of one frame
--   ws.text(s), ws.binary(s), ws.ping(s), ws.pong(s) -> a whole unmasked frame
--   ws.close_frame([code [, reason]]) -> a close frame; the reason is cut to 123
--     bytes at a UTF-8 character boundary; raises on a code that must not be
--     sent (outside 1000-4999, or 1004, 1005, 1006, 1015)
--   ws.OP = { continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10 }
--
--   ws.handler(callbacks [, opts]) -> a handler table
--     callbacks.on_open(conn, req)                after the 101
--     callbacks.on_message(conn, data, type)      type "text" or "binary"
--     callbacks.on_close(conn, code, reason)      the WebSocket is over (code nil
--                                                  when the TCP connection just ended)
--     callbacks.on_drain(conn)                    output fell below high water
--     conn.ws:send(data [, "binary"])  -> conn:write's result (false: above high
--                                          water; wait for callbacks.on_drain)
--     conn.ws:ping(data), conn.ws:close([code [, reason]])
--     opts: max_message, protocols, max_header (the handshake request), close_timeout
--     (seconds to wait for the peer's close reply, default 5), header_timeout
--     (seconds from the connection's start to the end of the handshake
--     request's head, default 30, 0 = none: past it 408 and a close, logged at
--     info level at most once per 10 s), max_frames (frames read in one
--     callback, default 64). Pings are answered, a close is echoed and the
--     connection closed; a protocol error sends its close code and closes; a
--     plain HTTP request is answered 426.
--     Frames are read through echokit.pipeline: once a write of the session
--     returns false no further frame is read (reading paused) until on_drain,
--     and after max_frames frames or 1 MiB of answers in one callback the rest
--     waits for the next turn of the loop.
local http = require "echokit.http"
local framing = require "echokit.framing"
local pipeline = require "echokit.pipeline"

local M = {}

M.HEADER_TIMEOUT = 30
M.MAX_FRAMES = 64

M.GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
M.MAX_MESSAGE = 16 * 1024 * 1024
M.OP = { continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10 }

local OPNAME = { [1] = "text", [2] = "binary", [8] = "close", [9] = "ping", [10] = "pong" }

local function codec()
  local ok, c = pcall(require, "echokit.codec")
  return ok and c or nil
end

-- XOR with the 4-byte key: in C when echokit.codec is loaded.
local lua_mask = function(key, data)
  local k = { key:byte(1, 4) }
  local out = {}
  for i = 1, #data, 4096 do
    local b = { data:byte(i, math.min(#data, i + 4095)) }
    for j = 1, #b do b[j] = b[j] ~ k[(i + j - 2) % 4 + 1] end
    out[#out + 1] = string.char(table.unpack(b))
  end
  return table.concat(out)
end
local C = codec()
M.mask = C and C.mask or lua_mask

---------------------------------------------------------------------------
-- Handshake
---------------------------------------------------------------------------
function M.accept_key(key)
  local c = assert(codec(), "echokit.codec is needed for the handshake")
  return c.base64(c.sha1(key .. M.GUID))
end

local function has_token(value, token)
  if not value then return false end
  for tok in value:gmatch("[^,%s]+") do
    if tok:lower() == token then return true end
  end
  return false
end

function M.handshake(req, opts)
  opts = opts or {}
  local h = req.headers
  if not has_token(h.upgrade, "websocket") then
    return nil, 426, "WebSocket upgrade required", { { "Upgrade", "websocket" } }
  end
  if req.method ~= "GET" then return nil, 405, "WebSocket handshake must be GET", { { "Allow", "GET" } } end
  if req.version ~= "1.1" then return nil, 400, "WebSocket needs HTTP/1.1" end
  if not has_token(h.connection, "upgrade") then
    return nil, 400, "Connection header lacks \"Upgrade\""
  end
  if h["sec-websocket-version"] ~= "13" then
    return nil, 426, "unsupported WebSocket version", { { "Sec-WebSocket-Version", "13" } }
  end
  local key = h["sec-websocket-key"]
  local c = assert(codec(), "echokit.codec is needed for the handshake")
  local raw = key and c.unbase64(key)
  if not raw or #raw ~= 16 then return nil, 400, "bad Sec-WebSocket-Key" end
  local out = { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
                "Sec-WebSocket-Accept: ", M.accept_key(key), "\r\n" }
  if opts.protocols and h["sec-websocket-protocol"] then
    local offered = {}
    for p in h["sec-websocket-protocol"]:gmatch("[^,%s]+") do offered[p] = true end
    for _, p in ipairs(opts.protocols) do
      if offered[p] then
        out[#out + 1] = "Sec-WebSocket-Protocol: " .. p .. "\r\n"
        break
      end
    end
  end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

---------------------------------------------------------------------------
-- Frame parser
---------------------------------------------------------------------------
local Buffer = framing.Buffer
local Parser = setmetatable({}, { __index = Buffer })
Parser.__index = Parser

function M.parser(opts)
  opts = opts or {}
  local masked = opts.masked
  if masked == nil then masked = true end
  local p = framing.buffer(Parser, {
    max_message = opts.max_message or M.MAX_MESSAGE,
    masked = masked,
    max_fragments = math.max(64, (opts.max_message or M.MAX_MESSAGE) // 64),
    -- a fragmented message in progress
    msg_type = nil, msg_parts = nil, msg_len = 0, msg_frags = 0,
    code = nil,
  })
  p.want = 2
  return p
end

function Parser:fail(err, code)
  self.code, self.msg_parts = code, nil
  Buffer.fail(self, err)
  return nil, err, code
end

-- Close codes a peer may send (RFC 6455 7.4, IANA registry).
local function valid_close_code(c)
  return (c >= 1000 and c <= 1003) or (c >= 1007 and c <= 1014) or (c >= 3000 and c <= 4999)
end

function Parser:next()
  if self.err then return nil, self.err, self.code end
  while true do
    if not self:fill() then return nil end
    local buf, pos = self.buf, self.pos
    local b1, b2 = buf:byte(pos, pos + 1)
    local fin, rsv, op = b1 & 0x80 ~= 0, b1 & 0x70, b1 & 0x0F
    local is_masked, len = b2 & 0x80 ~= 0, b2 & 0x7F
    local hlen = 2
    if rsv ~= 0 then return self:fail("reserved bits set without an extension", 1002) end
    if op ~= 0 and not OPNAME[op] then return self:fail("unknown opcode " .. op, 1002) end
    if is_masked ~= self.masked then
      return self:fail(self.masked and "unmasked frame from a client" or "masked frame from a server", 1002)
    end
    local control = op >= 8
    if control and (not fin or len > 125) then
      return self:fail("fragmented or oversized control frame", 1002)
    end
    if len == 126 then
      hlen = 4
    elseif len == 127 then
      hlen = 10
    end
    if is_masked then hlen = hlen + 4 end
    if #buf - pos + 1 < hlen then self.want = hlen; goto continue end
    if len == 126 then
      len = buf:byte(pos + 2) << 8 | buf:byte(pos + 3)
    elseif len == 127 then
      local hi = buf:byte(pos + 2)
      if hi & 0x80 ~= 0 then return self:fail("64-bit length with the top bit set", 1002) end
      len = string.unpack(">I8", buf, pos + 2)
    end
    if not control then
      if op == 0 and not self.msg_parts then
        return self:fail("continuation frame without a message to continue", 1002)
      end
      if op ~= 0 and self.msg_parts then
        return self:fail("new message inside a fragmented one", 1002)
      end
      if self.msg_len + len > self.max_message then
        return self:fail("message too big", 1009)
      end
      if op == 0 and self.msg_frags >= self.max_fragments then
        return self:fail("too many fragments", 1009)
      end
    end
    if #buf - pos + 1 < hlen + len then self.want = hlen + len; goto continue end
    do
      local payload = buf:sub(pos + hlen, pos + hlen + len - 1)
      if is_masked then payload = M.mask(buf:sub(pos + hlen - 4, pos + hlen - 1), payload) end
      self.pos = pos + hlen + len
      self.want = 2
      if control then
        if op == 8 then
          if len == 1 then return self:fail("close frame with a 1-byte payload", 1002) end
          local code, reason = nil, ""
          if len >= 2 then
            code = payload:byte(1) << 8 | payload:byte(2)
            reason = payload:sub(3)
            if not valid_close_code(code) then return self:fail("invalid close code " .. code, 1002) end
            if not utf8.len(reason) then return self:fail("close reason is not UTF-8", 1007) end
          end
          self.closed = true
          return { type = "close", code = code, reason = reason }
        end
        return { type = OPNAME[op], data = payload }
      end
      if op ~= 0 then
        self.msg_type, self.msg_parts, self.msg_len, self.msg_frags = OPNAME[op], {}, 0, 0
      end
      local parts = self.msg_parts
      if len > 0 then parts[#parts + 1] = payload end
      self.msg_len = self.msg_len + len
      self.msg_frags = self.msg_frags + 1
      if fin then
        local data = #parts == 1 and parts[1] or table.concat(parts)
        local kind = self.msg_type
        self.msg_type, self.msg_parts, self.msg_len, self.msg_frags = nil, nil, 0, 0
        if kind == "text" and not utf8.len(data) then
          return self:fail("text message is not UTF-8", 1007)
        end
        return { type = kind, data = data }
      end
    end
    ::continue::
    if #self.buf - self.pos + 1 + self.avail < self.want then return nil end
  end
end

---------------------------------------------------------------------------
-- Writer
---------------------------------------------------------------------------
function M.frame(op, payload, fin, mask_key)
  payload = payload or ""
  if fin == nil then fin = true end
  local n = #payload
  local b1 = (fin and 0x80 or 0) | op
  local mbit = mask_key and 0x80 or 0
  local head
  if n < 126 then head = string.pack("BB", b1, mbit | n)
  elseif n < 65536 then head = string.pack(">BBI2", b1, mbit | 126, n)
  else head = string.pack(">BBI8", b1, mbit | 127, n) end
  if mask_key then
    return head .. mask_key .. M.mask(mask_key, payload)
  end
  return head .. payload
end

function M.text(s) return M.frame(1, s) end
function M.binary(s) return M.frame(2, s) end
function M.ping(s) return M.frame(9, s or "") end
function M.pong(s) return M.frame(10, s or "") end

-- The first n bytes of s, less the start of a UTF-8 sequence the cut would split.
local function utf8_prefix(s, n)
  if #s <= n then return s end
  local i = n + 1            -- the first byte left out
  while i > 1 and s:byte(i) & 0xC0 == 0x80 do i = i - 1 end
  return s:sub(1, i - 1)
end

function M.close_frame(code, reason)
  if not code then return M.frame(8, "") end
  -- 1004 is reserved; 1005, 1006 and 1015 stand for "none came" and must not be sent
  if math.type(code) ~= "integer" or code < 1000 or code > 4999 or code == 1004
     or code == 1005 or code == 1006 or code == 1015 then
    error("close code " .. tostring(code) .. " must not be sent", 2)
  end
  return M.frame(8, string.pack(">I2", code) .. utf8_prefix(reason or "", 123))
end

---------------------------------------------------------------------------
-- Handler builder
---------------------------------------------------------------------------
local Session = {}
Session.__index = Session

-- conn:write, remembering a false (above high water): the handler then reads
-- no further frames until on_drain. The bytes count against the pipeline's
-- bound per callback.
local function write(s, bytes)
  local ok, err = s.conn:write(bytes)
  if ok == false then s.full = true end
  s.written = s.written + #bytes
  return ok, err
end

function Session:send(data, kind)
  if self.closing then return nil, "closed" end
  return write(self, kind == "binary" and M.binary(data) or M.text(data))
end

function Session:ping(data)
  if self.closing then return nil, "closed" end
  return write(self, M.ping(data))
end

-- Starts the close handshake: our close frame now, the TCP close when the
-- peer's close arrives or after close_timeout.
function Session:close(code, reason)
  if self.closing then return end
  self.closing = true
  self.conn:write(M.close_frame(code or 1000, reason))
  local ok, echokit = pcall(require, "echokit")
  if ok and echokit.timer then
    local conn = self.conn
    self.timer = echokit.timer(self.close_timeout, function() conn:close() end)
  else
    self.conn:close()
  end
end

function M.handler(cb, opts)
  opts = opts or {}
  local max_message = opts.max_message or M.MAX_MESSAGE
  local header_timeout = opts.header_timeout
  if header_timeout == nil then header_timeout = M.HEADER_TIMEOUT end
  local note = pipeline.limited_log("info", 10, { timer = opts.timer, log = opts.log })

  local function finish(conn, code, reason)
    local s = conn.ws
    if s and not s.finished then
      s.finished = true
      if s.timer then s.timer:cancel() end
      if cb.on_close then cb.on_close(conn, code, reason) end
    end
  end

  -- One step of the pipeline: reads one frame and acts on it. Returns false
  -- when a write of the session returned false (no further frame is read
  -- until on_drain; while our close is out frames are still read, to find
  -- the peer's), nil when no whole frame is buffered or the session is over.
  local function step(conn)
    local s = conn.ws
    if s.finished then return nil end
    if s.full and not s.closing then return false end
    local before = s.written
    local ev, err, code = s.parser:next()
    if not ev then
      if err then
        if not s.closing then
          s.closing = true
          conn:write(M.close_frame(code, err))
        end
        finish(conn, code, err)
        conn:close()
      end
      return nil
    end
    if ev.type == "text" or ev.type == "binary" then
      if not s.closing and cb.on_message then cb.on_message(conn, ev.data, ev.type) end
    elseif ev.type == "ping" then
      if not s.closing then write(s, M.pong(ev.data)) end
    elseif ev.type == "close" then
      if not s.closing then
        s.closing = true
        -- echo the code (none if none came), as RFC 6455 5.5.1 suggests
        conn:write(M.close_frame(ev.code, ev.code and ev.reason or nil))
      end
      finish(conn, ev.code or 1005, ev.reason)
      conn:close()
      return nil
    end
    return not (s.full and not s.closing), s.written - before
  end

  local function refuse(conn, status, headers, text)
    headers = headers or {}
    headers[#headers + 1] = { "Content-Type", "text/plain" }
    conn:write(http.response(status, headers, text .. "\n", { close = true }))
    conn:close()
  end

  return {
    on_connect = function(conn)
      conn.ws_http = http.parser{
        max_header = opts.max_header, max_body = 0,
        on_headers = function() conn.ws_deadline:stop() end,
      }
      conn.ws_deadline = pipeline.deadline(header_timeout, function()
        if not conn.ws_http then return end
        note("%s handshake request not complete after %gs (header_timeout): 408",
             tostring(conn), header_timeout)
        conn.ws_http = nil
        refuse(conn, 408, nil, ("Request Timeout: handshake request not complete after %gs")
                               :format(header_timeout))
      end, { timer = opts.timer, now = opts.now })
      conn.ws_deadline:start()
    end,
    on_data = function(conn, data)
      if conn.ws then
        conn.ws.parser:feed(data)
        conn.ws_pipeline:run()
        return
      end
      local hp = conn.ws_http
      if not hp then return end     -- refused; closing
      hp:feed(data)
      local req, err, status = hp:next()
      if not req then
        if err then
          conn.ws_http = nil
          refuse(conn, status, nil, http.reason(status) .. ": " .. err)
        end
        return
      end
      local answer, st, why, headers = M.handshake(req, opts)
      if not answer then
        conn.ws_http = nil
        refuse(conn, st, headers, why)
        return
      end
      conn:write(answer)
      local rest = hp:leftover()
      conn.ws_http = nil
      conn.ws = setmetatable({ conn = conn, parser = M.parser{ max_message = max_message },
                               close_timeout = opts.close_timeout or 5, written = 0 }, Session)
      conn.ws_pipeline = pipeline.new(conn, step, {
        max_steps = opts.max_frames or M.MAX_FRAMES, timer = opts.timer,
      })
      if cb.on_open then cb.on_open(conn, req) end
      if #rest > 0 and conn.ws then
        conn.ws.parser:feed(rest)
        conn.ws_pipeline:run()
      end
    end,
    on_drain = function(conn)
      local s = conn.ws
      if s then
        s.full = false
        conn.ws_pipeline:drain()
      end
      if cb.on_drain then cb.on_drain(conn) end
    end,
    on_eof = function(conn)
      if conn.ws_http then
        local _, err, status = conn.ws_http:finish()
        if err then
          conn:write(http.response(status, {}, http.reason(status) .. ": " .. err .. "\n",
                                   { close = true }))
        end
      end
      conn:close()
    end,
    on_close = function(conn)
      conn.ws_deadline:cancel()
      if conn.ws_pipeline then conn.ws_pipeline:stop() end
      finish(conn, nil, nil)
    end,
  }
end

return M
