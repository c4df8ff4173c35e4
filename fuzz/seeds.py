#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ from real traffic: the requests
curl sends, the commands redis-cli sends and the replies redis-server gives,
the ClientHellos openssl s_client sends (captured on a loopback socket),
WebSocket frames as RFC 6455 lays them out
(masked by a client, unmasked from a server), and pcap operation sequences.

    python3 fuzz/seeds.py          # needs curl, redis-cli, redis-server, openssl

Run by hand when the seeds should change; `make fuzz` never writes here.
Inputs of the Lua harnesses start with two bytes: the options and the cuts
(see fuzz/lua/driver.lua)."""
import os
import socket
import struct
import subprocess
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(harness, name, data):
    d = os.path.join(ROOT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def capture(cmd, reply=b"", settle=0.5, stdin=None):
    """Runs cmd (with {port}) against a listener that records what it gets."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = bytearray()

    def serve():
        srv.settimeout(10)
        c, _ = srv.accept()
        c.settimeout(settle)
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                got.extend(b)
                if reply:
                    c.sendall(reply)
        except socket.timeout:
            pass
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    subprocess.run([a.format(port=port) for a in cmd], stdin=stdin, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=10)
    t.join()
    srv.close()
    return bytes(got)


def lua(opts, cuts, payload):
    return bytes([opts, cuts]) + payload


def http_seeds():
    url = "http://127.0.0.1:{port}/path/x?a=1&b=%20"
    cases = {
        "get": ["curl", "-s", "-m", "1", url],
        "head": ["curl", "-s", "-m", "1", "-I", url],
        "post": ["curl", "-s", "-m", "1", "-d", "name=echokit&x=1", url],
        "chunked": ["curl", "-s", "-m", "1", "-H", "Transfer-Encoding: chunked", "-d",
                    "hello chunked world", url],
        "expect": ["curl", "-s", "-m", "1", "-H", "Expect: 100-continue", "-d", "x" * 100, url],
        "http10": ["curl", "-s", "-m", "1", "--http1.0", "-H", "Connection: keep-alive", url],
        "upgrade": ["curl", "-s", "-m", "1", "-H", "Connection: Upgrade", "-H",
                    "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13", "-H",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "-H",
                    "Sec-WebSocket-Protocol: chat, superchat", url],
    }
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    reqs = {}
    for name, cmd in cases.items():
        reqs[name] = capture(cmd, reply)
        put("lua_http", name, lua(0, 0, reqs[name]))
    put("lua_http", "pipeline_cut", lua(0, 3, reqs["get"] + reqs["post"] + reqs["chunked"]))
    put("lua_http", "chunked_small_limits", lua(0x29, 5, reqs["chunked"]))
    put("lua_http", "upgrade_bytewise", lua(0, 8, reqs["upgrade"]))
    # the handler builders: HTTP pipelined (and above high water), a WebSocket session
    put("lua_handlers", "http_pipeline", lua(0, 3, reqs["get"] + reqs["expect"] + reqs["chunked"]))
    put("lua_handlers", "http_full", lua(2, 0, reqs["post"] + reqs["http10"]))
    put("lua_handlers", "http_fail", lua(0, 0, reqs["get"].replace(b"/path/x", b"/fail", 1)))
    frames = ws_frame(1, b"hello") + ws_frame(9, b"ping") + ws_frame(2, b"x" * 200, False) \
        + ws_frame(0, b"y") + ws_frame(8, struct.pack("!H", 1000) + b"bye")
    put("lua_handlers", "ws_session", lua(1, 0, reqs["upgrade"] + frames))
    put("lua_handlers", "ws_session_cut", lua(3, 5, reqs["upgrade"] + frames))
    put("lua_handlers", "ws_plain_http", lua(1, 0, reqs["get"]))


def ws_frame(op, payload, fin=True, mask=b"\x37\xfa\x21\x3d"):
    b1 = (0x80 if fin else 0) | op
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b1, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b1, m | 126, n)
    else:
        head = struct.pack("!BBQ", b1, m | 127, n)
    if not mask:
        return head + payload
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def ws_seeds():
    put("lua_websocket", "text", lua(0, 0, ws_frame(1, "héllo ✓".encode())))
    put("lua_websocket", "binary_126", lua(0, 1, ws_frame(2, bytes(range(200)))))
    put("lua_websocket", "fragments", lua(0, 2, ws_frame(1, b"frag", False) + ws_frame(9, b"ping?")
                                          + ws_frame(0, b"ment", False) + ws_frame(0, b"ed")))
    put("lua_websocket", "close", lua(0, 0, ws_frame(8, struct.pack("!H", 1000) + b"bye")))
    put("lua_websocket", "pong_close_empty", lua(0, 3, ws_frame(10, b"") + ws_frame(8, b"")))
    put("lua_websocket", "server_unmasked", lua(1, 0, ws_frame(1, b"from server", mask=None)
                                                + ws_frame(8, b"\x03\xe9", mask=None)))
    put("lua_websocket", "too_big", lua(6, 0, ws_frame(2, b"x" * 300)))


def resp_seeds():
    cmds = {
        "ping": ["PING"],
        "set": ["SET", "key:1", "hello world"],
        "mset": ["MSET", "a", "1", "b", "2", "c", "3"],
        "keys": ["KEYS", "user:[a-c]*"],
    }
    for name, argv in cmds.items():
        data = capture(["redis-cli", "-p", "{port}"] + argv, b"+OK\r\n")
        put("lua_resp", name, lua(0, 0, data))
    # a binary value, as redis-cli -x sends it from stdin
    put("lua_resp", "binary", lua(0, 1, b"*3\r\n$3\r\nSET\r\n$3\r\nbin\r\n$4\r\n\x00\r\n\xff\r\n"))
    put("lua_resp", "inline", lua(0, 0, b'SET "a b" \'c\\\'d\' "\\x41\\n"\r\nPING\n'))
    put("lua_resp", "pipeline_cut", lua(0, 2, capture(["redis-cli", "-p", "{port}", "PING"],
                                                    b"+PONG\r\n") * 3))
    # replies from a real redis-server, for values mode
    port = 17379
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                           stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                s = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.1)
        script = [["SET", "k", "v"], ["GET", "k"], ["GET", "nope"], ["INCR", "n"],
                  ["RPUSH", "l", "a", "b"], ["LRANGE", "l", "0", "-1"], ["NOSUCH"],
                  ["EXEC"], ["HSET", "h", "f", "1"], ["HGETALL", "h"]]
        out = b""
        for argv in script:
            s.sendall(b"*%d\r\n" % len(argv) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in argv))
            time.sleep(0.05)
            out += s.recv(65536)
        s.close()
        put("lua_resp", "replies", lua(1, 0, out))
        put("lua_resp", "replies_cut", lua(1, 3, out))
    finally:
        srv.terminate()
        srv.wait()


def framing_seeds():
    put("lua_framing", "lines", lua(1, 0, b"one\ntwo\r\nthree\n"))
    put("lua_framing", "lines_crlf_cut", lua(3, 1, b"a\r\nbb\r\n\r\nrest"))
    put("lua_framing", "lines_abc", lua(7, 2, b"xxabcyyabcaabc"))
    put("lua_framing", "prefixed4", lua(4, 0, struct.pack(">I", 5) + b"hello" + struct.pack(">I", 0)))
    put("lua_framing", "prefixed2_little_incl", lua(0x1a, 1, struct.pack("<H", 5) + b"abc"))
    put("lua_framing", "prefixed8", lua(6, 0, struct.pack(">Q", 3) + b"xyz"))


def glob_seeds():
    for name, (pat, subj) in {
        "star": (b"user:*", b"user:1000"),
        "set": (b"h[ae]llo", b"hallo"),
        "neg_range": (b"h[^a-c]llo?", b"hzllo!"),
        "escape": (b"\\*lit\\[x", b"*lit[x"),
        "stars": (b"*a*b*c*", b"xxaxxbxxc"),
        "open_set": (b"a[bc", b"ab"),
    }.items():
        put("lua_glob", name, lua(len(pat), 0, pat + subj))


def pcap_seeds():
    def op(code, stream=0, side=0, big=False):
        return bytes([code | stream << 3 | side << 5 | (0x40 if big else 0)])

    def data(side, payload, stream=0):
        return op(1, stream, side) + struct.pack("<H", len(payload)) + payload

    http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    put("pcap", "v4_request_reply", op(0) + b"\x00" + b"\x01\x00\x00\x00" + data(0, http)
        + data(1, b"HTTP/1.1 200 OK\r\n\r\n") + op(2, 0, 0) + op(2, 0, 1))
    put("pcap", "v6_big_rst", op(0) + b"\x03" + b"\x02\x00\x00\x00" + op(1, 0, 1, True)
        + b"\x70\x11" + op(4) + op(3, 0, 0) + data(0, b"late"))
    put("pcap", "mixed_two_streams", op(0) + b"\x01" + b"\xff\xff\xff\xff" + op(0, 1) + b"\x02"
        + b"\x00\x00\x00\x80" + data(0, b"a" * 3000) + data(1, b"b" * 10, 1) + op(2, 1, 1)
        + data(1, b"after fin", 1))

    def dgram(side, fam, payload, stream=0, big_len=None):
        if big_len is not None:
            return op(5, stream, side, True) + bytes([fam]) + struct.pack("<H", big_len)
        return op(5, stream, side) + bytes([fam]) + struct.pack("<H", len(payload)) + payload

    # UDP: a DNS-like exchange over IPv4, the largest datagram of each family
    # and one byte more (refused), an empty one, a mixed-family stream, TCP
    # alongside.
    put("pcap", "udp_v4_v6_limits", dgram(0, 0x00, b"\x12\x34\x01\x00query")
        + dgram(1, 0x00, b"\x12\x34\x81\x80answer") + dgram(0, 0x00, b"")
        + dgram(0, 0x00, b"", big_len=65507) + dgram(1, 0x00, b"", big_len=65508)
        + dgram(0, 0x03, b"", stream=1, big_len=65527) + dgram(1, 0x03, b"", stream=1, big_len=65528)
        + op(4) + dgram(0, 0x01, b"mixed", stream=2) + op(0) + b"\x00" + b"\x01\x00\x00\x00"
        + data(0, b"tcp too"))


def tls_records(msg, frag, version=0x0301):
    return b"".join(struct.pack("!BHH", 22, version, len(msg[i:i + frag])) + msg[i:i + frag]
                    for i in range(0, len(msg), frag))


def tls_hello(exts):
    """A ClientHello handshake message with the extensions given as (type, data),
    or with no extension block at all when exts is None."""
    body = struct.pack("!H", 0x0303) + bytes(range(32)) + b"\x00" + struct.pack("!HHH", 4, 0x1301, 0xc02f) \
        + b"\x01\x00"
    if exts is not None:
        ext = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in exts)
        body += struct.pack("!H", len(ext)) + ext
    return b"\x01" + struct.pack("!I", len(body))[1:] + body


def tlshello_seeds():
    """The hellos s_client sends (tests/unit/test_tlshello.c embeds the same
    three), then built ones for what it does not send."""
    s_client = ["openssl", "s_client", "-connect", "127.0.0.1:{port}"]
    hellos = {
        "tls13_sni_alpn": s_client + ["-tls1_3", "-servername", "example.com", "-alpn", "h2,http/1.1"],
        "tls12_sni_alpn": s_client + ["-tls1_2", "-servername", "www.example.org", "-alpn", "http/1.1"],
        "no_sni": s_client + ["-noservername"],
    }
    for name, cmd in hellos.items():
        put("tlshello", name, capture(cmd, stdin=subprocess.DEVNULL))

    def sni(name):
        return (0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)

    def alpn(*names):
        lst = b"".join(bytes([len(n)]) + n for n in names)
        return (16, struct.pack("!H", len(lst)) + lst)

    def versions(*vs):
        return (43, bytes([2 * len(vs)]) + b"".join(struct.pack("!H", v) for v in vs))

    msg = tls_hello([sni(b"split.example"), alpn(b"h2"), versions(0x0304, 0x0303)])
    put("tlshello", "two_records", tls_records(msg, len(msg) // 2 + 1))
    put("tlshello", "bytewise_records", tls_records(msg, 1, 0x0303))
    put("tlshello", "grease", tls_records(tls_hello([(0x2a2a, b""), versions(0x7a7a, 0x0304, 0x0303),
                                                    alpn(b"\x0a\x0a", b"h2"), sni(b"g.example"),
                                                    (0xdada, b"\x00")]), 16384))
    put("tlshello", "long_odd_sni", tls_records(tls_hello([sni(b"a\\\x01," * 100)]), 16384))
    put("tlshello", "no_extensions", tls_records(tls_hello(None), 16384))
    put("tlshello", "truncated", tls_records(msg, 16384)[:60])
    put("tlshello", "plaintext", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def simple_seeds():
    for name, s in {"v4": "127.0.0.1:7000", "v6": "[::1]:7000", "unix": "unix:/tmp/e.sock",
                    "port": "7000", "name": "localhost:6379", "any": "*:80",
                    "v6_mapped": "[::ffff:10.0.0.1]:65535", "empty_host": ":0"}.items():
        put("net", name, s.encode())
    for name, s in {"k": "64k", "mb": "16mb", "frac": "0.25", "max": "18446744073709551615",
                    "g": "1G", "exp": "1e3"}.items():
        put("util", name, s.encode())
    put("codec", "key", b"\x00dGhlIHNhbXBsZSBub25jZQ==")
    put("codec", "pad1", b"\x05QUJDRA==")
    put("codec", "block55", b"\x01" + b"a" * 55)
    put("codec", "block64", b"\x02" + b"b" * 64)


if __name__ == "__main__":
    simple_seeds()
    tlshello_seeds()
    pcap_seeds()
    glob_seeds()
    framing_seeds()
    ws_seeds()
    http_seeds()
    resp_seeds()
