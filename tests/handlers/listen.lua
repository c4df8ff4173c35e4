-- Test handler: opens and closes listeners at run time (echokit.listen).
--   listen ADDR  -> "ok HOST:PORT\n" or "err MESSAGE\n"; the new listener
--                   echoes lines upper-cased
--   listentls ADDR -> as listen, a TLS listener with a self-signed certificate
--   close        -> closes the last listener opened: "closed\n"
--   bad ADDR     -> echokit.listen with a malformed address (raises)
--   refs         -> "refs N\n" after a full collection
--   selfclose ADDR -> "ok HOST:PORT\n"; that listener closes itself in the
--                   on_connect of its first connection, drops the last
--                   reference to itself and runs a full collection, then
--                   answers "closed itself\n" on that connection
local echokit = require "echokit"

local upper = {
  on_data = function(conn, data) conn:write(data:upper()) end,
}
local last

return {
  on_data = function(conn, data)
    for line in data:gmatch("([^\n]*)\n") do
      local cmd, arg = line:match("^(%S+)%s*(.*)$")
      if cmd == "listen" or cmd == "listentls" then
        local l, err
        if cmd == "listen" then
          l, err = echokit.listen(arg, upper)
        else
          l, err = echokit.listen("tls://" .. arg, upper, { tls = { self_signed = true } })
        end
        if l then
          last = l
          conn:write("ok " .. l:address() .. "\n")
        else
          conn:write("err " .. err .. "\n")
        end
      elseif cmd == "close" then
        last:close()
        conn:write("closed " .. tostring(last:address()) .. "\n")
      elseif cmd == "selfclose" then
        local l
        l = echokit.listen(arg, {
          on_connect = function(c)
            l:close()
            l = nil
            collectgarbage("collect")
            collectgarbage("collect")
            c:write("closed itself\n")
          end,
        })
        conn:write("ok " .. l:address() .. "\n")
      elseif cmd == "bad" then
        echokit.listen(arg, upper)
      elseif cmd == "refs" then
        collectgarbage("collect")
        conn:write("refs " .. echokit.stats().refs .. "\n")
      else
        conn:write(line .. "\n")
      end
    end
  end,
}
