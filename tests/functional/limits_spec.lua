-- The limits on what clients can take, from real clients: --max-conns,
-- --max-conns-per-ip, --max-buffer, and running out of file descriptors.
local t = require "echokit_test"
local socket = require "socket"

-- One byte out, the same byte back (the echo handler), within a bound.
local function echoes(c, byte, what)
  c:settimeout(t.T(5))
  t.send_all(c, byte)
  local got, err = c:receive(1)
  assert(got == byte, string.format("%s: no echo of %q (%s)", what or "client", byte,
    tostring(err)))
end

-- The client is closed by the server without a byte: "closed", or a reset if
-- the client had sent something the server never read.
local function closed_at_once(c, what)
  local data, err = t.recv_until_closed(c, 5)
  assert.equal("", data, what)
  assert(err == "closed" or err == "connection reset by peer", what .. ": " .. tostring(err))
end

describe("limits", function()
  after_each(t.teardown)

  describe("--max-conns", function()
    it("leaves the N+1th client waiting until one of the N closes", function()
      local srv = t.start{ opts = { "--max-conns", "2" } }
      local a, b = srv:connect(), srv:connect()
      echoes(a, "a", "first client")
      echoes(b, "b", "second client")
      -- the kernel completes the handshake; echokit does not accept it yet
      local c = srv:connect()
      t.send_all(c, "c")
      t.expect_silence(c, 0.5, "third client with --max-conns 2")
      a:close()
      assert.equal("c", t.recv_n(c, 1, 5))
      echoes(b, "B", "second client, after")
      echoes(c, "C", "third client, after")
    end)
  end)

  describe("--max-conns-per-ip", function()
    it("closes the N+1th client from one address, and not a client from another", function()
      local srv = t.start{ opts = { "--max-conns-per-ip", "2", "-v" } }
      local a = assert(srv:connect_from("127.0.0.1"))
      local b = assert(srv:connect_from("127.0.0.1"))
      echoes(a, "a", "first client from 127.0.0.1")
      echoes(b, "b", "second client from 127.0.0.1")
      local c = assert(srv:connect_from("127.0.0.1"))
      closed_at_once(c, "third client from 127.0.0.1")
      srv:await_log("warn closed a connection from 127%.0%.0%.1: 2 open from that address")
      -- 127/8 is all local: another address has its own count
      local d = assert(srv:connect_from("127.0.0.2"))
      echoes(d, "d", "client from 127.0.0.2")
      local d2 = assert(srv:connect_from("127.0.0.2"))
      echoes(d2, "e", "second client from 127.0.0.2")
      -- the ones already open are untouched
      echoes(a, "A", "first client, after")
      echoes(b, "B", "second client, after")
      -- a refused socket never became a connection (-v logs each "open")
      assert.equal(4, #srv:log_matching("%] open$"))
    end)

    it("counts an address down when its connection closes", function()
      local srv = t.start{ opts = { "--max-conns-per-ip", "1" } }
      local a = assert(srv:connect_from("127.0.0.1"))
      echoes(a, "a", "first client")
      closed_at_once(assert(srv:connect_from("127.0.0.1")), "second client")
      a:close()
      -- the close is seen asynchronously: until then a newcomer is refused
      local b = t.eventually(function()
        local c = assert(srv:connect_from("127.0.0.1"))
        t.send_all(c, "b")
        local got, err = c:receive(1)
        if got == "b" then return c end
        c:close()
        return false, err
      end, 5, "a new client accepted after the first closed")
      -- and b now holds the one place again
      closed_at_once(assert(srv:connect_from("127.0.0.1")), "client beside b")
      echoes(b, "B", "b, after")
    end)

    it("keeps each address's count across many addresses and closes", function()
      -- 100 addresses with 2 connections each: both tables grow past their
      -- first size, and closes remove entries from the middle of them
      local srv = t.start{ opts = { "--max-conns-per-ip", "2" } }
      local function ip(i) return "127.0.1." .. i end
      local conns = {}
      for i = 1, 100 do
        conns[i] = { assert(srv:connect_from(ip(i))), assert(srv:connect_from(ip(i))) }
        echoes(conns[i][1], "a", ip(i) .. " first")
        echoes(conns[i][2], "b", ip(i) .. " second")
      end
      for i = 1, 100 do closed_at_once(assert(srv:connect_from(ip(i))), ip(i) .. " third") end
      -- every other address closes one; every fourth closes both
      for i = 2, 100, 2 do
        conns[i][1]:close()
        if i % 4 == 0 then conns[i][2]:close() end
      end
      for i = 2, 100, 2 do
        local places = i % 4 == 0 and 2 or 1
        for p = 1, places do
          t.eventually(function()
            local c = assert(srv:connect_from(ip(i)))
            t.send_all(c, "c")
            if c:receive(1) == "c" then return true end
            c:close()
            return false, "refused"
          end, 5, ip(i) .. " accepted again (" .. p .. " of " .. places .. ")")
        end
      end
      -- now every address is at 2 again
      for i = 1, 100 do
        closed_at_once(assert(srv:connect_from(ip(i))), ip(i) .. " over, again")
      end
      for i = 1, 99, 2 do echoes(conns[i][1], "z", ip(i) .. " untouched") end
    end)

    it("logs refusals at most once a second, with a count", function()
      local srv = t.start{ opts = { "--max-conns-per-ip", "1" } }
      local a = assert(srv:connect_from("127.0.0.1"))
      echoes(a, "a", "first client")
      local t0 = socket.gettime()
      local n = 30
      for i = 1, n do
        closed_at_once(assert(srv:connect_from("127.0.0.1")), "over-limit client " .. i)
      end
      -- one line for the first, then lines with counts that add up to the rest
      local lines
      t.eventually(function()
        lines = srv:log_matching("%-%-max%-conns%-per%-ip")
        local counted = 0
        for _, l in ipairs(lines) do
          if l:find("closed a connection from") then
            counted = counted + 1
          else
            counted = counted + assert(tonumber(l:match("closed (%d+) connection%(s%)")), l)
          end
        end
        return counted == n, counted .. " of " .. n .. " refusals in the log"
      end, 5, "every refusal counted in the log")
      local took = socket.gettime() - t0
      assert(#lines <= math.ceil(took) + 1, string.format("%d lines in %.1fs:\n%s", #lines,
        took, table.concat(lines, "\n")))
      echoes(a, "A", "first client, after")
    end)

    it("counts per worker with --workers 2: at most 2 x N from one address", function()
      local srv = t.start{ opts = { "--max-conns-per-ip", "1", "--workers", "2" } }
      local served, closed = 0, 0
      for i = 1, 6 do
        local c = assert(srv:connect_from("127.0.0.1"))
        t.send_all(c, "x")
        local got, err = c:receive(1)
        if got == "x" then
          served = served + 1
        else
          assert(err == "closed" or err == "connection reset by peer",
            "client " .. i .. ": " .. tostring(err))
          closed = closed + 1
        end
      end
      assert(served >= 1 and served <= 2, served .. " of 6 served by 2 workers with N = 1")
      assert.equal(6 - served, closed)
    end)

    it("does not count unix-socket peers", function()
      local srv = t.start{ listen = { "unix:" .. t.unix_path("perip") },
                           opts = { "--max-conns-per-ip", "1" } }
      local a, b = srv:connect(), srv:connect()
      echoes(a, "a", "first unix client")
      echoes(b, "b", "second unix client")
    end)

    it("counts an IPv6 address", function()
      local probe = socket.tcp6()
      local v6 = probe and probe:bind("::1", 0)
      if probe then probe:close() end
      if not v6 then pending("no IPv6 loopback here") return end
      local srv = t.start{ listen = { "[::1]:0" }, opts = { "--max-conns-per-ip", "1" } }
      local a = srv:connect()
      echoes(a, "a", "first client from ::1")
      closed_at_once(srv:connect(), "second client from ::1")
      srv:await_log("closed a connection from ::1: 1 open")
    end)
  end)

  describe("--max-buffer", function()
    it("closes a client that never reads while its handler writes; a bystander carries on",
      function()
      -- drain.lua's "flood N" writes N bytes at once, ignoring conn:write's false
      local srv = t.start{ handler = "tests/handlers/drain.lua",
                           opts = { "--high-water", "64k", "--max-buffer", "1m", "-v" } }
      local bystander = srv:connect()
      local c = srv:connect()
      t.send_all(c, "flood 8388608\n") -- and never read
      local reason = "error: output buffer limit of 1048576 bytes exceeded"
      srv:await_log("%[conn %d+ [^]]+%] closed %(" .. reason:gsub("%p", "%%%0") .. "%)")
      local got, err = t.recv_until_closed(c, 10)
      assert(#got < 8388608, "received all 8 MiB despite --max-buffer 1m")
      assert(err == "closed" or err == "connection reset by peer", tostring(err))
      -- only that connection: the bystander, open all along, is served in full
      t.send_all(bystander, "flood 300000\n")
      assert.equal(string.rep("z", 300000), t.recv_n(bystander, 300000, 10))
      assert.equal(1, #srv:log_matching("closed %(error: output buffer limit"),
        "only one connection over the limit")
    end)
  end)

  describe("out of file descriptors", function()
    it("pauses accepting, logs it when it starts, every 5 s, and when it ends", function()
      if t.wrapper then pending("a memory checker needs descriptors of its own") return end
      -- echokit raises its soft limit to the hard one: set both
      local nofile = 32
      local srv = t.start{ wrap = { "prlimit", "--nofile=" .. nofile .. ":" .. nofile },
                           opts = { "--grace", "1" } }
      -- Clients until accepts pause. accept(2) fails once every descriptor is
      -- taken, pending client or not, so the client in hand when the line
      -- appears may have been served or not: it waits with those after it.
      local served, waiting = {}, nil
      for i = 1, nofile + 1 do
        local c = srv:connect(1, 5) -- the handshake completes in the kernel's backlog
        t.send_all(c, "x")
        local outcome = t.eventually(function()
          c:settimeout(0)
          if #srv:log_matching("pausing accepts") > 0 then return "paused" end
          if c:receive(1) == "x" then return "served" end
          return false, "neither an echo nor a back-off line"
        end, 5, "client " .. i .. " echoed, or accepts paused")
        c:settimeout(t.T(5))
        if outcome == "paused" then waiting = { c } break end
        served[#served + 1] = c
      end
      assert(waiting, "never ran out of descriptors with --nofile " .. nofile)
      -- these come after the pause: none can be accepted until a client leaves
      for _ = 1, 5 do
        local c = srv:connect(1, 5)
        t.send_all(c, "x")
        waiting[#waiting + 1] = c
      end
      local starved = waiting[2]
      assert(#served > #waiting, #served .. " clients served before the limit")
      -- five seconds of retries (one each 0.1 s) while nothing is freed: one
      -- line when it began, one more after 5 s with the count
      t.expect_silence(starved, 5, "a client while out of descriptors")
      local still = srv:await_log("accept: still Too many open files after 5s: %d+ retries failed")
      local retries = tonumber(still:match("(%d+) retries failed"))
      assert(retries >= 20 and retries <= 60, still)
      assert(srv:alive(), "echokit died out of descriptors")
      assert.equal(1, #srv:log_matching("pausing accepts"), "back-off lines:\n" .. srv:stderr())
      assert.equal(1, #srv:log_matching("accept: still"), "back-off lines:\n" .. srv:stderr())
      assert.equal(0, #srv:log_matching("accepting again"))
      -- clients leave: the waiting ones are accepted and served
      for i = 1, #waiting + 1 do served[i]:close() end
      for i = 1, #waiting do assert.equal("x", t.recv_n(waiting[i], 1, 5)) end
      srv:await_log("accepting again after")
      for i = #waiting + 2, #served do echoes(served[i], "z", "client " .. i .. ", after") end
      local lines = srv:log_matching(" accept: ")
      assert(#lines == 3, "back-off lines:\n" .. table.concat(lines, "\n"))
    end)
  end)
end)
