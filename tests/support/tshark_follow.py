#!/usr/bin/python3
"""Reassembles the TCP streams of a capture the way Wireshark's "Follow TCP
Stream" does, with tshark, for the debugging-proxy tests.

    tshark_follow.py CAPTURE NSTREAMS OUTDIR

Runs `tshark -r CAPTURE -q -z follow,tcp,raw,I` for streams 0..NSTREAMS-1 and
writes each stream's bytes to OUTDIR/<client port>.client (sent by node 0, the
side that opened the connection) and OUTDIR/<client port>.server. Prints one
line per stream: `<client port> <node 0 address> <node 1 address>`. Anything
tshark writes to stderr (besides its remark about running as root) is an
error. Decoding happens here rather than in Lua because a 16 MiB stream is 32
MiB of hex text.
"""
import os
import subprocess
import sys


def main():
    path, n, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    argv = ["tshark", "-r", path, "-q"]
    for i in range(n):
        argv += ["-z", "follow,tcp,raw,%d" % i]
    p = subprocess.run(argv, capture_output=True, timeout=120)
    err = p.stderr.decode(errors="replace").splitlines()
    err = [l for l in err if "Running as user" not in l]
    if p.returncode != 0 or err:
        sys.exit("tshark failed (%d): %s" % (p.returncode, "\n".join(err)))
    cur = None
    for line in p.stdout.decode().splitlines():
        if line.startswith("Node 0: "):
            cur = {"nodes": [line[8:]], "c": [], "s": []}
        elif line.startswith("Node 1: ") and cur:
            cur["nodes"].append(line[8:])
        elif line.startswith("====="):
            if cur and len(cur["nodes"]) == 2:
                emit(cur, outdir)
            cur = None
        elif cur and line.startswith("\t"):
            cur["s"].append(line[1:])
        elif cur and line:
            cur["c"].append(line)


def emit(cur, outdir):
    port = cur["nodes"][0].rsplit(":", 1)[1]
    for side, key in (("client", "c"), ("server", "s")):
        with open(os.path.join(outdir, "%s.%s" % (port, side)), "wb") as f:
            f.write(bytes.fromhex("".join(cur[key])))
    print(port, cur["nodes"][0], cur["nodes"][1])


if __name__ == "__main__":
    main()
