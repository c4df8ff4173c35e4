import socket, sys, time, random
pp = int(sys.argv[1]); uppid = int(sys.argv[2])
import os, signal
socks = []
for i in range(300):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('127.0.0.%d' % (1 + i % 8), 0)); s.setblocking(False); socks.append(s)
got = 0
for rnd in range(6):
    for s in socks:
        for d in (b'', b'a', b'x' * random.choice([1, 1000, 65507])):
            try: s.sendto(d, ('127.0.0.1', pp))
            except BlockingIOError: pass
    time.sleep(0.2)
    for s in socks:
        try:
            while True: s.recv(70000); got += 1
        except BlockingIOError: pass
    if rnd == 3:
        os.kill(uppid, signal.SIGTERM)  # upstream gone: ICMP port unreachable from now on
print('replies', got)
