-- Graceful shutdown: SIGTERM/SIGINT, --grace, echokit.stop().
local t = require "echokit_test"

local MiB = 1024 * 1024

describe("shutdown", function()
  after_each(t.teardown)

  it("exits 0 on SIGTERM with no connections, promptly", function()
    local srv = t.start{}
    local how, code, took = srv:stop("TERM", t.T(5))
    assert.same({ "exited", 0 }, { how, code })
    assert(took < t.T(2), "took " .. took .. " s")
  end)

  it("exits 0 on a SIGTERM sent right after the 'listening on' line", function()
    -- A supervisor may stop the server as soon as it announced itself: the
    -- signal handling must be in place before the line is printed.
    local bad = {}
    for i = 1, 20 do
      local srv = t.start{}
      srv.p:kill("TERM")
      local how, code = srv:wait_exit(5)
      if not (how == "exited" and code == 0) then
        bad[#bad + 1] = string.format("run %d: %s %s", i, how, code)
      end
      srv:exit_checked_by_test()
    end
    assert(#bad == 0, #bad .. " of 20 runs did not exit 0:\n" .. table.concat(bad, "\n"))
  end)

  it("exits 0 however many SIGTERMs arrive while it stops", function()
    -- The second signal cuts the grace period short; later ones must not
    -- find the default action (death) restored while it exits.
    -- sh's builtin kill in a loop until the process is a zombie: faster
    -- than a loop in Lua, so that some signals land in the last microseconds.
    local storm = "while :; do " .. string.rep('kill -TERM "$1" 2>/dev/null || exit 0; ', 20) ..
      'read -r _ _ state _ < "/proc/$1/stat" || exit 0; [ "$state" = Z ] && exit 0; done'
    local bad = {}
    for i = 1, 50 do
      local srv = t.start{}
      os.execute("timeout 5 sh -c '" .. storm .. "' sh " .. srv:pid())
      local how, code = srv:wait_exit(5)
      srv:exit_checked_by_test()
      if not (how == "exited" and code == 0) then
        bad[#bad + 1] = string.format("run %d: %s %s", i, how, code)
      end
    end
    assert(#bad == 0, #bad .. " of 50 runs did not exit 0:\n" .. table.concat(bad, "\n"))
  end)

  it("exits 0 on SIGINT", function()
    local srv = t.start{}
    local how, code = srv:stop("INT", t.T(5))
    assert.same({ "exited", 0 }, { how, code })
  end)

  it("closes an idle connection after --grace 1 and exits 0", function()
    local srv = t.start{ opts = { "--grace", "1" } }
    local c = srv:connect()
    t.send_all(c, "hi\n")
    assert.equal("hi", t.recv_line(c))
    local how, code, took = srv:stop("TERM", t.T(4))
    assert.same({ "exited", 0 }, { how, code })
    assert(took < t.T(1) + 1.5, "exit took " .. took .. " s with --grace 1")
    local _, err = t.recv_until_closed(c, 2)
    assert.equal("closed", err)
  end)

  it("stops accepting at once, and exits as soon as the last connection ends", function()
    local srv = t.start{ opts = { "--grace", "4" } }
    local c = srv:connect()
    t.send_all(c, "hi\n")
    assert.equal("hi", t.recv_line(c))
    srv.p:kill("TERM")
    -- new connections are refused while the old one drains
    local refused = t.eventually(function()
      local d, err = srv:try_connect(1, 0.5)
      if d then d:close() return false, "connected" end
      return err == "connection refused", err
    end, 2, "refusing new connections after SIGTERM")
    assert.truthy(refused)
    assert.is_true(srv:alive(), "exited before its open connection ended")
    -- the open connection still works during the grace period
    t.send_all(c, "still\n")
    assert.equal("still", t.recv_line(c))
    local t0 = t.now()
    c:close()
    local how, code = srv:wait_exit(3)
    assert.same({ "exited", 0 }, { how, code })
    assert(t.now() - t0 < t.T(2), "exit took " .. (t.now() - t0) .. " s after the last close")
  end)

  it("echoes data already sent when SIGTERM arrives mid-exchange", function()
    local srv = t.start{ opts = { "--grace", "5" } }
    local c = srv:connect()
    local data = t.random_bytes(4 * MiB)
    local signalled = false
    t.exchange(c, data, { timeout = 20, progress = function(sent)
      if not signalled and sent >= MiB then
        signalled = true
        srv.p:kill("TERM")
      end
    end })
    assert.is_true(signalled)
    c:settimeout(t.T(5))
    assert(c:shutdown("send"))
    local rest, err = t.recv_until_closed(c, 5)
    assert.equal("closed", err)
    assert.equal("", rest)
    local how, code = srv:wait_exit(3)
    assert.same({ "exited", 0 }, { how, code })
  end)

  it("echoes the last bytes a client sent just before SIGTERM", function()
    local srv = t.start{ opts = { "--grace", "3" } }
    local c = srv:connect()
    local data = t.random_bytes(200 * 1000)
    t.send_all(c, data)        -- in flight: not yet read back
    srv.p:kill("TERM")
    local got = t.recv_n(c, #data, 5)
    t.assert_bytes(data, got, "echo across SIGTERM")
    c:close()
    assert.same({ "exited", 0 }, { srv:wait_exit(3) })
  end)

  it("begins a graceful shutdown on echokit.stop()", function()
    local srv = t.start{ handler = "tests/handlers/conn.lua", opts = { "--grace", "2" } }
    local c = srv:connect()
    t.send_all(c, "stop\n")
    assert.equal("stopping", t.recv_line(c))
    c:close()
    assert.same({ "exited", 0 }, { srv:wait_exit(4) })
  end)

  it("closes every open connection when the grace period ends", function()
    local srv = t.start{ opts = { "--grace", "1" } }
    local cs = {}
    for i = 1, 5 do
      cs[i] = srv:connect()
      t.send_all(cs[i], "x")
      assert.equal("x", t.recv_n(cs[i], 1))
    end
    local how, code, took = srv:stop("TERM", t.T(4))
    assert.same({ "exited", 0 }, { how, code })
    assert(took < t.T(1) + 1.5, "exit took " .. took .. " s")
    for i = 1, 5 do
      local _, err = t.recv_until_closed(cs[i], 2)
      assert.equal("closed", err)
    end
  end)

  describe("with --workers 2", function()
    -- The two workers' pids; a failed test kills any it leaves behind.
    local function workers_of(srv)
      local workers = t.eventually(function()
        local w = t.children(srv:pid())
        return #w == 2 and w, "workers: " .. #w
      end, 5, "two workers forked")
      finally(function()
        for _, w in ipairs(workers) do
          if not t.pid_gone(w) then os.execute("kill -KILL " .. w) end
        end
      end)
      return workers
    end

    it("SIGTERM reaches the workers and everything exits 0", function()
      local srv = t.start{ opts = { "--workers", "2", "--grace", "1" } }
      local c = srv:connect()
      t.send_all(c, "hi\n")
      assert.equal("hi", t.recv_line(c))
      local workers = workers_of(srv)
      local how, code, took = srv:stop("TERM", t.T(5))
      assert.same({ "exited", 0 }, { how, code })
      -- the open connection holds its worker for the grace period, no longer
      assert(took < t.T(1) + 1.5, "exit took " .. took .. " s with --grace 1")
      for _, w in ipairs(workers) do assert.truthy(t.pid_gone(w), "worker " .. w .. " left") end
      local _, err = t.recv_until_closed(c, 2)
      assert.equal("closed", err)
    end)

    it("SIGINT does the same", function()
      local srv = t.start{ opts = { "--workers", "2" } }
      workers_of(srv)
      local how, code = srv:stop("INT", t.T(5))
      assert.same({ "exited", 0 }, { how, code })
    end)

    it("workers stop when their parent is killed", function()
      local srv = t.start{ opts = { "--workers", "2", "--grace", "1" } }
      local workers = workers_of(srv)
      srv.p:kill("KILL")
      srv:wait_exit(5)
      srv:exit_checked_by_test()
      t.eventually(function()
        for _, w in ipairs(workers) do
          if not t.pid_gone(w) then return false, "worker " .. w .. " still running" end
        end
        return true
      end, 5, "workers gone after the parent's death")
    end)
  end)
end)
