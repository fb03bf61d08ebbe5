#!/usr/bin/env python3
"""Memory per idle HTTP/2 client connection, for the h2idle scenario of bench/run.sh.

    h2idle.py --target 127.0.0.1:PORT --sni origin.test --count N --pids P1,P2
              [--threads 16] [--sources 40] [--settle 1.0] [--cleartext]

Like idle.py, over TLS with ALPN h2 (the proxy's certificate is not verified: Sluice's is
forged by its own CA, HAProxy's is the run's static one):
1. Warm-up: three waves of 128 connections set up as below, then closed.
2. Baseline: VmRSS summed over --pids (the proxy's processes), after --settle seconds.
3. Opens --count connections (--threads at a time, from the source addresses 127.0.0.2 ..
   127.0.0.(1+--sources)). Each: TLS handshake (ALPN must be h2), the client preface and an
   empty SETTINGS frame, then reads until the proxy's SETTINGS has arrived (acknowledged at
   once) and its acknowledgement of ours; whatever else it sent at the start (WINDOW_UPDATE)
   is read too. Then it stays open and silent: no stream is opened. --cleartext skips TLS
   (prior knowledge, as `h2load http://...`): what the HTTP/2 state costs without TLS's.
4. After --settle seconds, VmRSS again, and a check that the proxy has closed none of them
   (EOF, an error or a GOAWAY frame count as closed). Prints one JSON object: count, ok,
   failed, closed, rss_before_kib, rss_after_kib, bytes_per_conn = (after - before) / ok.
"""
import argparse
import concurrent.futures
import json
import socket
import ssl
import struct
import sys
import time

from idle import rss_kib

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, GOAWAY = 0x4, 0x7
ACK = 0x1


def frame(kind, flags, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", 0) + payload


def frames(buf):
    """Complete frames at the start of buf: ([(type, flags)], rest)."""
    out = []
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + length:
            break
        out.append((buf[3], buf[4]))
        buf = buf[9 + length:]
    return out, buf


def open_one(args, ctx, i):
    host, port = args.target.rsplit(":", 1)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        raw.settimeout(args.timeout)
        if args.sources > 0:
            raw.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            raw.bind(("127.0.0.%d" % (2 + i % args.sources), 0))
        raw.connect((host, int(port)))
        s = raw if args.cleartext else ctx.wrap_socket(raw, server_hostname=args.sni)
    except (OSError, ssl.SSLError):
        raw.close()
        raise
    try:
        if not args.cleartext and s.selected_alpn_protocol() != "h2":
            raise OSError("ALPN %r, not h2" % s.selected_alpn_protocol())
        s.sendall(PREFACE + frame(SETTINGS, 0))
        buf, got_settings, got_ack = b"", False, False
        while not (got_settings and got_ack):
            data = s.recv(65536)
            if not data:
                raise OSError("closed during the HTTP/2 set-up")
            got, buf = frames(buf + data)
            for kind, flags in got:
                if kind == SETTINGS and flags & ACK:
                    got_ack = True
                elif kind == SETTINGS:
                    got_settings = True
                    s.sendall(frame(SETTINGS, ACK))
                elif kind == GOAWAY:
                    raise OSError("GOAWAY during the HTTP/2 set-up")
        s.setblocking(False)
        try:  # frames sent right after (WINDOW_UPDATE): read, not left in the kernel
            s.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        return s
    except (OSError, ssl.SSLError):
        s.close()
        raise


def open_batch(args, ctx, count, first):
    conns, failed = [], 0
    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for fut in [pool.submit(open_one, args, ctx, first + i) for i in range(count)]:
            try:
                conns.append(fut.result())
            except (OSError, ssl.SSLError) as e:
                failed += 1
                if args.verbose or failed == 1:
                    print("h2idle: connection failed: %s" % e, file=sys.stderr)
    return conns, failed


def is_closed(s):
    try:
        data = s.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ssl.SSLError):
        return True
    if not data:
        return True
    return any(kind == GOAWAY for kind, _ in frames(data)[0])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--sni", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--pids", required=True, help="comma-separated PIDs of the proxy")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--sources", type=int, default=40, help="source addresses 127.0.0.2.. (0: default)")
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--cleartext", action="store_true", help="HTTP/2 with prior knowledge, no TLS")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    pids = [int(x) for x in args.pids.split(",") if x]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])

    for wave in range(3):
        conns, _ = open_batch(args, ctx, 128, wave * 128)
        for s in conns:
            s.close()
    time.sleep(args.settle)
    before = rss_kib(pids)
    t0 = time.monotonic()
    conns, failed = open_batch(args, ctx, args.count, 0)
    opened_in = time.monotonic() - t0
    time.sleep(args.settle)
    after = rss_kib(pids)
    closed = sum(1 for s in conns if is_closed(s))
    ok = len(conns)
    print(json.dumps({
        "count": args.count,
        "ok": ok,
        "failed": failed,
        "closed": closed,
        "open_seconds": round(opened_in, 3),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_conn": (after - before) * 1024 / ok if ok else None,
    }))
    sys.stdout.flush()
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
