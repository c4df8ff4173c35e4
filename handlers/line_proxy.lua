-- line_proxy: a scripted proxy. Client bytes pass through Lua (on_data), so
-- each request line can be logged or rewritten; replies are piped back in C.
--
--   echokit -H line_proxy -- upstream=127.0.0.1:6379 upper=1
local echokit = require "echokit"
local args = ...
local upstream = args.upstream or error("line_proxy: give -- upstream=HOST:PORT")

return {
  on_connect = function(client)
    client.pending = ""                       -- a partial line waiting for its LF
    client.up = echokit.connect(upstream, {
      on_close = function(up, reason)
        if reason then echokit.log("warn", "upstream %s: %s", upstream, reason) end
        client:close()
      end,
    })
    client.up:pipe(client)
  end,

  on_data = function(client, data)
    local buf = client.pending .. data
    local out = {}
    for line in buf:gmatch("([^\n]*\n)") do
      echokit.log("info", "%s > %s", tostring(client), line:gsub("\r?\n$", ""))
      out[#out + 1] = args.upper and line:upper() or line
    end
    -- anchored, so finding the last LF is one linear scan whatever the input
    local cut = buf:match("^.*\n()")
    client.pending = cut and buf:sub(cut) or buf
    client.up:write(table.concat(out))        -- back-pressure holds the client for us
  end,

  on_eof = function(client)
    client.up:write(client.pending)
    client.up:shutdown()                      -- carry the half-close upstream
  end,

  on_close = function(client) client.up:close() end,
}
