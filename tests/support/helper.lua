-- busted --helper for the functional suite: makes tests/support importable and
-- finds the proc C module when LUA_CPATH does not already point at it (running
-- busted by hand: ECHOKIT_BIN=build/echokit lua5.4 /usr/bin/busted
-- --helper=tests/support/helper.lua tests/functional).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path

if not pcall(require, "proc") then
  local bin = os.getenv("ECHOKIT_BIN")
  local bindir = bin and bin:match("^(.*)/[^/]*$")
  if bindir then
    package.cpath = bindir .. "/tests/?.so;" .. package.cpath
  end
end
