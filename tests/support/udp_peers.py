#!/usr/bin/env python3
"""UDP peers for udp_spec and udp_proxy_spec (real sockets, every wait bounded).

  udp_peers.py many HOST PORT CLIENTS COUNT WINDOW TIMEOUT
      CLIENTS sockets each send COUNT datagrams (tagged with the client and a
      sequence number) keeping at most WINDOW unanswered; every reply must be
      the client's own datagram. Prints "ok replies=N"; exits 1 on a wrong or
      missing reply (TIMEOUT seconds without any reply).
  udp_peers.py flows HOST PORT TIMEOUT SRC...
      one socket per SRC address (127.0.0.N, port chosen by the kernel), each
      sends one datagram; prints "replied=K of N" after TIMEOUT seconds of
      waiting at most (returns as soon as all have replied).
  udp_peers.py flood HOST PORT COUNT SIZE
      one socket sends COUNT datagrams of SIZE bytes as fast as it can and
      reads nothing; prints "sent=N".
"""
import select
import socket
import sys
import time


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def many(host, port, clients, count, window, timeout):
    socks = []
    for _ in range(clients):
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((host, port))
        socks.append(s)
    sent = [0] * clients
    got = [0] * clients
    index = {s.fileno(): i for i, s in enumerate(socks)}

    def payload(i, n):
        return b"client %d seq %d " % (i, n) + bytes([n % 251]) * (n % 97)

    def top_up(i):
        while sent[i] < count and sent[i] - got[i] < window:
            socks[i].send(payload(i, sent[i]))
            sent[i] += 1

    for i in range(clients):
        top_up(i)
    replies = 0
    while replies < clients * count:
        ready, _, _ = select.select(socks, [], [], timeout)
        if not ready:
            print("no reply for %gs: %s" % (timeout, " ".join(
                "%d/%d" % (got[i], sent[i]) for i in range(clients))))
            return 1
        for s in ready:
            i = index[s.fileno()]
            while True:
                try:
                    d = s.recv(70000)
                except BlockingIOError:
                    break
                want = payload(i, got[i])
                if d != want:
                    print("client %d: reply %d is %r, expected %r" % (i, got[i], d[:40], want[:40]))
                    return 1
                got[i] += 1
                replies += 1
            top_up(i)
    print("ok replies=%d" % replies)
    return 0


def flows(host, port, timeout, srcs):
    socks = []
    for src in srcs:
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.connect((host, port))
        s.send(b"hello from %s:%d" % (src.encode(), s.getsockname()[1]))
        socks.append(s)
    pending = set(socks)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(pending), [], [], left)
        for s in ready:
            try:
                s.recv(70000)
            except OSError:
                pass
            pending.discard(s)
    print("replied=%d of %d" % (len(socks) - len(pending), len(socks)))
    return 0


def flood(host, port, count, size):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.connect((host, port))
    data = b"f" * size
    n = 0
    for _ in range(count):
        try:
            s.send(data)
            n += 1
        except OSError:
            pass
    print("sent=%d" % n)
    return 0


def main(argv):
    cmd = argv[1]
    if cmd == "many":
        return many(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]),
                    float(argv[7]))
    if cmd == "flows":
        return flows(argv[2], int(argv[3]), float(argv[4]), argv[5:])
    if cmd == "flood":
        return flood(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
