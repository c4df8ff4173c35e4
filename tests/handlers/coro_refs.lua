-- Every API that keeps a callback (timer, every, listen, connect, a pipe's
-- tap), called from a coroutine: from serve (args.style = "serve") or from a
-- coroutine.wrap inside on_data (the default). The client gets one line with
-- the types the calls returned, then one line per callback that fired.
local echokit = require "echokit"
local args = ...

local function probe(conn)
  local t = echokit.timer(0, function() conn:write("timer fired\n") end)
  local e
  e = echokit.every(0.01, function() e:cancel(); conn:write("every fired\n") end)
  local l = assert(echokit.listen("127.0.0.1:0", {
    on_connect = function(c) c:write("hello\n") end,
    on_data = function(c) c:close() end,
  }))
  local up = echokit.connect(l:address(), {})
  up:pipe(conn, { tap = function(d) conn:write("tap saw " .. d); l:close() end })
  conn:write(string.format("types %s %s %s %s\n", type(t), type(e), type(l), type(up)))
end

if args.style == "serve" then
  return {
    serve = function(conn)
      probe(conn)
      while conn:receive() do end
    end,
  }
end
return {
  on_data = function(conn)
    coroutine.wrap(function() probe(conn) end)()
  end,
}
