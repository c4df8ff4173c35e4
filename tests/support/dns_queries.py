#!/usr/bin/env python3
"""A DNS client for the UDP chaos specs (real sockets, every wait bounded).

  dns_queries.py HOST PORT NAME COUNT WINDOW TIMEOUT LINGER

Sends COUNT queries for NAME (type A), each once, from one socket, with at
most WINDOW unanswered at a time; a query is given up TIMEOUT seconds after
it was sent. Once every query is answered or given up, it listens LINGER
more seconds for late copies. Every datagram received must be a DNS answer
to one of the queries (its id); answers are counted per query, so that a
duplicated answer shows. Prints one JSON object:

  {"sent": N, "answered": queries with at least one answer,
   "answers": datagrams received, "max_copies": most answers to one query,
   "rtt_median": seconds from a query to its first answer (null if none),
   "unknown": datagrams that answer no query}
"""
import json
import os
import select
import socket
import struct
import sys
import time


def query(qid, name):
    head = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD, one question
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return head + q + struct.pack(">HH", 1, 1)


def main():
    host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count, window = int(sys.argv[4]), int(sys.argv[5])
    timeout, linger = float(sys.argv[6]), float(sys.argv[7])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.connect((host, port))
    base = int.from_bytes(os.urandom(2), "big") & 0x7fff
    ids = [(base + i) & 0xffff for i in range(count)]
    index = {q: i for i, q in enumerate(ids)}
    sent_at = {}        # i -> time sent, while waiting
    copies = [0] * count
    rtt = []
    unknown = 0
    nxt = 0
    done = 0

    def receive(wait):
        nonlocal unknown, done
        r, _, _ = select.select([s], [], [], max(0.0, wait))
        if not r:
            return
        d = s.recv(70000)
        qid, flags = struct.unpack(">HH", d[:4]) if len(d) >= 12 else (None, 0)
        i = index.get(qid)
        if i is None or not flags & 0x8000:
            unknown += 1
            return
        copies[i] += 1
        if i in sent_at:
            rtt.append(time.monotonic() - sent_at.pop(i))
            done += 1

    while done < count:
        while nxt < count and len(sent_at) < window:
            s.send(query(ids[nxt], name))
            sent_at[nxt] = time.monotonic()
            nxt += 1
        now = time.monotonic()
        for i, t in list(sent_at.items()):
            if now - t >= timeout:
                del sent_at[i]
                done += 1
        if sent_at:
            receive(min(t for t in sent_at.values()) + timeout - now)
    end = time.monotonic() + linger
    while time.monotonic() < end:
        receive(end - time.monotonic())
    rtt.sort()
    print(json.dumps({
        "sent": count,
        "answered": sum(1 for c in copies if c),
        "answers": sum(copies),
        "max_copies": max(copies) if copies else 0,
        "rtt_median": rtt[len(rtt) // 2] if rtt else None,
        "unknown": unknown,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
