-- echokit.pcap's UDP streams (file:stream(..., "udp")), read back by tshark:
-- every packet's IP and UDP checksums verify, real DNS queries and answers
-- are dissected as DNS with their names and addresses, over IPv4 and IPv6,
-- and the largest datagrams (65,507 B over IPv4, 65,527 B over IPv6) are one
-- packet each. The records are written by tests/handlers/pcap_udp.lua.
local t = require "echokit_test"
local peers = require "peers"

local HANDLER = "tests/handlers/pcap_udp.lua"

local function teardown() peers.teardown() end

local CHECKSUMS = { "-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE" }

-- A DNS name in wire form.
local function qname(name)
  local out = {}
  for label in name:gmatch("[^.]+") do out[#out + 1] = string.char(#label) .. label end
  return table.concat(out) .. "\0"
end

-- A standard query for NAME's A record, and its answer with ADDR (a.b.c.d).
local function dns_query(id, name)
  return string.pack(">I2I2I2I2I2I2", id, 0x0100, 1, 0, 0, 0) .. qname(name)
      .. string.pack(">I2I2", 1, 1)
end

local function dns_answer(id, name, addr)
  local a, b, c, d = addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return string.pack(">I2I2I2I2I2I2", id, 0x8180, 1, 1, 0, 0) .. qname(name)
      .. string.pack(">I2I2", 1, 1)
      .. string.pack(">I2I2I2I4I2", 0xc00c, 1, 1, 60, 4)
      .. string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

-- Writes the payloads and the plan, runs the handler over one connection and
-- returns its answer lines and the capture's path.
local function capture(plan)
  local dir = peers.tmpdir()
  local lines = {}
  for i, p in ipairs(plan) do
    local file = dir .. "/payload" .. i
    peers.write_file(file, p.data)
    lines[#lines + 1] = table.concat({ p.ch, p.cp, p.sh, p.sp, p.side, file }, " ")
  end
  peers.write_file(dir .. "/plan", table.concat(lines, "\n") .. "\n")
  local path = dir .. "/udp.pcap"
  local srv = t.start{ handler = HANDLER, args = { pcap = path, plan = dir .. "/plan" } }
  local c = srv:connect()
  local answers = {}
  repeat
    local line = t.recv_line(c, t.T(20))
    answers[#answers + 1] = line
  until line == "done"
  c:close()
  srv:stop()
  return answers, path
end

describe("echokit.pcap UDP streams", function()
  after_each(teardown)

  it("hold DNS, IPv6 and the largest datagrams with checksums tshark verifies", function()
    local big4 = t.random_bytes(65507)
    local big6 = t.random_bytes(65527)
    local plan = {
      { ch = "127.0.0.1", cp = 40000, sh = "127.0.0.2", sp = 7, side = "client", data = big4 },
      { ch = "127.0.0.1", cp = 40000, sh = "127.0.0.2", sp = 7, side = "client",
        data = big4 .. "x" },
      { ch = "127.0.0.1", cp = 53001, sh = "127.0.0.53", sp = 53, side = "client",
        data = dns_query(0x1234, "example.test") },
      { ch = "127.0.0.1", cp = 53001, sh = "127.0.0.53", sp = 53, side = "server",
        data = dns_answer(0x1234, "example.test", "192.0.2.1") },
      { ch = "::1", cp = 53002, sh = "2001:db8::53", sp = 53, side = "client",
        data = dns_query(0x4321, "six.example.test") },
      { ch = "::1", cp = 53002, sh = "2001:db8::53", sp = 53, side = "server",
        data = dns_answer(0x4321, "six.example.test", "192.0.2.6") },
      { ch = "::1", cp = 40001, sh = "::2", sp = 7, side = "server", data = big6 },
      { ch = "127.0.0.1", cp = 40002, sh = "::1", sp = 7, side = "client", data = "mixed" },
    }
    local answers, path = capture(plan)
    local want = {
      "write true nil",
      "write nil datagram of 65508 bytes is over the 65507 an IPv4 packet can carry",
      "write true nil", "write true nil", "write true nil", "write true nil",
      "write true nil", "write true nil",
      "client true", "server true",
    }
    for i, w in ipairs(want) do assert.equal(w, answers[i]) end
    assert.matches("^fin false .*a UDP stream has no FIN or RST", answers[#want + 1])
    -- stream 1: 65,507 + 1 bytes in 2 client datagrams, 0 in 1 server one
    assert.equal("counts 65508 0 2 1", answers[#want + 2])
    assert.equal("after stream close nil closed", answers[#want + 3])
    assert.equal("after file close closed", answers[#want + 4])

    -- every packet, with its checksums verified
    local out = peers.tshark({ "-r", path, CHECKSUMS[1], CHECKSUMS[2], CHECKSUMS[3], CHECKSUMS[4],
      "-T", "fields", "-E", "separator=|", "-e", "frame.number", "-e", "ip.src",
      "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "udp.srcport", "-e", "udp.dstport",
      "-e", "udp.length", "-e", "ip.len", "-e", "ipv6.plen", "-e", "ip.checksum.status",
      "-e", "udp.checksum.status", "-e", "dns.flags.response", "-e", "dns.qry.name",
      "-e", "dns.a" })
    local rows = {}
    for line in out:gmatch("[^\n]+") do
      local f = {}
      for v in (line .. "|"):gmatch("([^|]*)|") do f[#f + 1] = v end
      rows[#rows + 1] = { n = f[1], ip = f[2], ip6 = f[3], ip6dst = f[4], sport = f[5],
        dport = f[6], ulen = f[7], iplen = f[8], plen = f[9], ipsum = f[10], usum = f[11],
        resp = f[12], qname = f[13], a = f[14] }
    end
    assert.equal(9, #rows, "packets in the capture:\n" .. out)
    for _, r in ipairs(rows) do
      -- 1 is "Good": tshark computed the checksum and it matched
      assert.equal("1", r.usum, "UDP checksum of packet " .. r.n .. ":\n" .. out)
      if r.ip ~= "" then assert.equal("1", r.ipsum, "IPv4 checksum of packet " .. r.n) end
    end
    local big = rows[1]
    assert.same({ "127.0.0.1", "40000", "7", "65515", "65535" },
                { big.ip, big.sport, big.dport, big.ulen, big.iplen })
    local q, a = rows[2], rows[3]
    assert.same({ "127.0.0.1", "53001", "53", "0", "example.test", "" },
                { q.ip, q.sport, q.dport, q.resp, q.qname, q.a })
    assert.same({ "127.0.0.53", "53", "53001", "1", "example.test", "192.0.2.1" },
                { a.ip, a.sport, a.dport, a.resp, a.qname, a.a })
    local q6, a6 = rows[4], rows[5]
    assert.same({ "::1", "53002", "0", "six.example.test" }, { q6.ip6, q6.sport, q6.resp, q6.qname })
    assert.same({ "2001:db8::53", "1", "six.example.test", "192.0.2.6" },
                { a6.ip6, a6.resp, a6.qname, a6.a })
    local b6 = rows[6]
    assert.same({ "::2", "::1", "7", "40001", "65535", "65535" },
                { b6.ip6, b6.ip6dst, b6.sport, b6.dport, b6.ulen, b6.plen })
    assert.same({ "::ffff:127.0.0.1", "::1" }, { rows[7].ip6, rows[7].ip6dst })
    assert.same({ "9", "8" }, { rows[8].ulen, rows[9].ulen })

    -- the payloads come back byte for byte (the echo dissector's data)
    local hex = peers.tshark({ "-r", path, "-Y", "frame.number == 1 || frame.number == 6", "-T", "fields",
                         "-e", "udp.payload" })
    local got = {}
    for h in hex:gmatch("(%x+)\n") do got[#got + 1] = (h:gsub("%x%x", function(x)
      return string.char(tonumber(x, 16)) end)) end
    t.assert_bytes(big4, got[1], "65,507-byte datagram read back")
    t.assert_bytes(big6, got[2], "65,527-byte datagram read back")

    -- nothing at warning level or above from the layers the writer makes
    local expert = peers.tshark({ "-r", path, "-q", CHECKSUMS[1], CHECKSUMS[2], CHECKSUMS[3],
                            CHECKSUMS[4], "-z", "expert,warn" })
    for line in expert:gmatch("[^\n]+") do
      local proto = line:match("^%s+%d+%s+%S+%s+(%S+)%s+")
      assert(not (proto and ({ Frame = 1, Raw = 1, IPv4 = 1, IPv6 = 1, UDP = 1, DNS = 1 })[proto]),
             "tshark's expert analysis found problems:\n" .. expert)
    end
  end)
end)
