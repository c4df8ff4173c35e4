-- The debugging proxy (-H debug): its live dump, the pcap capture (read back
-- by tshark), the JSON event log, and echokit.pcap from a handler. Real peers:
-- an echokit upstream, Python's http.server + curl, redis-server + redis-cli.
local t = require "echokit_test"
local socket = require "socket"
local peers = require "peers"

local MiB = 1024 * 1024
local UPSTREAM = "tests/handlers/upstream_reply_on_eof.lua"

local function teardown() peers.teardown() end

-- An upstream that keeps what a client sends and, once the client
-- half-closes, answers with all of it and "END <n>\n".
local function start_upstream()
  return t.start{ handler = UPSTREAM }
end

local function start_debug(upstream, args, o)
  o = o or {}
  local a = { upstream = upstream }
  for k, v in pairs(args or {}) do a[k] = v end
  return t.start{ handler = "debug", args = a, opts = o.opts }
end

-- One exchange through the proxy: send data, half-close, read the whole
-- answer; checks it. Returns the client's local port.
local function exchange_eof(proxy, data, timeout)
  local c = proxy:connect(nil, t.T(timeout or 20))
  local _, port = c:getsockname()
  t.send_all(c, data)
  assert(c:shutdown("send"))
  local got = t.recv_until_closed(c, t.T(timeout or 20))
  t.assert_bytes(data .. "END " .. #data .. "\n", got, "answer through the debug proxy")
  c:close()
  return tonumber(port)
end

-- tshark reads the capture, and its expert analysis (retransmissions,
-- missing segments, bad checksums, malformed packets) of the layers echokit
-- writes (frame, IP, TCP) has nothing at warning level or above, except the
-- summaries listed in `allowed` (a RST is itself a warning). Payload
-- dissectors are left out: tshark's heuristics take random test bytes for
-- protocols such as Thrift and then find them malformed. (Dissection of real
-- HTTP and RESP is checked by its own tests.)
local CAPTURE_LAYERS = { Frame = true, Raw = true, IPv4 = true, IPv6 = true, TCP = true }

local function assert_clean_capture(path, allowed)
  peers.tshark({ "-r", path, "-q" })
  local out = peers.tshark({ "-r", path, "-q", "-o", "tcp.check_checksum:TRUE",
                       "-o", "ip.check_checksum:TRUE", "-z", "expert,warn" })
  local problems, seen = {}, 0
  for line in out:gmatch("[^\n]+") do
    local proto, summary = line:match("^%s+%d+%s+%S+%s+(%S+)%s+(.-)%s*$")
    if proto then
      seen = seen + 1
      if CAPTURE_LAYERS[proto] and not (allowed and allowed[summary]) then
        problems[#problems + 1] = line
      end
    end
  end
  assert(#problems == 0,
    "tshark's expert analysis of " .. path .. " found problems:\n" .. t.clip(out))
  -- the check itself must see the summaries it filters
  if allowed then assert(seen > 0 and out:find("Warns"), "no expert summary in:\n" .. out) end
end

-- Every TCP stream of the capture as tshark's "follow" reassembles it
-- (tests/support/tshark_follow.py):
-- { [client port] = { client = bytes, server = bytes, nodes = {addr0, addr1} } }
local function follow_all(path, nstreams)
  local dir = peers.tmpdir()
  local r = peers.run({ "python3", t.src .. "/tests/support/tshark_follow.py", path,
                        tostring(nstreams), dir }, 120)
  peers.assert_ok(r, "tshark follow of " .. path)
  local streams = {}
  for port, a0, a1 in r.out:gmatch("(%d+) (%S+) (%S+)\n") do
    streams[tonumber(port)] = { nodes = { a0, a1 },
      client = t.read_file(dir .. "/" .. port .. ".client"),
      server = t.read_file(dir .. "/" .. port .. ".server") }
  end
  return streams
end

local function count(tbl)
  local n = 0
  for _ in pairs(tbl) do n = n + 1 end
  return n
end

-- The dump block printed after a chunk header line, up to the next line
-- starting with a timestamp.
local function dump_after(stderr, header_pattern)
  local lines, found, block = {}, false, {}
  for line in stderr:gmatch("[^\n]*\n?") do lines[#lines + 1] = line end
  for _, line in ipairs(lines) do
    if found then
      if line:match("^%d%d:%d%d:%d%d%.%d+ ") then break end
      block[#block + 1] = line
    elseif line:find(header_pattern) then
      found = true
    end
  end
  assert(found, "no line matching " .. header_pattern .. " in:\n" .. t.clip(stderr, 4000))
  return table.concat(block)
end

local function hexdump_c(data)
  local path = peers.tmpdir() .. "/chunk"
  peers.write_file(path, data)
  local r = peers.run({ "hexdump", "-C", path }, 10)
  peers.assert_ok(r, "hexdump -C")
  return r.out
end

describe("debug proxy output", function()
  after_each(teardown)

  it("shows each chunk in hexdump -C layout, with open and close lines", function()
    local up = start_upstream()
    local proxy = start_debug(peers.addr_of(up))
    local data = t.random_bytes(300)
    local port = exchange_eof(proxy, data)
    local close = proxy:await_log("%[conn %d+%] close 127%.0%.0%.1:" .. port .. " after")
    assert.matches("300 bytes client %-> upstream, 308 bytes upstream %-> client", close)
    proxy:await_log("%[conn %d+%] open 127%.0%.0%.1:" .. port .. " %-> ")
    proxy:await_log("connected to " .. peers.addr_of(up):gsub("%p", "%%%0") .. " from ")
    local err = proxy:stderr()
    assert.equal(hexdump_c(data), dump_after(err, "client %-> upstream 300 bytes"))
    -- the answer may arrive in one chunk or two; its first chunk starts at 0
    local n = tonumber(err:match("upstream %-> client (%d+) bytes\n"))
    assert(n and n > 0, "no upstream -> client chunk line")
    assert.equal(hexdump_c((data .. "END 300\n"):sub(1, n)),
      dump_after(err, "upstream %-> client " .. n .. " bytes"))
    assert.not_matches("\27%[", err) -- stderr is a file: no colour
  end)

  it("prints only printable text with dump=text, and at most max bytes a chunk", function()
    local up = start_upstream()
    local proxy = start_debug(peers.addr_of(up), { dump = "text", max = 16, color = "always" })
    local data = "GET /index HTTP/1.1\r\nHost: x\r\n\r\n\1\2binary"
    exchange_eof(proxy, data)
    proxy:await_log("close 127%.0%.0%.1:%d+ after")
    local block = dump_after(proxy:stderr(), "client %-> upstream\27%[0m " .. #data .. " bytes")
    assert.equal("GET /index HTTP/\n... " .. (#data - 16) .. " more bytes\n", block)
    assert.matches("\27%[32mclient %-> upstream\27%[0m", proxy:stderr())
  end)

  it("refuses bad arguments with a clear load error", function()
    local r = t.run{ handler = "debug", args = { upstream = "127.0.0.1:1", dump = "octal" } }
    assert.equal(2, r.code)
    assert.matches("dump must be hex, text or none", r.stderr)
    r = t.run{ handler = "debug" }
    assert.equal(2, r.code)
    assert.matches("give the upstream address", r.stderr)
    r = t.run{ handler = "debug", args = { upstream = "127.0.0.1:1", pcap = "/nonexistent/x.pcap" } }
    assert.equal(2, r.code)
    assert.matches("pcap: cannot create '/nonexistent/x%.pcap'", r.stderr)
  end)

  it("logs a refused upstream and closes the client", function()
    local proxy = start_debug("127.0.0.1:" .. peers.closed_port())
    local c = proxy:connect()
    local got, err = t.recv_until_closed(c, t.T(5))
    assert.equal("", got)
    assert.truthy(err)
    proxy:await_log("close 127%.0%.0%.1:%d+ after [%d.]+ s: 0 bytes client %-> upstream, " ..
                    "0 bytes upstream %-> client, upstream refused")
  end)
end)

describe("debug proxy pcap", function()
  after_each(teardown)

  it("captures streams from 1 byte to 16 MiB that tshark follows byte for byte", function()
    local up = start_upstream()
    local path = peers.tmpdir() .. "/sizes.pcap"
    local proxy = start_debug(peers.addr_of(up), { pcap = path, dump = "none" })
    local sizes = { 1, 1460, 1461, 65536 + 7, MiB + 3, 16 * MiB }
    local sent = {}
    for _, n in ipairs(sizes) do
      local data = t.random_bytes(n)
      sent[exchange_eof(proxy, data, 60)] = data
    end
    proxy:await_log("close 127%.0%.0%.1:%d+ after .* " .. 16 * MiB .. " bytes client")
    proxy:stop()
    assert_clean_capture(path)
    local streams = follow_all(path, #sizes)
    assert.equal(#sizes, count(streams))
    for port, data in pairs(sent) do
      local s = assert(streams[port], "no stream from client port " .. port)
      assert.equal("127.0.0.1:" .. port, s.nodes[1])
      assert.equal(peers.addr_of(up), s.nodes[2])
      t.assert_bytes(data, s.client, "client -> server bytes of the " .. #data .. "-byte stream")
      t.assert_bytes(data .. "END " .. #data .. "\n", s.server,
        "server -> client bytes of the " .. #data .. "-byte stream")
    end
    -- segments are at most an MSS, and each stream ends with FINs
    local out = peers.tshark({ "-r", path, "-T", "fields", "-e", "tcp.len", "-e", "tcp.flags.fin" })
    local max, fins = 0, 0
    for len, fin in out:gmatch("(%d+)\t(%S+)") do
      max = math.max(max, tonumber(len))
      if fin == "1" or fin == "True" then fins = fins + 1 end
    end
    assert.equal(1460, max)
    assert.equal(2 * #sizes, fins)
  end)

  it("keeps 20 concurrent conversations apart", function()
    local up = start_upstream()
    local path = peers.tmpdir() .. "/many.pcap"
    local proxy = start_debug(peers.addr_of(up), { pcap = path, dump = "none" })
    local clients, sent = {}, {}
    for i = 1, 20 do
      local c = proxy:connect(nil, t.T(20))
      local _, port = c:getsockname()
      local data = t.random_bytes(1000 * i + i)
      clients[i] = { c = c, port = tonumber(port), data = data }
      sent[tonumber(port)] = data
    end
    -- interleave: every client sends half, then every client the rest
    for _, k in ipairs(clients) do t.send_all(k.c, k.data:sub(1, #k.data // 2)) end
    for _, k in ipairs(clients) do
      t.send_all(k.c, k.data:sub(#k.data // 2 + 1))
      assert(k.c:shutdown("send"))
    end
    for _, k in ipairs(clients) do
      t.assert_bytes(k.data .. "END " .. #k.data .. "\n", t.recv_until_closed(k.c, t.T(20)),
        "answer of client " .. k.port)
      k.c:close()
    end
    t.eventually(function() return #proxy:log_matching("%] close ") == 20 end, 10,
      "20 close lines")
    proxy:stop()
    assert_clean_capture(path)
    local streams = follow_all(path, 20)
    assert.equal(20, count(streams))
    for port, data in pairs(sent) do
      local s = assert(streams[port], "no stream from client port " .. port)
      t.assert_bytes(data, s.client, "client bytes of stream " .. port)
      t.assert_bytes(data .. "END " .. #data .. "\n", s.server, "server bytes of stream " .. port)
    end
  end)

  it("records a reset from the client as a RST", function()
    local up = start_upstream()
    local path = peers.tmpdir() .. "/rst.pcap"
    local proxy = start_debug(peers.addr_of(up), { pcap = path, dump = "none" })
    local c = proxy:connect()
    local _, port = c:getsockname()
    t.send_all(c, "hello")
    proxy:await_log("client %-> upstream 5 bytes")
    c:setoption("linger", { on = true, timeout = 0 })
    c:close() -- RST
    proxy:await_log("close 127%.0%.0%.1:" .. port .. " after .* client reset")
    proxy:stop()
    assert_clean_capture(path, { ["Connection reset (RST)"] = true })
    local out = peers.tshark({ "-r", path, "-Y", "tcp.flags.reset == 1", "-T", "fields",
                         "-e", "tcp.srcport" })
    assert.equal(port .. "\n", out)
  end)

  it("is flushed within a second while echokit runs, so a kill loses at most that", function()
    local up = start_upstream()
    local path = peers.tmpdir() .. "/live.pcap"
    local proxy = start_debug(peers.addr_of(up), { pcap = path, dump = "none" })
    local data = t.random_bytes(5000)
    local port = exchange_eof(proxy, data)
    -- no event to wait for: the file grows when the flush timer fires
    local want = 24 + 3 * (16 + 44) -- at least the header and a handshake
    t.eventually(function()
      local f = io.open(path, "rb")
      local n = f and f:seek("end") or 0
      if f then f:close() end
      return n >= want + 2 * 5000 + #"END 5000\n"
    end, 1.5, "capture file flushed (both directions)")
    proxy.p:kill("KILL")
    proxy:wait_exit(5)
    proxy:exit_checked_by_test()
    assert_clean_capture(path)
    local s = assert(follow_all(path, 1)[port])
    t.assert_bytes(data, s.client, "client bytes in the live capture")
    t.assert_bytes(data .. "END 5000\n", s.server, "server bytes in the live capture")
  end)

  it("lets tshark dissect HTTP from curl through the proxy", function()
    local dir = peers.tmpdir()
    peers.write_file(dir .. "/hello.txt", "hello from upstream\n")
    local http = peers.start_http(dir)
    local path = dir .. "/http.pcap"
    local proxy = start_debug("127.0.0.1:" .. http.port, { pcap = path })
    local r = peers.run({ "curl", "-sS", "--max-time", "10",
                          "http://127.0.0.1:" .. proxy:port() .. "/hello.txt?x=1" }, 15)
    peers.assert_ok(r, "curl through the debug proxy")
    assert.equal("hello from upstream\n", r.out)
    proxy:await_log("%] close 127")
    proxy:stop()
    assert_clean_capture(path)
    local out = peers.tshark({ "-r", path, "-d", "tcp.port==" .. http.port .. ",http",
                         "-Y", "http", "-T", "fields", "-e", "http.request.method",
                         "-e", "http.request.uri", "-e", "http.response.code" })
    assert.matches("GET\t/hello.txt%?x=1\t\n", out)
    assert.matches("\t\t200\n", out)
  end)

  it("lets tshark dissect RESP from redis-cli through the proxy", function()
    local redis = peers.start_redis()
    local dir = peers.tmpdir()
    local path = dir .. "/redis.pcap"
    -- redis listens on a unix socket: the capture shows synthetic addresses
    local proxy = start_debug("unix:" .. redis.path, { pcap = path, dump = "none" })
    local r = peers.run({ "redis-cli", "-p", tostring(proxy:port()), "SET", "k", "v1" }, 10)
    peers.assert_ok(r, "redis-cli SET")
    assert.equal("OK\n", r.out)
    proxy:await_log("%] close 127")
    proxy:stop()
    assert_clean_capture(path)
    local out = peers.tshark({ "-r", path, "-d", "tcp.port==1,resp", "-Y", "resp",
                         "-T", "fields", "-e", "resp.bulk_string.value",
                         "-e", "resp.string" })
    assert.matches("534554,6b,7631", out) -- SET k v1, as hex bytes
    assert.matches("OK", out)
  end)
end)

describe("debug proxy event log", function()
  after_each(teardown)

  it("writes one JSON object per event whose totals equal the bytes sent", function()
    local up = start_upstream()
    local dir = peers.tmpdir()
    local path = dir .. "/events.jsonl"
    local proxy = start_debug(peers.addr_of(up), { events = path, dump = "none" })
    local sizes = { 10, 70000, 3 }
    local ports = {}
    for _, n in ipairs(sizes) do ports[exchange_eof(proxy, t.random_bytes(n))] = n end
    t.eventually(function() return #proxy:log_matching("%] close ") == #sizes end, 10,
      "three close lines")
    proxy:stop()
    -- Python's json module is the judge; it prints per-connection sums.
    local py = [[
import json, sys
conns = {}
for n, line in enumerate(open(sys.argv[1]), 1):
    ev = json.loads(line)
    assert isinstance(ev, dict), "line %d is not an object" % n
    c = conns.setdefault(ev["id"], {"up": 0, "down": 0, "events": []})
    c["events"].append(ev["event"])
    if ev["event"] == "open":
        c["client"] = ev["client"]
    if ev["event"] == "data":
        c["up" if ev["dir"] == "client->upstream" else "down"] += ev["bytes"]
    if ev["event"] == "close":
        c["close"] = ev
for c in conns.values():
    cl = c["close"]
    print(c["client"], c["up"], c["down"], cl["bytes_up"], cl["bytes_down"],
          cl.get("reason", "-"), ",".join(c["events"][:2]), c["events"][-1])
]]
    peers.write_file(dir .. "/check.py", py)
    local r = peers.run({ "python3", dir .. "/check.py", path }, 10)
    peers.assert_ok(r, "parsing the event log")
    local seen = 0
    for client, up_, down, cup, cdown, reason, first, last in
        r.out:gmatch("(%S+) (%d+) (%d+) (%d+) (%d+) (%S+) (%S+) (%S+)\n") do
      local n = ports[tonumber(client:match(":(%d+)$"))]
      assert(n, "unknown client " .. client)
      local answer = n + #("END " .. n .. "\n")
      assert.same({ n, answer, n, answer }, { tonumber(up_), tonumber(down), tonumber(cup),
                                              tonumber(cdown) })
      assert.equal("-", reason)
      assert.equal("open,connected", first)
      assert.equal("close", last)
      seen = seen + 1
    end
    assert.equal(#sizes, seen)
  end)
end)

describe("debug proxy event log, any bytes", function()
  after_each(teardown)

  it("is JSON a strict decoder takes: UTF-8 data as text, other bytes in base64", function()
    local dir = peers.tmpdir()
    -- the upstream's unix socket has a name that is not UTF-8 either
    local upath = dir .. "/up\255\128.sock"
    local up = t.start{ handler = UPSTREAM, listen = { "unix:" .. upath } }
    local path = dir .. "/events.jsonl"
    local proxy = start_debug("unix:" .. upath, { events = path, dump = "none" })
    local high = {}
    for b = 0x80, 0xFF do high[#high + 1] = string.char(b) end
    local payloads = {
      table.concat(high),                    -- every byte 0x80-0xFF
      "\xC3\x28 \xE2\x82 \xF0\x28\x8C\xBC", -- bad continuation, cut sequences
      "\xED\xA0\x80 \xC0\xAF \xF4\x90\x80\x80", -- a surrogate, an overlong, past U+10FFFF
      "h\xC3\xA9llo \xE2\x9C\x93 \"q\" \\ / \0\1\31\127\n", -- valid UTF-8 and controls
    }
    local sent = {}
    for _, data in ipairs(payloads) do sent[exchange_eof(proxy, data)] = data end
    t.eventually(function() return #proxy:log_matching("%] close ") == #payloads end, 10,
      "every close line")
    proxy:stop()
    -- Python, strict: the file is read as UTF-8 with errors raised, NaN and
    -- friends are refused. It prints each connection's bytes each way, put
    -- back together from the data events, as hex.
    local r = peers.run({ "python3", "-c", [==[
import base64, json, sys
def no(c): raise ValueError("not JSON: " + c)
conns, kinds = {}, set()
for line in open(sys.argv[1], "rb"):
    ev = json.loads(line, parse_constant=no)
    c = conns.setdefault(ev["id"], {"client->upstream": b"", "upstream->client": b""})
    if ev["event"] == "open":
        c["client"] = ev["client"]
        assert ev["upstream"].encode("latin-1") == sys.argv[2].encode("utf-8", "surrogateescape")
    if ev["event"] == "data":
        kinds.add(ev["encoding"])
        d = ev["data"]
        d = base64.b64decode(d) if ev["encoding"] == "base64" else d.encode("utf-8")
        c[ev["dir"]] += d
for c in conns.values():
    print(c["client"].split(":")[-1], c["client->upstream"].hex(), c["upstream->client"].hex())
print(" ".join(sorted(kinds)))
]==], path, "unix:" .. upath }, 10)
    peers.assert_ok(r, "decoding the event log")
    local function hex(s) return (s:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)) end
    local seen = 0
    for port, up_hex, down_hex in r.out:gmatch("(%d+) (%x*) (%x*)\n") do
      local data = assert(sent[tonumber(port)], "unknown client port " .. port)
      assert.equal(hex(data), up_hex)
      assert.equal(hex(data .. "END " .. #data .. "\n"), down_hex)
      seen = seen + 1
    end
    assert.equal(#payloads, seen)
    assert.matches("base64 text\n$", r.out)
  end)
end)

describe("echokit.pcap from a handler", function()
  after_each(teardown)

  it("writes a conversation tshark follows, over IPv6 too", function()
    local dir = peers.tmpdir()
    local path = dir .. "/custom.pcap"
    -- a handler that answers in reverse and captures itself
    peers.write_file(dir .. "/h.lua", [[
local echokit = require "echokit"
local args = ...
local cap = assert(echokit.pcap(args.pcap))
return {
  on_connect = function(c)
    local h, p = c:peer()
    local sh, sp = c:sockname()
    c.s = assert(cap:stream(h, p, sh, sp))
  end,
  on_data = function(c, d)
    c.s:client(d)
    local r = d:reverse()
    c.s:server(r)
    c:write(r)
  end,
  on_eof = function(c) c.s:fin("client"); c.s:fin("server"); c:close() end,
}
]])
    local srv = t.start{ handler = dir .. "/h.lua", args = { pcap = path },
                         listen = { "[::1]:0" } }
    local c = assert(socket.tcp6())
    c:settimeout(t.T(5))
    assert(c:connect("::1", srv:addr().port))
    local _, port = c:getsockname()
    t.send_all(c, "abcdef")
    assert.equal("fedcba", t.recv_n(c, 6))
    assert(c:shutdown("send"))
    assert.equal("", (t.recv_until_closed(c, t.T(5))))
    c:close()
    srv:stop()
    assert_clean_capture(path)
    local s = assert(follow_all(path, 1)[tonumber(port)])
    assert.equal("[::1]:" .. port, s.nodes[1])
    assert.equal("abcdef", s.client)
    assert.equal("fedcba", s.server)
  end)
end)

describe("debug proxy with a stderr nobody reads", function()
  after_each(teardown)

  -- echokit -H debug with stderr on its stdout pipe (2>&1), which the test
  -- reads up to the `listening on` line and then leaves alone, so the pipe
  -- fills up as a stalled log reader's would.
  local function start_stalled(upstream, args)
    local a = { upstream = upstream }
    for k, v in pairs(args or {}) do a[k] = v end
    local argv = t.build_argv{ listen = { "127.0.0.1:0" }, handler = "debug", args = a }
    local p = assert(t.proc.spawn(argv, { cwd = t.src }))
    finally(function()
      if not p:wait(0) then p:kill("KILL"); p:wait(5) end
    end)
    local line, why = p:readline(t.T(10))
    local port = line and line:match("^listening on 127%.0%.0%.1:(%d+)$")
    assert(port, "no listening line: " .. tostring(line or why))
    return p, tonumber(port)
  end

  local function connect(port)
    local c = assert(socket.tcp())
    c:settimeout(t.T(5))
    assert(c:connect("127.0.0.1", port))
    return c
  end

  it("drops the dump rather than stall every connection, and says how much", function()
    local up = t.start{ handler = "echo" }
    local p, port = start_stalled(peers.addr_of(up))
    local c = connect(port)
    -- 4 MiB is some 17 MiB of hexdump: far more than a pipe holds
    t.exchange(c, t.random_bytes(4 * MiB), { timeout = 15 })
    local other = connect(port)
    local t0 = t.now()
    assert.equal("still here", t.ask(other, "still here", 2))
    assert(t.now() - t0 < t.T(1), "a second client waited " .. (t.now() - t0) .. " s")
    c:close()
    other:close()
    -- Reading again lets the output through, and the next write brings the
    -- note of what was lost. Nothing may be left to write once the queue has
    -- drained, so while the pipe stays quiet a new client makes some output.
    local dropped
    local deadline = t.now() + t.T(15)
    repeat
      local line, why = p:readline(t.T(0.3))
      dropped = line and line:match(" %[debug%] (%d+) bytes of output dropped")
      if why == "timeout" then
        local k = connect(port)
        assert.equal("poke", t.ask(k, "poke", 5))
        k:close()
      end
    until dropped or why == "eof" or t.now() > deadline
    assert(dropped and tonumber(dropped) > 0, "no drop note on stderr")
    -- and the dump goes on as before
    local k = connect(port)
    local _, kport = k:getsockname()
    assert.equal("after", t.ask(k, "after", 5))
    k:close()
    local want = "%] open 127%.0%.0%.1:" .. kport .. " %-> "
    local seen
    repeat
      local line = p:readline(math.max(0, deadline - t.now()))
      seen = line and line:find(want)
    until seen or not line
    assert(seen, "no open line for the client after the drops")
    p:kill("TERM")
    local rest = p:readall(t.T(10))
    assert.same({ "exited", 0 }, { p:wait(t.T(5)) }, t.clip(rest, 4000))
    assert.same({ "exited", 0 }, { p:wait(t.T(5)) })
  end)
end)
