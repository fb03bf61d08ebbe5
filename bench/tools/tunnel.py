#!/usr/bin/env python3
"""Bulk-transfer client and sink for the tunnel scenario of bench/run.sh.

    tunnel.py sink --port P [--sockbuf BYTES]
        Accepts connections one after another; reads each to EOF into one reused buffer
        (recv_into, nothing kept), then answers with the byte count (8 bytes, big endian)
        and closes. Runs until killed.

    tunnel.py send --to HOST:PORT [--connect HOST:PORT] --bytes N --file F [--sockbuf BYTES]
        Connects to --to; with --connect, first sends `CONNECT HOST:PORT HTTP/1.1` and waits
        for a 2xx answer (a proxy tunnel), otherwise streams straight away (a TCP relay such
        as HAProxy `mode tcp`, or the sink itself: the direct transfer). Streams N bytes
        with sendfile(2) from F (cycled), half-closes, and waits for the sink's count. Prints
        one JSON object: bytes, seconds (first byte sent to count received), gib_per_s.

Python is enough here: with 4 MiB sendfile/recv_into calls the interpreter's share is a
few microseconds per call; the time goes to the kernel copying bytes, which is the point.
"""
import argparse
import json
import os
import socket
import struct
import sys
import time

CHUNK = 4 << 20


def addr(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def sink(args):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    set_bufs(ls, args.sockbuf)  # inherited by accepted sockets
    ls.bind(("127.0.0.1", args.port))
    ls.listen(16)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        conn, _ = ls.accept()
        total = 0
        try:
            while True:
                n = conn.recv_into(view)
                if n == 0:
                    break
                total += n
            conn.sendall(struct.pack(">Q", total))
        except OSError:
            pass
        finally:
            conn.close()


def set_bufs(s, size):
    """Large fixed socket buffers (SO_*BUFFORCE as root, past net.core.*mem_max); 0 keeps
    the kernel's autotuning."""
    if not size:
        return
    for force, plain in ((getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
                         (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, plain, size)


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("tunnel: the proxy closed the connection before answering CONNECT")
        data += chunk
        if len(data) > 65536:
            raise SystemExit("tunnel: CONNECT answer head too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def send(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    set_bufs(s, args.sockbuf)
    s.settimeout(args.timeout)
    s.connect(addr(args.to))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.connect:
        s.sendall(
            b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n"
            % (args.connect.encode(), args.connect.encode())
        )
        head, rest = read_head(s)
        status = head.split(b"\r\n", 1)[0]
        parts = status.split()
        if len(parts) < 2 or not parts[1].startswith(b"2"):
            raise SystemExit("tunnel: CONNECT refused: %r" % status.decode("latin-1"))
        if rest:
            raise SystemExit("tunnel: unexpected bytes after the CONNECT answer")
    s.settimeout(None)  # blocking: os.sendfile on a timeout-mode socket gives EAGAIN
    fd = os.open(args.file, os.O_RDONLY)
    size = os.fstat(fd).st_size
    if size == 0:
        raise SystemExit("tunnel: empty source file")
    remaining = args.bytes
    offset = 0
    sfd = s.fileno()
    t0 = time.perf_counter()
    while remaining > 0:
        n = os.sendfile(sfd, fd, offset, min(CHUNK, remaining, size - offset))
        if n == 0:
            raise SystemExit("tunnel: sendfile made no progress")
        remaining -= n
        offset += n
        if offset >= size:
            offset = 0
    s.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 8:
        chunk = s.recv(8 - len(got))
        if not chunk:
            break
        got += chunk
    t1 = time.perf_counter()
    s.close()
    os.close(fd)
    if len(got) != 8:
        raise SystemExit("tunnel: connection closed before the sink's byte count arrived")
    (count,) = struct.unpack(">Q", got)
    if count != args.bytes:
        raise SystemExit("tunnel: sent %d bytes, the sink received %d" % (args.bytes, count))
    secs = t1 - t0
    print(json.dumps({"bytes": count, "seconds": secs, "gib_per_s": count / secs / (1 << 30)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("sink")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--sockbuf", type=int, default=0, help="socket buffer bytes (0: autotuning)")
    b = sub.add_parser("send")
    b.add_argument("--to", required=True)
    b.add_argument("--connect")
    b.add_argument("--bytes", type=int, required=True)
    b.add_argument("--file", required=True)
    b.add_argument("--timeout", type=float, default=120.0)
    b.add_argument("--sockbuf", type=int, default=0, help="socket buffer bytes (0: autotuning)")
    args = p.parse_args()
    try:
        sink(args) if args.cmd == "sink" else send(args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
