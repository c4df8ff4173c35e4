-- `echokit replay --client FILE --to HOST:PORT`: a regression test for a
-- server from one capture. Each selected conversation is replayed on a
-- connection of its own, one after the other: the recorded client messages
-- are sent in order, and before each the live server's answer is compared
-- with the recorded server message that came before it. Exit status (the
-- module's `status`, read by src/replaycli.c): 0 everything matched, 1 a
-- difference (or the server could not be reached), 2 usage or file error.
local echokit = require "echokit"
local replay = require "echokit.replay"

local M = {}

local USAGE = [[
usage: echokit replay --client FILE --to HOST:PORT [--server HOST:PORT|PORT]
                      [--ignore PATTERN]... [--timeout SECONDS]

Sends the client side of the conversations recorded in FILE (pcap or pcapng)
to the live server at HOST:PORT and compares what it answers with the
recording, message by message. Prints a hexdump of both sides for each
message that differs.

  --client FILE       the capture (echokit -H debug pcap=, tcpdump, dumpcap)
  --to HOST:PORT      the live server ([V6]:PORT for IPv6)
  --server ADDR       replay the conversations whose server was ADDR in the
                      capture (default: the first conversation's server port)
  --ignore PATTERN    a Lua pattern (string.gsub syntax): every match is
                      removed from both the recorded and the live answer
                      before they are compared (dates, ids); repeatable. With
                      it, an answer is everything that has come once it is as
                      long as the recorded one, masked
  --timeout SECONDS   how long to wait for an answer (default 5)
  -h, --help          this text

Exit status: 0 all answers matched, 1 one differed or the server could not be
reached, 2 a usage or file error.
]]

local function usage_error(msg)
  io.stderr:write("echokit replay: ", msg, " (see echokit replay --help)\n")
  M.status = 2
end

local function parse(argv)
  local o = { ignore = {}, timeout = 5 }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local function value()
      i = i + 1
      if argv[i] == nil then return nil, a .. " needs a value" end
      return argv[i]
    end
    local v, err
    if a == "-h" or a == "--help" then
      o.help = true
    elseif a == "--client" then
      v, err = value(); o.client = v
    elseif a == "--to" then
      v, err = value(); o.to = v
    elseif a == "--server" then
      v, err = value(); o.server = v
    elseif a == "--ignore" then
      v, err = value()
      if v then
        local ok, perr = pcall(string.find, "", v)
        if not ok then return nil, "--ignore " .. v .. ": " .. tostring(perr):gsub("^.-: ", "") end
        o.ignore[#o.ignore + 1] = v
      end
    elseif a == "--timeout" then
      v, err = value()
      o.timeout = tonumber(v or "")
      if v and (not o.timeout or o.timeout <= 0) then return nil, "--timeout must be seconds > 0" end
    else
      return nil, "unknown argument " .. a
    end
    if err then return nil, err end
    i = i + 1
  end
  if o.help then return o end
  if not o.client then return nil, "give the capture: --client FILE" end
  if not o.to then return nil, "give the live server: --to HOST:PORT" end
  if not replay.parse_addr(o.to) or not o.to:find(":", 1, true) then
    return nil, "--to must be HOST:PORT (got " .. o.to .. ")"
  end
  return o
end

local function mask(s, patterns)
  for _, p in ipairs(patterns) do s = s:gsub(p, "") end
  return s
end

-- Replays conversation conv on conn (the serve coroutine); returns the
-- number of messages that differed.
local function run_conv(conn, n, conv, o, out)
  local msgs = conv.messages
  local buf, pos = "", 1
  local bad = 0
  local function more()
    local d, err = conn:receiveany()
    if not d then return nil, err end
    if pos > #buf then buf, pos = "", 1 end
    buf = buf .. d
    return true
  end
  local function differ(i, expected, got, why)
    bad = bad + 1
    out[#out + 1] = replay.diff(string.format("conversation %d, server message %d of %d%s", n, i,
      #msgs, why and (" (" .. why .. ")") or ""), expected, got, echokit.hexdump)
  end
  for i, m in ipairs(msgs) do
    if m.from == "client" then
      if not conn:send(m.data) then
        differ(i, "", "", "the server closed before client message " .. i .. " could be sent")
        return bad
      end
    elseif #o.ignore == 0 then
      -- stream-wise: the next #m.data live bytes, read until they are all
      -- there or one differs (gather: joined once, not once per chunk)
      local got = buf:sub(pos)
      if #got < #m.data and got == m.data:sub(1, #got) then
        local err
        local eof
        buf, eof = replay.gather("exact", m.data, got, function()
          local d, e = conn:receiveany()
          err = e
          return d
        end)
        pos = 1
        if eof then -- it ended with every byte so far as recorded
          differ(i, m.data, buf, err == "timeout" and "timed out" or "the server closed")
          return bad
        end
      end
      local got = buf:sub(pos, pos + #m.data - 1)
      pos = pos + #got
      if got ~= m.data then differ(i, m.data, got) end
    else
      local want = mask(m.data, o.ignore)
      while #mask(buf:sub(pos), o.ignore) < #want do
        local ok, err = more()
        if not ok then
          differ(i, m.data, buf:sub(pos), err == "timeout" and "timed out" or "the server closed")
          return bad
        end
      end
      local got = buf:sub(pos)
      pos = #buf + 1
      if mask(got, o.ignore) ~= want then differ(i, m.data, got, "after --ignore") end
    end
  end
  return bad
end

function M.main(argv)
  local o, err = parse(argv)
  if not o then return usage_error(err) end
  if o.help then
    io.stdout:write(USAGE)
    M.status = 0
    return
  end
  local convs, cerr = echokit.capture(o.client)
  if not convs then
    io.stderr:write("echokit replay: ", cerr, "\n")
    M.status = 2
    return
  end
  if convs.warning then io.stderr:write("echokit replay: warning: ", convs.warning, "\n") end
  local list, what = replay.select(convs, o.server)
  if not list then
    io.stderr:write("echokit replay: ", o.client, ": ", what, "\n")
    M.status = 2
    return
  end
  local failed, nmsgs = 0, 0
  local k = 0
  local function finish()
    io.stdout:write(string.format("replay: %d conversation%s (server %s) against %s: %s\n",
      #list, #list == 1 and "" or "s", what, o.to,
      failed == 0 and ("all " .. nmsgs .. " answers matched") or (failed .. " differed")))
    io.stdout:flush()
    M.status = failed == 0 and 0 or 1
    echokit.stop()
  end
  local function next_conv()
    k = k + 1
    if k > #list then return finish() end
    local conv = list[k]
    if conv.truncated then
      io.stderr:write(string.format("echokit replay: warning: conversation %d is incomplete " ..
        "in the capture\n", k))
    end
    for _, m in ipairs(conv.messages) do
      if m.from == "server" then nmsgs = nmsgs + 1 end
    end
    local out = {}
    echokit.connect(o.to, {
      serve = function(conn)
        out.ran = true
        conn:set_timeout(o.timeout)
        failed = failed + run_conv(conn, k, conv, o, out)
        out.done = true
      end,
      on_close = function(_, reason)
        if #out > 0 then io.stdout:write(table.concat(out)) end
        if not out.done then
          failed = failed + 1
          io.stdout:write(string.format("conversation %d: %s %s: %s\n", k,
            out.ran and "lost the connection to" or "cannot connect to", o.to,
            tostring(reason)))
        end
        next_conv()
      end,
    })
  end
  next_conv()
end

return M
