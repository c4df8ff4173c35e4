-- Test handler: the real handlers/proxy.lua, observed from the inside.
--
--   echokit -H tests/handlers/proxy_stats.lua -- upstream=ADDR
--
-- Logs (info level), for the functional tests to await:
--   stats open=N total=M in=B out=B   whenever echokit.stats() changes (checked every 50 ms;
--                                     in/out are bytes_in/bytes_out)
--   client closed conn N reason=R     a client of the proxy is gone
--   upstream closed conn N reason=R   an upstream connection of the proxy is gone
-- The proxy itself is loaded unchanged; only echokit.connect is wrapped (in the
-- proxy chunk's own environment) to see the upstream connections' on_close.
local echokit = require "echokit"
local args = ...

local src = os.getenv("ECHOKIT_SRC")
local path = (src and src ~= "" and src .. "/" or "") .. "handlers/proxy.lua"

local wrapped = setmetatable({
  connect = function(addr, h)
    local inner = h.on_close
    local mine = {}
    for k, v in pairs(h) do mine[k] = v end
    mine.on_close = function(up, reason)
      echokit.log("info", "upstream closed conn %d reason=%s", up.id, tostring(reason))
      if inner then return inner(up, reason) end
    end
    return echokit.connect(addr, mine)
  end,
}, { __index = echokit })

local env = setmetatable({
  require = function(name)
    if name == "echokit" then return wrapped end
    return require(name)
  end,
}, { __index = _G })

local proxy = assert(loadfile(path, "t", env))(args)

local last
echokit.every(0.05, function()
  local s = echokit.stats()
  local line = string.format("stats open=%d total=%d in=%d out=%d", s.connections_open,
    s.connections_total, s.bytes_in, s.bytes_out)
  if line ~= last then
    last = line
    echokit.log("info", "%s", line)
  end
end)

local h = {}
for k, v in pairs(proxy) do h[k] = v end
local inner_close = proxy.on_close
h.on_close = function(conn, reason)
  echokit.log("info", "client closed conn %d reason=%s", conn.id, tostring(reason))
  if inner_close then return inner_close(conn, reason) end
end
return h
