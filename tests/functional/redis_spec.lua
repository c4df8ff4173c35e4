-- The built-in `redis` mock (handlers/redis_mock.lua on echokit.resp) against
-- Debian's redis-cli and redis-benchmark, and raw sockets for protocol errors.
local t = require "echokit_test"
local peers = require "peers"
local fairness = require "fairness"
local slow = require "slow_peers"

-- The bytes of a command as clients send it.
local function resp_command(...)
  local out = { "*" .. select("#", ...) .. "\r\n" }
  for _, a in ipairs({ ... }) do out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n" end
  return table.concat(out)
end

-- redis-cli with formatted replies ("(integer) 1", "(nil)", "(error) ...").
local function cli(srv, ...)
  local argv = { "redis-cli", "-h", "127.0.0.1", "-p", tostring(srv:port()), "--no-raw", ... }
  local r = peers.assert_ok(peers.run(argv, 10))
  return (r.out:gsub("\n$", ""))
end

describe("redis mock", function()
  after_each(peers.teardown)

  it("answers redis-cli for every command it implements", function()
    local srv = t.start{ handler = "redis" }
    local cases = {
      { { "ping" }, "PONG" },
      { { "ping", "hi there" }, '"hi there"' },
      { { "echo", "a\nb" }, '"a\\nb"' },
      { { "set", "k", "v1" }, "OK" },
      { { "get", "k" }, '"v1"' },
      { { "get", "missing" }, "(nil)" },
      { { "set", "k", "v2", "NX" }, "(nil)" },
      { { "set", "k", "v3", "XX", "GET" }, '"v1"' },
      { { "set", "new", "x", "XX" }, "(nil)" },
      { { "exists", "k", "k", "new" }, "(integer) 2" },
      { { "incr", "n" }, "(integer) 1" },
      { { "incrby", "n", "41" }, "(integer) 42" },
      { { "decr", "n" }, "(integer) 41" },
      { { "decrby", "n", "50" }, "(integer) -9" },
      { { "set", "big", "9223372036854775807" }, "OK" },
      { { "incr", "big" }, "(error) ERR increment or decrement would overflow" },
      { { "incr", "k" }, "(error) ERR value is not an integer or out of range" },
      { { "ttl", "k" }, "(integer) -1" },
      { { "ttl", "missing" }, "(integer) -2" },
      { { "expire", "k", "100" }, "(integer) 1" },
      { { "ttl", "k" }, "(integer) 100" },
      { { "expire", "missing", "100" }, "(integer) 0" },
      { { "set", "t", "x", "EX", "50" }, "OK" },
      { { "ttl", "t" }, "(integer) 50" },
      { { "set", "t", "x", "EX", "0" }, "(error) ERR invalid expire time in 'set' command" },
      { { "set", "t", "x", "EX", "ten" }, "(error) ERR value is not an integer or out of range" },
      { { "set", "t", "x", "NX", "XX" }, "(error) ERR syntax error" },
      { { "set", "t", "x", "EX", "9223372036854775807" }, "(error) ERR invalid expire time in 'set' command" },
      { { "expire", "k", "9223372036854775807" }, "(error) ERR invalid expire time in 'expire' command" },
      { { "set", "gone", "x" }, "OK" },
      { { "expire", "gone", "-5" }, "(integer) 1" },
      { { "exists", "gone" }, "(integer) 0" },
      { { "incrby", "n", "-9223372036854775809" }, "(error) ERR value is not an integer or out of range" },
      { { "incrby", "n", "9223372036854775808" }, "(error) ERR value is not an integer or out of range" },
      { { "incrby", "n", "-9223372036854775808" }, "(error) ERR increment or decrement would overflow" },
      { { "keys", "[kn]" }, '1) "k"\n2) "n"' },
      { { "keys", "b*" }, '1) "big"' },
      { { "del", "k", "n", "missing" }, "(integer) 2" },
      { { "dbsize" }, "(integer) 2" },
      { { "flushall" }, "OK" },
      { { "dbsize" }, "(integer) 0" },
      { { "get" }, "(error) ERR wrong number of arguments for 'get' command" },
      { { "set", "a" }, "(error) ERR wrong number of arguments for 'set' command" },
      { { "nosuch", "x", "y" }, "(error) ERR unknown command 'nosuch', with args beginning with: 'x' 'y' " },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[2], cli(srv, table.unpack(c[1])), table.concat(c[1], " "))
    end
    local count = tonumber(cli(srv, "command", "count"):match("%(integer%) (%d+)"))
    assert(count and count >= 20, "COMMAND COUNT: " .. tostring(count))
    assert.truthy(cli(srv, "command", "info", "get"):find('"get"', 1, true))
  end)

  it("expires keys set with PX and PEXPIRE", function()
    local srv = t.start{ handler = "redis" }
    -- in one packet: a redis-cli process per command can take longer than
    -- 100 ms on a loaded machine, and PTTL would find the key gone
    local c = srv:connect()
    t.send_all(c, "SET soon x PX 100\r\nSET later y\r\nPEXPIRE later 150\r\nPTTL soon\r\n")
    assert.same({ "+OK", "+OK", ":1" }, { t.recv_line(c), t.recv_line(c), t.recv_line(c) })
    local ttl = tonumber(t.recv_line(c):match("^:(%d+)$"))
    assert(ttl and ttl > 0 and ttl <= 100, "PTTL " .. tostring(ttl))
    t.eventually(function() return cli(srv, "get", "soon") == "(nil)" end, 3, "key 'soon' expiring")
    t.eventually(function() return cli(srv, "exists", "later") == "(integer) 0" end, 3,
                 "key 'later' expiring")
    assert.equal("(integer) -2", cli(srv, "ttl", "soon"))
  end)

  it("shares the data between connections", function()
    local srv = t.start{ handler = "redis" }
    local a, b = srv:connect(), srv:connect()
    t.send_all(a, "SET shared 42\r\n")
    assert.equal("+OK", t.recv_line(a))
    t.send_all(b, "*2\r\n$4\r\nINCR\r\n$6\r\nshared\r\n")
    assert.equal(":43", t.recv_line(b))
  end)

  it("passes redis-benchmark -t ping,set,get,incr with zero errors", function()
    local srv = t.start{ handler = "redis" }
    for _, pipeline in ipairs({ "1", "16" }) do
      local r = peers.assert_ok(peers.run({ "redis-benchmark", "-h", "127.0.0.1", "-p",
        tostring(srv:port()), "-t", "ping,set,get,incr", "-n", "20000", "-c", "50",
        "-P", pipeline, "-q", "--csv" }, 60))
      local tests = {}
      for name in r.out:gmatch('"([%w_]+)","[%d.]+"') do tests[#tests + 1] = name end
      assert.same({ "PING_INLINE", "PING_MBULK", "SET", "GET", "INCR" }, tests)
      assert.falsy((r.out .. r.err):find("[Ee]rror"), r.out .. r.err)
      assert.falsy((r.out .. r.err):find("WARNING"), r.out .. r.err)
    end
    -- INCR on the benchmark's key ran 2 x 20000 times
    assert.equal('"40000"', cli(srv, "get", "counter:__rand_int__"))
  end)

  it("answers a protocol error in Redis's words, closes, and keeps serving", function()
    local srv = t.start{ handler = "redis", args = { max_bulk = "1k" } }
    for _, case in ipairs({
      { "*x\r\n", "-ERR Protocol error: invalid multibulk length" },
      { "*1\r\n$2048\r\n", "-ERR Protocol error: invalid bulk length" },
      { "*1\r\n+PING\r\n", "-ERR Protocol error: expected '$', got '+'" },
      { 'SET "a b\r\n', "-ERR Protocol error: unbalanced quotes in request" },
    }) do
      local c = srv:connect()
      t.send_all(c, "PING\r\n" .. case[1])
      assert.equal("+PONG", t.recv_line(c))
      assert.equal(case[2], t.recv_line(c))
      local rest, err = t.recv_until_closed(c, 5)
      assert.same({ "", "closed" }, { rest, err })
    end
    assert.equal("PONG", cli(srv, "ping"))
  end)

  it("answers QUIT after the replies before it, then closes", function()
    local srv = t.start{ handler = "redis" }
    local c = srv:connect()
    t.send_all(c, "PING\r\nECHO hi\r\nQUIT\r\nPING\r\n")
    local all = t.recv_until_closed(c, 5)
    assert.equal("+PONG\r\n$2\r\nhi\r\n+OK\r\n", all)
  end)

  it("matches KEYS and CONFIG GET globs as Redis does, in bounded time", function()
    local srv = t.start{ handler = "redis" }
    for _, k in ipairs({ "d", "5", "x]", ("a"):rep(2000) }) do assert.equal("OK", cli(srv, "set", k, "v")) end
    assert.equal('1) "d"', cli(srv, "keys", "\\d"))          -- \d is a literal d
    assert.equal('1) "5"\n2) "d"', cli(srv, "keys", "[^]"))   -- any one byte; no Lua error
    assert.equal('1) "x]"', cli(srv, "keys", "x[\\]]"))
    assert.equal('1) "appendonly"\n2) "no"', cli(srv, "config", "get", "append*"))
    assert.equal("(error) ERR glob-style pattern longer than 1024 bytes",
                 cli(srv, "keys", ("?"):rep(1025)))
    -- exponential for a backtracking matcher; the budget could not stop it
    local c = srv:connect()
    t.send_all(c, "KEYS *a*a*a*a*b\r\nKEYS *a*a*a*a*a\r\nPING\r\n")
    assert.equal("*0", t.recv_line(c, 10))
    assert.equal("*1", t.recv_line(c, 10))
    assert.equal("$2000", t.recv_line(c, 10))
    assert.equal(("a"):rep(2000), t.recv_line(c, 10))
    assert.equal("+PONG", t.recv_line(c, 10))
  end)

  it("sweeps expired keys without them being touched", function()
    local srv = t.start{ handler = "redis" }
    local c = srv:connect()
    local cmds = {}
    for i = 1, 5000 do cmds[i] = "SET k" .. i .. " v PX 50\r\n" end
    t.send_all(c, table.concat(cmds))
    for _ = 1, 5000 do assert.equal("+OK", t.recv_line(c, 10)) end
    t.eventually(function()
      t.send_all(c, "DBSIZE\r\n")
      local n = t.recv_line(c, 5)
      return n == ":0", n
    end, 10, "the sweep emptying the database")
  end)

  it("answers a pipeline of large GETs as the client reads, not all at once", function()
    -- the replies (100 MiB) are far past --max-buffer; built in one piece
    -- they would get the connection reset
    local srv = t.start{ handler = "redis", opts = { "--max-buffer", "4m" } }
    local c = srv:connect()
    local value = ("v"):rep(256 * 1024)
    t.send_all(c, resp_command("SET", "big", value))
    assert.equal("+OK", t.recv_line(c))
    -- valgrind: 25 MiB; fewer made the transfer so short that one loop turn
    -- (bounded, the point of the test) was a quarter of it
    local n = t.wrapper and 100 or 400
    local reply = "$" .. #value .. "\r\n" .. value .. "\r\n"
    local got = t.exchange(c, ("GET big\r\n"):rep(n), { expect = reply:rep(n), timeout = 60 })
    assert.equal(#reply * n, got)
    assert.equal("PONG", cli(srv, "ping"))
  end)

  it("keeps answering other clients while it answers a 100 MiB pipeline", function()
    -- redis-cli --pipe sends 400 GETs of a 256 KiB value at once (100 MiB of
    -- replies) while a second client sends PINGs one after another. High
    -- water is set past most of it so that write keeps returning true: what
    -- stops the loop is the handler's own bound per callback. Answered in one
    -- callback, the PING in flight waits for most of the 100 MiB; answered a
    -- bounded amount per callback it waits for one turn of the loop.
    local srv = t.start{ handler = "redis", opts = { "--high-water", "64m", "--max-buffer", "256m" } }
    local c, probe = srv:connect(), srv:connect()
    local value = ("v"):rep(256 * 1024)
    t.send_all(c, resp_command("SET", "big", value))
    assert.equal("+OK", t.recv_line(c))
    -- valgrind: 25 MiB; fewer made the transfer so short that one loop turn
    -- (bounded, the point of the test) was a quarter of it
    local n = t.wrapper and 100 or 400
    local path = peers.tmpfile(resp_command("GET", "big"):rep(n))
    local h = peers.spawn({ "sh", "-c", ("exec redis-cli -p %d --pipe < %s"):format(srv:port(), path) })
    local m = fairness.probe{ probe = probe, ping = "PING\r\n", pong = "+PONG\r\n",
                              done = function() return h.p:wait(0) end }
    local how, code = peers.wait_helper(h, 5)
    local out = t.read_file(h.errpath) .. h.p:readall(5)
    assert(how == "exited" and code == 0, "redis-cli --pipe: " .. out)
    assert.truthy(out:find("errors: 0, replies: " .. n, 1, true), out)
    -- a ratio, so that slow builds pass as well: measured, the longest wait
    -- was about 1/10 of the transfer (release and ASan), and 6/10 or more when
    -- most of it was answered in one callback
    assert(m.max_rtt < m.total / 4, "a PING waited for the pipeline: " .. fairness.describe(m))
    assert.equal("PONG", cli(srv, "ping"))
  end)

  it("closes clients whose command does not complete within command_timeout", function()
    local limit = t.T(1)
    local srv = t.start{ handler = "redis", args = { command_timeout = limit } }
    -- a SET whose value never all arrives, a byte every 0.1 s (never idle)
    local clients = {}
    for i = 1, 5 do clients[i] = srv:connect() end
    local served
    local res = slow.trickle(clients, {
      bytes = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" .. ("x"):rep(100000),
      timeout = 10,
      during = function(tick)
        if tick == 3 then served = cli(srv, "ping") end
      end,
    })
    assert.equal("PONG", served)
    for i, r in ipairs(res) do
      assert.equal(("-ERR command not complete after %gs (command_timeout)\r\n"):format(limit),
                   r.received, "client " .. i)
      assert(r.closed_after >= limit - 0.05, "client " .. i .. " closed early: " .. r.closed_after)
    end
    -- logged once, not once a client
    srv:await_log("command not complete after")
    assert.equal(1, #srv:log_matching("command not complete after"))
    -- the clock is per command: slow commands that each complete in time are
    -- answered, however long the connection has been sending
    local c = srv:connect()
    for _ = 1, 3 do
      t.send_all(c, "*1\r\n$4\r\nPI")
      t.expect_silence(c, limit * 0.5, "half a PING")
      t.send_all(c, "NG\r\n")
      assert.equal("+PONG", t.recv_line(c))
    end
    -- a partial inline command counts as well
    t.send_all(c, "PIN")
    local rest, err = t.recv_until_closed(c, 5)
    assert.same({ "-ERR command not complete after " .. limit .. "s (command_timeout)\r\n", "closed" },
                { rest, err })
    srv:stop()
    local r = t.run{ handler = "redis", args = { command_timeout = "soon" }, opts = { "--check" } }
    assert.equal(2, r.code)
    assert.truthy(r.stderr:find("command_timeout: not a number of seconds: soon", 1, true), r.stderr)
  end)

  it("refuses writes past max_memory with Redis's OOM error", function()
    local srv = t.start{ handler = "redis", args = { max_memory = "1k" } }
    assert.equal("OK", cli(srv, "set", "a", ("x"):rep(600)))
    assert.truthy(cli(srv, "set", "b", ("x"):rep(600)):find("^%(error%) OOM "))
    assert.equal("OK", cli(srv, "set", "a", ("y"):rep(300)))     -- shrinking is fine
    assert.equal("OK", cli(srv, "set", "b", ("x"):rep(600)))
    assert.equal("(integer) 1", cli(srv, "del", "a"))
    assert.equal("OK", cli(srv, "set", "c", ("x"):rep(300)))
  end)

  it("closes a client whose command passes max_command, in Redis's words", function()
    local srv = t.start{ handler = "redis", args = { max_command = "1m" } }
    local c = srv:connect()
    -- each element is charged 64 bytes: 20000 of them are over 1 MiB before any arrives
    t.send_all(c, "*20000\r\n")
    assert.equal("-ERR Protocol error: command too big (max_command)", t.recv_line(c))
    assert.same({ "", "closed" }, { t.recv_until_closed(c, 5) })
    c = srv:connect()
    t.send_all(c, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\n")
    assert.equal("-ERR Protocol error: command too big (max_command)", t.recv_line(c))
    assert.equal("PONG", cli(srv, "ping"))
  end)

  it("reads size arguments as the command line does, and stops on a bad one", function()
    local srv = t.start{ handler = "redis", args = { max_bulk = "2KB" } }
    assert.equal("OK", cli(srv, "set", "k", ("x"):rep(2048)))
    srv:stop()
    local r = t.run{ handler = "redis", args = { max_memory = "lots" }, opts = { "--check" } }
    assert.equal(2, r.code)
    assert.truthy(r.stderr:find("not a size: lots", 1, true), r.stderr)
  end)

  it("refuses new keys past max_keys with Redis's OOM error", function()
    local srv = t.start{ handler = "redis", args = { max_keys = 3 } }
    for i = 1, 3 do assert.equal("OK", cli(srv, "set", "k" .. i, "v")) end
    assert.equal("OK", cli(srv, "set", "k1", "overwrite is fine"))
    assert.truthy(cli(srv, "set", "k4", "v"):find("^%(error%) OOM "))
    assert.equal("(integer) 1", cli(srv, "del", "k2"))
    assert.equal("OK", cli(srv, "set", "k4", "v"))
  end)
end)
