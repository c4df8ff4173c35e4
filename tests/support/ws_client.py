#!/usr/bin/python3
"""A real WebSocket client (Debian's python3-websockets) for the functional
specs. Usage: ws_client.py PORT SCENARIO. Prints one "ok ..." line per check;
any mismatch raises, so the exit status is non-zero with the reason on stderr.
Every wait is bounded by asyncio.wait_for."""
import asyncio
import os
import sys

import websockets

PORT = int(sys.argv[1])
SCENARIO = sys.argv[2]
URL = "ws://127.0.0.1:%d/echo" % PORT
T = 30


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok", what, flush=True)


async def roundtrip(ws, msg):
    await asyncio.wait_for(ws.send(msg), T)
    return await asyncio.wait_for(ws.recv(), T)


async def echo(ws):
    sizes = [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20]
    for n in sizes:
        data = os.urandom(n)
        back = await roundtrip(ws, data)
        check(isinstance(back, bytes) and back == data, "binary %d" % n)
    for n in sizes:
        text = ("añ€😀" * (n // 10 + 1))[: max(0, n // 3)]
        back = await roundtrip(ws, text)
        check(isinstance(back, str) and back == text, "text %d chars" % len(text))


async def fragments(ws):
    parts = ["frag", "mént", "ed ", "✓" * 1000]
    back = await roundtrip(ws, parts)
    check(back == "".join(parts), "fragmented text")
    bparts = [os.urandom(70000) for _ in range(5)]
    back = await roundtrip(ws, bparts)
    check(back == b"".join(bparts), "fragmented binary")


async def ping(ws):
    for payload in [b"", b"hello", os.urandom(125)]:
        waiter = await ws.ping(payload)
        await asyncio.wait_for(waiter, T)
        check(True, "pong for %d-byte ping" % len(payload))


async def run():
    async with websockets.connect(URL, max_size=None, open_timeout=T, close_timeout=T) as ws:
        if SCENARIO == "echo":
            await echo(ws)
        elif SCENARIO == "fragments":
            await fragments(ws)
        elif SCENARIO == "ping":
            await ping(ws)
        elif SCENARIO.startswith("close"):
            code = int(SCENARIO.split(":")[1])
            await asyncio.wait_for(ws.close(code=code, reason="bye"), T)
            check(ws.close_code == code and ws.close_reason == "bye",
                  "close %d echoed (got %s %r)" % (code, ws.close_code, ws.close_reason))
            return
        elif SCENARIO == "too_big":
            await asyncio.wait_for(ws.send(b"x" * 2048), T)
            try:
                await asyncio.wait_for(ws.recv(), T)
                raise AssertionError("message over the limit was echoed")
            except websockets.ConnectionClosed:
                pass
            check(ws.close_code == 1009, "close 1009 for a message over the limit (got %s)"
                  % ws.close_code)
            return
        else:
            raise SystemExit("unknown scenario " + SCENARIO)
        await asyncio.wait_for(ws.close(), T)
        check(ws.close_code == 1000, "clean close")


asyncio.run(run())
