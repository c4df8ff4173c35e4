-- The runtime's promise: no handler, and no client through a built-in
-- handler, can crash or stall the process. Each test provokes one way a
-- script used to take everything down and checks that the process lives, the
-- offending connection alone ends, and a bystander is still served.
local t = require "echokit_test"
local socket = require "socket"

local LOADGEN = os.getenv("ECHOKIT_LOADGEN")

-- A bystander's line round trip on an echoing connection: the reply, and how
-- long it took.
local function round_trip(c, line)
  local t0 = t.now()
  t.send_all(c, line .. "\n")
  return t.recv_line(c, 5), t.now() - t0
end

-- The lines a client receives until it has n of them, sorted.
local function lines(c, n)
  local got = {}
  for i = 1, n do got[i] = t.recv_line(c, 5) end
  table.sort(got)
  return got
end

describe("runtime", function()
  after_each(t.teardown)

  describe("callbacks stored from a coroutine", function()
    for _, style in ipairs({ "serve", "wrap" }) do
      it("timer, every, listen, connect, a pipe's tap work from " .. style, function()
        local srv = t.start{ handler = "tests/handlers/coro_refs.lua", args = { style = style } }
        local c = srv:connect()
        if style == "wrap" then t.send_all(c, "go\n") end
        assert.same({ "every fired", "hello", "tap saw hello", "timer fired",
                      "types userdata userdata userdata table" }, lines(c, 5))
        assert.is_true(srv:alive())
        -- and the references they took are given back: none left but the handler's
        c:close()
        local ctl = srv:connect()
        if style == "wrap" then t.send_all(ctl, "go\n") end
        assert.same({ "every fired", "hello", "tap saw hello", "timer fired",
                      "types userdata userdata userdata table" }, lines(ctl, 5))
      end)
    end
  end)

  describe("connection handles", function()
    local srv
    before_each(function() srv = t.start{ handler = "tests/handlers/forge.lua" } end)

    it("keep every key for the handler, integers included", function()
      local c = srv:connect()
      assert.equal("slot file", t.ask(c, "slot"))
      assert.equal("fields one 2 n number", t.ask(c, "fields"))
      assert.equal("unknown ping", t.ask(c, "ping")) -- writes still reach this client
    end)

    it("kept or copied past close answer nil, closed", function()
      local a = srv:connect()
      assert.equal("kept", t.ask(a, "keep"))
      t.recv_until_closed(a)
      local b = srv:connect()
      assert.equal("usekept nil,closed nil,closed nil,closed", t.ask(b, "usekept"))
      -- many times, after the collector had its chance to reuse the memory
      for _ = 1, 20 do
        local c = srv:connect()
        assert.equal("usekept nil,closed nil,closed nil,closed", t.ask(c, "usekept"))
        c:close()
      end
    end)

    it("cannot be forged from a table", function()
      local c = srv:connect()
      assert.equal("forge nil,closed 0", t.ask(c, "forge"))
    end)

    it("cannot be redirected to another client", function()
      local b = srv:connect()
      assert.equal("registered", t.ask(b, "register"))
      local a = srv:connect()
      assert.equal("swapped", t.ask(a, "swap"))
      t.expect_silence(b, 0.2, "the other client")
      assert.equal("unknown x", t.ask(b, "x"))
    end)
  end)

  describe("the Lua memory cap", function()
    it("fails the callback that reaches it, frees its memory, serves the others", function()
      local srv = t.start{ handler = "tests/handlers/hog.lua", opts = { "--lua-memory", "16m" } }
      srv:expect_errors("not enough memory")
      local bystander = srv:connect()
      for round = 1, 3 do
        local hog = srv:connect()
        t.send_all(hog, "grow 64\n")
        local data, err = t.recv_until_closed(hog, 10)
        assert.equal("", data, "round " .. round)
        assert.equal("closed", err)
        assert.equal("ping " .. round, (round_trip(bystander, "ping " .. round)))
        -- what it held is free again: a smaller hoard fits
        local ok = srv:connect()
        assert.equal("grown 8", t.ask(ok, "grow 8", 10))
        ok:close()
      end
      assert.truthy(#srv:log_matching("not enough memory") >= 3)
    end)

    it("holds against clients of -H redis parking partial bulk strings", function()
      local srv = t.start{ handler = "redis", opts = { "--lua-memory", "64m" } }
      srv:expect_errors("not enough memory")
      local bystander = srv:connect()
      local hogs = {}
      local chunk = string.rep("z", 1 << 20)
      for i = 1, 6 do
        local h = srv:connect()
        hogs[i] = h
        -- a 16 MiB bulk string, announced in full and sent but for its end
        h:send("*2\r\n$4\r\nECHO\r\n$16777216\r\n")
        for _ = 1, 15 do
          if not h:send(chunk) then break end
        end
        t.send_all(bystander, "PING\r\n")
        assert.equal("+PONG", t.recv_line(bystander, 10))
      end
      assert.is_true(srv:alive())
      for _, h in ipairs(hogs) do h:close() end
      t.send_all(bystander, "PING\r\n")
      assert.equal("+PONG", t.recv_line(bystander, 10))
    end)
  end)

  describe("fairness", function()
    it("a handler writing until told to wait yields to the loop each MiB", function()
      local srv = t.start{ handler = "tests/handlers/firehose.lua", args = { total = "64m" } }
      local hose = srv:connect(1, 30)
      local bystander = srv:connect()
      t.send_all(hose, "go\n")
      -- read the stream quickly: the socket takes all it is given
      local got, worst, n = 0, 0, 0
      local total = 64 << 20
      local t0 = t.now()
      hose:settimeout(t.T(10))
      while got < total do
        local data, err, partial = hose:receive(math.min(1 << 20, total - got))
        data = data or partial
        assert(data and #data > 0, "stream: " .. tostring(err))
        got = got + #data
        if n < 50 then
          n = n + 1
          local reply, dt = round_trip(bystander, "p" .. n)
          assert.equal("p" .. n, reply)
          if dt > worst then worst = dt end
        end
      end
      local line = srv:await_log("firehose max=(%d+)")
      local max = tonumber(line:match("max=(%d+)"))
      -- one callback wrote at most the quota twice (a turn's count restarts
      -- once) and a block: never the whole stream
      assert.truthy(max <= 2 * (1 << 20) + 64 * 1024, "one callback wrote " .. max .. " bytes")
      -- and the bystander was answered while the stream ran, not after it
      local took = t.now() - t0
      assert.truthy(worst < took / 4, string.format(
        "the worst bystander round trip took %.3f s of the stream's %.3f s", worst, took))
    end)
  end)

  describe("teardown", function()
    it("reaps closed connections on a loop that never idles", function()
      local srv = t.start{ handler = "tests/handlers/busy_stats.lua" }
      local ctl = srv:connect()
      for _ = 1, 50 do
        local c = srv:connect()
        c:close()
      end
      -- every connection accepted (the backlog may still hold some), and
      -- every one but ctl reaped
      t.eventually(function()
        local st = t.stats(ctl)
        return st.connections_total == 51 and st.connections_open == 1,
               string.format("total %d open %d", st.connections_total, st.connections_open)
      end, 3, "51 connections accepted and all but ctl reaped")
    end)

    it("keeps connections_open true under a ping-pong load", function()
      assert(LOADGEN, "ECHOKIT_LOADGEN not set (run under ctest)")
      local srv = t.start{ handler = "tests/handlers/stats.lua" }
      local ctl = srv:connect()
      -- 16 connections in ping-pong keep the loop busy for the whole test
      local load = assert(t.proc.spawn({ LOADGEN, "--mode", "pingpong", "--port",
        tostring(srv:port()), "--conns", "16", "--duration", tostring(t.T(3)),
        "--warmup", "0" }, {}))
      local most = 0
      for _ = 1, 10 do
        for _ = 1, 30 do
          local c = srv:connect()
          c:close()
        end
        local probe = srv:connect()
        assert.equal("hi", t.ask(probe, "hi"))
        probe:close()
        local s = t.stats(ctl)
        if s.connections_open > most then most = s.connections_open end
      end
      load:wait(t.T(30))
      -- ctl, the probe, the 16 load connections, and closes still in flight
      -- from the last burst (the kernel may not have told us yet)
      assert.truthy(most <= 16 + 2 + 30, "connections_open reached " .. most)
    end)
  end)

  describe("the CPU budget", function()
    it("stops a spinning handler in every worker", function()
      local srv = t.start{ handler = "tests/handlers/spin.lua",
                           opts = { "--workers", "2", "--cpu-budget", "1" } }
      srv:expect_errors("CPU budget")
      -- one worker spins: while it does, the other one accepts the next
      -- connection, which then spins too
      local first = srv:connect()
      local pid_a = t.ask(first, "pid")
      t.send_all(first, "spin\n")
      local second, pid_b
      for _ = 1, 20 do
        second = srv:connect()
        pid_b = t.ask(second, "pid", 10)
        if pid_b ~= pid_a then break end
      end
      assert.are_not.equal(pid_a, pid_b, "no connection reached the second worker")
      t.send_all(second, "spin\n")
      for _, c in ipairs({ first, second }) do
        local data, err = t.recv_until_closed(c, 10)
        assert.equal("", data)
        assert.equal("closed", err)
      end
      assert.equal(2, #srv:log_matching("CPU budget"))
      -- both workers live on, and serve
      for _, pid in ipairs({ pid_a, pid_b }) do
        local f = io.open("/proc/" .. pid .. "/stat")
        assert.truthy(f, "worker " .. pid .. " is gone")
        f:close()
      end
      local c = srv:connect()
      assert.equal("still here", t.ask(c, "still here"))
    end)
  end)

  describe("a proxied reset", function()
    for _, reset in ipairs({ false, true }) do
      it(reset and "reaches the client as a reset with reset=1" or
         "reaches the client as a clean end by default", function()
        local up = t.start{ handler = "tests/handlers/reset_after.lua" }
        local px = t.start{ handler = "proxy", args = {
          upstream = "127.0.0.1:" .. up:port(), reset = reset and "1" or nil } }
        local c = px:connect()
        t.send_all(c, "GET\n")
        -- raw reads until the end: "" is a FIN, nil and an errno a reset
        local got, errno = "", nil
        for _ = 1, 100 do
          local r = socket.select({ c }, nil, t.T(5))
          assert(#r == 1, "the proxy did not end the client's stream within 5 s")
          local d, e = t.raw_recv(c)
          if not d or d == "" then errno = e; break end
          got = got .. d
        end
        if reset then
          -- the bytes relayed before the reset may or may not arrive first
          assert.equal(t.proc.errno.ECONNRESET, errno, "expected a reset, got a clean end")
        else
          assert.equal("partial", got)
          assert.is_nil(errno, "expected a clean end, got errno " .. tostring(errno))
        end
      end)
    end
  end)

  describe("output cap", function()
    it("--max-buffer counts only what waits, not what the socket took", function()
      local srv = t.start{ handler = "echo", opts = { "--high-water", "4", "--max-buffer", "4" } }
      local c = srv:connect()
      t.send_all(c, "12345")
      assert.equal("12345", t.recv_n(c, 5))
    end)
  end)
end)
