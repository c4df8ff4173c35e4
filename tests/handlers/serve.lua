-- Test handler in the sequential style. The first line picks a mode; the
-- handler answers "OK\n" and runs it. Every failed receive is answered (when
-- still possible) and logged as "ERR err partial=[...]".
--   lines          each line -> "[line]\n"; "quit" -> "bye\n" and return
--   fixed N        receive(N) repeatedly -> "<data>"
--   all            receive("*a") -> "LEN:data", then return
--   any N          receiveany(N) repeatedly -> "[data]"
--   sleep          "sleep S" -> echokit.sleep(S), "slept ELAPSED\n"; other lines -> "pong LINE\n"
--   big TOTAL CHUNK  conn:send()s TOTAL bytes in CHUNK-sized numbered pieces, then
--                  "\nEND maxbuffered=N\n" (N: the largest conn:buffered() seen after a send)
--   hexdump LEN [OFFSET]  receive(LEN) -> "N\n" .. echokit.hexdump(data [, OFFSET])
--   stats          each "stats"/"statsgc" line -> "stats k=v ...\n"
local echokit = require "echokit"

local function failed(conn, err, partial)
  local msg = string.format("ERR %s partial=[%s]", tostring(err), tostring(partial or ""))
  echokit.log("info", "%s", msg)
  conn:send(msg .. "\n")
end

local function stats_line()
  local s = echokit.stats()
  local keys = {}
  for k in pairs(s) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. tostring(s[k]) end
  return "stats " .. table.concat(out, " ") .. "\n"
end

local modes = {}

function modes.lines(conn)
  while true do
    local line, err, partial = conn:receive()
    if not line then return failed(conn, err, partial) end
    if line == "quit" then
      conn:send("bye\n")
      return
    end
    conn:send("[" .. line .. "]\n")
  end
end

function modes.fixed(conn, n)
  n = tonumber(n)
  while true do
    local data, err, partial = conn:receive(n)
    if not data then return failed(conn, err, partial) end
    conn:send("<" .. data .. ">")
  end
end

function modes.all(conn)
  local data, err, partial = conn:receive("*a")
  if not data then return failed(conn, err, partial) end
  conn:send(#data .. ":" .. data)
end

function modes.any(conn, max)
  max = tonumber(max)
  while true do
    local data, err, partial = conn:receiveany(max)
    if not data then return failed(conn, err, partial) end
    conn:send("[" .. data .. "]")
  end
end

function modes.sleep(conn)
  while true do
    local line, err, partial = conn:receive("*l")
    if not line then return failed(conn, err, partial) end
    local s = tonumber(line:match("^sleep (%S+)$"))
    if s then
      local t0 = echokit.now()
      echokit.sleep(s)
      local ok, serr = conn:send(string.format("slept %.3f\n", echokit.now() - t0))
      if not ok then
        echokit.log("info", "send after sleep failed: %s", tostring(serr))
        return
      end
    else
      conn:send("pong " .. line .. "\n")
    end
  end
end

function modes.big(conn, total, chunk)
  total, chunk = tonumber(total), tonumber(chunk)
  local maxbuf, sent, i = 0, 0, 0
  while sent < total do
    i = i + 1
    local n = math.min(chunk, total - sent)
    local head = string.format("%08d", i)
    local piece = (head .. string.rep(string.char(97 + i % 26), n)):sub(1, n)
    local ok, err = conn:send(piece)
    if not ok then
      echokit.log("info", "big: send failed after %d: %s", sent, tostring(err))
      return
    end
    sent = sent + n
    maxbuf = math.max(maxbuf, conn:buffered())
  end
  conn:send(string.format("\nEND maxbuffered=%d\n", maxbuf))
end

function modes.hexdump(conn, len, offset)
  local data, err, partial = conn:receive(tonumber(len))
  if not data then return failed(conn, err, partial) end
  local h
  if offset ~= "" then
    h = echokit.hexdump(data, tonumber(offset))
  else
    h = echokit.hexdump(data)
  end
  conn:send(#h .. "\n" .. h)
end

function modes.stats(conn)
  while true do
    local line = conn:receive()
    if not line then return end
    if line == "statsgc" then
      collectgarbage("collect")
      collectgarbage("collect")
    end
    conn:send(stats_line())
  end
end

return {
  serve = function(conn)
    local line, err, partial = conn:receive()
    if not line then return failed(conn, err, partial) end
    local mode, a, b = line:match("^(%S+)%s*(%S*)%s*(%S*)$")
    local f = modes[mode or ""]
    if not f then
      conn:send("unknown mode\n")
      return
    end
    conn:send("OK\n")
    return f(conn, a, b)
  end,
  on_close = function(conn, reason)
    echokit.log("info", "closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
