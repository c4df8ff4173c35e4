-- echokit.toxiproxy: the control API (`echokit --admin ADDR`), compatible with
-- toxiproxy's HTTP API, so its client libraries and the test suites built on
-- them can drive echokit unchanged.
--
--   GET /version                          GET /proxies     POST /proxies
--   POST /populate                        POST /reset
--   GET | POST | PATCH | DELETE /proxies/{proxy}
--   GET | POST /proxies/{proxy}/toxics
--   GET | POST | PATCH | DELETE /proxies/{proxy}/toxics/{toxic}
--
-- JSON shapes, attribute names, units (milliseconds; microseconds for the
-- slicer's delay; KB/s) and status codes are toxiproxy's. Errors answer
-- {"error": "...", "status": N}. Where echokit differs is listed in
-- docs/API.md ("Control API"). Extensions a toxiproxy client passes through
-- without knowing them: echokit's own toxic types (echokit.toxics) and the
-- attributes match, client and sni of every toxic; a malformed one is a 400.
--
-- Each proxy is an echokit.listen listener whose handler is
-- echokit.toxics.handler over the proxy's toxic set. A handler that builds its
-- own set (the chaos handler) can show it here with toxiproxy.adopt.
local echokit = require "echokit"
local toxics = require "echokit.toxics"

local M = {}

-- Hard limits on what a client of the API controls.
M.MAX_PROXIES = 1000
M.MAX_TOXICS = 100        -- per proxy
M.MAX_NAME = 256          -- bytes in a proxy or toxic name

local proxies = {}        -- name -> proxy
local nproxies = 0

local cjson                -- loaded by serve (the API's only dependency)

---------------------------------------------------------------------------
-- Errors (toxiproxy's messages and statuses)
---------------------------------------------------------------------------
local function apierr(status, msg) return { status = status, error = msg } end

local E = {
  proxy_not_found = function() return apierr(404, "proxy not found") end,
  proxy_exists = function() return apierr(409, "proxy already exists") end,
  toxic_not_found = function() return apierr(404, "toxic not found") end,
  toxic_exists = function() return apierr(409, "toxic already exists") end,
  invalid_type = function() return apierr(400, "invalid toxic type") end,
  invalid_stream = function()
    return apierr(400, "stream was invalid, can be either upstream or downstream")
  end,
  bad_body = function(why) return apierr(400, "bad request body: " .. why) end,
  missing = function(field) return apierr(400, "missing required field: " .. field) end,
}

---------------------------------------------------------------------------
-- Proxies
---------------------------------------------------------------------------

-- toxiproxy listens where it is told; echokit.listen takes numeric addresses
-- only (no name lookup blocks the loop) and "localhost" as 127.0.0.1. The
-- same mapping here lets populate see "localhost:N" as the proxy's address.
local function listen_spec(listen)
  local scheme, rest = listen:match("^(udp://)(.*)$")
  local host, port = (rest or listen):match("^(.*):(%d+)$")
  if host == "localhost" then return (scheme or "") .. "127.0.0.1:" .. port end
  return listen
end

-- An extension: a proxy whose listen and upstream are udp:// relays
-- datagrams (its toxics act on each one, echokit.toxics' datagram sets).
local function is_udp(addr) return addr ~= nil and addr:sub(1, 6) == "udp://" end

-- Where a proxy created without `listen` listens: loopback, a free port,
-- UDP for a udp:// upstream.
local function default_listen(upstream)
  return is_udp(upstream) and "udp://127.0.0.1:0" or "127.0.0.1:0"
end

-- Opens a listener for proxy on listen (not attached to it). Returns the
-- listener or nil, apierr: 400 for a malformed address; 500 for one that
-- cannot be bound, as toxiproxy answers (its Ruby client takes 409 for
-- "proxy exists" and 400 for "invalid toxic", so neither fits).
local function open_listener(proxy, listen)
  local ok, l, err = pcall(echokit.listen, listen_spec(listen), proxy.handler)
  if not ok then -- a malformed address
    local msg = tostring(l):gsub("^.-echokit%.listen: ", "")
    return nil, apierr(400, "listen: " .. msg)
  end
  if not l then return nil, apierr(500, "listen " .. tostring(err)) end
  return l
end

-- Closes a proxy's listener; its connections carry on.
local function close_listener(proxy)
  if proxy.listener then
    proxy.listener:close()
    proxy.listener = nil
  end
end

-- Changes listeners all or nothing. `close` lists proxies whose listener is
-- to close, `open` lists { proxy, listen } to open. Those in `close` are
-- closed first (a new address may be one of theirs); when an open fails, the
-- ones opened are closed and those closed reopen at their addresses, so that
-- nothing has changed. Returns the new listeners (in `open`'s order), or
-- nil, apierr. Connections are not touched either way.
local function swap_listeners(close, open)
  local closed = {}
  for _, proxy in ipairs(close) do
    if proxy.listener then
      close_listener(proxy)
      closed[#closed + 1] = proxy
    end
  end
  local opened = {}
  for i, o in ipairs(open) do
    local l, err = open_listener(o[1], o[2])
    if not l then
      for _, ol in ipairs(opened) do ol:close() end
      for _, proxy in ipairs(closed) do
        -- The address was ours a moment ago; only another process taking
        -- it in between makes this fail.
        local back, berr = open_listener(proxy, proxy.listen)
        if back then
          proxy.listener = back
        else
          proxy.enabled = false
          proxy.set:close_all("close")
          echokit.log("error", "proxy %s: cannot listen on %s again: %s; it is disabled",
                      proxy.name, proxy.listen, berr.error)
          err = apierr(err.status, err.error .. "; and proxy " .. proxy.name ..
                       " could not listen on " .. proxy.listen .. " again (" .. berr.error ..
                       "): it is disabled")
        end
      end
      return nil, err
    end
    opened[i] = l
  end
  return opened
end

-- Attaches a listener opened for proxy (swap_listeners) and logs it.
local function attach(proxy, l)
  proxy.listener = l
  proxy.listen = l:address()
  echokit.log("info", "proxy %s: listening on %s, upstream %s", proxy.name, proxy.listen,
              proxy.upstream)
end

-- A proxy's --metrics counters (echokit.metrics_proxy), taken when it is
-- inserted and freed when it is removed, so a deleted proxy's slot serves
-- another name.
local function metrics_for(name)
  return echokit.metrics_proxy and echokit.metrics_proxy(name)
end

local function new_proxy(name, listen, upstream, tls)
  local proxy = { name = name, listen = listen, upstream = upstream, enabled = false,
                  set = toxics.set{ datagram = is_udp(upstream) }, tls = tls }
  proxy.handler = toxics.handler {
    upstream = function() return proxy.upstream end,
    connect_opts = function() return proxy.tls and { tls = proxy.tls } end,
    toxics = proxy.set,
    down = function() return not proxy.enabled end,
  }
  return proxy
end

-- toxiproxy.adopt(name, upstream, set): shows a handler's own toxic set as a
-- proxy (listening on echokit's --listen addresses), so its toxics can be
-- changed through the API. Returns the proxy; proxy.enabled false means the
-- handler should drop connections (see toxics.handler's `down`).
function M.adopt(name, upstream, set)
  local proxy = { name = name, listen = "(--listen)", upstream = upstream, enabled = true,
                  set = set, adopted = true }
  local old = proxies[name]
  local oldm = old and old.set.metrics
  if old and old.set ~= set then old.set:set_metrics(nil) end
  set:set_metrics(metrics_for(name)) -- claimed before the old one is freed: same slot
  if oldm then oldm:free() end
  if not proxies[name] then nproxies = nproxies + 1 end
  proxies[name] = proxy
  return proxy
end

---------------------------------------------------------------------------
-- JSON views
---------------------------------------------------------------------------

-- Attributes in the API's units (a spec's api factor undone; whole numbers
-- come out as integers, as toxiproxy's int64 fields).
local function api_attributes(toxic)
  local ty = toxics.types[toxic.type]
  local out = {}
  for k, v in pairs(toxic.attributes) do
    -- a match function (set from Lua) has no JSON form: the listing leaves it out
    if type(v) == "function" then goto continue end
    local spec = ty.specs[k]
    if type(v) == "number" and spec and spec.api then
      v = v / spec.api
      local r = math.floor(v + 0.5)
      if math.abs(v - r) < 1e-6 then v = math.tointeger(r) or r end
    end
    out[k] = v
    ::continue::
  end
  return out
end

local function toxic_view(toxic)
  return { name = toxic.name, type = toxic.type, stream = toxic.stream,
           toxicity = toxic.toxicity, attributes = api_attributes(toxic) }
end

-- cjson writes an empty table as {}: arrays are joined by hand so that an
-- empty list stays [].
local function encode_array(list, view)
  local parts = {}
  for i, v in ipairs(list) do parts[i] = cjson.encode(view(v)) end
  return "[" .. table.concat(parts, ",") .. "]"
end

local function proxy_json(proxy)
  local head = cjson.encode { name = proxy.name, listen = proxy.listen,
                              upstream = proxy.upstream, enabled = proxy.enabled }
  return head:sub(1, -2) .. ',"toxics":' .. encode_array(proxy.set:list(), toxic_view) .. "}"
end

local function sorted_names()
  local names = {}
  for name in pairs(proxies) do names[#names + 1] = name end
  table.sort(names)
  return names
end

---------------------------------------------------------------------------
-- Request bodies: every value is checked before anything changes
---------------------------------------------------------------------------

-- JSON has no Infinity or NaN, but a number such as 1e999 reads as one; a
-- stored one made every later listing fail. Returns the path ("a.b") of the
-- first number in v that is not finite, or nil. Depth is bounded by the
-- decoder's (decode_max_depth).
local function nonfinite(v, path)
  if type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return path or "body" end
  elseif type(v) == "table" then
    for k, x in pairs(v) do
      local p = nonfinite(x, path and (path .. "." .. tostring(k)) or tostring(k))
      if p then return p end
    end
  end
end

-- Decodes a JSON body; cjson.null becomes nil. Returns value or nil, apierr.
local function decode(body)
  if body == nil or body == "" then return nil, E.bad_body("EOF") end
  local ok, v = pcall(cjson.decode, body)
  if not ok then return nil, E.bad_body(tostring(v)) end
  local bad = nonfinite(v)
  if bad then
    return nil, E.bad_body(bad .. ": number out of range (numbers must be finite)")
  end
  return v
end

local function nonull(v)
  if v == cjson.null then return nil end
  return v
end

-- Checks field k of t is nil or of type ty; returns the value or nil, apierr.
local function field(t, k, ty, what)
  local v = nonull(t[k])
  if v ~= nil and type(v) ~= ty then
    return false, E.bad_body(string.format("%s: %s must be a %s (got %s)", what, k,
                                           ty == "string" and "string" or ty, type(v)))
  end
  return v
end

-- The shape of an address, as echokit.listen (listen) and echokit.connect
-- (upstream) take it: HOST:PORT, [V6]:PORT or unix:/path; a listen address
-- may also be :PORT (every interface) or PORT (loopback), and port 0 (any
-- free port). echokit.listen checks the host when it opens the listener;
-- this catches what would otherwise only fail later: a disabled proxy's
-- listen, and an upstream at each client's connect. Returns nil or why not.
local function addr_problem(addr, listen)
  if addr:find("\0", 1, true) then return "contains a NUL byte" end
  if not listen and addr:sub(1, 6) == "tls://" then addr = addr:sub(7) end
  if is_udp(addr) then
    addr = addr:sub(7)
    if addr:sub(1, 5) == "unix:" then return "UDP needs an IP address" end
  end
  if addr:sub(1, 5) == "unix:" then
    local path = #addr - 5
    if path == 0 then return "empty unix socket path" end
    if path > 107 then return "unix socket path longer than 107 bytes" end
    return nil
  end
  local host, port = addr:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = addr:match("^([^:%[%]]*):(%d+)$") end
  if not host and listen then
    port = addr:match("^(%d+)$")
    host = port and "127.0.0.1"
  end
  if not host then return "expected HOST:PORT, [V6]:PORT or unix:/path" end
  local n = tonumber(port)
  if #port > 5 or n > 65535 or (n == 0 and not listen) then return "bad port " .. port end
  if host == "" and not listen then return "no host" end
  return nil
end

-- A proxy object from a body: name, listen, upstream, enabled (types and
-- address shapes checked).
local function proxy_input(t, what)
  if type(t) ~= "table" or t[1] ~= nil then
    return nil, E.bad_body(what .. " must be a JSON object")
  end
  local out = {}
  for _, k in ipairs { "name", "listen", "upstream" } do
    local v, err = field(t, k, "string", what)
    if v == false then return nil, err end
    out[k] = v
  end
  local en, err = field(t, "enabled", "boolean", what)
  if en == false and err then return nil, err end
  out.enabled = en
  -- An extension: the TLS options of a tls:// upstream (ca, sni, alpn,
  -- cert, key: strings; insecure: a boolean), as the proxy handler's.
  local tls
  tls, err = field(t, "upstream_tls", "table", what)
  if tls == false and err then return nil, err end
  out.upstream_tls = tls or nil
  if out.name and #out.name > M.MAX_NAME then
    return nil, E.bad_body(what .. ": name longer than " .. M.MAX_NAME .. " bytes")
  end
  return out
end

-- Datagrams in, datagrams out: a UDP proxy is udp:// on both sides.
-- Returns nil or apierr.
local function udp_mismatch(listen, upstream, what)
  if upstream and is_udp(listen) ~= is_udp(upstream) then
    return E.bad_body(string.format("%s: listen %q and upstream %q: a UDP proxy needs udp:// " ..
                                    "on both (datagrams are not relayed to or from a stream)",
                                    what, listen, upstream))
  end
end

-- The addresses of a proxy_input (not for the main handler's proxy, whose
-- listen reads "(--listen)"). Returns nil or apierr.
local function addr_input(input, what)
  for _, k in ipairs { "listen", "upstream" } do
    local v = input[k]
    local why = v and v ~= "" and addr_problem(v, k == "listen")
    if why and k == "listen" then
      return apierr(400, string.format("listen: %s: %s", v, why))  -- as echokit.listen's
    elseif why then
      return E.bad_body(string.format("%s: upstream %q: %s", what, v, why))
    end
  end
  local err = udp_mismatch(input.listen or default_listen(input.upstream), input.upstream, what)
  if err then return err end
  local up, tls = input.upstream, input.upstream_tls
  if tls and not (up and up:sub(1, 6) == "tls://") then
    return E.bad_body(what .. ": upstream_tls needs a tls:// upstream")
  end
  if up and up:sub(1, 6) == "tls://" then
    local ok, err = pcall(echokit.tls_check, up, tls)
    if not ok then return E.bad_body(string.format("%s: upstream %q: %s", what, up, err)) end
  end
end

-- Ranges of the built-in toxics' attributes, in the API's units. Durations
-- (milliseconds; the slicer's delay in microseconds) and rate (KB/s) may
-- have a fraction; sizes are whole bytes. toxiproxy's int64 fields take
-- negative values and act on them as zero or not at all; here they are a
-- 400. Attributes of other types (toxics.define) only need to be finite.
local MAX_MS = 2147483647                    -- about 24.8 days
local MAX_INT = 2147483647
local LIMITS = {
  latency = { latency = { max = MAX_MS }, jitter = { max = MAX_MS } },
  bandwidth = { rate = { max = MAX_INT } },
  slicer = { average_size = { max = MAX_INT, whole = true },
             size_variation = { max = MAX_INT, whole = true },
             delay = { max = MAX_MS * 1000 } },
  slow_close = { delay = { max = MAX_MS } },
  timeout = { timeout = { max = MAX_MS } },
  reset_peer = { timeout = { max = MAX_MS } },
  limit_data = { bytes = { max = 2 ^ 53, whole = true } },
  -- echokit's own (extensions; docs/API.md)
  http_status = { delay = { max = MAX_MS } },
  resp_error = { delay = { max = MAX_MS } },
  delay_message = { delay = { max = MAX_MS } },
  corrupt = { count = { max = MAX_INT, whole = true } },
  reorder = { hold = { max = MAX_MS } },
  truncate = { bytes = { max = MAX_INT, whole = true } },
  slow_open = { delay = { max = MAX_MS } },
  limit_time = { duration = { max = MAX_MS } },
}

-- Checks a toxic's toxicity and attributes (API units) against the ranges
-- above. Returns nil or apierr.
local function toxic_ranges(ty, toxicity, attrs)
  if toxicity ~= nil and type(toxicity) == "number" and (toxicity < 0 or toxicity > 1) then
    return E.bad_body(string.format("toxicity must be between 0 and 1 (got %.17g)", toxicity))
  end
  local limits = LIMITS[ty] or {}
  for k, v in pairs(attrs or {}) do
    local lim = limits[k]
    if lim and type(v) == "number" then
      if v < 0 or v > lim.max then
        return E.bad_body(string.format("attribute %s of %s must be between 0 and %.17g (got %.17g)",
                                        k, ty, lim.max, v))
      end
      if lim.whole and v ~= math.floor(v) then
        return E.bad_body(string.format("attribute %s of %s must be a whole number (got %.17g)",
                                        k, ty, v))
      end
    end
  end
end

local function toxic_input(t)
  if type(t) ~= "table" or t[1] ~= nil then return nil, E.bad_body("toxic must be a JSON object") end
  local out = {}
  for _, k in ipairs { "name", "type", "stream" } do
    local v, err = field(t, k, "string", "toxic")
    if v == false then return nil, err end
    out[k] = v
  end
  local v, err = field(t, "toxicity", "number", "toxic")
  if v == false then return nil, err end
  out.toxicity = v
  local attrs = nonull(t.attributes)
  if attrs ~= nil and (type(attrs) ~= "table" or attrs[1] ~= nil) then
    return nil, E.bad_body("toxic: attributes must be a JSON object")
  end
  if attrs then
    for k, a in pairs(attrs) do if a == cjson.null then attrs[k] = nil end end
  end
  out.attributes = attrs
  out.api = true
  if out.name and #out.name > M.MAX_NAME then
    return nil, E.bad_body("toxic: name longer than " .. M.MAX_NAME .. " bytes")
  end
  return out
end

---------------------------------------------------------------------------
-- Handlers: each returns status, body (a JSON string or nil). Each checks
-- the whole request, then opens what it needs (swap_listeners), and only
-- then changes state: a request that fails leaves everything as it was.
---------------------------------------------------------------------------
local H = {}

function H.version()
  return 200, cjson.encode { version = echokit.version, server = "echokit" } .. "\n"
end

function H.proxy_index()
  local parts = {}
  for _, name in ipairs(sorted_names()) do
    parts[#parts + 1] = cjson.encode(name) .. ":" .. proxy_json(proxies[name])
  end
  return 200, "{" .. table.concat(parts, ",") .. "}"
end

local function insert_proxy(proxy)
  proxy.set:set_metrics(metrics_for(proxy.name))
  proxies[proxy.name] = proxy
  nproxies = nproxies + 1
end

local function remove_proxy(proxy)
  close_listener(proxy)
  proxy.set:close_all("close")
  proxy.set:clear()
  local m = proxy.set:set_metrics(nil)
  if m then m:free() end
  proxies[proxy.name] = nil
  nproxies = nproxies - 1
end

-- Adds a proxy (listening if enabled). Returns proxy or nil, apierr.
local function add_proxy(input)
  if not input.name or input.name == "" then return nil, E.missing("name") end
  if not input.upstream or input.upstream == "" then return nil, E.missing("upstream") end
  if proxies[input.name] then return nil, E.proxy_exists() end
  if nproxies >= M.MAX_PROXIES then
    return nil, apierr(400, "too many proxies (at most " .. M.MAX_PROXIES .. ")")
  end
  local proxy = new_proxy(input.name, input.listen or default_listen(input.upstream), input.upstream,
                          input.upstream_tls)
  if input.enabled ~= false then
    local ls, err = swap_listeners({}, { { proxy, proxy.listen } })
    if not ls then return nil, err end
    attach(proxy, ls[1])
    proxy.enabled = true
  end
  insert_proxy(proxy)
  return proxy
end

function H.proxy_create(req)
  local body, err = decode(req.body)
  if err then return err end
  local input
  input, err = proxy_input(body, "proxy")
  if not input then return err end
  err = addr_input(input, "proxy")
  if err then return err end
  local proxy
  proxy, err = add_proxy(input)
  if not proxy then return err end
  return 201, proxy_json(proxy)
end

-- POST /populate's answer: the proxies applied, and the error if any
-- ({"error", "status", "proxies"}, as toxiproxy's Populate).
local function populate_answer(applied, err)
  local parts = {}
  for i, p in ipairs(applied) do parts[i] = proxy_json(p) end
  local list = '"proxies":[' .. table.concat(parts, ",") .. "]"
  if not err then return 201, "{" .. list .. "}" end
  local head = cjson.encode { error = err.error, status = err.status }
  return err.status, head:sub(1, -2) .. "," .. list .. "}\n"
end

-- A proxy of the list that matches one already there (same upstream, and
-- the same listen or none given) is kept with its toxics; one that differs
-- is replaced, as toxiproxy does.
local function same_proxy(old, input)
  return old.upstream == input.upstream and
         (input.listen == nil or old.listen == input.listen or
          listen_spec(input.listen) == old.listen)
end

-- POST /populate: a list of proxies, applied whole or not at all. The list
-- is checked first (shapes, names, addresses, duplicates, the main
-- handler's proxy, the proxy limit); then every listener it needs is
-- opened (those of proxies it replaces or disables closed first, so that it
-- may reuse their addresses); if one cannot be, everything is put back and
-- the error lists no proxies.
function H.populate(req)
  local body, err = decode(req.body)
  if err then return populate_answer({}, err) end
  -- cjson reads {} and [] alike: the text tells them apart.
  if type(body) ~= "table" or (next(body) ~= nil and body[1] == nil) or
     not req.body:find("^%s*%[") then
    return populate_answer({}, E.bad_body("expected a JSON array of proxies"))
  end
  local inputs, seen, added = {}, {}, 0
  for i, t in ipairs(body) do
    local input
    input, err = proxy_input(t, "proxy " .. i)
    if not input then return populate_answer({}, err) end
    if not input.name or input.name == "" then
      return populate_answer({}, E.missing("name at proxy " .. i))
    end
    if not input.upstream or input.upstream == "" then
      return populate_answer({}, E.missing("upstream at proxy " .. i))
    end
    if seen[input.name] then
      return populate_answer({}, apierr(400, string.format("duplicate proxy name %q", input.name)))
    end
    local old = proxies[input.name]
    if old and old.adopted then
      return populate_answer({}, apierr(400, "proxy " .. input.name ..
                                        " is the main handler's; it cannot be replaced"))
    end
    err = addr_input(input, "proxy " .. i)
    if err then return populate_answer({}, err) end
    if not old then added = added + 1 end
    seen[input.name] = true
    inputs[#inputs + 1] = input
  end
  if nproxies + added > M.MAX_PROXIES then
    return populate_answer({}, apierr(400, "too many proxies (at most " .. M.MAX_PROXIES .. ")"))
  end
  local close, open, plan = {}, {}, {}
  for i, input in ipairs(inputs) do
    local old = proxies[input.name]
    local step = { old = old }
    if old and same_proxy(old, input) then
      step.proxy = old
      if input.enabled == false and old.enabled then
        close[#close + 1] = old
        step.disable = true
      elseif input.enabled == true and not old.enabled then
        open[#open + 1] = { old, old.listen }
        step.open = #open
      end
    else
      if old then close[#close + 1] = old end
      step.proxy = new_proxy(input.name, input.listen or default_listen(input.upstream),
                             input.upstream)
      if input.enabled ~= false then
        open[#open + 1] = { step.proxy, step.proxy.listen }
        step.open = #open
      end
    end
    plan[i] = step
  end
  local ls
  ls, err = swap_listeners(close, open)
  if not ls then return populate_answer({}, err) end
  local out = {}
  for i, step in ipairs(plan) do
    local proxy = step.proxy
    if step.old and step.old ~= proxy then remove_proxy(step.old) end
    if step.disable then
      proxy.set:close_all("close")
      proxy.enabled = false
    end
    if step.open then
      attach(proxy, ls[step.open])
      proxy.enabled = true
    end
    if step.old ~= proxy then insert_proxy(proxy) end
    out[i] = proxy
  end
  return populate_answer(out)
end

function H.proxy_show(_, proxy)
  return 200, proxy_json(proxy)
end

-- POST/PATCH /proxies/{p}: listen, upstream and enabled change together or
-- not at all. A new address is opened before the proxy changes (its old
-- listener closed first, as the address may be the same port); if it
-- cannot be, the old listener reopens and the proxy is as it was, with its
-- connections. Once committed, a proxy that moved, changed upstream or was
-- disabled closes its open connections, as toxiproxy's restart does.
function H.proxy_update(req, proxy)
  local body, err = decode(req.body)
  if err then return err end
  local input
  input, err = proxy_input(body, "proxy")
  if not input then return err end
  if proxy.adopted then
    if (input.listen and input.listen ~= proxy.listen) or
       (input.upstream and input.upstream ~= proxy.upstream) then
      return apierr(400, "proxy " .. proxy.name .. " is the main handler's: only enabled can change")
    end
    if input.enabled ~= nil then
      proxy.enabled = input.enabled
      if not input.enabled then proxy.set:close_all("close") end
    end
    return 200, proxy_json(proxy)
  end
  for _, k in ipairs { "listen", "upstream" } do
    if input[k] == "" then return E.bad_body("proxy: " .. k .. " must not be empty") end
  end
  err = addr_input(input, "proxy")
  if err then return err end
  local listen = input.listen or proxy.listen
  local upstream = input.upstream or proxy.upstream
  err = udp_mismatch(listen, upstream, "proxy")
  if err then return err end
  if is_udp(upstream) ~= proxy.set.datagram then
    return E.bad_body("proxy " .. proxy.name .. ": a proxy stays UDP or stream as created " ..
                      "(its toxics are of that kind); delete it and create it again")
  end
  local enabled = input.enabled
  if enabled == nil then enabled = proxy.enabled end
  local moved = listen ~= proxy.listen and listen_spec(listen) ~= proxy.listen
  local rerouted = upstream ~= proxy.upstream
  local close, open = {}, {}
  if proxy.enabled and (moved or not enabled) then close[1] = proxy end
  if enabled and (moved or not proxy.enabled) then open[1] = { proxy, listen } end
  local ls
  ls, err = swap_listeners(close, open)
  if not ls then return err end
  if proxy.enabled and (moved or rerouted or not enabled) then proxy.set:close_all("close") end
  proxy.upstream = upstream
  if ls[1] then
    attach(proxy, ls[1])
  elseif moved then
    proxy.listen = listen
  end
  proxy.enabled = enabled
  return 200, proxy_json(proxy)
end

function H.proxy_delete(_, proxy)
  if proxy.adopted then
    return apierr(400, "proxy " .. proxy.name .. " is the main handler's; it cannot be deleted")
  end
  remove_proxy(proxy)
  return 204
end

function H.toxic_index(_, proxy)
  return 200, encode_array(proxy.set:list(), toxic_view)
end

-- Maps a toxics.set error kind to toxiproxy's error.
local function set_error(msg, kind)
  if kind == "type" then return E.invalid_type() end
  if kind == "stream" then return E.invalid_stream() end
  if kind == "exists" then return E.toxic_exists() end
  if kind == "missing" then return E.toxic_not_found() end
  return E.bad_body(msg)
end

function H.toxic_create(req, proxy)
  local body, err = decode(req.body)
  if err then return err end
  local input
  input, err = toxic_input(body)
  if not input then return err end
  if #proxy.set:list() >= M.MAX_TOXICS then
    return apierr(400, "too many toxics on proxy " .. proxy.name .. " (at most " ..
                  M.MAX_TOXICS .. ")")
  end
  -- An unknown type or stream is left to set:add, whose errors come first
  -- in toxiproxy's order.
  if toxics.types[input.type] and (input.stream == nil or input.stream == "upstream" or
                                   input.stream == "downstream") then
    err = toxic_ranges(input.type, input.toxicity, input.attributes)
    if err then return err end
  end
  local toxic, msg, kind = proxy.set:add(input)
  if not toxic then return set_error(msg, kind) end
  return 200, cjson.encode(toxic_view(toxic))
end

function H.toxic_show(_, proxy, name)
  local toxic = proxy.set:find(name)
  if not toxic then return E.toxic_not_found() end
  return 200, cjson.encode(toxic_view(toxic))
end

function H.toxic_update(req, proxy, name)
  local toxic = proxy.set:find(name)
  if not toxic then return E.toxic_not_found() end
  local body, err = decode(req.body)
  if err then return err end
  local input
  input, err = toxic_input(body)
  if not input then return err end
  err = toxic_ranges(toxic.type, input.toxicity, input.attributes)
  if err then return err end
  local msg, kind
  toxic, msg, kind = proxy.set:update(name, input)
  if not toxic then return set_error(msg, kind) end
  return 200, cjson.encode(toxic_view(toxic))
end

function H.toxic_delete(_, proxy, name)
  local ok, msg, kind = proxy.set:remove(name)
  if not ok then return set_error(msg, kind) end
  return 204
end

-- POST /reset: every proxy enabled, every toxic removed; all or nothing
-- (the listeners of the disabled proxies are opened first).
function H.reset()
  local open = {}
  for _, name in ipairs(sorted_names()) do
    local proxy = proxies[name]
    if not proxy.enabled and not proxy.adopted then open[#open + 1] = { proxy, proxy.listen } end
  end
  local ls, err = swap_listeners({}, open)
  if not ls then return err end
  for i, o in ipairs(open) do attach(o[1], ls[i]) end
  for _, name in ipairs(sorted_names()) do
    local proxy = proxies[name]
    proxy.set:clear()
    proxy.enabled = true
  end
  return 204
end

---------------------------------------------------------------------------
-- Routing
---------------------------------------------------------------------------
local publish -- below, with the snapshot

local ROUTES = {
  { "^/version$", { GET = H.version } },
  { "^/reset$", { POST = H.reset } },
  { "^/populate$", { POST = H.populate } },
  { "^/proxies$", { GET = H.proxy_index, POST = H.proxy_create } },
  { "^/proxies/([^/]+)$", { GET = H.proxy_show, POST = H.proxy_update,
                            PATCH = H.proxy_update, DELETE = H.proxy_delete }, proxy = true },
  { "^/proxies/([^/]+)/toxics$", { GET = H.toxic_index, POST = H.toxic_create }, proxy = true },
  { "^/proxies/([^/]+)/toxics/([^/]+)$", { GET = H.toxic_show, POST = H.toxic_update,
                                           PATCH = H.toxic_update, DELETE = H.toxic_delete },
    proxy = true },
}

local JSON = { ["Content-Type"] = "application/json" }

-- One request -> status, headers, body (for echokit.http's handler).
function M.route(req, unescape)
  local ua = req.headers and req.headers["user-agent"]
  if ua and ua:find("^Mozilla/") then
    -- As toxiproxy: browsers are turned away, so a web page cannot drive the
    -- API from a user's machine.
    return 403, { ["Content-Type"] = "text/plain; charset=utf-8" }, "User agent not allowed\n"
  end
  for _, r in ipairs(ROUTES) do
    local caps = { req.path:match(r[1]) }
    if caps[1] or req.path:match(r[1]) then
      local fn = r[2][req.method]
      if not fn then
        local res = apierr(405, "method " .. req.method .. " not allowed on " .. req.path)
        return 405, JSON, cjson.encode(res) .. "\n"
      end
      for i, c in ipairs(caps) do caps[i] = unescape and unescape(c) or c end
      local status, body
      if req.method ~= "GET" then
        -- after the answer is computed, whatever it is (a failed request
        -- may still have disabled a proxy)
        local inner = fn
        fn = function(...)
          local a, b = inner(...)
          publish()
          return a, b
        end
      end
      if r.proxy then
        local proxy = proxies[caps[1]]
        if not proxy then
          status, body = 404, E.proxy_not_found()
        else
          status, body = fn(req, proxy, caps[2])
        end
      else
        status, body = fn(req)
      end
      if type(status) == "table" then
        return status.status, JSON, cjson.encode(status) .. "\n"
      end
      if type(body) == "table" then
        return body.status, JSON, cjson.encode(body) .. "\n"
      end
      if status == 204 then return 204, {}, nil end
      return status, JSON, body
    end
  end
  return 404, JSON, cjson.encode(apierr(404, "no route for " .. req.path)) .. "\n"
end

-- Loads the API's JSON library once. Returns true, or nil and the reason.
local function load_cjson()
  if cjson then return true end
  local ok, lib = pcall(require, "cjson")
  if not ok then
    return nil, "the control API needs lua-cjson for Lua 5.4 (Debian: apt-get install lua-cjson): " ..
                tostring(lib):match("^[^\n]*")
  end
  -- A private instance: strict numbers (no NaN, Infinity or hex, which
  -- JSON has not) and a bound on nesting, whatever other code sets globally.
  cjson = lib.new()
  cjson.decode_invalid_numbers(false)
  cjson.decode_max_depth(32)
  return true
end

---------------------------------------------------------------------------
-- With --workers: one worker answers the API; after each request that may
-- change something it publishes the whole configuration (M.snapshot, set
-- by the C side as M.publish), and every worker, that one's replacement
-- too, applies it (M.apply): the same proxies, each worker listening on the
-- same address with SO_REUSEPORT, and the same toxics.
---------------------------------------------------------------------------

-- The configuration as JSON: every proxy as listed by the API (listen as
-- bound, so port 0 is the real port), with its upstream's TLS options.
function M.snapshot()
  local parts = {}
  for _, name in ipairs(sorted_names()) do
    local p = proxies[name]
    local tls = p.tls and cjson.encode(p.tls) or "null"
    parts[#parts + 1] = proxy_json(p):sub(1, -2) .. ',"upstream_tls":' .. tls ..
                        ',"adopted":' .. tostring(p.adopted == true) .. "}"
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- Makes set's toxics those of list (API views): a toxic of the same name,
-- type and stream is updated in place, so that the connections using it see
-- the change; others are removed or added.
local function sync_toxics(set, list)
  local want = {}
  for _, v in ipairs(list) do want[v.name] = v end
  for _, have in ipairs(set:list()) do
    local w = want[have.name]
    if not w or w.type ~= have.type or w.stream ~= have.stream then set:remove(have.name) end
  end
  for _, v in ipairs(list) do
    local input = { name = v.name, type = v.type, stream = v.stream, toxicity = v.toxicity,
                    attributes = v.attributes, api = true }
    local _, msg
    if set:find(v.name) then
      _, msg = set:update(v.name, input)
    else
      _, msg = set:add(input)
    end
    if msg then echokit.log("error", "toxic %s: %s", v.name, msg) end
  end
end

local function same_tls(a, b)
  if a == nil or b == nil then return a == b end
  return cjson.encode(a) == cjson.encode(b)
end

-- toxiproxy.apply(json): makes this worker's proxies and toxics those of a
-- snapshot. A listener that cannot be opened is logged; that proxy stays
-- disabled here. Returns true, or nil and the reason.
function M.apply(json)
  local ok, err = load_cjson()
  if not ok then return nil, err end
  local list
  ok, list = pcall(cjson.decode, json)
  if not ok or type(list) ~= "table" then return nil, "bad snapshot: " .. tostring(list) end
  local seen = {}
  for _, v in ipairs(list) do
    for k, x in pairs(v) do if x == cjson.null then v[k] = nil end end
    seen[v.name] = true
    local p = proxies[v.name]
    if v.adopted then
      -- a handler's own set: only its toxics and enabled follow
      if p and p.adopted then
        p.enabled = v.enabled
        if not v.enabled then p.set:close_all("close") end
      end
    elseif p and p.adopted then
      echokit.log("error", "proxy %s: the main handler's here; not replaced", v.name)
      p = nil
    else
      if p and (p.upstream ~= v.upstream or not same_tls(p.tls, v.upstream_tls) or
                (v.enabled and p.listen ~= v.listen)) then
        remove_proxy(p)
        p = nil
      end
      if not p then
        p = new_proxy(v.name, v.listen, v.upstream, v.upstream_tls)
        insert_proxy(p)
      end
      p.listen = v.listen
      if v.enabled and not p.enabled then
        local ls, lerr = swap_listeners({}, { { p, v.listen } })
        if ls then
          attach(p, ls[1])
          p.enabled = true
        else
          echokit.log("error", "proxy %s: %s; it is disabled in this worker", v.name, lerr.error)
        end
      elseif not v.enabled and p.enabled then
        close_listener(p)
        p.set:close_all("close")
        p.enabled = false
      end
    end
    if p then sync_toxics(p.set, v.toxics or {}) end
  end
  for _, name in ipairs(sorted_names()) do
    local p = proxies[name]
    if not seen[name] and not p.adopted then remove_proxy(p) end
  end
  return true
end

-- Publishes the configuration if a publisher is set (M.publish, by the C
-- side with --workers). A configuration too large for the shared region is
-- kept here and logged: the other workers keep the previous one.
function publish()
  if not M.publish then return end
  local ok, err = M.publish(M.snapshot())
  if not ok then echokit.log("error", "control API: %s", err) end
end

-- toxiproxy.serve(addr [, listen]): starts the control API on addr (or on
-- what listen(handler) opens, a listener). Returns the bound address
-- ("127.0.0.1:8474"), or nil and the reason.
function M.serve(addr, listen)
  local ok, lerr = load_cjson()
  if not ok then return nil, lerr end
  local http = require "echokit.http"
  local handler = http.handler(function(req)
    return M.route(req, http.unescape)
  end, { server = "echokit" })
  local l, err = (listen or echokit.listen)(addr, handler)
  if not l then return nil, "cannot listen on " .. err end
  M.listener = l
  return l:address()
end

-- For tests and embedding: the proxies by name.
M.proxies = proxies

return M
