-- chat: a line-based chat room. Every line a client sends goes to every other
-- client, prefixed with the sender's nick; state shared across connections.
--
--   echokit -H chat               then, in two terminals: nc 127.0.0.1 7000
--   /nick NAME   take a nick (letters, digits, _ and -, up to 32)
--   /me ACTION   "* NAME ACTION"
--   /who         who is here
--   /quit        leave
--
--   echokit -H chat -- max_line=1024 stall=10 max_backlog=4m
--
-- A reader that falls behind holds up the talkers: while its backlog is above
-- the high-water mark, echokit stops reading whoever is talking (automatic
-- back-pressure), so a burst never gets a healthy but slower reader dropped.
-- A reader that stays above high water for `stall` seconds (default 10), or
-- whose backlog passes `max_backlog` (default 4 MiB), has stopped reading: it is
-- dropped, and the room carries on.
local echokit = require "echokit"
local framing = require "echokit.framing"
local args = ...

local MAX_LINE = tonumber(args.max_line) or 4096
local STALL = tonumber(args.stall) or 10
local MAX_BACKLOG = echokit.size(args.max_backlog, 4 * 1024 * 1024)

local clients = {}    -- conn -> true, everyone in the room
local nicks = {}      -- lower-case nick -> conn
local guests = 0

local leave

local function drop(conn, why)
  echokit.log("warn", "chat: dropping %s (%s), %s", conn.nick, tostring(conn), why)
  leave(conn)
  conn:reset()
end

local function send(conn, line)
  if conn:write(line .. "\n") == false then
    -- above high water: the talker waits for it (echokit pauses the input
    -- being handled); on_drain clears the mark
    conn.full_since = conn.full_since or echokit.now()
    if conn:buffered() > MAX_BACKLOG then drop(conn, "backlog over max_backlog") end
  end
end

local function broadcast(line, except)
  for c in pairs(clients) do
    if c ~= except then send(c, line) end
  end
end

function leave(conn)
  if not clients[conn] then return end
  clients[conn] = nil
  nicks[conn.nick:lower()] = nil
  broadcast("* " .. conn.nick .. " left")
end

-- Readers above high water for STALL seconds have stopped reading.
echokit.every(math.min(1, STALL / 4), function()
  local now, stalled = echokit.now(), {}
  for c in pairs(clients) do
    if c.full_since and now - c.full_since >= STALL then stalled[#stalled + 1] = c end
  end
  for _, c in ipairs(stalled) do drop(c, "not reading") end
end)

-- s without the blanks around it: linear, where a match with (.-)%s*$ is
-- quadratic in a long run of inner blanks.
local function trim(s)
  local i = s:find("%S")
  if not i then return "" end
  local j = #s
  while s:find("^%s", j) do j = j - 1 end
  return s:sub(i, j)
end

local commands = {}

function commands.nick(conn, name)
  if not name:match("^[%w_%-]+$") or #name > 32 then
    return send(conn, "! a nick is 1 to 32 letters, digits, _ or -")
  end
  local owner = nicks[name:lower()]
  if owner and owner ~= conn then return send(conn, "! nick " .. name .. " is taken") end
  nicks[conn.nick:lower()] = nil
  nicks[name:lower()] = conn
  broadcast("* " .. conn.nick .. " is now " .. name)
  conn.nick = name
end

function commands.me(conn, action)
  broadcast("* " .. conn.nick .. " " .. action)
end

function commands.who(conn)
  local names = {}
  for c in pairs(clients) do names[#names + 1] = c.nick end
  table.sort(names)
  send(conn, "* here: " .. table.concat(names, ", "))
end

function commands.quit(conn)
  send(conn, "* bye")
  leave(conn)
  conn:close()
end

return {
  on_connect = function(conn)
    repeat
      guests = guests + 1
      conn.nick = "guest" .. guests
    until not nicks[conn.nick]
    conn.lines = framing.lines{ max = MAX_LINE }
    send(conn, "* welcome, " .. conn.nick .. "; commands: /nick NAME, /me ACTION, /who, /quit")
    broadcast("* " .. conn.nick .. " joined")
    clients[conn] = true
    nicks[conn.nick] = conn
  end,

  on_data = function(conn, data)
    conn.lines:feed(data)
    while clients[conn] do
      local line, err = conn.lines:next()
      if not line then
        if err then
          send(conn, "! " .. err .. " (max " .. MAX_LINE .. " bytes)")
          leave(conn)
          conn:close()
        end
        return
      end
      local cmd, rest = line:match("^/(%a+)(.*)$")
      if cmd then
        rest = trim(rest)
        local fn = commands[cmd:lower()]
        if fn then fn(conn, rest) else send(conn, "! unknown command /" .. cmd) end
      elseif line ~= "" then
        broadcast("<" .. conn.nick .. "> " .. line, conn)
      end
    end
  end,

  on_drain = function(conn)
    conn.full_since = nil
  end,

  on_close = function(conn)
    leave(conn)
  end,
}
