-- --workers N: the master that keeps N workers alive, the per-worker
-- guarantees, and the per-worker sockets. (Shutdown with workers: in
-- shutdown_spec; the CPU budget in every worker: also in runtime_spec.)
local t = require "echokit_test"
local socket = require "socket"

-- The workers of a master once there are n of them (bounded). Those left
-- when the test ends with its master gone are killed (teardown stops a
-- master that runs, and its workers with it).
local function workers_of(srv, n)
  local w = t.eventually(function()
    local c = t.children(srv:pid())
    return #c == n and c, "workers: " .. #c
  end, 5, n .. " workers forked")
  finally(function()
    if srv:alive() then return end
    for _, p in ipairs(w) do
      if not t.pid_gone(p) then os.execute("kill -KILL " .. p) end
    end
  end)
  return w
end

local function has(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

-- A fresh connection's answer to "pid": the worker that took it.
local function served_by(srv)
  local c = srv:connect()
  local pid = tonumber(t.ask(c, "pid", 5))
  c:close()
  return pid
end

describe("--workers", function()
  after_each(t.teardown)

  it("is a usage error when 0 or more than 256 (exit 2, one line)", function()
    for _, n in ipairs({ "0", "10000", "-1", "two" }) do
      local r = t.run { opts = { "--workers", n } }
      assert.same({ "exited", 2 }, { r.how, r.code }, "--workers " .. n .. ": " .. r.stderr)
      assert.matches("^echokit: %-%-workers: '" .. n:gsub("%-", "%%-") ..
                     "' is not 1%.%.256 or auto %(see echokit %-%-help%)\n$", r.stderr)
      assert.equal("", r.stdout)
    end
  end)

  it("auto starts one worker per online CPU", function()
    local f = assert(io.popen("nproc"))
    local ncpu = tonumber(f:read("l"))
    f:close()
    local srv = t.start { opts = { "--workers", "auto" } }
    if ncpu > 1 then
      workers_of(srv, ncpu)
    else
      assert.same({}, t.children(srv:pid()), "one CPU: one process, no master")
    end
    local c = srv:connect()
    assert.equal("hi", t.ask(c, "hi"))
  end)

  it("replaces a worker killed with SIGKILL within 2 s, serving throughout", function()
    local srv = t.start { handler = "tests/handlers/spin.lua", opts = { "--workers", "2" } }
    srv:expect_errors("worker %d %(pid %d+%) killed by signal 9 %(SIGKILL%)")
    local before = workers_of(srv, 2)
    -- a connection on the worker that stays, open across the death
    local keep, keep_pid
    for _ = 1, 40 do
      keep = srv:connect()
      keep_pid = tonumber(t.ask(keep, "pid"))
      if keep_pid == before[1] then break end
      keep:close()
    end
    assert.equal(before[1], keep_pid, "no connection reached worker " .. before[1])
    local victim = before[2]
    os.execute("kill -KILL " .. victim)
    -- during: new connections are answered (one that lands on the dead
    -- worker's socket waits there for its replacement)
    for i = 1, 4 do assert.equal("during " .. i, t.ask(srv:connect(), "during " .. i, 5)) end
    local after = t.eventually(function()
      local c = t.children(srv:pid())
      return #c == 2 and not has(c, victim) and c, "workers: " .. table.concat(c, " ")
    end, 2, "a replacement for the killed worker")
    local new = has(before, after[1]) and after[2] or after[1]
    local line = srv:await_log("worker (%d) %(pid " .. victim .. "%) killed by signal 9 %(SIGKILL%)")
    local index = line:match("worker (%d) ")
    srv:await_log("worker " .. index .. " started %(pid " .. new .. "%)")
    -- after: the replacement serves, and so does the connection kept open
    local seen = {}
    for _ = 1, 40 do
      seen[served_by(srv)] = true
      if seen[new] and seen[keep_pid] then break end
    end
    assert.truthy(seen[new], "the replacement " .. new .. " served no connection")
    assert.falsy(seen[victim])
    assert.equal("still open", t.ask(keep, "still open"))
    assert.equal(1, #srv:log_matching("killed by signal"))
  end)

  it("stops a spinning callback in one worker while every other connection is served", function()
    local srv = t.start { handler = "tests/handlers/spin.lua",
                          opts = { "--workers", "2", "--cpu-budget", "1" } }
    srv:expect_errors("CPU budget")
    local pids = workers_of(srv, 2)
    -- two connections on one worker (a, a2) and one on the other (b)
    local on = { [pids[1]] = {}, [pids[2]] = {} }
    for _ = 1, 60 do
      local c = srv:connect()
      local p = tonumber(t.ask(c, "pid"))
      table.insert(on[p], c)
      if #on[pids[1]] >= 2 and #on[pids[2]] >= 1 then break end
    end
    local a, a2, b = on[pids[1]][1], on[pids[1]][2], on[pids[2]][1]
    assert.truthy(a and a2 and b, "connections did not reach both workers")
    t.send_all(a, "spin\n")
    -- the other worker answers while a's worker spins: a is still open
    for i = 1, 3 do assert.equal("other " .. i, t.ask(b, "other " .. i)) end
    local r = socket.select({ a }, nil, 0)
    assert.equal(0, #r, "the spinning connection ended before the other worker answered")
    -- the budget ends the spin: a closes, and its worker serves a2 again
    local data, err = t.recv_until_closed(a, 10)
    assert.same({ "", "closed" }, { data, err })
    assert.equal("same worker", t.ask(a2, "same worker"))
    assert.equal(pids[1], tonumber(t.ask(a2, "pid")))
    assert.equal(1, #srv:log_matching("CPU budget"))
    assert.same(pids, workers_of(srv, 2))
  end)

  it("serves a tls:// listener from every worker", function()
    local srv = t.start { handler = "tests/handlers/whoami.lua",
                          opts = { "--workers", "2", "--listen", "tls://127.0.0.1:0",
                                   "--tls-self-signed" } }
    local line = assert(srv.p:readline(t.T(5)), "no second 'listening on' line")
    local addr = line:match("^listening on tls://(.+)$")
    assert.truthy(addr, line)
    local pids = workers_of(srv, 2)
    local seen, n = {}, 0
    for _ = 1, 30 do
      local p = io.popen(("printf 'pid\\n' | timeout %d openssl s_client -connect %s -quiet " ..
                          "2>/dev/null"):format(math.ceil(t.T(5)), addr))
      local out = p:read("a")
      p:close()
      local pid = tonumber(out:match("^(%d+)\n$"))
      assert.truthy(has(pids, pid), "not a worker's pid: " .. out)
      if not seen[pid] then seen[pid] = true; n = n + 1 end
      if n == 2 then break end
    end
    assert.equal(2, n, "TLS connections reached one worker only")
  end)

  it("exits 0 on a SIGTERM sent right after the 'listening on' line", function()
    -- the workers may not exist yet, or not have loaded the handler
    local bad = {}
    for i = 1, 10 do
      local srv = t.start { opts = { "--workers", "2" } }
      srv.p:kill("TERM")
      local how, code = srv:wait_exit(5)
      if not (how == "exited" and code == 0) then
        bad[#bad + 1] = string.format("run %d: %s %s\n%s", i, how, code, srv:stderr())
      end
      srv:exit_checked_by_test()
    end
    assert(#bad == 0, #bad .. " of 10 runs did not exit 0:\n" .. table.concat(bad, "\n"))
  end)

  it("stops every worker and exits 0 when a worker calls echokit.stop()", function()
    local srv = t.start { handler = "tests/handlers/conn.lua",
                          opts = { "--workers", "2", "--grace", "2" } }
    local pids = workers_of(srv, 2)
    local c = srv:connect()
    t.send_all(c, "stop\n")
    assert.equal("stopping", t.recv_line(c))
    c:close()
    assert.same({ "exited", 0 }, { srv:wait_exit(5) })
    for _, p in ipairs(pids) do assert.truthy(t.pid_gone(p), "worker " .. p .. " left") end
    assert.equal(1, #srv:log_matching("stopped on its own"))
  end)

  it("gives up with exit 1 when every worker dies at start-up, without a fork loop", function()
    local r = t.run({ handler = "tests/handlers/worker_fails.lua", listen = { "127.0.0.1:0" },
                      opts = { "--workers", "2" } }, t.T(20))
    assert.same({ "exited", 1 }, { r.how, r.code }, r.stderr)
    assert.matches("listening on 127%.0%.0%.1:%d+", r.stdout)  -- it loaded in the master
    assert.matches("error every worker died at start%-up 5 times in a row: giving up", r.stderr)
    -- each death names the worker and the cause
    assert.matches("worker 0: tests/handlers/worker_fails%.lua:%d+: worker_fails%.lua " ..
                   "refuses to start in a worker", r.stderr)
    assert.matches("worker 1 %(pid %d+%) exited with status 2 at start%-up", r.stderr)
    -- backed off: 5 starts per worker, over at least 0.1 + 0.2 + 0.4 + 0.8 s
    local starts = 0
    for _ in r.stderr:gmatch("worker %d started") do starts = starts + 1 end
    assert.truthy(starts <= 2 * 4, starts .. " restarts")
    assert.truthy(r.elapsed >= 1.5, "gave up after " .. r.elapsed .. " s: no back-off")
  end)
end)
