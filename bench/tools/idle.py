#!/usr/bin/env python3
"""Memory per idle keep-alive client connection, for the idle scenario of bench/run.sh.

    idle.py --target 127.0.0.1:PORT --host HOST[:PORT] --path /1k --count N --pids P1,P2
            [--window 128] [--sources 40] [--settle 1.0]

1. Warm-up: a few rounds of short-lived connections, each making one request, so the proxy
   has reached its steady state (pools, caches, lazily mapped memory) before the baseline.
2. Baseline: VmRSS summed over --pids (the proxy's processes), after --settle seconds.
3. Opens --count client connections, at most --window in progress at once, spread over the
   source addresses 127.0.0.2 .. 127.0.0.(1+--sources) so ephemeral ports never run short.
   Each sends one keep-alive `GET --path` with `Host: --host`, reads the whole response,
   and then stays open and silent.
4. After --settle seconds, VmRSS again, and a check that the proxy has not closed any of
   them. Prints one JSON object: count, ok, failed, closed (by the proxy while idle),
   rss_before_kib, rss_after_kib, bytes_per_conn = (after - before) / ok.

The caller must allow enough open files (run.sh raises ulimit -n).
"""
import argparse
import errno
import json
import select
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


class Conn:
    __slots__ = ("sock", "state", "buf", "need")

    def __init__(self, sock):
        self.sock = sock
        self.state = "connecting"
        self.buf = b""
        self.need = None  # total response length once the head is parsed


def response_complete(c):
    """True once the whole response (head + Content-Length body) has arrived."""
    if c.need is None:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = c.buf[:end].decode("latin-1")
        status = head.split("\r\n", 1)[0].split()
        if len(status) < 2 or not status[1].startswith("2"):
            raise ValueError("status %r" % head.split("\r\n", 1)[0])
        length = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "transfer-encoding":
                raise ValueError("chunked response; serve a fixed-size file")
        if length is None:
            raise ValueError("response without Content-Length")
        c.need = end + 4 + length
    return len(c.buf) >= c.need


def open_batch(args, count, keep):
    """Opens `count` connections, one request each. Returns (ok_conns, failed)."""
    host, port = args.target.rsplit(":", 1)
    port = int(port)
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (args.path, args.host)).encode()
    ep = select.epoll()
    live = {}
    done, failed = [], 0
    started = 0
    deadline = time.monotonic() + args.timeout

    def start_one(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if args.sources > 0:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind(("127.0.0.%d" % (2 + i % args.sources), 0))
        rc = s.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            return False
        c = Conn(s)
        live[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLOUT)
        return True

    while len(done) + failed < count:
        while started < count and len(live) < args.window:
            if not start_one(started):
                failed += 1
            started += 1
        if time.monotonic() > deadline:
            failed += len(live)
            for c in live.values():
                c.sock.close()
            live.clear()
            break
        for fd, ev in ep.poll(1.0):
            c = live.get(fd)
            if c is None:
                continue
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    c.sock.send(request)  # a few dozen bytes: one send always takes it all
                    c.state = "reading"
                    ep.modify(fd, select.EPOLLIN)
                else:
                    data = c.sock.recv(262144)
                    if not data:
                        raise OSError("closed before the response was complete")
                    c.buf += data
                    if response_complete(c):
                        ep.unregister(fd)
                        del live[fd]
                        c.buf = b""
                        done.append(c)
            except (OSError, ValueError) as e:
                if args.verbose:
                    print("idle: connection failed: %s" % e, file=sys.stderr)
                try:
                    ep.unregister(fd)
                except OSError:
                    pass
                del live[fd]
                c.sock.close()
                failed += 1
    ep.close()
    if not keep:
        for c in done:
            c.sock.close()
        done = []
    return done, failed


def count_closed(conns):
    """How many of the idle connections the peer has closed (readable = EOF or data)."""
    ep = select.epoll()
    for c in conns:
        ep.register(c.sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    closed = len(ep.poll(0, maxevents=len(conns) or 1)) if conns else 0
    ep.close()
    return closed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--path", default="/1k")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--pids", required=True, help="comma-separated PIDs of the proxy")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--sources", type=int, default=40, help="source addresses 127.0.0.2.. (0: default)")
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    pids = [int(x) for x in args.pids.split(",") if x]

    for _ in range(3):
        open_batch(args, args.window, keep=False)
    time.sleep(args.settle)
    before = rss_kib(pids)
    t0 = time.monotonic()
    conns, failed = open_batch(args, args.count, keep=True)
    opened_in = time.monotonic() - t0
    time.sleep(args.settle)
    after = rss_kib(pids)
    closed = count_closed(conns)
    ok = len(conns)
    print(
        json.dumps(
            {
                "count": args.count,
                "ok": ok,
                "failed": failed,
                "closed": closed,
                "open_seconds": round(opened_in, 3),
                "rss_before_kib": before,
                "rss_after_kib": after,
                "bytes_per_conn": (after - before) * 1024 / ok if ok else None,
            }
        )
    )
    sys.stdout.flush()
    for c in conns:
        c.sock.close()


if __name__ == "__main__":
    main()
