-- tests/handlers/stats.lua on a loop that never idles: a timer fires every
-- half millisecond, so there is always an event pending.
local echokit = require "echokit"
echokit.every(0.0005, function() end)
return dofile("tests/handlers/stats.lua")
