-- err_echo: an echo whose on_data raises an error on every 100th call (1 %),
-- for bench/soak: each error closes that one connection ("error: ..." in
-- echokit.stats().errors) and the process carries on. The count is per
-- process; the 100th chunk is not echoed at all.
local n = 0
return {
  on_data = function(conn, data)
    n = n + 1
    if n % 100 == 0 then error("soak: planned error on call " .. n) end
    conn:write(data)
  end,
}
