-- echokit.listen: listeners opened and closed at run time with their own
-- handler, next to the main listener. Every wait is bounded.
local t = require "echokit_test"

local HANDLER = "tests/handlers/listen.lua"

local function ask(c, line) return t.ask(c, line) end

describe("echokit.listen", function()
  after_each(t.teardown)

  it("opens a listener with its own handler; close stops it, its connections carry on", function()
    local srv = t.start { handler = HANDLER }
    local ctl = srv:connect()
    local base = ask(ctl, "refs")
    local addr = ask(ctl, "listen 127.0.0.1:0"):match("^ok (.+)$")
    assert.truthy(addr, "no address from listen")
    local host, port = addr:match("^(.+):(%d+)$")
    local socket = require "socket"
    local c = assert(socket.connect(host, tonumber(port)))
    c:settimeout(t.T(3))
    t.send_all(c, "hello\n")
    assert.equal("HELLO", t.recv_line(c))
    assert.equal("closed nil", ask(ctl, "close"))
    local c2, err = socket.connect(host, tonumber(port))
    assert.is_nil(c2, "connected to a closed listener")
    assert.equal("connection refused", err)
    t.send_all(c, "still\n")
    assert.equal("STILL", t.recv_line(c))             -- accepted before the close
    c:close()
    assert.equal("plain", ask(ctl, "plain"))           -- the main handler is untouched
    t.eventually(function() return ask(ctl, "refs") == base end, 3,
                 "registry references back to the baseline (" .. base .. ")")
  end)

  it("opens a TLS listener (tls://) that openssl s_client talks to", function()
    local srv = t.start { handler = HANDLER }
    local ctl = srv:connect()
    local addr = ask(ctl, "listentls 127.0.0.1:0"):match("^ok (.+)$")
    assert.truthy(addr, "no address from listentls")
    local p = io.popen(("printf 'secret\\n' | timeout %d openssl s_client -connect %s -quiet " ..
                        "2>/dev/null"):format(math.ceil(t.T(5)), addr))
    local out = p:read("a")
    p:close()
    assert.equal("SECRET\n", out)                   -- decrypted, handled, encrypted back
    -- a plaintext client gets no echo: the bytes are not a TLS handshake
    local host, port = addr:match("^(.+):(%d+)$")
    local c = assert(require("socket").connect(host, tonumber(port)))
    c:settimeout(t.T(3))
    t.send_all(c, "plain\n")
    local got = t.recv_until_closed(c)
    assert.is_nil(got:find("PLAIN", 1, true), "a plaintext client was answered in clear")
    srv:await_log("tls handshake failed")
    assert.equal("plain", ask(ctl, "plain"))
  end)

  it("a taken address is a clear error, and what runs keeps running", function()
    local srv = t.start { handler = HANDLER }
    local ctl = srv:connect()
    local addr = ask(ctl, "listen 127.0.0.1:0"):match("^ok (.+)$")
    local reply = ask(ctl, "listen " .. addr)
    assert.matches("^err .*" .. addr:gsub("%p", "%%%0") .. ".*[Aa]ddress already in use", reply)
    reply = ask(ctl, "listen 127.0.0.1:" .. srv:port())
    assert.matches("^err .*already in use", reply)
    local host, port = addr:match("^(.+):(%d+)$")
    local c = assert(require("socket").connect(host, tonumber(port)))
    c:settimeout(t.T(3))
    t.send_all(c, "up\n")
    assert.equal("UP", t.recv_line(c))
    c:close()
    assert.equal("main", ask(srv:connect(), "main"))
  end)

  it("never takes a unix socket another service listens on", function()
    local path = t.unix_path("foreign")
    local other = t.start { handler = "echo", listen = { "unix:" .. path } }
    local oc = other:connect()
    local srv = t.start { handler = HANDLER }
    local ctl = srv:connect()
    local reply = ask(ctl, "listen unix:" .. path)
    assert.equal("err unix:" .. path .. ": address in use: something is listening on " .. path,
                 reply)
    t.send_all(oc, "mine\n")
    assert.equal("mine", t.recv_line(oc))
    local oc2 = other:connect()
    t.send_all(oc2, "still mine\n")
    assert.equal("still mine", t.recv_line(oc2))
    -- Once that service is gone the path may be taken.
    oc:close()
    oc2:close()
    other:stop()
    assert.equal("ok unix:" .. path, ask(ctl, "listen unix:" .. path))
    local unix = require "socket.unix"
    local c = assert(unix.stream())
    c:settimeout(t.T(3))
    assert(c:connect(path))
    t.send_all(c, "ours\n")
    assert.equal("OURS", t.recv_line(c))
    c:close()
  end)

  it("a malformed address raises in the caller; the server carries on", function()
    local srv = t.start { handler = HANDLER, expect_errors = { "echokit.listen:" } }
    local ctl = srv:connect()
    t.send_all(ctl, "bad 127.0.0.1:notaport\n")
    local d, err = t.recv_until_closed(ctl, 3)
    assert.equal("", d)
    srv:await_log("on_data: .*echokit.listen: ")
    assert.equal("fine", ask(srv:connect(), "fine"))
  end)

  it("a listener may close itself in on_connect and be collected at once", function()
    -- Under the ASan build this catches a read of the freed listener after
    -- on_connect returns.
    local srv = t.start { handler = HANDLER }
    local ctl = srv:connect()
    local base = ask(ctl, "refs")
    local socket = require "socket"
    for _ = 1, 3 do
      local addr = ask(ctl, "selfclose 127.0.0.1:0"):match("^ok (.+)$")
      assert.truthy(addr, "no address from selfclose")
      local host, port = addr:match("^(.+):(%d+)$")
      local c = assert(socket.connect(host, tonumber(port)))
      c:settimeout(t.T(3))
      assert.equal("closed itself", t.recv_line(c))
      c:close()
      local c2, err = socket.connect(host, tonumber(port))
      assert.is_nil(c2, "connected to a listener that closed itself")
      assert.equal("connection refused", err)
    end
    assert(srv:alive(), "the server died")
    t.eventually(function() return ask(ctl, "refs") == base end, 3,
                 "registry references back to the baseline (" .. base .. ")")
  end)

  it("takes numeric addresses only (and localhost), so it never blocks on a lookup", function()
    local srv = t.start { handler = HANDLER, expect_errors = { "echokit.listen:" } }
    local ctl = srv:connect()
    local addr = ask(ctl, "listen localhost:0"):match("^ok (.+)$")
    assert.matches("^127%.0%.0%.1:%d+$", addr)
    local t0 = t.now()
    t.send_all(ctl, "bad nonexistent.invalid:1234\n")
    local d = t.recv_until_closed(ctl, 3)
    assert.equal("", d)
    srv:await_log("echokit.listen: nonexistent.invalid:1234: 'nonexistent.invalid' is not a " ..
                  "numeric address")
    assert(t.now() - t0 < t.T(2), "the refusal took " .. (t.now() - t0) .. "s")
    assert.equal("fine", ask(srv:connect(), "fine"))
  end)

  it("stops accepting at shutdown", function()
    local srv = t.start { handler = HANDLER }
    local ctl = srv:connect()
    local addr = ask(ctl, "listen 127.0.0.1:0"):match("^ok (.+)$")
    ctl:close()
    local how, code = srv:stop()
    assert.equal("exited", how)
    assert.equal(0, code)
    local host, port = addr:match("^(.+):(%d+)$")
    assert.is_nil(require("socket").connect(host, tonumber(port)))
  end)
end)
