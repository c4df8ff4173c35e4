-- lines: a line-based server in sequential style. Each connection runs
-- serve(conn) in its own coroutine; receive() waits without blocking anyone.
--
--   echokit -H lines             then: nc 127.0.0.1 7000
--   > hello                      < hello
--   > quit                       (connection closes)
local echokit = require "echokit"

return {
  serve = function(conn)
    while true do
      local line, err = conn:receive()        -- one line, CR LF or LF stripped
      if not line then
        echokit.log("debug", "conn %d: %s", conn.id, err)
        return                                -- returning closes the connection
      end
      if line == "quit" then
        conn:send("bye\n")
        return
      end
      conn:send(line .. "\n")
    end
  end,
}
