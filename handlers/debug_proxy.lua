-- debug: a proxy that shows what passes through it, TLS decrypted if asked.
--
--   echokit -H debug -- upstream=127.0.0.1:8080 [pcap=out.pcap] [events=FILE|-]
--                       [dump=hex|text|none] [max=BYTES] [color=auto|always|never]
--                       [queue=BYTES]
--   echokit -H debug -- upstream=tls://HOST:PORT ca_cert=FILE ca_key=FILE
--                       [keylog=FILE] [ca=FILE sni=NAME alpn=LIST cert= key= insecure=1]
--   echokit -H debug -l udp://127.0.0.1:5300 -- upstream=udp://127.0.0.1:53 [pcap=...]
--
-- Relays every client to the upstream like the `proxy` handler (in C, with
-- back-pressure and half-close) and, on stderr, prints a line per connection
-- event and per chunk: time, connection id, direction and byte count, then the
-- bytes in `hexdump -C` layout (offsets count from the start of that
-- direction's stream), or only their printable characters with dump=text.
-- max=N shows at most N bytes of each chunk. Colour when stderr is a terminal.
--
--   pcap=FILE    writes the conversations as a pcap file (Wireshark, tshark):
--                one TCP stream per client, between the client's and the
--                upstream's real addresses
--   events=FILE  writes one JSON object per line per event (open, connected,
--                tls, client_hello, data, eof, close) to FILE, or to stderr
--                with events=-.
--                A data event carries the bytes shown (at most max=) in
--                `data`: as text when they are UTF-8 ("encoding":"text"),
--                else in base64 ("encoding":"base64"). Other text that is
--                not UTF-8 (a unix socket's path) is read as Latin-1.
--   queue=BYTES  output waiting for a slow reader, per destination (default 1m)
--
-- TLS, two ways (tls=):
--
--   tls=mitm     decrypts: the client's TLS ends here (conn:starttls with a
--                certificate for the name the client asks for, signed on the
--                fly by the CA of ca_cert= and ca_key=, which
--                `echokit --make-ca DIR` makes and the client must trust), and
--                echokit opens its own TLS connection to a tls:// upstream
--                (verified against the system store or ca=; the upstream
--                options are those of `proxy`). The dump, the events and the
--                pcap show the plaintext; a `tls` event per side
--                ("side":"client" or "upstream") and a line give the version,
--                cipher, SNI and ALPN each negotiated (and the upstream's
--                certificate). alpn= is offered to both sides. A client
--                that sends no SNI gets a certificate for the upstream's
--                host. With a plain upstream, only the client's TLS ends.
--                keylog=FILE appends every session's secrets (both sides) in
--                the NSS key log format, for Wireshark (echokit.tls_keylog).
--   tls=passthrough  relays the bytes untouched, and reads the client's
--                ClientHello from its first bytes: a `client_hello` event and
--                a line give the SNI, ALPN and highest version it offers.
--                With upstream=tls://HOST:PORT the bytes go to HOST:PORT.
--
-- Without tls=, a plain upstream is passthrough and a tls:// upstream is mitm
-- when ca_cert= is given; otherwise it is a start-up error, as are tls=mitm
-- without ca_cert=/ca_key= and the mitm-only options with passthrough.
--
-- UDP (upstream=udp://, with -l udp://...): each client flow gets its own
-- upstream flow, relayed in C as by `proxy`. Each datagram is shown whole
-- as `client -> upstream datagram 5 (42 bytes)` (its number in that
-- direction, its size; hexdump offsets from 0), is a `datagram` event
-- ({"event":"datagram","id","dir","seq","bytes","data","encoding"}: no
-- offset, datagrams are not a stream) and one UDP packet in the pcap,
-- between the client's and the upstream's addresses. A flow has no EOF;
-- its close event gives the reason ("timeout" after --udp-idle-timeout)
-- and the datagrams and bytes each way. No TLS over UDP (no DTLS).
--
-- The dump and the events never block the loop: they go through
-- echokit.writer, and while stderr (or the events file) is not read fast
-- enough, whole chunks and events past queue= are dropped, not waited for.
-- The next write that gets through is preceded by a note of the bytes lost:
-- `... [debug] N bytes of output dropped ...`, or a `dropped` event.
local echokit = require "echokit"
local codec = require "echokit.codec"
local json = require "echokit.json"
local tlsinfo = require "echokit.tlsinfo"
local upstream_options = require "echokit.upstream"
local args = ...

local upstream = args.upstream
if not upstream then
  error("debug: give the upstream address: -- upstream=HOST:PORT (or [V6]:PORT, unix:/path)")
end
local dump = args.dump or "hex"
if dump ~= "hex" and dump ~= "text" and dump ~= "none" then
  error("debug: dump must be hex, text or none (got " .. dump .. ")")
end
local max = math.huge
if args.max then
  max = math.tointeger(tonumber(args.max))
  if not max or max < 0 then error("debug: max must be a byte count (got " .. args.max .. ")") end
end
local color = args.color or "auto"
if color == "auto" then
  color = echokit.isatty("stderr")
elseif color == "always" or color == "never" then
  color = color == "always"
else
  error("debug: color must be auto, always or never (got " .. color .. ")")
end

local udp = upstream:match("^udp://") ~= nil
if udp and args.tls == "mitm" then error("debug: tls=mitm needs a TCP upstream (there is no DTLS)") end

-- TLS: mitm (decrypt) or passthrough (relay as is); see the header.
local tls_upstream = upstream:match("^tls://") ~= nil
local mode = args.tls or (not tls_upstream and "passthrough") or (args.ca_cert and "mitm")
if not mode then
  error("debug: upstream=" .. upstream .. " speaks TLS: give ca_cert=FILE ca_key=FILE " ..
        "(echokit --make-ca DIR) to decrypt it, or tls=passthrough to relay it as it is")
end
local connect_opts, mitm
if mode == "mitm" then
  if not (args.ca_cert and args.ca_key) then
    error("debug: tls=mitm needs ca_cert=FILE and ca_key=FILE (echokit --make-ca DIR makes them)")
  end
  local up_args = {} -- alpn= for the client alone when the upstream is plain
  for k, v in pairs(args) do up_args[k] = v end
  if not tls_upstream then up_args.alpn = nil end
  connect_opts = upstream_options.options(up_args, "debug")
  mitm = { ca_cert = args.ca_cert, ca_key = args.ca_key, alpn = args.alpn,
           name = upstream:gsub("^tls://", ""):match("^%[?(.-)%]?:%d+$") }
  -- the CA loads, its key matches it, it may sign: checked now, not at the first client
  local ok, err = pcall(echokit.tls_check, mitm)
  if not ok then error("debug: " .. tostring(err), 0) end
  if args.keylog then
    local ok, err = echokit.tls_keylog(args.keylog)
    if not ok then error("debug: " .. err) end
  end
elseif mode == "passthrough" then
  for _, k in ipairs({ "ca_cert", "ca_key", "keylog", table.unpack(upstream_options.KEYS) }) do
    if args[k] then
      error("debug: " .. k .. "= needs tls=mitm (tls=passthrough relays the client's TLS as it is)")
    end
  end
  upstream = upstream:gsub("^tls://", "")
else
  error("debug: tls must be mitm or passthrough (got " .. mode .. ")")
end

local pcap
if args.pcap then
  pcap = assert(echokit.pcap(args.pcap))
end

local queue = echokit.size(args.queue, 1024 * 1024)
local out = assert(echokit.writer("stderr", { max = queue }))
local events
if args.events == "-" then
  events = out
elseif args.events then
  events = assert(echokit.writer(args.events, { max = queue }))
end

local paint = function(_, s) return s end
if color then
  local codes = { open = "1;33", close = "1;33", up = "32", down = "36", err = "1;31" }
  paint = function(what, s) return "\27[" .. codes[what] .. "m" .. s .. "\27[0m" end
end

local function stamp(t)
  return os.date("%H:%M:%S", math.floor(t)) .. string.format(".%06d", math.floor(t % 1 * 1e6))
end

local function addr(host, port)
  if not host then return "?" end
  if not port then return host end
  if host:find(":", 1, true) then return "[" .. host .. "]:" .. port end
  return host .. ":" .. port
end

-- Writes s to w (an echokit.writer); when w dropped output since the last
-- note, a note of how much (note(bytes)) goes first.
local reported = {}
local function put(w, s, note)
  local lost = w:dropped() - (reported[w] or 0)
  if lost > 0 and w:write(note(lost)) then reported[w] = (reported[w] or 0) + lost end
  w:write(s)
end

local function dump_note(lost)
  return stamp(echokit.time()) .. " [debug] " .. lost ..
    " bytes of output dropped (not read fast enough)\n"
end

-- An event as one JSON line (echokit.json): ev lists its keys in order, then
-- holds their values; times are rounded to the microsecond.
local function event_line(ev)
  for _, k in ipairs(ev) do
    if math.type(ev[k]) == "float" then ev[k] = math.floor(ev[k] * 1e6 + 0.5) / 1e6 end
  end
  return json.object(ev, ev) .. "\n"
end

local function events_note(lost)
  return event_line({ "ts", "event", "bytes", ts = echokit.time(), event = "dropped", bytes = lost })
end

local function emit(ev)
  if events then put(events, event_line(ev), events == out and dump_note or events_note) end
end

local function printable(data)
  return (data:gsub("\r\n", "\n"):gsub("[^\n\t\32-\126]", "."))
end

-- A chunk of a stream at offset, or (udp) datagram number seq.
local function show_chunk(s, dir, data, offset, seq)
  local now = echokit.time()
  local label = dir == "up" and "client -> upstream" or "upstream -> client"
  local shown = #data > max and data:sub(1, max) or data
  local size = seq and ("datagram " .. seq .. " (" .. #data .. " bytes)") or (#data .. " bytes")
  local text = { stamp(now), " [conn ", s.id, "] ", paint(dir, label), " ", size, "\n" }
  if dump == "hex" then
    text[#text + 1] = echokit.hexdump(shown, seq and 0 or offset)
  elseif dump == "text" then
    local t = printable(shown)
    text[#text + 1] = t:sub(-1) == "\n" and t or t .. "\n"
  end
  if dump ~= "none" and #shown < #data then
    text[#text + 1] = "... " .. (#data - #shown) .. " more bytes\n"
  end
  put(out, table.concat(text), dump_note) -- one write: a chunk is shown whole or dropped whole
  if events then
    local encoding = utf8.len(shown) and "text" or "base64"
    emit({ "ts", "event", "id", "dir", "seq", "bytes", "offset", "data", "encoding",
           ts = now, event = seq and "datagram" or "data", id = s.id, bytes = #data,
           offset = not seq and offset or nil, seq = seq,
           dir = dir == "up" and "client->upstream" or "upstream->client",
           data = encoding == "text" and shown or codec.base64(shown), encoding = encoding })
  end
end

-- Per-client session: s.bytes.up / s.bytes.down count what passed each way.
local function note(s, what, text, extra)
  local now = echokit.time()
  put(out, stamp(now) .. " [conn " .. s.id .. "] " .. paint(what == "err" and "err" or "open", text)
      .. "\n", dump_note)
  if extra then
    extra.ts, extra.id = now, s.id
    emit(extra)
  end
end

local function record(s, dir, data)
  if s.stream then
    if dir == "up" then s.stream:client(data) else s.stream:server(data) end
  elseif s.pending then
    s.pending[#s.pending + 1] = { dir, data } -- until the upstream is connected
  end
end

-- What a side negotiated (conn:tls()), once its handshake is done.
local function show_tls(s, side, conn)
  local t = conn:tls()
  note(s, "open", side .. " tls: " .. tlsinfo.summary(t),
       { "ts", "event", "id", "side", "version", "cipher", "sni", "alpn", "resumed", "verify",
         "peer",
         event = "tls", side = side, version = t.version, cipher = t.cipher, sni = t.sni,
         alpn = t.alpn, resumed = t.resumed, verify = t.verify,
         peer = t.peer_cert and t.peer_cert.subject })
end

-- Passthrough: the ClientHello in the client's first bytes, if they are TLS.
local function show_hello(s, data)
  local h = s.hello(data)
  if h ~= nil then s.hello = nil end -- read, or not TLS: done either way
  if h then
    note(s, "open", "client hello: " .. tlsinfo.summary(h),
         { "ts", "event", "id", "version", "sni", "alpn", "length", "truncated",
           event = "client_hello", version = h.version, sni = h.sni, alpn = h.alpn,
           length = h.length, truncated = h.truncated })
  end
end

local function tap(s, dir)
  return function(data)
    local offset = s.bytes[dir]
    s.bytes[dir] = offset + #data
    s.count[dir] = s.count[dir] + 1
    if dir == "up" and s.hello then show_hello(s, data) end
    show_chunk(s, dir, data, offset, udp and s.count[dir] or nil)
    record(s, dir, data)
  end
end

local function eof(s, side)
  return function()
    local who = side == "client" and "client" or "upstream"
    note(s, "open", who .. " finished sending (EOF)",
         { "ts", "event", "id", "side", event = "eof", side = who })
    if s.stream then s.stream:fin(side) end
    s.fin[side] = true
  end
end

local function finish(s, side, reason)
  if s.closed then return end
  s.closed = true
  local now = echokit.time()
  local why = reason and ((side == "client" and "client " or "upstream ") .. reason) or nil
  local function way(dir)
    if not udp then return s.bytes[dir] .. " bytes" end
    return string.format("%d datagrams (%d bytes)", s.count[dir], s.bytes[dir])
  end
  note(s, (reason and reason ~= "timeout") and "err" or "close",
       string.format("close %s after %.3f s: %s client -> upstream, %s upstream -> client%s",
                     s.client_addr, now - s.start, way("up"), way("down"),
                     why and (", " .. why) or ""),
       { "ts", "event", "id", "client", "upstream", "duration", "bytes_up", "bytes_down",
         "datagrams_up", "datagrams_down", "reason",
         event = "close", client = s.client_addr, upstream = s.upstream_addr,
         duration = now - s.start, bytes_up = s.bytes.up, bytes_down = s.bytes.down,
         datagrams_up = udp and s.count.up or nil, datagrams_down = udp and s.count.down or nil,
         reason = why })
  if s.stream then
    if reason == "reset" and not udp then
      s.stream:reset(side)
    else
      s.stream:close()
    end
  end
end

return {
  on_connect = function(client)
    local s = { id = client.id, start = echokit.time(), bytes = { up = 0, down = 0 },
                count = { up = 0, down = 0 },
                pending = pcap and {}, fin = {}, client_addr = addr(client:peer()),
                upstream_addr = upstream }
    client.debug = s
    note(s, "open", "open " .. s.client_addr .. " -> " .. upstream,
         { "ts", "event", "id", "client", "upstream",
           event = "open", client = s.client_addr, upstream = upstream })
    if mitm then
      client:starttls(mitm) -- reads and writes wait for the handshake
    elseif not udp then
      s.hello = tlsinfo.hello_reader()
    end
    local up = echokit.connect(upstream, {
      on_tls = function(up) show_tls(s, "upstream", up) end,
      on_connect = function(up)
        s.upstream_addr = addr(up:peer())
        note(s, "open", "connected to " .. s.upstream_addr .. " from " .. addr(up:sockname()),
             { "ts", "event", "id", "upstream", "local",
               event = "connected", upstream = s.upstream_addr, ["local"] = addr(up:sockname()) })
        if pcap then
          local chost, cport = client:peer()
          local uhost, uport = up:peer()
          local pending = s.pending
          s.pending = nil
          -- nil once the capture has failed (logged once by echokit.pcap)
          s.stream = pcap:stream(chost, cport, uhost, uport, udp and "udp" or "tcp")
          if s.stream then
            for _, p in ipairs(pending) do record(s, p[1], p[2]) end
            if s.fin.client then s.stream:fin("client") end
          end
        end
      end,
      on_close = function(_, reason) finish(s, "server", reason) end,
    }, connect_opts)
    client:pipe(up, { tap = tap(s, "up"), on_eof = eof(s, "client") })
    up:pipe(client, { tap = tap(s, "down"), on_eof = eof(s, "server") })
  end,
  on_tls = function(client) show_tls(client.debug, "client", client) end,
  on_close = function(client, reason)
    finish(client.debug, "client", reason)
  end,
}
