-- replay: a mock server made from a capture. Each client that connects is
-- served one recorded conversation: echokit waits for the bytes of the next
-- recorded client message and answers with the recorded server bytes.
--
--   echokit -H replay -- from=FILE [server=HOST:PORT|PORT] [match=exact]
--                        [timing=none] [on_mismatch=close] [pick=match]
--
--   from=FILE    a pcap or pcapng file: one echokit -H debug wrote (pcap=),
--                or tcpdump/dumpcap's (Ethernet, raw IP, Linux cooked,
--                loopback; IPv4, IPv6), TCP reassembled (echokit.capture)
--   server=      whose side is replayed (default: the server port of the
--                first conversation in the file, any address)
--   match=       exact   the recorded bytes, byte for byte (default)
--                prefix  as many bytes as recorded, only the first line compared
--                lines   as many lines as recorded, line endings (LF, CR LF) aside
--                any     whatever arrives stands for the next client message
--                The input is matched as a byte stream: a client may cut its
--                messages into other segments than the recorded one did.
--   timing=      none (answer at once), real (the recorded gaps), xN (N times faster)
--   on_mismatch= close: report and close the connection (default);
--                continue: report and send the next recorded answer anyway
--   pick=        match: the conversation whose first client message shares
--                the longest prefix with the client's first bytes (ties:
--                round robin); roundrobin: each in turn. When every recorded
--                conversation starts with the server speaking, round robin.
--
-- A mismatch is logged (warn) with both sides in `hexdump -C` layout, at
-- most 10 a second (then one line counts those not shown). Bytes
-- sent after the recorded conversation has ended are a mismatch too; a
-- client that closes between two messages, before the end, is only noted
-- (info).
local echokit = require "echokit"
local replay = require "echokit.replay"
local args = ...

local function fail(msg) error("replay: " .. msg, 0) end

if not args.from then fail("give the capture: -- from=FILE") end
local convs, err = echokit.capture(args.from)
if not convs then fail(err) end
if convs.warning then echokit.log("warn", "replay: %s", convs.warning) end
local selected, what = replay.select(convs, args.server)
if not selected then fail(args.from .. ": " .. what) end
local mode = replay.check_mode(args.match) or fail(select(2, replay.check_mode(args.match)))
local speed = replay.check_timing(args.timing) or fail(select(2, replay.check_timing(args.timing)))
local on_mismatch = args.on_mismatch or "close"
if on_mismatch ~= "close" and on_mismatch ~= "continue" then
  fail("on_mismatch must be close or continue (got " .. on_mismatch .. ")")
end
local pick = args.pick or "match"
if pick ~= "match" and pick ~= "roundrobin" then
  fail("pick must be match or roundrobin (got " .. pick .. ")")
end
local client_first = false
for _, c in ipairs(selected) do
  local m = c.messages[1]
  if m and m.from == "client" then client_first = true end
end
if not client_first then pick = "roundrobin" end
for _, c in ipairs(selected) do
  if c.truncated then
    echokit.log("warn", "replay: the conversation %s -> %s is incomplete in the capture",
      replay.endpoint_str(c.client), replay.endpoint_str(c.server))
  end
end
echokit.log("info", "replay: %d conversation%s with server %s from %s", #selected,
  #selected == 1 and "" or "s", what, args.from)

local last = 0 -- the conversation served last (round robin)
local TRIM = 64 * 1024

-- At most 10 mismatch reports (each up to ~1 KB of hexdump) a second:
-- a client that keeps reconnecting with the wrong bytes cannot flood the
-- log. Those held back are counted in one line when the second is over.
local limited = require("echokit.loglimit").new(10, "replay", "report")
local function report(conn, text)
  limited("warn", "replay: %s %s", tostring(conn), text)
end

-- A recorded answer in slices, each sent once the queue is back under high
-- water: an answer larger than --max-buffer goes out whole, and queues at
-- most a slice more than high water.
local SLICE = 16 * 1024
local function send(conn, data)
  if #data <= SLICE then -- the common case: one write, no slicing
    local ok, err = conn:send(data)
    if not ok and err ~= "closed" then report(conn, "answer not sent: " .. tostring(err)) end
    return ok and true or false
  end
  for i = 1, #data, SLICE do
    local ok, err = conn:send(#data <= SLICE and data or data:sub(i, i + SLICE - 1))
    if not ok then
      if err ~= "closed" then report(conn, "answer not sent: " .. tostring(err)) end
      return false
    end
  end
  return true
end

return {
  serve = function(conn)
    local buf, pos, eof = "", 1, false
    local function receive() return (conn:receiveany()) end
    local function more()
      local d = conn:receiveany()
      if not d then eof = true; return false end
      if pos > TRIM or pos > #buf then buf, pos = buf:sub(pos), 1 end
      buf = buf .. d
      return true
    end
    local idx
    if pick == "match" then
      if not more() then return end
      idx = replay.pick(selected, buf, last)
    else
      idx = last % #selected + 1
    end
    last = idx
    local msgs = selected[idx].messages
    for i, m in ipairs(msgs) do
      if m.from == "server" then
        local wait = speed ~= 0 and replay.delay(msgs, i, speed) or 0
        if wait > 0 and not echokit.sleep(wait) then return end
        if not send(conn, m.data) then return end
      else
        local matched = false
        if pos > #buf and not eof then
          -- Fast path: nothing left over, so the next chunk starts this
          -- message; when it is the whole recorded message and no more,
          -- it matches in every mode, with no copy or join. Otherwise it
          -- is the input the general path below decides on.
          local d = conn:receiveany()
          if d == m.data then
            matched = true
          else
            if d then buf = d else buf, eof = "", true end
            pos = 1
          end
        end
        while not matched do
          local st, a, b = replay.consume(mode, m.data, buf, pos, eof)
          if st == "ok" then
            pos = a
            matched = true
          elseif st == "more" then
            -- joined once per decision, not once per chunk (see gather)
            buf, eof = replay.gather(mode, m.data, buf:sub(pos), receive)
            pos = 1
          elseif eof and pos > #buf then
            -- closed between two messages: it ended early, nothing differed
            echokit.log("info", "replay: %s closed after client message %d of %d",
              tostring(conn), i - 1, #msgs)
            return
          else
            report(conn, replay.diff(string.format("client message %d of %d", i, #msgs),
              m.data, a, echokit.hexdump))
            if eof or on_mismatch == "close" then return end
            pos = b
            matched = true
          end
        end
      end
    end
    if pos <= #buf or more() then
      report(conn, string.format("%d bytes after the end of the recorded conversation:\n%s",
        #buf - pos + 1, echokit.hexdump(buf:sub(pos, pos + 511))))
    end
  end,
}
