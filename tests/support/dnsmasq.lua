-- A real DNS server for the UDP specs: dnsmasq on 127.0.0.1 answering
-- example.test with 192.0.2.1 from a local record (nothing forwarded), and
-- dig and a Python client (dns_queries.py) to ask it or a proxy in front
-- of it. Started per test through peers (reaped by peers.teardown).
local t = require "echokit_test"
local peers = require "peers"

local M = {}

M.NAME = "example.test"
M.ADDRESS = "192.0.2.1"

M.closed_udp_port = peers.closed_udp_port

-- dig @127.0.0.1 -p port example.test A +short, one try of `wait` seconds
-- (scaled, whole seconds as dig wants). Returns the run (peers.run).
function M.dig(port, wait)
  return peers.run({ "dig", "@127.0.0.1", "-p", tostring(port), M.NAME, "A", "+short",
    "+tries=1", "+time=" .. math.ceil(t.T(wait or 1)) }, 30)
end

-- Starts dnsmasq; returns its port once it answers. dnsmasq binds TCP too:
-- a port taken for TCP meanwhile makes it exit, and another port is tried.
function M.start()
  local user = peers.run({ "id", "-un" }, 5).out:match("^(%S+)")
  local why
  for _ = 1, 5 do
    local port = M.closed_udp_port()
    local h = peers.spawn({ "dnsmasq", "--no-daemon", "--port=" .. port,
      "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
      "--conf-file=/dev/null", "--pid-file", "--user=" .. user,
      "--address=/" .. M.NAME .. "/" .. M.ADDRESS })
    local ok = pcall(t.eventually, function()
      if h.p:wait(0) then return "exited" end
      return M.dig(port).out == M.ADDRESS .. "\n"
    end, 10, "dnsmasq answers")
    why = peers.helper_stderr(h)
    if ok and not h.p:wait(0) then return port end
  end
  error("dnsmasq did not start: " .. tostring(why))
end

-- Sends count queries to port (at most window unanswered, each given up
-- after `timeout` seconds, scaled), then listens `linger` seconds (scaled)
-- for late copies. Returns the counts dns_queries.py prints (a table).
function M.queries(port, count, window, timeout, linger)
  local cjson = require "cjson"
  local r = peers.run({ "/usr/bin/python3", t.src .. "/tests/support/dns_queries.py",
    "127.0.0.1", tostring(port), M.NAME, tostring(count), tostring(window),
    tostring(t.T(timeout)), tostring(t.T(linger or 0)) },
    math.ceil(count / window + 2) * timeout + (linger or 0) + 30)
  peers.assert_ok(r, "dns_queries.py")
  return cjson.decode(r.out)
end

return M
