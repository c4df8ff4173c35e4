#!/usr/bin/env python3
"""A Python `selectors` echo server (one thread), a baseline for bench/run.

    py_echo.py [HOST:]PORT     prints "listening on HOST:PORT"
"""
import resource, selectors, socket, sys

def main():
    spec = sys.argv[1]
    host, _, port = spec.rpartition(":")
    host = host or "127.0.0.1"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(1024)
    ls.setblocking(False)
    print(f"listening on {host}:{ls.getsockname()[1]}", flush=True)
    sel.register(ls, selectors.EVENT_READ, None)
    pending = {}

    def close(s):
        sel.unregister(s)
        pending.pop(s, None)
        s.close()

    while True:
        for key, ev in sel.select():
            s = key.fileobj
            if s is ls:
                while True:
                    try:
                        c, _ = ls.accept()
                    except (BlockingIOError, OSError):
                        break
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(c, selectors.EVENT_READ, None)
                continue
            try:
                if s in pending:
                    data = pending.pop(s)
                else:
                    data = s.recv(65536)
                    if not data:
                        close(s)
                        continue
                n = s.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                close(s)
                continue
            if n < len(data):
                pending[s] = data[n:]
                sel.modify(s, selectors.EVENT_WRITE, None)
            elif ev & selectors.EVENT_WRITE:
                sel.modify(s, selectors.EVENT_READ, None)

if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
