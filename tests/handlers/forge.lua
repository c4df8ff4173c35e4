-- Handles misused from pure Lua: each line is a command, answered with a line.
--   slot      conn[1] = io.stdout, then conn:write (from a timer) works and conn[1] is kept
--   fields    integer and string keys are the handler's own fields
--   keep      remember this connection (handle and a shallow copy), then close it
--   usekept   write through the remembered handle and its copy
--   forge     a table with the connection metatable
--   register  remember this connection as "other"
--   swap      conn[1] = other[1]; conn:write (from a timer) goes to this client still
local echokit = require "echokit"
local kept, copy, other

local function shallow(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return setmetatable(c, getmetatable(t))
end

local function show(...)
  local out = {}
  for i = 1, select("#", ...) do out[#out + 1] = tostring((select(i, ...))) end
  return table.concat(out, ",")
end

local commands = {}

-- Outside the connection's own callback the runtime must find the connection
-- from the handle alone: a timer's callback is such a place.
local function later(f) echokit.timer(0, f) end

function commands.slot(conn)
  conn[1] = io.stdout
  later(function() conn:write("slot " .. io.type(conn[1]) .. "\n") end)
end

function commands.fields(conn)
  conn[1], conn[2], conn.name = "one", 2, "n"
  conn:write(string.format("fields %s %s %s %s\n", conn[1], conn[2], conn.name, type(conn.id)))
end

function commands.keep(conn)
  kept, copy = conn, shallow(conn)
  conn:write("kept\n")
  conn:close()
end

function commands.usekept(conn)
  conn:write(string.format("usekept %s %s %s\n", show(kept:write("x")), show(copy:write("x")),
                           show(copy:peer())))
end

function commands.forge(conn)
  local fake = setmetatable({ id = conn.id }, getmetatable(conn))
  fake[1] = conn
  conn:write(string.format("forge %s %s\n", show(fake:write("x")), show(fake:buffered())))
end

function commands.register(conn)
  other = conn
  conn:write("registered\n")
end

function commands.swap(conn)
  conn[1] = other[1]
  later(function() conn:write("swapped\n") end)
end

return {
  on_data = function(conn, data)
    for line in data:gmatch("[^\n]+") do
      local f = commands[line]
      if f then f(conn) else conn:write("unknown " .. line .. "\n") end
    end
  end,
}
