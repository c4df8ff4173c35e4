-- The Lua side of fuzz/fuzz_lua.c: one function per target, each given the
-- fuzzer's input and raising when an invariant breaks.
--
-- Input layout: byte 1 picks the parser's options, byte 2 how the rest is cut
-- into chunks (0: one piece; otherwise pieces of 1..N bytes, N and the cuts
-- drawn from a generator seeded by the byte), the rest is the payload.
--
-- Every target checks, besides target-specific invariants:
--   * the parser never raises on input (a raise is what a peer could cause);
--   * the result does not depend on where the input was cut: the values and
--     the error (for HTTP: its status) are the same fed whole and in pieces;
--   * a value re-encoded by the module's own writer parses back to itself;
--   * fuzz.budget bounds the Lua instructions spent, so a loop is a finding.
local http = require "echokit.http"
local ws = require "echokit.websocket"
local resp = require "echokit.resp"
local framing = require "echokit.framing"
local glob = require "echokit.glob"

local M = {}

local function check(cond, fmt, ...)
  if not cond then error(("invariant: " .. fmt):format(...), 2) end
end

-- Deep equality for parser results (strings, numbers, booleans, tables).
local function same(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function show(v)
  if type(v) == "table" then
    local t = {}
    for k, x in pairs(v) do t[#t + 1] = tostring(k) .. "=" .. show(x) end
    table.sort(t)
    return "{" .. table.concat(t, ",") .. "}"
  end
  return type(v) == "string" and ("%q"):format(v) or tostring(v)
end

-- xorshift, as tests/lua/fuzz.lua: the same byte always gives the same cuts.
local function rng(seed)
  local s = (seed * 0x9E3779B97F4A7C15) ~ 0x5851F42D4C957F2D
  if s == 0 then s = 1 end
  return function(a, b)
    s = s ~ (s << 13); s = s ~ (s >> 7); s = s ~ (s << 17)
    return a + ((s >> 1) % (b - a + 1))
  end
end

local SIZES = { 1, 2, 3, 5, 8, 17, 64, 700 }

local function pieces(data, sel)
  if sel == 0 then return { data } end
  local r = rng(sel)
  local most = SIZES[sel % #SIZES + 1]
  local out, i = {}, 1
  while i <= #data do
    local n = r(1, most)
    out[#out + 1] = data:sub(i, i + n - 1)
    i = i + n
  end
  return out
end

-- Splits the input into option byte, cut byte and payload.
local function split(input)
  return input:byte(1) or 0, input:byte(2) or 0, input:sub(3)
end

local function bit(o, n) return (o >> n) & 1 == 1 end

-- Feeds chunks to a parser and drains next() after each; returns the values
-- and the first error (err, code). `each` sees every value as it comes.
local function run(p, chunks, each)
  local out = {}
  for _, c in ipairs(chunks) do
    p:feed(c)
    while true do
      local v, err, code = p:next()
      if err then
        check(v == nil, "a value with an error")
        -- the parser stays failed, with the same error
        local v2, err2, code2 = p:next()
        check(v2 == nil and err2 == err and code2 == code, "error not sticky: %s / %s",
              tostring(err), tostring(err2))
        return out, err, code
      end
      if v == nil then break end
      if each then each(v) end
      out[#out + 1] = v
    end
  end
  return out
end

-- The common differential check: whole against cut, same values and error.
local function differential(name, make, payload, sel, each, compare_err)
  local whole, werr, wcode = run(make(), { payload }, each)
  local cut, cerr, ccode = run(make(), pieces(payload, sel), each)
  check(same(whole, cut), "%s: values differ fed whole and in pieces:\n%s\n%s", name,
        show(whole), show(cut))
  compare_err = compare_err or function(e1, c1, e2, c2) return e1 == e2 and c1 == c2 end
  check(compare_err(werr, wcode, cerr, ccode),
        "%s: errors differ fed whole (%s %s) and in pieces (%s %s)", name, tostring(werr),
        tostring(wcode), tostring(cerr), tostring(ccode))
  return whole, werr, wcode
end

local function budget(n) fuzz.budget(n) end

---------------------------------------------------------------------------
-- echokit.http
---------------------------------------------------------------------------
local HTTP_STATUS = { [400] = true, [413] = true, [417] = true, [431] = true, [501] = true,
                      [505] = true }

function M.http(input)
  budget(2000000 + 3000 * #input)
  local o, sel, payload = split(input)
  local opts = {
    max_header = ({ 8192, 64, 300, 1024 })[o % 4 + 1],
    max_headers = ({ 100, 3 })[(o >> 2) % 2 + 1],
    max_body = ({ 1024 * 1024, 0, 10, 100 })[(o >> 3) % 4 + 1],
    max_framing = ({ 64 * 1024, 20 })[(o >> 5) % 2 + 1],
  }
  local function make()
    local p
    local o2 = {}
    for k, v in pairs(opts) do o2[k] = v end
    o2.on_headers = function(req)
      check(type(req.method) == "string", "on_headers without a request")
      p.heads = (p.heads or 0) + 1
    end
    p = http.parser(o2)
    return p
  end
  local function each(req)
    check(req.method:match("^[!#$%%&'*+%-.^_`|~%w]+$"), "method %q", req.method)
    check(req.version == "1.1" or req.version == "1.0", "version %q", req.version)
    check(type(req.body) == "string" and #req.body <= opts.max_body, "body of %d", #req.body)
    check(not req.target:find("[%z\1-\32\127]"), "target %q", req.target)
    check(req.path .. (req.query and "?" .. req.query or "") == req.target, "path/query")
    for _, kv in ipairs(req.header_list) do
      check(not kv[2]:find("[\r\n%z]"), "header value %q", kv[2])
    end
    local cl = req.headers["content-length"]
    if cl and not req.chunked then
      check(tonumber(cl:match("^%s*(%d+)")) == #req.body, "Content-Length %s, body %d", cl,
            #req.body)
    end
    -- written out again (framed by Content-Length), it parses to the same request
    local t = { ("%s %s HTTP/%s\r\n"):format(req.method, req.target, req.version) }
    for _, kv in ipairs(req.header_list) do
      local lk = kv[1]:lower()
      if lk ~= "content-length" and lk ~= "transfer-encoding" then
        t[#t + 1] = kv[1] .. ": " .. kv[2] .. "\r\n"
      end
    end
    t[#t + 1] = "Content-Length: " .. #req.body .. "\r\n\r\n" .. req.body
    local back, e = run(http.parser{ max_header = 1 << 20, max_headers = 1 << 20,
                                     max_body = 1 << 30 }, { table.concat(t) })
    check(not e and #back == 1, "re-written request does not parse: %s", tostring(e))
    for _, k in ipairs({ "method", "target", "path", "query", "version", "body" }) do
      check(back[1][k] == req[k], "re-written request: %s %s, was %s", k, show(back[1][k]),
            show(req[k]))
    end
    for k, v in pairs(req.headers) do
      if k ~= "content-length" and k ~= "transfer-encoding" then
        check(back[1].headers[k] == v, "re-written request: header %s", k)
      end
    end
    -- the WebSocket handshake reads these same headers from the peer
    local answer, status, why = ws.handshake(req, { protocols = { "chat", "x" } })
    if answer then
      check(answer:sub(1, 13) == "HTTP/1.1 101 " and answer:sub(-4) == "\r\n\r\n", "101 answer")
    else
      check(type(status) == "number" and type(why) == "string", "handshake refusal")
    end
  end
  -- Errors must agree on whether there is one, not on which: a head that is
  -- both too long and malformed is a 431 when its line end is in the buffer
  -- and a 400 when the early refusal of a line that cannot be a request
  -- (before its end has come) sees the bad byte first. Both are right.
  local reqs, err, status = differential("http", make, payload, sel, each,
    function(e1, _, e2) return (e1 == nil) == (e2 == nil) end)
  if err then check(HTTP_STATUS[status], "status %s for %s", tostring(status), err) end

  -- finish() never raises and, after the last complete request, is consistent
  local p = make()
  p:feed(payload)
  local n = 0
  while true do
    local r, e = p:next()
    if not r then break end
    n = n + 1
    if e then break end
  end
  check(n == #reqs, "requests")
  local _, ferr, fst = p:finish()
  if ferr then check(fst == 400 or HTTP_STATUS[fst], "finish status %s", tostring(fst)) end
  check(p:pending() >= 0, "pending")
end

---------------------------------------------------------------------------
-- echokit.websocket
---------------------------------------------------------------------------
local WS_CODES = { [1002] = true, [1007] = true, [1009] = true }
local KEY = "\55\250\33\61"

function M.websocket(input)
  budget(2000000 + 3000 * #input)
  local o, sel, payload = split(input)
  local opts = { masked = not bit(o, 0),
                 max_message = ({ nil, 0, 1, 125, 126, 1000, 64 * 64, 65536 })[(o >> 1) % 8 + 1] }
  local function make() return ws.parser(opts) end
  local limit = opts.max_message or ws.MAX_MESSAGE
  local function each(ev)
    if ev.type == "text" or ev.type == "binary" then
      check(type(ev.data) == "string" and #ev.data <= limit, "message of %d > %d", #ev.data, limit)
      if ev.type == "text" then check(utf8.len(ev.data), "text not UTF-8") end
      -- the writer's frame of it parses back to it
      local frame = ws.frame(ev.type == "text" and 1 or 2, ev.data, true, opts.masked and KEY or nil)
      local back, e = run(make(), { frame })
      check(not e and same(back, { ev }), "re-encoded %s message does not parse back: %s",
            ev.type, tostring(e))
    elseif ev.type == "ping" or ev.type == "pong" then
      check(#ev.data <= 125, "control payload %d", #ev.data)
    elseif ev.type == "close" then
      check(ev.code == nil or (ev.code >= 1000 and ev.code <= 4999), "close code %s",
            tostring(ev.code))
      check(utf8.len(ev.reason), "close reason")
      -- the handler echoes the code and reason: that must not raise
      ws.close_frame(ev.code, ev.code and ev.reason or nil)
    else
      check(false, "event type %s", tostring(ev.type))
    end
  end
  local _, err, code = differential("websocket", make, payload, sel, each)
  if err then
    check(WS_CODES[code], "close code %s for %s", tostring(code), err)
    -- the handler sends this close frame back with the error as its reason
    ws.close_frame(code, err)
  end
end

---------------------------------------------------------------------------
-- echokit.resp
---------------------------------------------------------------------------
function M.resp(input)
  budget(2000000 + 3000 * #input)
  local o, sel, payload = split(input)
  local opts = {
    values = bit(o, 0),
    max_bulk = ({ nil, 0, 5, 100 })[(o >> 1) % 4 + 1],
    max_array = ({ nil, 0, 3 })[(o >> 3) % 3 + 1],
    max_inline = ({ nil, 1, 8, 64 })[(o >> 5) % 4 + 1],
    max_depth = ({ nil, 2 })[(o >> 7) % 2 + 1],
    max_command = ({ nil, 200 })[(o >> 4) % 2 + 1],
  }
  local function make() return resp.parser(opts) end
  -- the encoder writes an error's lone CR or LF as a space (a RESP line ends at CR LF)
  local function norm(v)
    if type(v) ~= "table" or v == resp.null then return v end
    if v.err then return { err = v.err:gsub("[\r\n]+", " ") } end
    local t = { n = v.n }
    for i = 1, v.n do t[i] = norm(v[i]) end
    return t
  end
  local function each(v)
    if opts.values then
      -- a value re-encoded parses back to itself (simple strings come back as bulk
      -- strings: both are Lua strings)
      local back, e = run(resp.parser{ values = true }, { resp.encode(v) })
      check(not e and #back == 1 and same(norm(back[1]), norm(v)),
            "re-encoded value does not parse back: %s %s", tostring(e), show(v))
      return
    end
    check(type(v) == "table" and v.n == #v and v.n > 0, "command shape %s", show(v))
    for i = 1, v.n do check(type(v[i]) == "string", "command word %d", i) end
    -- a command re-encoded as a client sends it parses back to itself (limits
    -- left at their defaults: the encoding may be longer than an inline form)
    local back, e = run(resp.parser(), { resp.command(table.unpack(v, 1, v.n)) })
    check(not e and same(back, { v }), "re-encoded command does not parse back: %s", tostring(e))
  end
  local _, err = differential("resp", make, payload, sel, each)
  if err then check(type(err) == "string" and err:find("^Protocol error: "), "error %q", err) end
end

---------------------------------------------------------------------------
-- echokit.framing
---------------------------------------------------------------------------
local DELIMS = { "\n", "\r\n", "|", "abc", "\0\0", "aa" }

function M.framing(input)
  budget(2000000 + 3000 * #input)
  local o, sel, payload = split(input)
  if bit(o, 0) then
    local delim = DELIMS[(o >> 1) % #DELIMS + 1]
    local max = ({ 65536, 0, 1, 5, 64 })[(o >> 4) % 5 + 1]
    local function make() return framing.lines{ delimiter = delim, max = max } end
    local function each(line)
      check(#line <= max, "line of %d > %d", #line, max)
      check(not line:find(delim, 1, true), "line holds the delimiter")
    end
    local lines, err = differential("lines", make, payload, sel, each)
    if err then check(err == "line too long", "error %q", err) end
    -- without an error, the lines and the rest are the input again
    if not err then
      local p = make()
      local got = run(p, pieces(payload, sel))
      local rest = p:rest()
      if delim == "\n" then return end   -- a CR before LF is dropped: not invertible
      check(table.concat(got, delim) .. (#got > 0 and delim or "") .. rest == payload,
            "lines and rest do not add up to the input")
      check(#lines == #got, "line count")
    end
  else
    local size = ({ 1, 2, 4, 8 })[(o >> 1) % 4 + 1]
    local opts = { size = size, little = bit(o, 3), inclusive = bit(o, 4),
                   max = ({ 16 * 1024 * 1024, 0, 3, 100 })[(o >> 5) % 4 + 1] }
    local function make() return framing.length_prefixed(opts) end
    local function each(frame)
      check(#frame <= opts.max, "frame of %d > %d", #frame, opts.max)
      local back, e = run(make(), { make():encode(frame) })
      check(not e and same(back, { frame }), "re-encoded frame does not parse back")
    end
    local _, err = differential("length_prefixed", make, payload, sel, each)
    if err then
      check(err == "frame too large" or err == "bad frame length", "error %q", err)
    end
  end
end

---------------------------------------------------------------------------
-- echokit.glob
---------------------------------------------------------------------------
function M.glob(input)
  local o, _, payload = split(input)
  -- byte 1: the pattern's length, taken from the front of the payload
  local pat, subject = payload:sub(1, o), payload:sub(o + 1)
  budget(2000000 + 40 * (#pat + 1) * (#subject + 1))
  local match, err = glob.compile(pat)
  check(match, "compile failed: %s", tostring(err))
  local got = match(subject)
  check(type(got) == "boolean", "match returned %s", type(got))
  local want = fuzz.redis_match(pat, subject)
  check(got == want, "pattern %q subject %q: glob %s, Redis's stringmatchlen %s", pat, subject,
        tostring(got), tostring(want))
  check(glob.match(pat, subject) == got, "glob.match and compile differ")
  local _, e = glob.compile(pat, #pat - 1)
  check(#pat == 0 or e == "pattern too long", "max_len not enforced")
end

---------------------------------------------------------------------------
-- The handler builders (echokit.http.handler, echokit.websocket.handler)
-- against a stand-in connection: they run on peer input too, and must
-- not raise, and must answer the same bytes
-- whether the input comes whole or in pieces (and with or without the
-- connection above high water, which defers answers to on_drain).
---------------------------------------------------------------------------
-- echokit.log for http.handler's error path, quietly (the real module is
-- the runtime's); without echokit.timer a WebSocket close is immediate.
package.preload["echokit"] = function() return { log = function() end } end

local function fake_conn(full)
  local c = { out = {}, closed = false, paused = false }
  function c:write(data)
    check(type(data) == "string", "write of a %s", type(data))
    if self.closed then return nil, "closed" end
    self.out[#self.out + 1] = data
    if full then return false end
    return true
  end
  function c:close() self.closed = true end
  function c:pause() self.paused = true end
  function c:resume() self.paused = false end
  return c
end

local function drive(h, chunks, full)
  local c = fake_conn(full)
  if h.on_connect then h.on_connect(c) end
  for _, chunk in ipairs(chunks) do
    if c.closed then break end
    h.on_data(c, chunk)
    -- the runtime reads nothing while paused; the output drains meanwhile
    while full and c.paused and not c.closed do h.on_drain(c) end
  end
  if not c.closed and h.on_eof then h.on_eof(c) end
  if h.on_close then h.on_close(c) end
  -- the Date header is the one thing that may differ from run to run
  local out = table.concat(c.out):gsub("\r\nDate: [^\r]*", "")
  -- as in M.http, which 4xx a malformed request gets may depend on the cuts;
  -- the error answer is the last thing written before the close
  return (out:gsub("HTTP/1%.1 4%d%d [^\r]*\r\nContent%-Type: text/plain\r\n.*$", "HTTP/1.1 4xx"))
end

function M.handlers(input)
  budget(4000000 + 6000 * #input)
  local o, sel, payload = split(input)
  local full = bit(o, 1)
  local h
  if bit(o, 0) then
    h = ws.handler({
      on_message = function(conn, data, kind) conn.ws:send(data, kind) end,
      on_open = function(conn) conn.ws:ping("hi") end,
    }, { max_message = ({ nil, 10, 1000 })[(o >> 2) % 3 + 1], protocols = { "chat" } })
  else
    h = http.handler(function(req)
      if req.path == "/fail" then error("handler failed") end
      return 200, { { "Content-Type", "text/plain" } }, req.method .. " " .. req.body
    end, { max_header = ({ 8192, 200 })[(o >> 2) % 2 + 1], max_body = ({ 1 << 20, 10 })[(o >> 3) % 2 + 1] })
  end
  local whole = drive(h, { payload }, full)
  local cut = drive(h, pieces(payload, sel), full)
  check(whole == cut, "answers differ fed whole and in pieces:\n%s\n%s", show(whole), show(cut))
end

return M
