#!/usr/bin/python3
"""TLS peers for tests/functional/tls_proxy_spec.lua, on Python's ssl module
(OpenSSL underneath, but not echokit's code):

    tls_peer.py http CERT KEY DIR      HTTPS file server (http.server) on DIR
    tls_peer.py echo CERT KEY [abrupt] TLS echo server; at the client's EOF it
                                       answers "EOF after N bytes\\n", then closes
                                       (abrupt: without a close_notify of its own)
    tls_peer.py client HOST PORT CA NAME NBYTES
                                       TLS client: sends NBYTES random bytes
                                       while reading the echo, then close_notify
                                       + shutdown(SHUT_WR), and reads on until
                                       the peer closes; checks the bytes
    tls_peer.py ask HOST PORT CA NAME LINE
                                       TLS client: sends LINE in the same TCP
                                       segment as its Finished, prints the
                                       line that comes back

The servers listen on 127.0.0.1, port 0, print the port as one line on stdout,
then one line per connection once its handshake is over:
    conn N resumed=0|1 version=TLSv1.3
or `conn N failed: WHY` when it fails. The client prints `ok ...` and exits 0,
or says what differed on stderr and exits 1. Every socket wait is bounded
(T seconds).
"""
import functools
import hashlib
import http.server
import os
import select
import socket
import socketserver
import ssl
import sys
import threading
import time

from http_server import serve  # tests/support, this script's directory

T = float(os.environ.get("TLS_PEER_TIMEOUT", "60"))
lock = threading.Lock()
seq = [0]


def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def handshake(ctx, sock):
    """The server side of one connection's handshake; the SSLSocket, or None."""
    with lock:
        seq[0] += 1
        n = seq[0]
    sock.settimeout(T)
    try:
        s = ctx.wrap_socket(sock, server_side=True)
    except (OSError, ssl.SSLError) as e:
        say("conn %d failed: %s" % (n, e))
        sock.close()
        return None
    say("conn %d resumed=%d version=%s" % (n, int(s.session_reused), s.version()))
    return s


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("tls_peer http: %s\n" % (fmt % args))
        sys.stderr.flush()


class TLSHTTPServer(http.server.ThreadingHTTPServer):
    """The handshake runs in the connection's thread, not in accept()."""
    daemon_threads = True

    def __init__(self, ctx, *a, **kw):
        self.ctx = ctx
        super().__init__(*a, **kw)

    def process_request_thread(self, request, client_address):
        s = handshake(self.ctx, request)
        if s is None:
            return
        super().process_request_thread(s, client_address)


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        s = handshake(self.server.ctx, self.request)
        if s is None:
            return
        n = 0
        try:
            while True:
                d = s.recv(1 << 16)
                if not d:
                    break
                n += len(d)
                s.sendall(d)
            # The client is done sending; it still reads.
            s.sendall(b"EOF after %d bytes\n" % n)
            if not self.server.abrupt:
                try:
                    s.unwrap()
                except (OSError, ssl.SSLError):
                    pass
        except (OSError, ssl.SSLError) as e:
            sys.stderr.write("tls_peer echo: after %d bytes: %s\n" % (n, e))
        finally:
            s.close()


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ctx, *a, **kw):
        self.ctx = ctx
        super().__init__(*a, **kw)


def fail(msg):
    sys.stderr.write("tls_peer client: %s\n" % msg)
    sys.exit(1)


def client(host, port, ca, name, nbytes):
    """A memory-BIO client, so that close_notify and the TCP FIN can be sent
    while reading goes on (a half-close), which SSLSocket cannot express."""
    data = os.urandom(nbytes)
    ctx = ssl.create_default_context(cafile=ca)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    sock = socket.create_connection((host, port), timeout=T)
    sock.setblocking(False)
    pending = bytearray()   # TLS bytes to send
    got = bytearray()
    sent = 0
    shut = False            # close_notify queued
    fin = False             # SHUT_WR done
    peer_closed = False     # close_notify or EOF from the peer
    done_handshake = False
    deadline = time.monotonic() + T
    while not peer_closed:
        if not done_handshake:
            try:
                obj.do_handshake()
                done_handshake = True
            except ssl.SSLWantReadError:
                pass
        if done_handshake and not shut and len(pending) < (1 << 18):
            if sent < len(data):
                k = obj.write(data[sent:sent + (1 << 16)])
                sent += k
            else:
                try:
                    obj.unwrap()
                except ssl.SSLWantReadError:
                    pass
                shut = True
        pending += out.read()
        if shut and not pending and not fin:
            sock.shutdown(socket.SHUT_WR)
            fin = True
        left = deadline - time.monotonic()
        if left <= 0:
            fail("timeout: sent %d of %d, received %d (handshake %s, close_notify %s)"
                 % (sent, len(data), len(got), done_handshake, shut))
        want_w = [sock] if pending else []
        busy = done_handshake and not shut and len(pending) < (1 << 18)
        r, w, _ = select.select([sock], want_w, [], 0 if busy else min(left, 1))
        if w:
            try:
                k = sock.send(pending)
                del pending[:k]
            except BlockingIOError:
                pass
        if r:
            try:
                d = sock.recv(1 << 18)
            except BlockingIOError:
                d = None
            except ConnectionResetError as e:
                fail("reset after %d bytes received: %s" % (len(got), e))
            if d == b"":
                inc.write_eof()
            elif d:
                inc.write(d)
            while True:
                try:
                    p = obj.read(1 << 18)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    peer_closed = True
                    break
                except ssl.SSLEOFError:
                    peer_closed = True
                    break
                if not p:
                    peer_closed = True
                    break
                got += p
            if d == b"":
                peer_closed = True
    sock.close()
    want = data + b"EOF after %d bytes\n" % len(data)
    if bytes(got) != want:
        i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]),
                 min(len(got), len(want)))
        fail("received %d bytes, expected %d; first difference at %d; tail %r"
             % (len(got), len(want), i, bytes(got[-60:])))
    print("ok %d bytes each way, sha256 %s, then %r" % (
        len(data), hashlib.sha256(data).hexdigest()[:16], got[len(data):].decode()))
    return 0


def ask(host, port, ca, name, line):
    """The request rides in the segment that ends the handshake: the server
    finds it already read, with no readiness of the socket to come."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    sock = socket.create_connection((host, port), timeout=T)

    def recv_into_bio():
        d = sock.recv(1 << 16)
        if not d:
            fail("closed by the server (handshake or reply)")
        inc.write(d)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(out.read())
            recv_into_bio()
    obj.write(line.encode() + b"\n")
    sock.sendall(out.read())   # Finished and the request, in one send
    got = b""
    while not got.endswith(b"\n"):
        try:
            got += obj.read(1 << 16)
        except ssl.SSLWantReadError:
            try:
                recv_into_bio()
            except socket.timeout:
                fail("no reply within %gs (got %r)" % (T, got))
    print(got.decode().rstrip("\n"))
    sock.close()
    return 0


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "http" and len(sys.argv) == 5:
        ctx = server_context(sys.argv[2], sys.argv[3])
        handler = functools.partial(Quiet, directory=sys.argv[4])
        return serve(TLSHTTPServer(ctx, ("127.0.0.1", 0), handler))
    if mode == "echo" and len(sys.argv) in (4, 5):
        ctx = server_context(sys.argv[2], sys.argv[3])
        srv = EchoServer(ctx, ("127.0.0.1", 0), Echo)
        srv.abrupt = sys.argv[4:] == ["abrupt"]
        return serve(srv)
    if mode == "client" and len(sys.argv) == 7:
        return client(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
    if mode == "ask" and len(sys.argv) == 7:
        return ask(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
