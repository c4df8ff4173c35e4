-- Test handler: echoes, except on trigger bytes.
--   "!"  raises a Lua error                      (marker: BOOM)
--   "~"  spins forever (a CPU-budget overrun)
--   "^"  spins forever inside pcall, then writes "swallowed" (must never happen)
--   "%"  spins inside a coroutine of its own (pcall inside it), then in the
--        callback itself after the coroutine failed; writes "swallowed" if it
--        ever gets past both
-- Close reasons are logged as "closed conn ID reason=REASON".
local echokit = require "echokit"

return {
  on_data = function(conn, data)
    if data:find("!", 1, true) then
      error("boom") -- BOOM
    elseif data:find("~", 1, true) then
      while true do end
    elseif data:find("%", 1, true) then
      local co = coroutine.create(function() while true do pcall(function() while true do end end) end end)
      coroutine.resume(co)
      coroutine.wrap(function() while true do end end)()
      while true do end
      conn:write("swallowed\n") -- luacheck: ignore (unreachable unless the budget fails)
      return
    elseif data:find("^", 1, true) then
      pcall(function() while true do end end)
      conn:write("swallowed\n")
      return
    end
    conn:write(data)
  end,
  on_close = function(conn, reason)
    echokit.log("info", "closed conn %d reason=%s", conn.id, tostring(reason))
  end,
}
