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

  it("takes a command with a long run of inner blanks in linear time", function()
    local srv = t.start{ handler = "chat", args = { max_line = 131072 } }
    local a, an = join(srv)
    local b = join(srv)
    t.recv_line(a)
    -- the same /me twice: letters, then blanks (quadratic for a (.-)%s*$
    -- match, seconds inside one C call); blanks may cost a few times more
    local function timed(inner)
      local t0 = t.now()
      say(a, "/me a" .. inner .. "b  ")
      assert.equal("* " .. an .. " a" .. inner .. "b", t.recv_line(b, 60))
      return t.now() - t0
    end
    local base = timed(("c"):rep(60000))
    local blanks = timed((" "):rep(60000))
    assert(blanks < 20 * base + t.T(0.5), ("blanks took %.3fs, letters %.3fs"):format(blanks, base))
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

  it("holds the talker while a reader is behind, drops a stalled one, and the room carries on", function()
    local srv = t.start{ handler = "chat", opts = { "--high-water", "64k" },
                         args = { stall = t.T(1) } }
    local talker, tnick = join(srv)
    local reader = join(srv)
    local _, snick = join(srv)
    t.recv_line(talker); t.recv_line(talker); t.recv_line(reader)
    local socket = require "socket"
    local line = ("y"):rep(999) .. "\n"
    local batch = line:rep(100)
    local relayed = "<" .. tnick .. "> " .. line
    local left = "* " .. snick .. " left\n"
    local done = "<" .. tnick .. "> done\n"
    local parts, got = {}, ""
    local function read_some(wait)
      if socket.select({ reader }, nil, wait)[1] then
        local d, errno = t.raw_recv(reader, 1 << 20)
        assert(d and d ~= "", "the reading client lost its connection: " .. tostring(errno))
        parts[#parts + 1] = d
        got = got:sub(-64) .. d
      end
    end
    -- talk (without blocking: echokit stops reading the talker while the
    -- stalled client is above high water) until the stalled client is dropped,
    -- however much the kernel buffers hold
    talker:settimeout(0)
    local deadline = t.now() + t.T(60)
    local out, off, lines = "", 0, 0
    local dropped = false
    while not dropped or off < #out do
      assert(t.now() < deadline, ("no drop within %gs (%d lines sent)"):format(t.T(60), lines))
      if off >= #out and not dropped then out, off, lines = batch, 0, lines + 100 end
      local _, writable = socket.select(nil, { talker }, 0)
      if writable[1] then
        local last, err, partial = talker:send(out, off + 1)
        off = last or partial or off
        assert(not err or err == "timeout", "send: " .. tostring(err))
      end
      read_some(0.01)
      dropped = dropped or srv:stderr():find("chat: dropping " .. snick, 1, true) ~= nil
    end
    talker:settimeout(t.T(5))
    t.send_all(talker, "done\n")
    while got:sub(-#done) ~= done do
      assert(t.now() < deadline, "the line after the drop did not arrive")
      read_some(1)
    end
    -- every line reached the reader, with the stalled client's departure among them
    local all = table.concat(parts)
    local at = all:find(left, 1, true)
    assert(at, "no '" .. left .. "' line")
    t.assert_bytes(relayed:rep(lines) .. done, all:sub(1, at - 1) .. all:sub(at + #left),
                   "relayed lines")
  end)

  it("keeps a reader that takes a burst larger than high water", function()
    local srv = t.start{ handler = "chat", opts = { "--high-water", "16k" } }
    local talker, tnick = join(srv)
    local readers = {}
    for i = 1, 3 do
      readers[i] = join(srv)
      t.recv_line(talker)
      for j = 1, i - 1 do t.recv_line(readers[j]) end
    end
    -- 1 MiB in one send: echokit reads it in large pieces, each relayed to
    -- three readers in one callback, far past high water
    local line = ("z"):rep(1023) .. "\n"
    t.send_all(talker, line:rep(1024))
    local relayed = ("<" .. tnick .. "> " .. line):rep(1024)
    for i = 1, 3 do
      t.assert_bytes(relayed, t.recv_n(readers[i], #relayed, 30), "reader " .. i)
    end
    assert.falsy(srv:stderr():find("chat: dropping", 1, true))
  end)
end)
