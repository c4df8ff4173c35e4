-- SIGHUP: the master reloads the handler into new workers while the old ones
-- finish their connections; a handler that does not load changes nothing.
-- (--workers 1 without --master: one process, which cannot reload.)
local t = require "echokit_test"
local socket = require "socket"

-- A handler file of the test's own, rewritten between reloads.
local path
local function write(text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Answers "pid" with the worker's pid; echoes anything else prefixed with
-- its version.
local function handler(version)
  write(([[
local V = %q
return {
  on_data = function(conn, data)
    if data:match("^pid") then
      local f = assert(io.open("/proc/self/stat"))
      local n = f:read("n")
      f:close()
      conn:write(n .. "\n")
      return conn:close()
    end
    conn:write(V .. " " .. data)
  end,
}
]]):format(version))
end

local function hup(srv) os.execute("kill -HUP " .. srv:pid()) end

local function workers_of(srv, n)
  return t.eventually(function()
    local c = t.children(srv:pid())
    return #c == n and c, "workers: " .. #c
  end, 5, n .. " workers")
end

-- One short connection, not kept by the harness: its answer to "x", or
-- nil and why.
local function once(srv, what)
  local a = srv:addr()
  local c = socket.tcp()
  c:settimeout(t.T(5))
  local ok, err = c:connect(a.host, a.port)
  if not ok then c:close(); return nil, "connect: " .. tostring(err) end
  ok, err = c:send((what or "x") .. "\n")
  if not ok then c:close(); return nil, "send: " .. tostring(err) end
  local line
  line, err = c:receive("*l")
  c:close()
  if not line then return nil, "receive: " .. tostring(err) end
  return line
end

-- The n workers, once each has loaded its handler: each has answered a
-- connection (before that, the file must not change under them).
local function ready(srv, n)
  local pids = workers_of(srv, n)
  local seen, left = {}, n
  t.eventually(function()
    local pid = tonumber((once(srv, "pid")))
    if pid and not seen[pid] then seen[pid] = true; left = left - 1 end
    return left == 0, left .. " not answering yet"
  end, 10, "every worker answering")
  return pids
end

-- Waits (bounded) until a new connection gets version v's answer.
local function serves(srv, v)
  return t.eventually(function()
    local line, err = once(srv)
    return line == v .. " x", line or err
  end, 10, "new connections answered by " .. v)
end

local function count(srv, pattern) return #srv:log_matching(pattern) end

describe("SIGHUP", function()
  before_each(function()
    path = os.tmpname() .. ".lua"
    handler("v1")
  end)
  after_each(function()
    -- the servers first: a worker may still be loading the file
    local ok, err = pcall(t.teardown)
    os.remove(path)
    os.remove((path:gsub("%.lua$", "")))
    if not ok then error(err, 0) end
  end)

  it("reloads a changed handler: new connections get it, an open one keeps the old to its end",
     function()
    local srv = t.start { handler = path, opts = { "--workers", "2" } }
    local before = ready(srv, 2)
    local keep = srv:connect()
    assert.equal("v1 before", t.ask(keep, "before"))
    handler("v2")
    hup(srv)
    srv:await_log("reload: handler " .. path:gsub("%p", "%%%0") ..
                  " loaded; starting 2 new workers")
    serves(srv, "v2")
    -- the connection opened before the reload is still served by the old code
    assert.equal("v1 during", t.ask(keep, "during"))
    assert.equal("v1 still", t.ask(keep, "still"))
    keep:close()
    for _, p in ipairs(before) do
      srv:await_log("reload: old worker %d %(pid " .. p .. "%) finished", 10)
    end
    local after = workers_of(srv, 2)
    for _, p in ipairs(after) do
      assert.falsy(p == before[1] or p == before[2], "an old worker is still running")
    end
    for i = 1, 10 do assert.equal("v2 x", once(srv)) end
  end)

  for _, case in ipairs({ { "--workers", "2" }, { "--workers", "1", "--master" } }) do
  it("loses no connection of a client that connects in a loop during the reload (" ..
     table.concat(case, " ") .. ")", function()
    local nw = tonumber(case[2])
    local srv = t.start { handler = path, opts = case }
    ready(srv, nw)
    local failures, n, v1, v2 = {}, 0, 0, 0
    local deadline = t.now() + t.T(20)
    while n < 3000 and t.now() < deadline do
      n = n + 1
      if n == 50 then handler("v2"); hup(srv) end
      local line, err = once(srv)
      if line == "v1 x" then v1 = v1 + 1
      elseif line == "v2 x" then v2 = v2 + 1
      else failures[#failures + 1] = n .. ": " .. tostring(line or err) end
      -- on until the old workers are gone and the new ones served a while
      if v2 >= 100 and count(srv, "reload: old worker %d %(pid %d+%) finished") == nw then
        break
      end
    end
    assert.same({}, failures, #failures .. " of " .. n .. " connections failed")
    assert.truthy(v1 >= 49, "v1 answers: " .. v1)
    assert.truthy(v2 >= 100, "v2 answers: " .. v2 .. " in " .. n .. " connections")
  end)
  end

  it("keeps the running workers when the new handler does not load, logging file and line",
     function()
    local srv = t.start { handler = path, opts = { "--workers", "2" } }
    srv:expect_errors("^reload: .*keeping the running workers$")
    local before = ready(srv, 2)
    write("return {\n  on_data = function(conn, data)\n    conn:write(\n  end,\n}\n")
    hup(srv)
    local line = srv:await_log("reload: .*; keeping the running workers")
    assert.truthy(line:find(path .. ":4: ", 1, true), line)
    assert.equal(0, count(srv, "loaded; starting"))
    for i = 1, 5 do assert.equal("v1 x", once(srv)) end
    assert.same(before, workers_of(srv, 2))
    -- fixed, it reloads
    handler("v3")
    hup(srv)
    serves(srv, "v3")
  end)

  it("coalesces 20 SIGHUPs in a second and ends on the new handler, serving throughout",
     function()
    local srv = t.start { handler = path, opts = { "--workers", "2" } }
    ready(srv, 2)
    -- an open connection keeps the first reload's old workers busy, so the
    -- other SIGHUPs arrive while it is in progress
    local keep = srv:connect()
    assert.equal("v1 held", t.ask(keep, "held"))
    handler("v2")
    local storm = assert(io.popen(("for i in $(seq 20); do kill -HUP %d; sleep 0.05; done; " ..
                                   "echo done"):format(srv:pid())))
    local failures, n = {}, 0
    for _ = 1, 40 do
      n = n + 1
      local line, err = once(srv)
      if line ~= "v1 x" and line ~= "v2 x" then
        failures[#failures + 1] = tostring(line or err)
      end
    end
    assert.equal("done", storm:read("l"))
    storm:close()
    srv:await_log("reload: the previous one's old workers are still finishing")
    assert.equal("v1 still", t.ask(keep, "still"))
    assert.equal(1, count(srv, "loaded; starting 2 new workers"))
    keep:close()
    -- the old workers go, and the one queued reload follows
    t.eventually(function()
      return count(srv, "loaded; starting 2 new workers") == 2
    end, 10, "the queued reload")
    t.eventually(function()
      return count(srv, "reload: old worker %d %(pid %d+%) finished") == 4
    end, 10, "the second reload's old workers gone")
    for _ = 1, 10 do
      local line, err = once(srv)
      if line ~= "v2 x" then failures[#failures + 1] = "after: " .. tostring(line or err) end
    end
    assert.same({}, failures)
    assert.equal(1, count(srv, "still finishing"))
    assert.equal(2, #workers_of(srv, 2))
  end)

  it("with --workers 1 --master, replaces the one worker by a new process", function()
    local srv = t.start { handler = path, opts = { "--workers", "1", "--master" } }
    local before = ready(srv, 1)
    assert.equal(before[1], tonumber(once(srv, "pid")))
    handler("v2")
    hup(srv)
    srv:await_log("reload: handler .* loaded; starting 1 new worker$")
    serves(srv, "v2")
    srv:await_log("reload: old worker 0 %(pid " .. before[1] .. "%) finished")
    local after = workers_of(srv, 1)
    assert.are_not.equal(before[1], after[1])
    assert.equal(after[1], tonumber(once(srv, "pid")))
  end)

  it("with --workers 1 alone (no master), is logged and ignored", function()
    local srv = t.start { handler = path }
    assert.same({}, t.children(srv:pid()))
    handler("v2")
    hup(srv)
    srv:await_log("warn reload: SIGHUP ignored: reloading needs the master")
    assert.equal("v1 x", once(srv))
    assert.equal(srv:pid(), tonumber(once(srv, "pid")))
  end)

  it("--admin with --master: the configuration survives a reload", function()
    local srv = t.start { opts = { "--master", "--admin", "127.0.0.1:0" } }
    local admin
    for _, line in ipairs(srv.stdout_lines) do
      admin = admin or line:match("^admin listening on (.+)$")
    end
    assert(admin, table.concat(srv.stdout_lines, "\n"))
    local function http(method, path, body)
      local host, port = admin:match("^(.+):(%d+)$")
      local c = assert(socket.connect(host, tonumber(port)))
      c:settimeout(t.T(5))
      t.send_all(c, method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" ..
                 "Content-Length: " .. #(body or "") .. "\r\n\r\n" .. (body or ""))
      local resp = t.recv_until_closed(c, 5)
      c:close()
      return resp
    end
    local resp = http("POST", "/proxies", '{"name":"p","upstream":"127.0.0.1:' .. srv:port() ..
                      '","listen":"127.0.0.1:0"}')
    assert.matches("^HTTP/1.1 201", resp)
    local listen = resp:match('"listen":"([^"]+)"')
    local old = t.children(srv:pid())[1]
    hup(srv)
    t.eventually(function()
      local c = t.children(srv:pid())
      return #c == 1 and c[1] ~= old, "workers: " .. table.concat(c, " ")
    end, 10, "the new worker alone")
    resp = http("GET", "/proxies/p")
    assert.matches("^HTTP/1.1 200", resp)
    assert.equal(listen, resp:match('"listen":"([^"]+)"'))
    local host, port = listen:match("^(.+):(%d+)$")
    local c = assert(socket.connect(host, tonumber(port)))
    c:settimeout(t.T(5))
    t.send_all(c, "x\n")
    assert.equal("x", t.recv_line(c, 5))
    c:close()
  end)
end)
