#!/usr/bin/env python3
"""Writes a classic pcap file from Python's struct (no capture library), for
the replay spec: a TCP conversation whose segments arrive out of order and
duplicated, or a file with no TCP at all.

    pcap_write.py OUT reorder [raw|ethernet|sll]   client request and answer,
                                                   reordered, one duplicated,
                                                   one overlapping
    pcap_write.py OUT udp                          one UDP datagram only
    pcap_write.py OUT slow                         the request, and the answer
                                                   2 s after it
"""
import struct
import sys

REQUEST = b"GET /reorder HTTP/1.0\r\nHost: x\r\n\r\n"
ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"
LINKTYPES = {"raw": 101, "ethernet": 1, "sll": 113}


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                      bytes(src), bytes(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def tcp(src, dst, sport, dport, seq, ack, flags, data=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    pseudo = struct.pack("!4s4sBBH", bytes(src), bytes(dst), 0, 6, len(seg))
    seg = seg[:16] + struct.pack("!H", csum(pseudo + seg)) + seg[18:]
    return ipv4(src, dst, 6, seg)


def frame(link, ip):
    if link == "ethernet":
        return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip
    if link == "sll":
        return struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, 0x0800) + ip
    return ip


def write(path, link, packets, seconds=None):
    """seconds[i]: packet i's time after the first (default: 1 ms apart)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPES[link]))
        for i, p in enumerate(packets):
            p = frame(link, p)
            us = int((seconds[i] if seconds else i / 1000) * 1e6)
            f.write(struct.pack("<IIII", 1700000000 + us // 1000000, us % 1000000, len(p),
                                len(p)) + p)


def main():
    out, scenario = sys.argv[1], sys.argv[2]
    link = sys.argv[3] if len(sys.argv) > 3 else "raw"
    c, s = (127, 0, 0, 1), (127, 0, 0, 2)
    cp, sp = 40001, 8080
    if scenario == "udp":
        udp = struct.pack("!HHHH", 5353, 5353, 12, 0) + b"abcd"
        write(out, link, [ipv4(c, s, 17, udp)])
        return
    ci, si = 1000, 90000
    r, a = REQUEST, ANSWER
    A, PA, S, SA, FA = 0x10, 0x18, 0x02, 0x12, 0x11
    if scenario == "slow":
        pk = [
            tcp(c, s, cp, sp, ci, 0, S),
            tcp(s, c, sp, cp, si, ci + 1, SA),
            tcp(c, s, cp, sp, ci + 1, si + 1, PA, r),
            tcp(s, c, sp, cp, si + 1, ci + 1 + len(r), PA, a),
        ]
        write(out, link, pk, [0, 0.001, 0.002, 2.002])
        return
    if scenario == "big":  # a 4000000-byte answer (bytes 0..250 over and over), 1400 a segment
        big = (bytes(range(251)) * 16000)[:4000000]
        pk = [tcp(c, s, cp, sp, ci, 0, S), tcp(s, c, sp, cp, si, ci + 1, SA),
              tcp(c, s, cp, sp, ci + 1, si + 1, PA, r)]
        for o in range(0, len(big), 1400):
            pk.append(tcp(s, c, sp, cp, si + 1 + o, ci + 1 + len(r), A, big[o:o + 1400]))
        write(out, link, pk)
        return
    pk = [
        tcp(c, s, cp, sp, ci, 0, S),
        tcp(s, c, sp, cp, si, ci + 1, SA),
        tcp(c, s, cp, sp, ci + 1, si + 1, A),
        tcp(c, s, cp, sp, ci + 1 + 20, si + 1, PA, r[20:]),      # last part first
        tcp(c, s, cp, sp, ci + 1, si + 1, A, r[:10]),            # first part
        tcp(c, s, cp, sp, ci + 1, si + 1, A, r[:10]),            # duplicated
        tcp(c, s, cp, sp, ci + 1 + 5, si + 1, A, b"XXXXX" + r[10:20]),  # overlaps: first copy wins
        tcp(s, c, sp, cp, si + 1 + 17, ci + 1 + len(r), PA, a[17:]),   # answer, reversed
        tcp(s, c, sp, cp, si + 1, ci + 1 + len(r), A, a[:17]),
        tcp(s, c, sp, cp, si + 1 + len(a), ci + 1 + len(r), FA),
        tcp(c, s, cp, sp, ci + 1 + len(r), si + 2 + len(a), FA),
    ]
    write(out, link, pk)


if __name__ == "__main__":
    main()
