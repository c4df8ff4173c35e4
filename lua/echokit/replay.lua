-- echokit.replay: the logic of replaying recorded TCP conversations (the
-- tables echokit.capture returns), shared by the mock server (-H replay) and
-- the client tool (echokit replay --client). Pure Lua: the caller does the
-- I/O, this module decides what to match, how much to consume, what to send
-- and how to report a difference.
local M = {}

-- "HOST:PORT", "[V6]:PORT" or "PORT" -> port, host (nil: any); nil, err.
function M.parse_addr(spec)
  local host, port = spec:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = spec:match("^([^:]+):(%d+)$") end
  if not host then port = spec:match("^:?(%d+)$") end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 then
    return nil, "not HOST:PORT or PORT: " .. spec
  end
  return port, host
end

local function endpoint_str(ep)
  if ep.host:find(":", 1, true) then return "[" .. ep.host .. "]:" .. ep.port end
  return ep.host .. ":" .. ep.port
end
M.endpoint_str = endpoint_str

-- The conversations whose server is spec ("HOST:PORT" or "PORT"; nil: the
-- first conversation's server port, any host). Returns list, description,
-- or nil, err.
function M.select(convs, spec)
  local host, port
  if spec then
    port, host = M.parse_addr(spec)
    if not port then return nil, "server=" .. host end
  else
    port = convs[1].server.port
  end
  local list = {}
  for _, c in ipairs(convs) do
    if c.server.port == port and (not host or c.server.host == host) then list[#list + 1] = c end
  end
  local what = (host and (host:find(":", 1, true) and "[" .. host .. "]" or host) or "*") ..
    ":" .. port
  if #list == 0 then
    local seen, names = {}, {}
    for _, c in ipairs(convs) do
      local s = endpoint_str(c.server)
      if not seen[s] then seen[s] = true; names[#names + 1] = s end
      if #names == 8 then names[#names + 1] = "..."; break end
    end
    return nil, string.format("no conversation with server %s (servers in the capture: %s)",
      what, table.concat(names, ", "))
  end
  return list, what
end

local MODES = { exact = true, prefix = true, lines = true, any = true }

-- match= -> mode or nil, err
function M.check_mode(mode)
  mode = mode or "exact"
  if not MODES[mode] then return nil, "match must be exact, prefix, lines or any (got " .. mode .. ")" end
  return mode
end

-- timing= -> factor (0: no delays, 1: as recorded, N: N times faster) or nil, err
function M.check_timing(timing)
  timing = timing or "none"
  if timing == "none" then return 0 end
  if timing == "real" then return 1 end
  local n = tonumber(timing:match("^x(.+)$") or "")
  if not n or n <= 0 or n ~= n or n == math.huge then
    return nil, "timing must be none, real or xN (N > 0, times faster; got " .. timing .. ")"
  end
  return n
end

-- Seconds to wait before sending message i (recorded gap to the message
-- before it, divided by the speed-up; 0 when timing is none).
function M.delay(msgs, i, speed)
  if speed == 0 or i < 2 then return 0 end
  local gap = msgs[i].t - msgs[i - 1].t
  if gap <= 0 then return 0 end
  return gap / speed
end

-- One recorded client message against the live input buf (unread from
-- pos). Returns
--   "more"                     too few bytes yet to decide,
--   "ok", nextpos              matched; the message ends before nextpos,
--   "mismatch", got, nextpos   differs: got is what has arrived (to show),
--                              nextpos where the next message would start.
-- Modes: exact   the next #expected bytes, byte for byte;
--        prefix  the next #expected bytes, only the first line of the
--                recorded message (through its first LF) compared;
--        lines   as many lines as recorded, each compared without its line
--                ending (LF or CR LF alike); a last line without LF
--                compares the bytes up to the recorded one's length;
--        any     whatever has arrived, compared to nothing.
-- eof says the peer will send nothing more: what is there is all there is.
function M.consume(mode, expected, buf, pos, eof)
  local avail = #buf - pos + 1
  if mode == "any" then
    if avail <= 0 then return eof and "mismatch" or "more", "", pos end
    return "ok", #buf + 1
  end
  if mode == "lines" then
    local p, e = pos, 1
    while e <= #expected do
      local nl = expected:find("\n", e, true)
      local want = expected:sub(e, (nl or #expected + 1) - 1):gsub("\r$", "")
      local got, nextp
      if nl then
        local lnl = buf:find("\n", p, true)
        if not lnl then
          -- no full line yet: decide early only when what came already differs
          local part = buf:sub(p):gsub("\r$", "")
          if eof or part ~= want:sub(1, #part) then return "mismatch", buf:sub(pos), #buf + 1 end
          return "more"
        end
        got, nextp = buf:sub(p, lnl - 1):gsub("\r$", ""), lnl + 1
      else
        local n = #expected - e + 1
        if #buf - p + 1 < n then
          local part = buf:sub(p)
          if eof or part ~= want:sub(1, #part) then return "mismatch", buf:sub(pos), #buf + 1 end
          return "more"
        end
        got, nextp = buf:sub(p, p + n - 1), p + n
      end
      if got ~= want then return "mismatch", buf:sub(pos, nextp - 1), nextp end
      p, e = nextp, (nl or #expected) + 1
    end
    return "ok", p
  end
  local n = #expected
  local cmp = n
  if mode == "prefix" then cmp = expected:find("\n", 1, true) or n end
  local have = math.min(avail, cmp)
  if buf:sub(pos, pos + have - 1) ~= expected:sub(1, have) then
    -- got: all that has arrived, to show; the message is taken as n bytes
    return "mismatch", buf:sub(pos), pos + math.min(avail, n)
  end
  if avail < n then
    if eof then return "mismatch", buf:sub(pos), #buf + 1 end
    return "more"
  end
  return "ok", pos + n
end

-- Reads (receive(): the next chunk, nil at the end) until consume() may
-- decide on the recorded client message expected, rest being the unread
-- input it last said "more" about. Returns the input joined (rest and what
-- came) and whether it ended. The cost is linear in the bytes read however
-- finely the peer cuts them: each chunk is checked on its own against the
-- bytes it must agree with (exact, prefix; lines: the line it falls in) and
-- the chunks are joined once, so a client sending a long message a byte at a
-- time cannot make every byte cost the whole message. Stops at the first
-- chunk that completes the message, differs, or (lines) ends a line.
function M.gather(mode, expected, rest, receive)
  local parts, have, eof = { rest }, #rest, false
  -- want: what the bytes after rest's first `base` ones must agree with
  local want, base = expected, 0
  local stop_at = #expected -- enough bytes to decide in any case
  if mode == "prefix" then
    want = expected:sub(1, expected:find("\n", 1, true) or #expected)
  elseif mode == "lines" then
    local e, line_start = 1, 1
    for nl in rest:gmatch("()\n") do -- lines already in: one recorded line each
      line_start = nl + 1
      e = (expected:find("\n", e, true) or #expected) + 1
    end
    local nl = expected:find("\n", e, true)
    want = expected:sub(e, (nl or #expected + 1) - 1):gsub("\r$", "")
    base = line_start - 1
    stop_at = base + #want
    -- a partial line that is not plainly a prefix (a CR in it): decide now
    if rest:sub(line_start) ~= want:sub(1, #rest - base) then stop_at = 0 end
  end
  while true do
    local d = receive()
    if not d then eof = true; break end
    parts[#parts + 1] = d
    local lo = have + 1 - base
    have = have + #d
    if mode == "any" or have >= stop_at then break end
    if mode == "lines" and d:find("[\r\n]") then break end
    local hi = math.min(have - base, #want)
    if lo <= hi and d:sub(1, hi - lo + 1) ~= want:sub(lo, hi) then break end
  end
  return table.concat(parts), eof
end

-- How many leading bytes a and b share.
local function common(a, b)
  local n = math.min(#a, #b)
  if a:sub(1, n) == b:sub(1, n) then return n end
  local lo, hi = 0, n -- a:sub(1, lo) == b:sub(1, lo); not at hi
  while hi - lo > 1 do
    local mid = (lo + hi) // 2
    if a:sub(1, mid) == b:sub(1, mid) then lo = mid else hi = mid end
  end
  return lo
end
M.common = common

-- The text of a difference: where it starts, then both sides in `hexdump -C`
-- layout (offsets are the message's), as many bytes as hexdump(s) shows.
function M.diff(what, expected, got, hexdump, max)
  max = max or 512
  local at = common(expected, got)
  local function show(s)
    if #s > max then return hexdump(s:sub(1, max)) .. string.format("... %d bytes more\n", #s - max) end
    return hexdump(s)
  end
  return string.format("%s: differs at byte %d (expected %d bytes, received %d)\n" ..
    "expected:\n%sreceived:\n%s", what, at, #expected, #got, show(expected), show(got))
end

-- Which of the conversations a client whose first bytes are data gets:
-- the longest common prefix with its first client message; ties go to the
-- one after last (round robin). Returns the index.
function M.pick(convs, data, last)
  local best, bestn = nil, -1
  local n = #convs
  for k = 1, n do
    local i = (last + k - 1) % n + 1
    local first
    for _, m in ipairs(convs[i].messages) do
      if m.from == "client" then first = m.data; break end
    end
    local score = first and common(first, data) or 0
    if score > bestn then best, bestn = i, score end
  end
  return best
end

return M
