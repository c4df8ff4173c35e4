-- line_proxy: a scripted proxy. Client bytes pass through Lua (on_data), so
-- each request line can be logged or rewritten; replies are piped back in C.
--
--   echokit -H line_proxy -- upstream=127.0.0.1:6379 upper=1 max_line=64k
--
-- A line longer than max_line (default 64k, LF included) closes the client,
-- with a warning saying so: cutting it would hand the upstream two lines it
-- never got. Each chunk is scanned once, from where the last scan stopped,
-- and a partial line is kept as a list of parts, so a client that never sends
-- a LF costs time in proportion to its bytes, not their square.
local echokit = require "echokit"
local args = ...
local upstream = args.upstream or error("line_proxy: give -- upstream=HOST:PORT")
local connect_opts = require("echokit.upstream").options(args, "line_proxy")
local max_line = echokit.size(args.max_line, 64 * 1024)

local function too_long(client, n)
  echokit.log("warn", "%s: line of %d+ bytes is longer than max_line=%d; closing",
              tostring(client), n, max_line)
  client:close()
end

return {
  on_connect = function(client)
    client.parts, client.held = {}, 0         -- a partial line waiting for its LF
    client.up = echokit.connect(upstream, {
      on_close = function(up, reason)
        if reason then echokit.log("warn", "upstream %s: %s", upstream, reason) end
        client:close()
      end,
    }, connect_opts)
    client.up:pipe(client)
  end,

  on_data = function(client, data)
    local out, from = {}, 1
    local lf = data:find("\n", from, true)
    while lf do
      local len = client.held + lf - from + 1
      if len > max_line then
        client.up:write(table.concat(out))
        return too_long(client, len)
      end
      local parts = client.parts
      parts[#parts + 1] = data:sub(from, lf)
      local line = table.concat(parts)
      client.parts, client.held, from = {}, 0, lf + 1
      echokit.log("info", "%s > %s", tostring(client), (line:gsub("\r?\n$", "")))
      out[#out + 1] = args.upper and line:upper() or line
      lf = data:find("\n", from, true)
    end
    client.up:write(table.concat(out))        -- back-pressure holds the client for us
    if from <= #data then
      client.parts[#client.parts + 1] = data:sub(from)
      client.held = client.held + #data - from + 1
      if client.held > max_line then return too_long(client, client.held) end
    end
  end,

  on_eof = function(client)
    client.up:write(table.concat(client.parts))
    client.up:shutdown()                      -- carry the half-close upstream
  end,

  on_close = function(client) client.up:close() end,
}
