-- line_proxy under a client that never sends a LF: the scan stays linear, so
-- other clients keep their round trips, and max_line closes the flooder.
-- (The old handler rescanned everything pending with gmatch in one C call:
-- 128 KiB without a LF froze the whole server for most of a minute.)
local t = require "echokit_test"
local peers = require "peers"

local KiB = 1024

-- One line's round trip for the bystander; fails when it takes longer than
-- half a second (stretched for slow builds).
local function round_trip(c, n)
  local t0 = t.now()
  assert.equal("bystander " .. n, t.ask(c, "bystander " .. n, 5))
  local took = t.now() - t0
  assert(took < t.T(0.5), string.format("bystander's round trip %d took %.2f s", n, took))
end

-- Sends data on c in pieces of `piece` bytes, a bystander round trip after
-- each. Sends wait on the flooder's socket, never on a clock.
local function flood(c, data, piece, bystander)
  for i = 1, #data, piece do
    t.send_all(c, data:sub(i, i + piece - 1))
    round_trip(bystander, i)
  end
end

describe("line_proxy with a client that sends no LF", function()
  after_each(peers.teardown)

  it("keeps other clients' round trips short and relays the 1 MiB line at its LF", function()
    local up = t.start{ handler = "echo" }
    local proxy = peers.front(t.start{ handler = "line_proxy",
                                       args = { upstream = peers.addr_of(up), max_line = "2m" } })
    local bystander = proxy:connect()
    round_trip(bystander, 0)
    local c = proxy:connect(nil, 20)
    local line = ("x"):rep(1024 * KiB)
    flood(c, line, 32 * KiB, bystander)
    t.send_all(c, "\n")
    t.assert_bytes(line .. "\n", t.recv_n(c, #line + 1, 20), "the long line, echoed")
    round_trip(bystander, -1)
  end)

  it("closes a client past max_line (64k by default) and says why", function()
    local up = t.start{ handler = "echo" }
    local proxy = peers.front(t.start{ handler = "line_proxy",
                                       args = { upstream = peers.addr_of(up) } })
    local bystander = proxy:connect()
    local c = proxy:connect(nil, 20)
    t.send_all(c, "short one\n")
    assert.equal("short one", t.recv_line(c, 5))
    local ok = pcall(flood, c, ("y"):rep(128 * KiB), 16 * KiB, bystander)
    -- the flooder may be closed before all of it is sent; the bystander is not
    if not ok then round_trip(bystander, -1) end
    local rest, err = t.recv_until_closed(c, 10)
    assert.equal("", rest)
    assert.truthy(err)
    proxy:await_log("warn %[conn %d+ [^%]]*%]: line of %d+%+ bytes is longer than " ..
                    "max_line=65536; closing")
    round_trip(bystander, -2)
    -- a line that arrives whole, LF and all, is held to the same cap
    local c2 = proxy:connect()
    t.send_all(c2, ("z"):rep(64 * KiB) .. "\n")
    assert.equal("", (t.recv_until_closed(c2, 10)))
    assert.equal(2, #proxy:log_matching("longer than max_line"))
  end)

  it("refuses a max_line that is no size", function()
    local r = t.run{ handler = "line_proxy", args = { upstream = "127.0.0.1:1", max_line = "lots" } }
    assert.equal(2, r.code)
    assert.matches("not a size: lots", r.stderr)
  end)
end)
