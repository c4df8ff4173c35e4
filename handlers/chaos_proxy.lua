-- chaos: a proxy that injects faults (echokit.toxics) into what it relays.
--
--   echokit -H chaos -- upstream=127.0.0.1:6379 latency=0.1 jitter=0.02
--   echokit -H chaos -- upstream=127.0.0.1:80 bandwidth=64 stream=downstream
--   echokit -H chaos -- upstream=127.0.0.1:6379 reset_peer=0.5 toxicity=0.3
--
-- One toxic per TYPE=VALUE argument, VALUE being its main attribute (seconds
-- for durations, like every echokit option):
--   latency=S [jitter=S]   bandwidth=KB/s   slicer=BYTES [size_variation=BYTES]
--   [slice_delay=S]   slow_close=S   timeout=S (0: until the stream ends)
--   reset_peer=S   limit_data=BYTES   down=1 (drop every connection)
-- Any attribute as TYPE.ATTR=VALUE; per toxic TYPE.stream= and
-- TYPE.toxicity=. Defaults for all: stream=downstream (or upstream),
-- toxicity=1. With --admin, the toxics can be changed at run time through the
-- control API, where this proxy is named `name=` (default "chaos").
local toxics = require "echokit.toxics"
local args = ...
local upstream = args.upstream
if not upstream then
  error("chaos: give the upstream address: -- upstream=HOST:PORT (and toxics, e.g. latency=0.1)")
end

local MAIN = {
  latency = "latency", bandwidth = "rate", slicer = "average_size", slow_close = "delay",
  timeout = "timeout", reset_peer = "timeout", limit_data = "bytes", down = false,
}
local SHORT = { jitter = { "latency", "jitter" }, size_variation = { "slicer", "size_variation" },
                slice_delay = { "slicer", "delay" } }
local COMMON = { upstream = true, stream = true, toxicity = true, name = true }
local connect_opts = require("echokit.upstream").options(args, "chaos")
for _, k in ipairs(require("echokit.upstream").KEYS) do COMMON[k] = true end

local function number(key, v)
  local n = tonumber(v)
  if not n then error(string.format("chaos: %s=%s is not a number", key, tostring(v)), 0) end
  return n
end

local wanted, order = {}, {}
local function toxic(ty)
  if not toxics.types[ty] then error("chaos: unknown toxic type '" .. ty .. "'", 0) end
  if not wanted[ty] then
    wanted[ty] = { type = ty, attributes = {} }
    order[#order + 1] = ty
  end
  return wanted[ty]
end

local keys = {}
for k in pairs(args) do if type(k) == "string" then keys[#keys + 1] = k end end
table.sort(keys)
for _, k in ipairs(keys) do
  local v = args[k]
  local ty, attr = k:match("^([%w_]+)%.([%w_]+)$")
  if ty then
    local t = toxic(ty)
    if attr == "stream" then t.stream = v
    elseif attr == "toxicity" then t.toxicity = number(k, v)
    else t.attributes[attr] = number(k, v) end
  elseif MAIN[k] ~= nil then
    local n = number(k, v)
    if MAIN[k] then toxic(k).attributes[MAIN[k]] = n
    elseif n ~= 0 then toxic(k) end
  elseif SHORT[k] then
    toxic(SHORT[k][1]).attributes[SHORT[k][2]] = number(k, v)
  elseif not COMMON[k] then
    error("chaos: unknown argument '" .. k .. "' (see the comment at the top of the chaos handler)", 0)
  end
end

local set = toxics.set()
for _, ty in ipairs(order) do
  local t = wanted[ty]
  t.stream = t.stream or args.stream
  t.toxicity = t.toxicity or (args.toxicity and number("toxicity", args.toxicity))
  local ok, err = set:add(t)
  if not ok then error("chaos: " .. ty .. ": " .. err, 0) end
end

-- Shown by the control API (--admin), where it can be changed and disabled.
local proxy = require("echokit.toxiproxy").adopt(args.name or "chaos", upstream, set)

return toxics.handler {
  upstream = upstream,
  connect_opts = connect_opts,
  toxics = set,
  down = function() return not proxy.enabled end,
}
