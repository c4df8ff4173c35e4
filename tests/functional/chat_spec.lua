-- The built-in `chat` handler: several luasocket clients in one room, nicks,
-- commands, limits, and a client that stops reading being dropped while the
-- others carry on.
local t = require "echokit_test"

local function join(srv)
  local c = srv:connect()
  local welcome = t.recv_line(c)
  local nick = welcome:match("^%* welcome, (%S+);")
  assert(nick, "bad welcome line: " .. welcome)
  return c, nick
end

local function say(c, line) t.send_all(c, line .. "\n") end

describe("chat handler", function()
  after_each(t.teardown)

  it("relays lines between clients with nicks, /me, /who and joins and leaves", function()
    local srv = t.start{ handler = "chat" }
    local a, an = join(srv)
    local b, bn = join(srv)
    assert.equal("* " .. bn .. " joined", t.recv_line(a))
    local c = join(srv)
    t.recv_line(a); t.recv_line(b)           -- c joined
    say(a, "/nick alice")
    for _, cl in ipairs({ a, b, c }) do assert.equal("* " .. an .. " is now alice", t.recv_line(cl)) end
    say(b, "/nick Alice")
    assert.equal("! nick Alice is taken", t.recv_line(b))
    say(b, "/nick bad nick!")
    assert.truthy(t.recv_line(b):find("^! a nick is"))
    say(b, "/nick bob")
    for _, cl in ipairs({ a, b, c }) do assert.equal("* " .. bn .. " is now bob", t.recv_line(cl)) end
    say(a, "hello, room\r")
    assert.equal("<alice> hello, room", t.recv_line(b))
    assert.equal("<alice> hello, room", t.recv_line(c))
    say(b, "/me waves")
    for _, cl in ipairs({ a, b, c }) do assert.equal("* bob waves", t.recv_line(cl)) end
    say(c, "/who")
    assert.truthy(t.recv_line(c):find("^%* here: alice, bob, guest%d+$"))
    say(c, "/frobnicate")
    assert.equal("! unknown command /frobnicate", t.recv_line(c))
    say(b, "/quit")
    assert.equal("* bye", t.recv_line(b))
    local _, err = t.recv_until_closed(b, 5)
    assert.equal("closed", err)
    assert.equal("* bob left", t.recv_line(a))
    assert.equal("* bob left", t.recv_line(c))
    c:close()
    assert.truthy(t.recv_line(a):find("^%* guest%d+ left$"))
  end)

  it("takes lines split across packets and several lines in one", function()
    local srv = t.start{ handler = "chat" }
    local a = join(srv)
    local b = join(srv)
    t.recv_line(a)
    t.send_all(a, "/nick ann\npart")
    assert.equal("* guest1 is now ann", t.recv_line(b))
    t.send_all(a, "ial line\nsecond\n")
    assert.equal("<ann> partial line", t.recv_line(b))
    assert.equal("<ann> second", t.recv_line(b))
  end)

  it("closes a client whose line is over max_line", function()
    local srv = t.start{ handler = "chat", args = { max_line = 100 } }
    local a = join(srv)
    local b = join(srv)
    t.recv_line(a)
    t.send_all(b, ("x"):rep(500))
    assert.equal("! line too long (max 100 bytes)", t.recv_line(b))
    local _, err = t.recv_until_closed(b, 5)
    assert.equal("closed", err)
    assert.truthy(t.recv_line(a):find("^%* guest%d+ left$"))
  end)

  it("drops a client that stops reading, and the room carries on", function()
    local srv = t.start{ handler = "chat", opts = { "--high-water", "64k" } }
    local talker, tnick = join(srv)
    local reader = join(srv)
    local _, snick = join(srv)
    t.recv_line(talker); t.recv_line(talker); t.recv_line(reader)
    -- 20 MB of lines: more than the stalled client's socket buffers absorb
    local line = ("y"):rep(999) .. "\n"
    local batch = line:rep(100)
    local n, sent, bytes = 20000, 0, 0
    local relayed = "<" .. tnick .. "> " .. line
    local left = "* " .. snick .. " left\n"
    local want = n * #relayed + #left
    local parts = {}
    local socket = require "socket"
    local deadline = t.now() + t.T(30)
    talker:settimeout(t.T(10))
    while bytes < want do
      assert(t.now() < deadline, ("%d of %d bytes arrived in time (%d lines sent)"):format(
        bytes, want, sent))
      if sent < n then
        t.send_all(talker, batch)
        sent = sent + 100
      end
      if socket.select({ reader }, nil, sent < n and 0 or 1)[1] then
        local d, errno = t.raw_recv(reader, 1 << 20)
        assert(d and d ~= "", "the reading client lost its connection: " .. tostring(errno))
        bytes = bytes + #d
        parts[#parts + 1] = d
      end
    end
    srv:await_log("chat: dropping " .. snick)
    -- every line reached the reader, with the stalled client's departure among them
    local all = table.concat(parts)
    local at = all:find(left, 1, true)
    assert(at, "no '" .. left .. "' line")
    t.assert_bytes(relayed:rep(n), all:sub(1, at - 1) .. all:sub(at + #left), "relayed lines")
  end)
end)
