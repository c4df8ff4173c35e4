-- tools: run real client programs (curl, wrk, redis-cli, python3 scripts) from
-- functional specs, every run bounded in time, every process reaped.
--
--   local tools = require "tools"
--   after_each(tools.teardown)     -- instead of t.teardown: also kills helpers
--   local r = tools.run({ "curl", "-s", url }, 10)   -- { how, code, out, err }
--   tools.assert_ok(r, "curl")
local t = require "echokit_test"

local M = {}

local helpers, tmp = {}, {}

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.shq = shq

function M.tmpfile(data)
  local p = os.tmpname()
  tmp[#tmp + 1] = p
  if data then
    local f = assert(io.open(p, "wb"))
    assert(f:write(data))
    f:close()
  end
  return p
end

-- Starts a process; stdout on a pipe (h.p:readline / readall), stderr in a file.
function M.spawn(argv, o)
  o = o or {}
  local errpath = M.tmpfile()
  local p, err = t.proc.spawn(argv, { stderr = errpath, cwd = o.cwd or t.src, env = o.env })
  assert(p, "cannot start " .. argv[1] .. ": " .. tostring(err))
  local h = { p = p, argv = argv, errpath = errpath }
  helpers[#helpers + 1] = h
  return h
end

function M.stderr(h) return t.read_file(h.errpath) end

-- Waits (bounded) for a helper to exit; kills it and fails on timeout.
function M.wait(h, timeout)
  local how, code = h.p:wait(t.T(timeout))
  if not how then
    h.p:kill("KILL")
    h.p:wait(5)
    error(string.format("%s did not finish within %gs\nstderr:\n%s",
      table.concat(h.argv, " "), t.T(timeout), t.clip(M.stderr(h))), 2)
  end
  return how, code
end

-- Runs a command to completion (bounded): { how=, code=, out=, err= }.
function M.run(argv, timeout, o)
  local h = M.spawn(argv, o)
  local t0 = t.now()
  local out = h.p:readall(t.T(timeout))
  local how, code = M.wait(h, math.max(0.1, t.T(timeout) - (t.now() - t0)))
  return { how = how, code = code, out = out, err = M.stderr(h), argv = argv }
end

function M.assert_ok(r, what)
  assert(r.how == "exited" and r.code == 0, string.format(
    "%s: %s %s\nargv: %s\nstdout:\n%s\nstderr:\n%s", what or r.argv[1], tostring(r.how),
    tostring(r.code), table.concat(r.argv, " "), t.clip(r.out), t.clip(r.err)))
  return r
end

-- t.teardown (servers stopped, exits and logs checked), then the helpers.
function M.teardown()
  local ok, err = pcall(t.teardown)
  for _, h in ipairs(helpers) do
    if not h.p:wait(0) then
      h.p:kill("KILL")
      h.p:wait(5)
    end
  end
  helpers = {}
  for _, p in ipairs(tmp) do os.remove(p) end
  tmp = {}
  if not ok then error(err, 0) end
end

return M
