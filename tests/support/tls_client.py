#!/usr/bin/env python3
"""A TLS client for tests/functional/tls_spec.lua, on Python's ssl module.

The TLS engine works over memory BIOs and a non-blocking socket driven by
select(), so that the client decides what goes into which TCP segment (the
client's Finished and its first data in one, a ClientHello cut short) and
tells a close_notify from a bare TCP EOF.

Prints `key=value` lines on stdout (values on one line), e.g.
  handshake=ok version=TLSv1.3 fingerprint=AB:CD:... alpn=http/1.1
  echo=65536 ok  reply=<line>  end=close_notify|eof|reset|timeout
and exits 0 whatever the server did; a bug of the client's own exits 1.

  tls_client.py PORT MODE [options]
Modes:
  echo        handshake, then for each --size: random bytes echoed byte-exact
  lines       handshake, then each --send LINE is sent and one reply line read
  halfclose   handshake, --size bytes sent, then close_notify (no TCP FIN);
              reads the echo and how the server ends
  shutfirst   handshake, sends --send lines; reads until the server ends its
              side; then sends --after LINE and closes with close_notify
  hello       sends the first --cut bytes of a real ClientHello, then closes
  sclient     runs `openssl s_client ARGS...` (after --): writes each --send
              line to it and waits for it to come back on its stdout
Options: --tls 1.2|1.3, --sni NAME, --alpn a,b, --ca FILE (verify; default
no verification), --cert F --key F, --starttls (the SMTP-like test
protocol before the handshake), --coalesce (Finished and the first data in
one segment), --timeout S.
"""
import argparse
import hashlib
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time


def out(key, value):
    print("%s=%s" % (key, str(value).replace("\n", "\\n").replace("\r", "\\r")), flush=True)


class Timeout(Exception):
    pass


class Client:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.timeout
        self.sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
        self.sock.setblocking(False)
        self.pend = bytearray()   # raw bytes not yet sent
        self.rawin = bytearray()  # raw bytes received while no TLS runs
        self.eof = None           # None, "eof", "reset"
        self.obj = None
        self.hold = None          # raw bytes kept from the SSL for a while
        self.linebuf = bytearray()  # plaintext after the last line read

    def left(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout()
        return left

    def context(self):
        a = self.args
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # A TCP EOF without close_notify must show as such (SSLEOFError).
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        if a.ca:
            ctx.load_verify_locations(a.ca)
            ctx.check_hostname = bool(a.sni)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if a.tls == "1.2":
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        elif a.tls == "1.3":
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        if a.alpn:
            ctx.set_alpn_protocols(a.alpn.split(","))
        if a.cert:
            ctx.load_cert_chain(a.cert, a.key)
        return ctx

    def start_tls(self):
        self.inc = ssl.MemoryBIO()
        self.outb = ssl.MemoryBIO()
        self.obj = self.context().wrap_bio(self.inc, self.outb, server_hostname=self.args.sni)
        if self.rawin:
            self.inc.write(bytes(self.rawin))
            self.rawin.clear()

    # One turn: send what is pending, take in what arrived. wait=False polls.
    def step(self, wait=True):
        if self.obj is not None:
            self.pend += self.outb.read()
        rd = [self.sock] if self.eof is None else []
        wr = [self.sock] if self.pend else []
        if not rd and not wr:
            return False
        r, w, _ = select.select(rd, wr, [], min(self.left(), 0.2) if wait else 0)
        if w:
            try:
                n = self.sock.send(self.pend)
                del self.pend[:n]
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                self.pend.clear()
                self.eof = "reset"
        if r:
            try:
                d = self.sock.recv(1 << 18)
            except BlockingIOError:
                d = None
            except ConnectionResetError:
                d = b""
                self.eof = "reset"
            if d is not None:
                if not d:
                    self.eof = self.eof or "eof"
                    if self.obj is not None and self.hold is None:
                        self.inc.write_eof()
                elif self.hold is not None:
                    self.hold += d
                elif self.obj is not None:
                    self.inc.write(d)
                else:
                    self.rawin += d
        return bool(r or w)

    def flush(self):
        self.pend += self.outb.read() if self.obj is not None else b""
        while self.pend and self.eof != "reset":
            self.step()

    def handshake(self, hold=False):
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self.eof:
                    raise ssl.SSLEOFError("peer closed during the handshake")
                self.step()
        if not hold:
            self.flush()

    # Plaintext available now: (bytes, end) where end is None (more may
    # come), "close_notify", "eof" (TCP EOF without close_notify) or an error.
    def read_now(self):
        parts = []
        end = None
        while True:
            try:
                d = self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                if self.eof == "reset":
                    end = "reset"
                break
            except ssl.SSLZeroReturnError:
                end = "close_notify"
                break
            except ssl.SSLEOFError:
                end = self.eof or "eof"
                break
            except ssl.SSLError as e:
                end = "error: " + (e.reason or str(e))
                break
            if not d:
                end = "close_notify"
                break
            parts.append(d)
        return b"".join(parts), end

    # Sends data while reading; returns (received, end) once `expect` bytes
    # came back or the server ended.
    def exchange(self, data, expect):
        got = bytearray()
        sent = 0
        end = None
        while len(got) < expect and end is None:
            while sent < len(data) and len(self.pend) + self.outb.pending < (1 << 18):
                sent += self.obj.write(data[sent:sent + 16384])
            self.step()
            d, end = self.read_now()
            got += d
        return bytes(got), end

    def read_line(self):
        buf = self.linebuf
        end = None
        while b"\n" not in buf and end is None:
            d, end = self.read_now()
            buf += d
            if b"\n" not in buf and end is None:
                self.step()
        if b"\n" not in buf:
            return None, bytes(buf), end
        i = buf.index(b"\n")
        line = bytes(buf[:i]).rstrip(b"\r").decode("latin-1")
        del buf[:i + 1]
        return line, b"", None

    def read_until_end(self):
        got = bytearray()
        while True:
            d, end = self.read_now()
            got += d
            if end is not None:
                return bytes(got), end
            self.step()

    # Plain text lines before a STARTTLS.
    def raw_line(self):
        while b"\n" not in self.rawin:
            if self.eof:
                raise ssl.SSLEOFError("closed before a line: %r" % bytes(self.rawin))
            self.step()
        i = self.rawin.index(b"\n")
        line = bytes(self.rawin[:i]).rstrip(b"\r").decode("latin-1")
        del self.rawin[:i + 1]
        return line

    def raw_send(self, text):
        self.pend += text.encode("latin-1")
        while self.pend:
            self.step()

    def report_handshake(self):
        out("handshake", "ok")
        out("version", self.obj.version())
        out("cipher", self.obj.cipher()[0])
        out("alpn", self.obj.selected_alpn_protocol())
        der = self.obj.getpeercert(binary_form=True)
        if der:
            fp = hashlib.sha256(der).hexdigest().upper()
            out("fingerprint", ":".join(fp[i:i + 2] for i in range(0, len(fp), 2)))
            if self.args.ca:
                subj = dict(x[0] for x in self.obj.getpeercert()["subject"])
                out("subject_cn", subj.get("commonName"))


def starttls_dialogue(c):
    out("greeting", c.raw_line())
    c.raw_send("EHLO x\r\n")
    out("ehlo1", c.raw_line())
    out("ehlo2", c.raw_line())
    c.raw_send("STARTTLS\r\n")
    out("starttls", c.raw_line())


def mode_tls(args):
    c = Client(args)
    try:
        if args.starttls:
            starttls_dialogue(c)
        c.start_tls()
        try:
            c.handshake(hold=args.coalesce)
        except ssl.SSLError as e:
            out("handshake", "failed: %s: %s" % (e.reason, e))
            try:
                c.flush()   # the alert, as a client on a socket sends it
            except (Timeout, OSError):
                pass
            return
        c.report_handshake()
        if args.mode == "echo":
            for size in args.size:
                data = os.urandom(size)
                t0 = time.monotonic()
                got, end = c.exchange(data, len(data))
                if got == data:
                    out("echo", "%d ok %.3fs" % (size, time.monotonic() - t0))
                else:
                    same = next((i for i in range(min(len(got), len(data)))
                                 if got[i] != data[i]), min(len(got), len(data)))
                    out("echo", "%d bad: got %d bytes, first difference at %d, end %s" %
                        (size, len(got), same, end))
                    return
        elif args.mode == "lines":
            for i, line in enumerate(args.send):
                c.obj.write((line + "\n").encode())
                if args.coalesce and i == 0:
                    c.flush()
                reply, rest, end = c.read_line()
                if reply is None:
                    out("reply", "none: %r then %s" % (rest, end))
                    out("end", end)
                    return
                out("reply", reply)
        elif args.mode == "halfclose":
            data = os.urandom(args.size[0])
            sent = 0
            # What arrives meanwhile is held back: the close_notify must
            # follow the data before the SSL sees any of the echo (else
            # unwrap's second SSL_shutdown meets application data).
            c.hold = bytearray()
            while sent < len(data):
                sent += c.obj.write(data[sent:sent + 16384])
                if not args.coalesce:   # else data and close_notify go together
                    c.step(wait=False)
            try:
                c.obj.unwrap()   # close_notify; the TCP connection stays open
            except ssl.SSLWantReadError:
                pass
            c.flush()
            held, c.hold = c.hold, None
            c.inc.write(bytes(held))
            if c.eof:
                c.inc.write_eof()
            out("sent_close_notify", "yes")
            got = bytearray()
            end = None
            try:
                while end is None:
                    c.step()
                    d, end = c.read_now()
                    got += d
            except Timeout:
                out("received", len(got))
                raise
            out("echo", "%d %s" % (len(got), "ok" if bytes(got) == data else "bad"))
            out("end", end)
            return
        elif args.mode == "shutfirst":
            for line in args.send:
                c.obj.write((line + "\n").encode())
            c.flush()
            got, end = c.read_until_end()
            out("received", got.decode("latin-1"))
            out("end", end)
            if args.after:
                c.obj.write((args.after + "\n").encode())
                c.flush()
                out("sent_after", "yes")
        if args.mode != "halfclose":
            try:
                c.obj.unwrap()
            except ssl.SSLError:
                pass
            c.flush()
        out("end", c.eof or "open")
    except Timeout:
        out("timeout", "after %gs" % args.timeout)
    finally:
        c.sock.close()


def mode_hello(args):
    c = Client(args)
    c.start_tls()
    try:
        c.obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = c.outb.read()
    out("hello_len", len(hello))
    c.pend += hello[:args.cut]
    c.flush()
    c.sock.close()
    out("sent", min(args.cut, len(hello)))


def mode_sclient(args):
    p = subprocess.Popen(["openssl", "s_client"] + args.rest, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    cond = threading.Condition()

    def reader():
        for line in p.stdout:
            with cond:
                lines.append(line.decode("latin-1").rstrip("\r\n"))
                cond.notify_all()
        with cond:
            lines.append(None)
            cond.notify_all()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    deadline = time.monotonic() + args.timeout
    seen = 0
    try:
        for line in args.send:
            p.stdin.write((line + "\n").encode())
            p.stdin.flush()
            with cond:
                while True:
                    if line in lines[seen:]:
                        seen = lines.index(line, seen) + 1
                        out("echoed", line)
                        break
                    if None in lines:
                        raise Timeout("s_client ended")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Timeout("no echo")
                    cond.wait(left)
    except Timeout as e:
        out("timeout", str(e))
    p.stdin.close()
    try:
        p.wait(max(0.5, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        out("killed", "yes")
    th.join(2)
    out("exit", p.returncode)
    out("stdout", "\n".join(l for l in lines if l is not None))
    out("stderr", p.stderr.read().decode("latin-1"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("mode", choices=["echo", "lines", "halfclose", "shutfirst", "hello",
                                     "sclient"])
    ap.add_argument("--tls", choices=["1.2", "1.3"])
    ap.add_argument("--sni")
    ap.add_argument("--alpn")
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--size", type=int, action="append", default=[])
    ap.add_argument("--send", action="append", default=[])
    ap.add_argument("--after")
    ap.add_argument("--cut", type=int, default=0)
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--coalesce", action="store_true")
    ap.add_argument("--timeout", type=float, default=10)
    argv = sys.argv[1:]
    rest = []
    if "--" in argv:   # s_client's arguments
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)
    args.rest = rest
    if args.mode == "hello":
        mode_hello(args)
    elif args.mode == "sclient":
        mode_sclient(args)
    else:
        mode_tls(args)


if __name__ == "__main__":
    main()
