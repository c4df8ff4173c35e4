-- echokit.loglimit: at most N log lines a second from one source, so that
-- what a peer can repeat (a mismatch, a refused upstream) cannot flood the
-- log. Those held back are counted in one line when the second is over:
--
--   local report = require("echokit.loglimit").new(10, "proxy", "upstream failure", "logged")
--   report("warn", "%s: upstream %s: %s", who, upstream, reason)
--   -- past 10 in a second: "proxy: 3 more upstream failures not logged (at most 10 a second)"
local echokit = require "echokit"

local M = {}

function M.new(per_second, prefix, noun, verb)
  local shown, held = 0, 0
  return function(level, fmt, ...)
    if shown >= per_second then
      held = held + 1
      return
    end
    if shown == 0 then
      echokit.timer(1, function()
        if held > 0 then
          echokit.log(level, "%s: %d more %s%s not %s (at most %d a second)", prefix, held, noun,
                      held == 1 and "" or "s", verb or "shown", per_second)
        end
        shown, held = 0, 0
      end)
    end
    shown = shown + 1
    echokit.log(level, fmt, ...)
  end
end

return M
