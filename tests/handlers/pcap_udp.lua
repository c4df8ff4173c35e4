-- Writes UDP records with echokit.pcap for tests/functional/pcap_udp_spec.lua.
-- args: pcap=PATH, plan=PATH. The plan has one datagram a line:
--   CLIENT_HOST CLIENT_PORT SERVER_HOST SERVER_PORT SIDE PAYLOAD_FILE
-- (consecutive lines with the same four endpoint fields share one stream).
-- On each connection the handler records the plan, tries the misuses the
-- spec checks, closes the file and answers one line per outcome, then "done".
local echokit = require "echokit"
local args = ...

local function read(path)
  local f = assert(io.open(path, "rb"))
  local d = f:read("a")
  f:close()
  return d
end

local function record(c)
  local cap = assert(echokit.pcap(args.pcap))
  local streams, last = {}, nil
  for line in io.lines(args.plan) do
    local ch, cp, sh, sp, side, file = line:match("^(%S+) (%d+) (%S+) (%d+) (%a+) (%S+)$")
    local key = table.concat({ ch, cp, sh, sp }, " ")
    if key ~= last then
      streams[#streams + 1] = assert(cap:stream(ch, tonumber(cp), sh, tonumber(sp), "udp"))
      last = key
    end
    local s = streams[#streams]
    local ok, err = s:write(side, read(file))
    c:write(string.format("write %s %s\n", tostring(ok), tostring(err)))
  end
  local s = streams[1]
  -- the other spellings of one datagram
  c:write("client " .. tostring(s:client("\0")) .. "\n")
  c:write("server " .. tostring(s:server("")) .. "\n")
  local ok, err = pcall(s.fin, s, "client")
  c:write(string.format("fin %s %s\n", tostring(ok), tostring(err)))
  local cb, sb = s:bytes()
  local cd, sd = s:datagrams()
  c:write(string.format("counts %d %d %d %d\n", cb, sb, cd, sd))
  -- a stream that was closed, then a file that was closed, take nothing
  local extra = assert(cap:stream("127.0.0.1", 1, "127.0.0.1", 2, "udp"))
  assert(extra:close())
  c:write("after stream close " .. table.concat({ tostring(extra:client("x")) }, " ")
          .. " " .. select(2, extra:client("x")) .. "\n")
  assert(cap:close())
  c:write("after file close " .. select(2, s:client("x")) .. "\n")
  c:write("done\n")
end

return {
  on_connect = function(c) record(c) end,
  on_data = function() end,
}
