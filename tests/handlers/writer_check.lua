-- echokit.writer's contract, checked while the handler loads (run it with
-- --check): writes reach the file, a closed writer answers nil, "closed", a
-- file that cannot be opened is nil, err, a bad max raises.
local echokit = require "echokit"
local args = ...

local w = assert(echokit.writer(args.path, { max = "1k" }))
assert(w:write("one\n") == true)
assert(w:write(("x"):rep(4096) .. "\n") == true, "a write into an empty queue is taken whole")
assert(w:dropped() == 0 and w:buffered() == 0, "a file takes everything at once")
assert(tostring(w) == "writer: " .. args.path, tostring(w))
w:close()
local ok, err = w:write("two\n")
assert(ok == nil and err == "closed", tostring(err))
assert(tostring(w):find(" %(closed%)$"), tostring(w))

local none, why = echokit.writer(args.path .. ".missing/x")
assert(none == nil and why:find("cannot open '.*%.missing/x': No such file", 1), why)
for _, bad in ipairs({ 0, -1, "lots", 1.5 }) do
  local raised, msg = pcall(echokit.writer, args.path, { max = bad })
  assert(not raised and msg:find("max must be a byte count"), tostring(bad) .. ": " .. tostring(msg))
end

local e = assert(echokit.writer("stderr"))
assert(e:write("through the writer to stderr\n"))
print("writer ok")
return {}
