#!/usr/bin/env python3
"""Full TLS handshakes, one request per connection, for the tls_handshake scenario of bench/run.sh.

    tlshs.py --to 127.0.0.1:PORT --host origin.test:4443 --path /1k --seconds 3 \\
             [--sni origin.test | --sni-pattern '{prefix}{n}.bench.test' --prefix m] [--threads 16]

Each thread loops for --seconds: TCP connect, a full TLS handshake (a fresh SSLContext
session every time: no resumption; certificates are not verified, like h2load), one
`GET PATH` with `Host: HOST` and `Connection: close`, read to EOF, close. With --sni every
connection sends that server name (a proxy forging certificates serves it from its cache);
with --sni-pattern every connection sends a different one, numbered from 0 across threads
(a forging proxy mints a certificate per connection). Prints one JSON object:
requests (connections completed with a 200), seconds, rps, p50_us / p99_us (connect to EOF),
errors, and the first error message if any.
"""
import argparse
import itertools
import json
import socket
import ssl
import statistics
import sys
import threading
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--path", default="/1k")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--sni")
    p.add_argument("--sni-pattern")
    p.add_argument("--prefix", default="n")
    p.add_argument("--threads", type=int, default=16)
    args = p.parse_args()
    if bool(args.sni) == bool(args.sni_pattern):
        p.error("give exactly one of --sni and --sni-pattern")
    host, port = args.to.rsplit(":", 1)
    addr = (host, int(port))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    req = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (args.path, args.host)).encode()
    counter = itertools.count()
    lock = threading.Lock()
    lat, errors, first_error = [], [0], [None]
    deadline = time.monotonic() + args.seconds

    def worker():
        mine = []
        while time.monotonic() < deadline:
            name = args.sni or args.sni_pattern.format(prefix=args.prefix, n=next(counter))
            t0 = time.monotonic()
            try:
                with socket.create_connection(addr, timeout=5) as raw:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with ctx.wrap_socket(raw, server_hostname=name) as s:
                        s.sendall(req)
                        chunks = []
                        while True:
                            b = s.recv(65536)
                            if not b:
                                break
                            chunks.append(b)
                data = b"".join(chunks)
                if not data.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("answer: %r" % data[:60])
                mine.append(time.monotonic() - t0)
            except (OSError, RuntimeError, ssl.SSLError) as e:
                with lock:
                    errors[0] += 1
                    if first_error[0] is None:
                        first_error[0] = "%s (%s)" % (e, name)
        with lock:
            lat.extend(mine)

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - start
    out = {"requests": len(lat), "seconds": secs, "rps": len(lat) / secs, "errors": errors[0]}
    if lat:
        lat.sort()
        out["p50_us"] = statistics.median(lat) * 1e6
        out["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6
    if first_error[0]:
        out["first_error"] = first_error[0]
    print(json.dumps(out))
    return 0 if lat else 1


if __name__ == "__main__":
    sys.exit(main())
