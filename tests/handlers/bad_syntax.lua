-- Test handler: a syntax error on line 3.
local M = {}
local x = + 1
return M
