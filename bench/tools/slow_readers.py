#!/usr/bin/env python3
"""Slow readers against a running Sluice: N clients each ask for a large body through the
proxy (explicit-proxy form, to an origin on 127.0.0.1:18390 serving /big.bin, e.g. the
nginx config in bench/results/2026-11-30-slow-readers.md) and read none of it; the proxy's
RSS is printed idle, with the readers connected, and after they left.

    python3 bench/tools/slow_readers.py PROXY_PORT SLUICE_PID N
"""
import socket, sys, time, os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])//1024
print("idle RSS MiB", rss())
cs=[]
for i in range(n):
    try:
        s=socket.create_connection(("127.0.0.1",port)); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET http://127.0.0.1:18390/big.bin HTTP/1.1\r\nHost: 127.0.0.1:18390\r\n\r\n"); cs.append(s)
    except OSError as e: print("connect", i, e); break
time.sleep(15)
print(len(cs), "slow readers: RSS MiB", rss())
for s in cs: s.close()
time.sleep(8)
print("after they left: RSS MiB", rss())
