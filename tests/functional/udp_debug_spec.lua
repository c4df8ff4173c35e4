-- The debugging proxy over UDP: DNS (a Python client -> echokit -H debug ->
-- dnsmasq) shown datagram by datagram (hexdump lines and JSON events with
-- direction, number and size) and written to a pcap that tshark dissects as
-- DNS, with valid checksums and the real addresses and ports.
local t = require "echokit_test"
local peers = require "peers"
local dns = require "dnsmasq"

describe("debug proxy over UDP", function()
  after_each(peers.teardown)

  it("shows each datagram and writes DNS tshark dissects, checksums valid", function()
    local port = dns.start()
    local pcap = peers.tmpfile()
    local events = peers.tmpfile()
    local px = peers.front(t.start{ handler = "debug", listen = { "udp://127.0.0.1:0" },
      args = { upstream = "udp://127.0.0.1:" .. port, pcap = pcap, events = events },
      opts = { "--udp-idle-timeout", tostring(t.T(0.5)) } })
    local n = dns.queries(px:addr().port, 5, 1, 2)
    assert.equal(5, n.answered)
    -- the flows end by idleness: the close event counts the datagrams
    t.eventually(function() return t.read_file(events):find('"event":"close"', 1, true) end,
                 10, "the flow's close event")
    px:stop()

    -- the JSON events: open, 5 datagrams each way, numbered, with their size
    local ev = peers.debug_events(events)
    local open = ev[1]
    assert.equal("open", open.event)
    local cport = tonumber(open.client:match("^127%.0%.0%.1:(%d+)$"))
    assert(cport, "client address " .. tostring(open.client))
    local seen = { ["client->upstream"] = {}, ["upstream->client"] = {} }
    local close
    for _, e in ipairs(ev) do
      if e.event == "datagram" then
        local list = seen[e.dir]
        list[#list + 1] = e
        assert.equal(#list, e.seq)
        assert.is_nil(e.offset)
        -- the bytes themselves: text when they are UTF-8, else base64
        if e.encoding == "text" then assert.equal(e.bytes, #e.data)
        else assert.equal("base64", e.encoding) end
      elseif e.event == "close" then
        close = e
      end
    end
    assert.equal(5, #seen["client->upstream"])
    assert.equal(5, #seen["upstream->client"])
    local qlen = math.tointeger(seen["client->upstream"][1].bytes) -- cjson gives floats
    assert.equal(12 + #"\7example\4test\0" + 4, qlen) -- header, name, type, class
    assert(seen["upstream->client"][1].bytes > qlen, "an answer holds the question and more")
    assert(close, "no close event")
    assert.equal(5, close.datagrams_up)
    assert.equal(5, close.datagrams_down)
    assert.matches("timeout", close.reason)

    -- the dump on stderr: one header per datagram, then its hexdump from 0
    local err = px:stderr()
    assert.equal(5, select(2, err:gsub("client %-> upstream datagram %d %(" .. qlen .. " bytes%)\n00000000  ", "")))
    assert.equal(5, select(2, err:gsub("upstream %-> client datagram %d %(%d+ bytes%)\n00000000  ", "")))
    assert.matches("close 127%.0%.0%.1:" .. cport .. " after [%d.]+ s: 5 datagrams %(" ..
                   5 * qlen .. " bytes%) client %-> upstream, 5 datagrams", err)

    -- the pcap: 10 DNS packets, both ways, the real addresses and ports
    local out = peers.tshark({ "-r", pcap, "-Y", "dns", "-o", "udp.check_checksum:TRUE",
      "-o", "ip.check_checksum:TRUE", "-T", "fields", "-E", "separator=|",
      "-e", "ip.src", "-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport",
      "-e", "ip.checksum.status", "-e", "udp.checksum.status", "-e", "dns.flags.response",
      "-e", "dns.qry.name", "-e", "dns.a" })
    local rows = {}
    for line in out:gmatch("[^\n]+") do
      local f = {}
      for v in (line .. "|"):gmatch("([^|]*)|") do f[#f + 1] = v end
      rows[#rows + 1] = f
    end
    assert.equal(10, #rows, "DNS packets in the capture:\n" .. out)
    for i, f in ipairs(rows) do
      local query = i % 2 == 1
      local want = query
        and { "127.0.0.1", "127.0.0.1", tostring(cport), tostring(port), "1", "1", "0",
              dns.NAME, "" }
        or { "127.0.0.1", "127.0.0.1", tostring(port), tostring(cport), "1", "1", "1",
             dns.NAME, dns.ADDRESS }
      assert.same(want, f, "packet " .. i .. ":\n" .. out)
    end
  end)

  it("refuses tls=mitm on a udp:// upstream (no DTLS)", function()
    local r = t.run { handler = "debug", listen = { "udp://127.0.0.1:0" },
      args = { upstream = "udp://127.0.0.1:53", tls = "mitm" } }
    assert.equal(2, r.code)
    assert.matches("tls=mitm needs a TCP upstream", r.stderr, 1, true)
  end)
end)
