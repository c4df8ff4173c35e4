-- udp_spec: a flow handler that echoes, logs each flow's open and close, and
-- answers commands that exercise what a flow can and cannot do.
local echokit = require "echokit"
local closed_port = tonumber((...).closed_port or "1")

local commands = {
  ["try shutdown"] = function(flow) return pcall(flow.shutdown, flow) end,
  ["try receive"] = function(flow) return pcall(flow.receive, flow, "*l") end,
  ["try pipe"] = function(flow)
    local tcp = echokit.connect("127.0.0.1:" .. closed_port, {})
    local ok, err = pcall(flow.pipe, flow, tcp)
    tcp:close()
    return ok, err
  end,
  count = function(flow) -- a per-flow field
    flow.n = (flow.n or 0) + 1
    return true, tostring(flow.n)
  end,
  id = function(flow) return true, tostring(flow.id) end,
  peer = function(flow) return true, string.format("%s %d", flow:peer()) end,
  stats = function()
    local s = echokit.stats()
    return true, string.format("in=%d out=%d dropped=%d rcvbuf=%d flows=%d open=%d",
      s.datagrams_in, s.datagrams_out, s.datagrams_dropped, s.datagrams_dropped_rcvbuf,
      s.udp_flows, s.connections_open)
  end,
  ["try starttls"] = function(flow) return pcall(flow.starttls, flow) end,
  -- one byte over the family's largest payload (IPv4 65,507, IPv6 65,527)
  ["try big"] = function(flow)
    return pcall(flow.write, flow, string.rep("x", flow:peer():find(":") and 65528 or 65508))
  end,
  bye = function(flow)
    flow:write("bye")
    flow:close()
  end,
}

return {
  on_connect = function(flow)
    echokit.log("info", "flow open %d %s %d", flow.id, flow:peer())
  end,
  on_data = function(flow, d)
    if d == "boom" then error("boom on purpose") end
    local path = d:match("^stall (.+)$")
    if path then
      -- holds the loop (and so the socket's reading) until the file exists,
      -- for the flood test (bounded: 5 s of CPU)
      local limit = os.clock() + 5
      while not io.open(path) and os.clock() < limit do end
      flow:write("stalled")
      return
    end
    local cmd = commands[d]
    if not cmd then
      flow:write(d)
      return
    end
    local ok, msg = cmd(flow)
    if ok ~= nil then flow:write(tostring(ok) .. " " .. tostring(msg)) end
  end,
  on_close = function(flow, reason)
    echokit.log("info", "flow closed %d %s", flow.id, tostring(reason))
  end,
}
