-- udp_robust_spec: a TCP connection's on_close writes to a UDP flow.
--   UDP "register" -> "ok": this flow is the one written to
--   TCP "close"    -> the connection closes; its on_close writes "bye" to
--                     the registered flow
local flow

return {
  on_data = function(c, d)
    if d == "register" then
      flow = c
      c:write("ok")
    elseif d:match("^close") then
      c:close()
    end
  end,
  on_close = function(c)
    if flow and c ~= flow then flow:write("bye") end
  end,
}
