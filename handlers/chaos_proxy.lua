-- chaos: a proxy that injects faults (echokit.toxics) into what it relays.
--
--   echokit -H chaos -- upstream=127.0.0.1:6379 latency=0.1 jitter=0.02
--   echokit -H chaos -- upstream=127.0.0.1:80 bandwidth=64 stream=downstream
--   echokit -H chaos -- upstream=127.0.0.1:6379 reset_peer=0.5 toxicity=0.3
--   echokit -H chaos -l udp://127.0.0.1:5300 -- upstream=udp://127.0.0.1:53 loss=0.3
--
-- One toxic per TYPE=VALUE argument, VALUE being its main attribute (seconds
-- for durations, like every echokit option):
--   latency=S [jitter=S]   bandwidth=KB/s   slicer=BYTES [size_variation=BYTES]
--   [slice_delay=S]   slow_close=S   timeout=S (0: until the stream ends)
--   reset_peer=S   limit_data=BYTES   down=1 (drop every connection)
-- echokit's own (docs/API.md, "echokit.toxics"):
--   http_status=STATUS   resp_error=MESSAGE ("ERR ...")   drop_message=1
--   delay_message=S   corrupt=P (probability; corrupt.count=BYTES flipped)
--   loss=P   duplicate=P   reorder=P [reorder.hold=S]   truncate=BYTES
--   refuse=1   slow_open=S   limit_time=S [limit_time.mode=fin|rst]
-- Any attribute as TYPE.ATTR=VALUE (a number where the attribute is one,
-- else text: http_status.body=TEXT, http_status.set_header.NAME=VALUE); per
-- toxic TYPE.stream= and TYPE.toxicity=. Defaults for all: stream=downstream
-- (or upstream), toxicity=1; http_status and resp_error act on upstream.
-- Aim a toxic (one protocol per toxic):
--   TYPE.method=GET  TYPE.path=GLOB  TYPE.header.NAME=GLOB   HTTP requests
--   TYPE.command=GET  TYPE.key=GLOB                          Redis commands
--   TYPE.opcode=text|binary|ping|pong|close                  WebSocket messages
--   TYPE.line=LUA_PATTERN                                    lines
--   TYPE.client=CIDR  TYPE.sni=GLOB                          clients
-- e.g. http_status=503 http_status.path=/api/* http_status.body=down
--      resp_error="ERR busy" resp_error.command=GET
--      latency=0.2 latency.stream=upstream latency.client=127.0.0.2/32
-- With --admin, the toxics can be changed at run time through the
-- control API, where this proxy is named `name=` (default "chaos").
--
-- UDP (upstream=udp://, with -l udp://...): each client flow gets its own
-- upstream flow, and every datagram goes through the toxics whole, as one
-- chunk; replies go back to the flow they answer. latency/jitter may
-- reorder datagrams, bandwidth paces whole ones, limit_data passes the
-- datagrams that fit and then closes the flows, timeout, reset_peer,
-- limit_time and down close them; the types that need a byte stream
-- (slicer, slow_close, http_status, resp_error, slow_open) and the
-- protocol aims (method, path, header, command, key, opcode, line) are a
-- start-up error. Either flow's idle timeout (--udp-idle-timeout) closes
-- both.
local toxics = require "echokit.toxics"
local args = ...
local upstream = args.upstream
if not upstream then
  error("chaos: give the upstream address: -- upstream=HOST:PORT (and toxics, e.g. latency=0.1)")
end

local MAIN = {
  latency = "latency", bandwidth = "rate", slicer = "average_size", slow_close = "delay",
  timeout = "timeout", reset_peer = "timeout", limit_data = "bytes", down = false,
  http_status = "status", resp_error = "message", drop_message = false,
  delay_message = "delay", corrupt = "probability", loss = "probability",
  duplicate = "probability", reorder = "probability", truncate = "bytes", refuse = false,
  slow_open = "delay", limit_time = "duration",
}
local SHORT = { jitter = { "latency", "jitter" }, size_variation = { "slicer", "size_variation" },
                slice_delay = { "slicer", "delay" } }
-- TYPE.KEY aiming arguments: the matcher protocol each belongs to.
local AIM = { method = "http", path = "http", header = "http", command = "resp", key = "resp",
              opcode = "websocket", line = "bytes" }
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

-- An attribute's value: a number where the type's default is one, else text.
local function value(ty, attr, key, v)
  local spec = toxics.types[ty].specs[attr]
  if spec and type(spec.default) == "string" then return v end
  if spec and spec.default ~= nil and type(spec.default) ~= "number" then
    error(string.format("chaos: %s cannot be given as an argument", key), 0)
  end
  return number(key, v)
end

-- TYPE.KEY[.NAME]=VALUE for the matcher, the client aims and extras.
local function aim(t, key, sub, name, v)
  local proto = AIM[sub]
  if proto then
    t.match = t.match or {}
    if proto == "bytes" then t.match.bytes = v; return true end
    t.match[proto] = t.match[proto] or {}
    if sub == "header" then
      if not name then error("chaos: " .. key .. ": give the header, as TYPE.header.NAME=GLOB", 0) end
      t.match.http.header = t.match.http.header or {}
      t.match.http.header[name] = v
    else
      t.match[proto][sub] = v
    end
  elseif sub == "client" or sub == "sni" then
    t.attributes[sub] = v
  elseif sub == "set_header" and name then
    t.attributes.headers = t.attributes.headers or {}
    t.attributes.headers[name] = v
  else
    return false
  end
  return true
end

local keys = {}
for k in pairs(args) do if type(k) == "string" then keys[#keys + 1] = k end end
table.sort(keys)
for _, k in ipairs(keys) do
  local v = args[k]
  local ty, attr = k:match("^([%w_]+)%.(.+)$")
  if ty then
    local t = toxic(ty)
    local sub, name = attr:match("^([%w_]+)%.(.+)$")
    if attr == "stream" then t.stream = v
    elseif attr == "toxicity" then t.toxicity = number(k, v)
    elseif not aim(t, k, sub or attr, name, v) then
      if sub then error("chaos: unknown argument '" .. k .. "'", 0) end
      t.attributes[attr] = value(ty, attr, k, v)
    end
  elseif MAIN[k] ~= nil then
    if MAIN[k] then toxic(k).attributes[MAIN[k]] = value(k, MAIN[k], k, v)
    elseif number(k, v) ~= 0 then toxic(k) end
  elseif SHORT[k] then
    toxic(SHORT[k][1]).attributes[SHORT[k][2]] = number(k, v)
  elseif not COMMON[k] then
    error("chaos: unknown argument '" .. k .. "' (see the comment at the top of the chaos handler)", 0)
  end
end

local set = toxics.set{ datagram = upstream:match("^udp://") ~= nil }
for _, ty in ipairs(order) do
  local t = wanted[ty]
  if not toxics.types[ty].def.stream then t.stream = t.stream or args.stream end
  t.toxicity = t.toxicity or (args.toxicity and number("toxicity", args.toxicity))
  if t.match then
    local n = 0
    for _ in pairs(t.match) do n = n + 1 end
    if n > 1 then
      error("chaos: " .. ty .. ": aim it at one protocol (method/path/header, command/key, opcode or line)", 0)
    end
    t.attributes.match = t.match
    t.match = nil
    -- a request matcher reads the client's side
    if (t.attributes.match.http or t.attributes.match.resp) and not t.stream then
      t.stream = "upstream"
    end
  end
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
