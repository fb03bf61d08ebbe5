#!/usr/bin/env python3
"""grpc_pair: a grpcio server and client for Sluice's gRPC-over-HTTP/2 test.

No .proto: generic handlers on raw bytes. Service `sluice.test.Echo`:
  Unary(bytes) -> b"unary:" + bytes
  Bidi(stream bytes) -> stream b"bidi:" + each message, as each arrives

  server IP CERT KEY        TLS (ALPN h2) on IP:443; prints `ready`
  client PROXY NAME CA N    through the proxy at PROXY (HOST:PORT), TLS to NAME trusting
                            CA: one unary call, then a bidi stream of N messages where
                            message k+1 is sent only after reply k came back (so the
                            messages cross while the stream is open); prints `unary ok`,
                            `bidi ok N` or `fail ...`
"""

import queue
import sys
from concurrent import futures

import grpc

SERVICE = "sluice.test.Echo"


def ident(b):
    return b


def serve(ip, cert, key):
    def unary(req, ctx):
        return b"unary:" + req

    def bidi(reqs, ctx):
        for r in reqs:
            yield b"bidi:" + r

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
    server.add_secure_port(f"{ip}:443", creds)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def client(proxy, name, ca, n):
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    opts = [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name),
            ("grpc.enable_http_proxy", 0)]
    with grpc.secure_channel(proxy, creds, options=opts) as ch:
        unary = ch.unary_unary(f"/{SERVICE}/Unary", request_serializer=ident, response_deserializer=ident)
        got = unary(b"hello", timeout=20)
        print("unary ok" if got == b"unary:hello" else f"fail unary {got!r}", flush=True)
        bidi = ch.stream_stream(f"/{SERVICE}/Bidi", request_serializer=ident, response_deserializer=ident)
        outbox = queue.Queue()

        def requests():
            while True:
                m = outbox.get()
                if m is None:
                    return
                yield m

        outbox.put(b"m0")
        replies = bidi(requests(), timeout=30)
        k = 0
        for r in replies:
            if r != b"bidi:m%d" % k:
                print(f"fail bidi reply {k}: {r!r}", flush=True)
                outbox.put(None)
                return
            k += 1
            # The next message goes only now: had the proxy buffered the stream until its
            # end, this reply would never have come.
            outbox.put(b"m%d" % k if k < n else None)
        print(f"bidi ok {k}" if k == n else f"fail bidi {k} of {n}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(*sys.argv[2:5])
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
