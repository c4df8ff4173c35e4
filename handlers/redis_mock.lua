-- redis: an in-memory Redis mock speaking RESP2, enough for redis-cli,
-- redis-benchmark and client libraries: PING ECHO SET GET DEL EXISTS INCR DECR
-- INCRBY DECRBY EXPIRE PEXPIRE TTL PTTL KEYS DBSIZE FLUSHALL FLUSHDB COMMAND
-- CONFIG SELECT QUIT. Errors read as Redis's own.
--
--   echokit -H redis             then: redis-cli -p 7000 set greeting hi
--   echokit -H redis -- max_keys=100000 max_bulk=1m max_memory=256m max_command=64m
--   echokit -H redis -- command_timeout=30
--
-- The data is shared by every connection of the process (with --workers N each
-- worker has its own). Expired keys vanish when touched, and a sweep looks at a
-- bounded number of keys with a TTL ten times a second.
--
-- Replies are written as they are made (in batches of up to 64 KiB) through
-- echokit.pipeline: when a write returns false the rest of the client's
-- pipeline waits for on_drain, so a pipeline of large GETs never sits in memory
-- at once, and after about 1000 commands or 1 MiB of replies in one callback
-- it waits for the next turn of the loop, so other clients get theirs.
--
-- command_timeout (seconds, default 30, 0 = none): a command whose first bytes
-- came that long ago and that is still not complete gets an error reply and
-- the connection is closed (a client trickling a command never ties it up).
local echokit = require "echokit"
local resp = require "echokit.resp"
local glob = require "echokit.glob"
local pipeline = require "echokit.pipeline"
local args = ...

local MAX_KEYS = echokit.size(args.max_keys, 1000000)
local MAX_BULK = echokit.size(args.max_bulk, 16 * 1024 * 1024)
local MAX_MEMORY = echokit.size(args.max_memory, 1024 * 1024 * 1024)
local MAX_COMMAND = echokit.size(args.max_command, resp.MAX_COMMAND)
local COMMAND_TIMEOUT = pipeline.seconds(args.command_timeout, 30, "command_timeout")

local data = {}       -- key -> string value
local expires = {}    -- key -> deadline in ms on the loop clock
local nkeys = 0
local used = 0        -- bytes of keys and values stored, against MAX_MEMORY

local function now_ms() return math.floor(echokit.now() * 1000) end

local function delete(k)
  local v = data[k]
  if v ~= nil then
    data[k], expires[k] = nil, nil
    nkeys = nkeys - 1
    used = used - #k - #v
    return true
  end
  return false
end

-- The value of k, dropping it first if it has expired.
local function get(k)
  local dl = expires[k]
  if dl and dl <= now_ms() then delete(k) end
  return data[k]
end

-- The sweep: at most SWEEP keys with a TTL per tick, resuming where the last
-- tick stopped. The cursor is always a key still in `expires` (or nil), so
-- next() can continue from it even after keys were added meanwhile.
local SWEEP = 2000
local cursor = nil
echokit.every(0.1, function()
  if cursor ~= nil and expires[cursor] == nil then cursor = nil end
  local t = now_ms()
  for _ = 1, SWEEP do
    local k, dl = next(expires, cursor)
    if k == nil then cursor = nil; break end
    if dl <= t then delete(k) else cursor = k end
  end
end)

-- Expiry times past these would overflow a millisecond deadline.
local LIMIT_MS = math.maxinteger // 4
local LIMIT_S = LIMIT_MS // 1000

local OOM = resp.error("OOM command not allowed when used memory > 'maxmemory'.")
local NOT_INT = resp.error("ERR value is not an integer or out of range")
local SYNTAX = resp.error("ERR syntax error")

-- Stores v under k; false when MAX_KEYS or MAX_MEMORY would be passed.
local function set(k, v)
  local old = data[k]
  local grow = old == nil and #k + #v or #v - #old
  if old == nil and nkeys >= MAX_KEYS then return false end
  if grow > 0 and used + grow > MAX_MEMORY then return false end
  if old == nil then nkeys = nkeys + 1 end
  used = used + grow
  data[k] = v
  return true
end

-- A decimal integer exactly as Redis accepts it (no spaces, no "+", no "01"),
-- within a signed 64-bit integer: tonumber would turn one just past the range
-- into a float, so the digits are compared with the limits' own.
local MAXDIGITS, MINDIGITS = tostring(math.maxinteger), tostring(math.mininteger):sub(2)
local function int(s)
  if not s:match("^%-?%d+$") or s:match("^%-?0%d") or s == "-0" then return nil end
  local neg = s:byte(1) == 45
  local digits = neg and s:sub(2) or s
  local limit = neg and MINDIGITS or MAXDIGITS
  if #digits > #limit or (#digits == #limit and digits > limit) then return nil end
  return math.tointeger(tonumber(s))
end

local function incr(k, by)
  local v = get(k)
  local n = 0
  if v ~= nil then
    n = int(v)
    if not n then return NOT_INT end
  end
  if (by > 0 and n > math.maxinteger - by) or (by < 0 and n < math.mininteger - by) then
    return resp.error("ERR increment or decrement would overflow")
  end
  n = n + by
  local dl = expires[k]
  if not set(k, tostring(n)) then return OOM end
  expires[k] = dl
  return n
end

-- A matcher for a Redis glob, or nil and the error to answer.
local function matcher(p)
  local m = glob.compile(p)
  if not m then
    return nil, resp.error(("ERR glob-style pattern longer than %d bytes"):format(glob.MAX_PATTERN))
  end
  return m
end

local function expire_at(k, dl)
  if get(k) == nil then return 0 end
  if dl <= now_ms() then delete(k) else expires[k] = dl end
  return 1
end

local function ttl(k, unit)
  if get(k) == nil then return -2 end
  local dl = expires[k]
  if not dl then return -1 end
  local left = dl - now_ms()
  return unit == 1 and left or (left + 500) // 1000
end

-- name -> { arity (negative: at least), function(argv) -> reply }
local commands = {}

local function def(name, arity, fn) commands[name] = { arity = arity, fn = fn } end

def("ping", -1, function(a)
  if a.n > 2 then return resp.error("ERR wrong number of arguments for 'ping' command") end
  return a[2] or resp.status("PONG")
end)
def("echo", 2, function(a) return a[2] end)
def("get", 2, function(a) return get(a[2]) or resp.null end)
def("set", -3, function(a)
  local k, v = a[2], a[3]
  local nx, xx, keepttl, getold, dl
  local i = 4
  while i <= a.n do
    local o = a[i]:lower()
    if o == "nx" and not xx then nx = true
    elseif o == "xx" and not nx then xx = true
    elseif o == "keepttl" and not dl then keepttl = true
    elseif o == "get" then getold = true
    elseif (o == "ex" or o == "px" or o == "exat" or o == "pxat") and not dl and not keepttl
           and a[i + 1] then
      local n = int(a[i + 1])
      if not n then return NOT_INT end
      local seconds = o == "ex" or o == "exat"
      if n <= 0 or n > (seconds and LIMIT_S or LIMIT_MS) then
        return resp.error("ERR invalid expire time in 'set' command")
      end
      local ms = seconds and n * 1000 or n
      if o == "ex" or o == "px" then dl = now_ms() + ms
      else dl = now_ms() + (ms - math.floor(os.time() * 1000)) end
      i = i + 1
    else
      return SYNTAX
    end
    i = i + 1
  end
  local old = get(k)
  if (nx and old ~= nil) or (xx and old == nil) then
    return getold and (old or resp.null) or resp.null
  end
  local keep = keepttl and expires[k]
  if not set(k, v) then return OOM end
  expires[k] = dl or keep or nil
  if getold then return old or resp.null end
  return resp.OK
end)
def("del", -2, function(a)
  local n = 0
  for i = 2, a.n do
    get(a[i])
    if delete(a[i]) then n = n + 1 end
  end
  return n
end)
commands.unlink = commands.del
def("exists", -2, function(a)
  local n = 0
  for i = 2, a.n do if get(a[i]) ~= nil then n = n + 1 end end
  return n
end)
def("incr", 2, function(a) return incr(a[2], 1) end)
def("decr", 2, function(a) return incr(a[2], -1) end)
def("incrby", 3, function(a)
  local by = int(a[3])
  if not by then return NOT_INT end
  return incr(a[2], by)
end)
def("decrby", 3, function(a)
  local by = int(a[3])
  if not by or by == math.mininteger then return NOT_INT end
  return incr(a[2], -by)
end)
-- EXPIRE / PEXPIRE: a time in the past deletes the key, as in Redis.
local function expire_cmd(name, unit)
  def(name, -3, function(a)
    if a.n > 4 then return SYNTAX end
    local n = int(a[3])
    if not n then return NOT_INT end
    if n > (unit == 1000 and LIMIT_S or LIMIT_MS) or n < -(unit == 1000 and LIMIT_S or LIMIT_MS) then
      return resp.error("ERR invalid expire time in '" .. name .. "' command")
    end
    return expire_at(a[2], now_ms() + n * unit)
  end)
end
expire_cmd("expire", 1000)
expire_cmd("pexpire", 1)
def("persist", 2, function(a)
  if get(a[2]) == nil or not expires[a[2]] then return 0 end
  expires[a[2]] = nil
  return 1
end)
def("ttl", 2, function(a) return ttl(a[2], 1000) end)
def("pttl", 2, function(a) return ttl(a[2], 1) end)
def("keys", 2, function(a)
  local match, err = matcher(a[2])
  if not match then return err end
  local out = { n = 0 }
  local t = now_ms()
  for k in pairs(data) do
    local dl = expires[k]
    if (not dl or dl > t) and match(k) then out.n = out.n + 1; out[out.n] = k end
  end
  table.sort(out)
  return out
end)
def("dbsize", 1, function() return nkeys end)
local function flush(a)
  if a.n > 2 or (a[2] and a[2]:lower() ~= "async" and a[2]:lower() ~= "sync") then
    return SYNTAX
  end
  data, expires, nkeys, used, cursor = {}, {}, 0, 0, nil
  return resp.OK
end
def("flushall", -1, flush)
def("flushdb", -1, flush)
def("select", 2, function(a)
  if a[2] == "0" then return resp.OK end
  return resp.error("ERR DB index is out of range")
end)
def("config", -2, function(a)
  -- redis-benchmark asks for "save" and "appendonly" before it starts
  local sub = a[2]:lower()
  if sub == "get" and a.n == 3 then
    local known = { save = "", appendonly = "no", databases = "1" }
    local match, err = matcher(a[3]:lower())
    if not match then return err end
    local out = { n = 0 }
    for k, v in pairs(known) do
      if match(k) then
        out[out.n + 1], out[out.n + 2] = k, v
        out.n = out.n + 2
      end
    end
    return out
  end
  return resp.error("ERR unknown subcommand or wrong number of arguments for '" ..
                    a[2] .. "'. Try CONFIG HELP.")
end)
def("quit", 1, function(_, conn)
  conn.quitting = true   -- answered, then closed
  return resp.OK
end)
def("command", -1, function(a)
  local sub = a[2] and a[2]:lower()
  local names = {}
  for name in pairs(commands) do names[#names + 1] = name end
  table.sort(names)
  if sub == "count" then return #names end
  if sub == "docs" then return { n = 0 } end
  if sub and sub ~= "info" then
    return resp.error("ERR unknown subcommand '" .. a[2] .. "'. Try COMMAND HELP.")
  end
  if sub == "info" then
    names = {}
    for i = 3, a.n do names[#names + 1] = a[i]:lower() end
  end
  -- name, arity, flags, first key, last key, step (the RESP2 layout)
  local out = { n = #names }
  for i, name in ipairs(names) do
    local c = commands[name]
    if not c then out[i] = resp.null else
      local keyed = c.arity ~= 1 and name ~= "ping" and name ~= "echo" and name ~= "command"
                    and name ~= "config" and name ~= "select" and name ~= "keys"
      out[i] = { name, c.arity, { n = 0 }, keyed and 1 or 0,
                 keyed and ((name == "del" or name == "exists" or name == "unlink") and -1 or 1) or 0,
                 keyed and 1 or 0, n = 6 }
    end
  end
  return out
end)

-- The reply to one command (an array of strings).
local function call(argv, conn)
  local name = argv[1]:lower()
  local c = commands[name]
  if not c then
    local shown = {}
    for i = 2, math.min(argv.n, 21) do shown[#shown + 1] = "'" .. argv[i]:sub(1, 128) .. "' " end
    return resp.error(("ERR unknown command '%s', with args beginning with: %s")
                      :format(argv[1]:sub(1, 128), table.concat(shown)))
  end
  if (c.arity > 0 and argv.n ~= c.arity) or (c.arity < 0 and argv.n < -c.arity) then
    return resp.error(("ERR wrong number of arguments for '%s' command"):format(name))
  end
  return c.fn(argv, conn)
end

-- Replies are gathered into one write of up to BATCH bytes or BATCH_COMMANDS
-- commands (one step of the pipeline); one callback takes at most
-- STEPS_PER_TURN steps or pipeline.MAX_BYTES of replies before the loop turns.
local BATCH = 64 * 1024
local BATCH_COMMANDS = 64
local STEPS_PER_TURN = 16

local note = pipeline.limited_log("info")

-- One step: answers the commands buffered in the parser, in order, until a
-- batch is full or no complete command is left; returns what writing the
-- batch returned and its size (see echokit.pipeline), nil when there was
-- nothing to answer or the connection is closing.
local function step(conn)
  local p = conn.resp
  local out, outlen, n = {}, 0, 0
  while n < BATCH_COMMANDS and outlen < BATCH do
    local argv, err = p:next()
    if not argv then
      if err then
        out[#out + 1] = resp.encode(resp.error("ERR " .. err))
        conn:write(table.concat(out))
        conn:close()
        return nil
      end
      -- the start of a command that has not all arrived: its clock runs
      if p:pending() > 0 then conn.deadline:start() else conn.deadline:stop() end
      break
    end
    conn.deadline:stop()
    n = n + 1
    local r = resp.encode(call(argv, conn))
    out[#out + 1], outlen = r, outlen + #r
    if conn.quitting then
      conn:write(table.concat(out))
      conn:close()
      return nil
    end
  end
  if n == 0 then return nil end
  return conn:write(table.concat(out)), outlen
end

return {
  on_connect = function(conn)
    conn.resp = resp.parser{ max_bulk = MAX_BULK, max_command = MAX_COMMAND }
    conn.pl = pipeline.new(conn, step, { max_steps = STEPS_PER_TURN })
    conn.deadline = pipeline.deadline(COMMAND_TIMEOUT, function()
      note("%s command not complete after %gs (command_timeout): closed", tostring(conn),
           COMMAND_TIMEOUT)
      conn:write(resp.encode(resp.error(
        ("ERR command not complete after %gs (command_timeout)"):format(COMMAND_TIMEOUT))))
      conn:close()
    end)
  end,
  on_data = function(conn, bytes)
    conn.resp:feed(bytes)
    conn.pl:run()
  end,
  on_drain = function(conn)
    conn.pl:drain()
  end,
  on_close = function(conn)
    conn.pl:stop()
    conn.deadline:cancel()
  end,
}
