-- bench/loadgen, the benchmark's load generator: its modes against echokit
-- and bench/bare_echo, paired windows (both servers at once, load alternating
-- between them), and the byte checks that make a wrong echo fail the run.
local t = require "echokit_test"
local peers = require "peers"

local LOADGEN = assert(os.getenv("ECHOKIT_LOADGEN"), "ECHOKIT_LOADGEN not set (run under ctest)")
local BARE = assert(os.getenv("ECHOKIT_BARE_ECHO"), "ECHOKIT_BARE_ECHO not set (run under ctest)")

local MODES = {
  pingpong = { args = { "--conns", "8", "--size", "64" }, unit = "req", rate = "rps" },
  bulk = { args = { "--conns", "4", "--size", "65536", "--inflight", "262144" }, unit = "mb", rate = "mbps" },
  connrate = { args = { "--conns", "4", "--size", "64", "--sources", "4" }, unit = "conn", rate = "cps" },
}

-- bare_echo on a free port: { h = helper, port = n }
local function start_bare()
  local h = peers.spawn({ BARE, "127.0.0.1:0" })
  local line = h.p:readline(t.T(10))
  local port = line and tonumber(line:match("^listening on 127%.0%.0%.1:(%d+)$"))
  assert(port, "bare_echo: " .. tostring(line) .. "\n" .. peers.helper_stderr(h))
  return { h = h, port = port }
end

local function loadgen(args, timeout) return peers.loadgen(LOADGEN, args, timeout) end

local function paired(a, a_pid, b, mode, pairs)
  local args = { "--mode", mode, "--port", tostring(a.port), "--pid", tostring(a_pid), "--label", "a",
                 "--pair-port", tostring(b.port), "--pair-pid", tostring(b.h.p:pid()),
                 "--pair-label", "bare", "--pairs", tostring(pairs or 2), "--window", "0.15",
                 "--warmup", "0.05" }
  for _, x in ipairs(MODES[mode].args) do args[#args + 1] = x end
  return loadgen(args)
end

describe("bench/loadgen", function()
  after_each(function() t.teardown(); peers.cleanup() end)

  for _, mode in ipairs{ "pingpong", "bulk", "connrate" } do
    it("measures echokit and bare C in paired windows (" .. mode .. "), every byte checked", function()
      local srv = t.start{ handler = "echo" }
      local bare = start_bare()
      local code, kv, line = paired({ port = srv:port() }, srv:pid(), bare, mode, 3)
      assert.equal(0, code, line)
      local u, rate = MODES[mode].unit, MODES[mode].rate
      assert.equal(1, kv.paired)
      assert.equal("a", kv.a)
      assert.equal("bare", kv.b)
      for _, k in ipairs{ "errors", "mismatches", "stalled", "dead" } do
        assert.equal(0, kv[k], k .. " in " .. line)
      end
      for _, k in ipairs{ "a_cpu_us_per_" .. u, "b_cpu_us_per_" .. u, "a_" .. rate, "b_" .. rate,
                          "ratio_cpu_us_per_" .. u, "ratio_" .. rate } do
        assert(type(kv[k]) == "number" and kv[k] > 0, k .. " missing or not positive in " .. line)
      end
      -- one ratio per pair of windows, in time order
      local n = 0
      for x in tostring(kv["ratios_cpu_us_per_" .. u]):gmatch("[^,]+") do
        n = n + 1
        assert(tonumber(x) and tonumber(x) > 0, "bad ratio " .. x)
      end
      assert.equal(3, n)
    end)
  end

  it("charges each window to the server it loaded", function()
    -- echokit burning ~100 us per message against bare C at a few us: were
    -- windows mixed up or CPU taken from the wrong process, the ratio would
    -- not come out far above 1 (nor the request rate far below).
    local srv = t.start{ handler = "tests/handlers/bench_slow.lua" }
    local bare = start_bare()
    local code, kv, line = paired({ port = srv:port() }, srv:pid(), bare, "pingpong", 2)
    assert.equal(0, code, line)
    assert(kv.ratio_cpu_us_per_req > 3, "ratio_cpu_us_per_req " .. kv.ratio_cpu_us_per_req .. " in " .. line)
    assert(kv.a_cpu_us_per_req > 50, "a_cpu_us_per_req " .. kv.a_cpu_us_per_req)
    assert(kv.ratio_rps < 0.5, "ratio_rps " .. kv.ratio_rps)
  end)

  it("fails the run when a server echoes wrong bytes", function()
    local srv = t.start{ handler = "tests/handlers/bench_corrupt.lua" }
    local code, kv, line = loadgen({ "--mode", "pingpong", "--port", tostring(srv:port()),
      "--pid", tostring(srv:pid()), "--conns", "4", "--duration", "0.2", "--warmup", "0" })
    assert.equal(1, code, line)
    assert(kv.mismatches > 0, line)
    -- and in paired windows
    local bare = start_bare()
    code, kv, line = paired({ port = srv:port() }, srv:pid(), bare, "pingpong", 1)
    assert.equal(1, code, line)
    assert(kv.mismatches > 0, line)
  end)
end)

-- bench/tls_loadgen, the TLS benchmark's client, against echokit's TLS
-- listener (a self-signed certificate made at start-up): every mode, one
-- window and paired windows, every byte checked.
describe("bench/tls_loadgen", function()
  local TLS_LOADGEN = assert(os.getenv("ECHOKIT_TLS_LOADGEN"), "ECHOKIT_TLS_LOADGEN not set (run under ctest)")
  after_each(function() peers.cleanup() end)

  -- echokit -H echo on tls://127.0.0.1:0: { h = helper, port = n }
  local function start_tls()
    local h = peers.spawn({ t.bin, "-q", "-l", "tls://127.0.0.1:0", "--tls-self-signed" })
    local line = h.p:readline(t.T(10))
    local port = line and tonumber(line:match("^listening on tls://127%.0%.0%.1:(%d+)$"))
    assert(port, "echokit: " .. tostring(line) .. "\n" .. peers.helper_stderr(h))
    return { h = h, port = port }
  end

  local function tls_loadgen(args) return peers.loadgen(TLS_LOADGEN, args) end

  local MODES = {
    bulk = { "--conns", "2", "--size", "65536", "--inflight", "262144" },
    handshake = { "--conns", "4", "--size", "64", "--sources", "4" },
    pingpong = { "--conns", "4", "--size", "64" },
  }
  local RATE = { bulk = "mbps", handshake = "hps", pingpong = "rps" }

  for _, mode in ipairs{ "handshake", "bulk", "pingpong" } do
    it("runs " .. mode .. " through a TLS listener, alone and in paired windows", function()
      local a, b = start_tls(), start_tls()
      local args = { "--mode", mode, "--port", tostring(a.port), "--pid", tostring(a.h.p:pid()),
                     "--duration", "0.3", "--warmup", "0.1", table.unpack(MODES[mode]) }
      local code, kv, line, err = tls_loadgen(args)
      assert.equal(0, code, line .. "\n" .. err)
      for _, k in ipairs{ "errors", "mismatches", "stalled", "dead", "conn_fail" } do
        assert.equal(0, kv[k], k .. " in " .. line)
      end
      assert(kv[RATE[mode]] > 0, line)
      assert.equal("TLS_AES_128_GCM_SHA256", kv.cipher)
      args = { "--mode", mode, "--port", tostring(a.port), "--pid", tostring(a.h.p:pid()), "--label", "a",
               "--pair-port", tostring(b.port), "--pair-pid", tostring(b.h.p:pid()), "--pair-label", "b",
               "--pairs", "2", "--window", "0.15", "--warmup", "0.05", table.unpack(MODES[mode]) }
      code, kv, line, err = tls_loadgen(args)
      assert.equal(0, code, line .. "\n" .. err)
      assert.equal(1, kv.paired)
      for _, k in ipairs{ "errors", "mismatches", "stalled", "dead" } do
        assert.equal(0, kv[k], k .. " in " .. line)
      end
      assert(kv["ratio_" .. RATE[mode]] > 0, line)
    end)
  end

  it("holds idle TLS connections and reads the server's memory", function()
    local a = start_tls()
    local code, kv, line = tls_loadgen({ "--mode", "idle", "--port", tostring(a.port),
      "--pid", tostring(a.h.p:pid()), "--count", "200", "--sources", "2", "--hold", "0.1" })
    assert.equal(0, code, line)
    assert.equal(200, kv.ok)
    assert.equal(0, kv.closed_by_server)
    assert(kv.rss_per_conn > 0, line)
  end)
end)
