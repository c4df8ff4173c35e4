-- bench/udp_loadgen and bench/bare_udp_echo, the UDP benchmark's tools: paired
-- windows charge each window's CPU to the server it loaded, every echoed byte
-- is checked (a wrong one fails the run), and lost datagrams are timed out and
-- counted without stalling the senders. The tools are built beside echokit.
local t = require "echokit_test"
local peers = require "peers"

local DIR = t.bin:match("^(.*)/[^/]+$")
local LOADGEN, BARE = DIR .. "/udp_loadgen", DIR .. "/bare_udp_echo"

-- A Python UDP echo that echoes wait_ready's 8-byte probes and, by MODE,
-- every datagram ("echo"), all but every 10th ("drop"), or the 50th with one
-- byte flipped ("flip").
local PY_ECHO = [[
import socket, sys
mode = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print("listening on 127.0.0.1:%d" % s.getsockname()[1], flush=True)
n = 0
while True:
    d, a = s.recvfrom(65536)
    if len(d) != 8:
        n += 1
        if mode == "drop" and n % 10 == 0:
            continue
        if mode == "flip" and n == 50:
            d = d[:20] + bytes([d[20] ^ 1]) + d[21:]
    s.sendto(d, a)
]]

local function listening(h, what)
  local line = h.p:readline(t.T(10))
  local port = line and tonumber(line:match("^listening on 127%.0%.0%.1:(%d+)$"))
  assert(port, what .. ": " .. tostring(line) .. "\n" .. peers.helper_stderr(h))
  return { h = h, port = port, pid = h.p:pid() }
end

local function start_bare() return listening(peers.spawn({ BARE, "--port", "0" }), "bare_udp_echo") end

local function start_py(mode)
  local path = peers.tmpdir() .. "/echo.py"
  peers.write_file(path, PY_ECHO)
  return listening(peers.spawn({ "python3", path, mode }), "python echo")
end

local function loadgen(args, timeout) return peers.loadgen(LOADGEN, args, timeout) end

local function single(s, extra)
  local args = { "--port", tostring(s.port), "--pid", tostring(s.pid), "--duration", "0.5",
                 "--warmup", "0.1", "--conns", "4", "--timeout-ms", "200" }
  for _, x in ipairs(extra or {}) do args[#args + 1] = x end
  return loadgen(args)
end

describe("bench/udp_loadgen", function()
  after_each(function() peers.cleanup() end)

  it("charges each paired window to the server it loaded", function()
    local bare, py = start_bare(), start_py("echo")
    local code, kv, line = loadgen({ "--port", tostring(bare.port), "--pid", tostring(bare.pid),
      "--label", "bare", "--pair-port", tostring(py.port), "--pair-pid", tostring(py.pid),
      "--pair-label", "python", "--pairs", "4", "--window", "0.15", "--warmup", "0.05",
      "--conns", "4", "--inflight", "4" })
    assert.equal(0, code, line)
    assert.same({ 1, "bare", "python", 4, 64 }, { kv.paired, kv.a, kv.b, kv.conns, kv.size })
    for _, k in ipairs{ "errors", "mismatches", "stalled", "a_lost", "b_lost", "refused" } do
      assert.equal(0, kv[k], k .. " in " .. line)
    end
    for _, k in ipairs{ "a_dps", "b_dps", "a_cpu_us_per_dgram", "b_cpu_us_per_dgram" } do
      assert(kv[k] > 0, k .. " in " .. line)
    end
    -- Python spends several times the bare C's CPU per datagram: a window
    -- charged to the wrong server would bring the ratio near 1 or above.
    assert(kv.ratio_cpu_us_per_dgram < 0.6, line)
    assert(#tostring(kv.ratios_cpu_us_per_dgram):gsub("[^,]", "") == 3, line)
  end)

  it("echoes every datagram intact through bare_udp_echo", function()
    local code, kv, line = single(start_bare(), { "--size", "1400" })
    assert.equal(0, code, line)
    assert(kv.datagrams > 0 and kv.datagrams == kv.sent, line)
    assert.same({ 0, 0, 0 }, { kv.lost, kv.mismatches, kv.late })
  end)

  it("fails the run on a wrong byte", function()
    local code, kv, line = single(start_py("flip"), { "--warmup", "0", "--duration", "0.3" })
    assert.equal(1, code, line)
    assert.equal(1, kv.mismatches, line)
  end)

  it("times out lost datagrams and counts them, and the senders go on", function()
    local code, kv, line = single(start_py("drop"), { "--warmup", "0", "--duration", "1" })
    assert.equal(0, code, line)
    -- every 10th datagram the server received is dropped: all of them, and
    -- only them, are lost (within the ones still in flight at the edges)
    assert(kv.loss > 0.07 and kv.loss < 0.13, "loss in " .. line)
    assert(kv.datagrams >= 100, "senders stalled: " .. line)
    assert.same({ 0, 0 }, { kv.mismatches, kv.late })
  end)
end)
