#!/usr/bin/env python3
"""h2probe: the HTTP/2 client of Sluice's end-to-end tests (tests/h2*.rs).

Built on python's `h2` (state machine, flow control, HPACK) for well-behaved clients and
on raw frames (`hyperframe`, `hpack`) for the misbehaving ones. It prints what it saw,
one fact per line, and lets the Rust test judge; bodies go to files (`--out DIR`), which
the test compares with its payload pattern.

Modes:
  get      send every --req (METHOD AUTHORITY PATH) as its own stream, all at once
           (up to the peer's MAX_CONCURRENT_STREAMS), optionally with a body from
           --body-file and request trailers (--trailer NAME:VALUE); --window / --stall-*
           make a slow reader (a small stream window; no WINDOW_UPDATE for a while).
  connect  CONNECT over HTTP/2 (RFC 9113 8.5; RFC 8441 with --protocol) to --authority, two rounds of bytes, the
           second ending the stream, then the echo and the peer's END_STREAM.
  steady   a well-behaved client: one GET (--req) at a time on one connection until
           its stdin closes; prints how many were served and the slowest.
  flood    --kind bad-preface | not-settings | bad-settings | oversized-frame |
           rapid-reset | continuation | ping | settings | empty-data: misbehave, then
           report the GOAWAY (code, last stream) and whether the connection closed.

Output lines (stdout): `alpn P`, `settings max_concurrent=N`, `stream I sid=S status=N
bytes=N end=0|1 reset=CODE|- trailers=n:v;n:v`, `header I name: value`, `open_max N`,
`goaway code=N last=N`, `closed 0|1`, `error TEXT`, `done ...`.
"""

import argparse
import socket
import ssl
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.settings import SettingCodes
import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, HeadersFrame, PingFrame, RstStreamFrame,
                              SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def say(line):
    print(line, flush=True)


def dial(args, alpn=("h2",)):
    host, port = args.connect.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=args.timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if args.tls:
        ctx = ssl.create_default_context(cafile=args.cafile)
        ctx.set_alpn_protocols(list(alpn))
        s = ctx.wrap_socket(s, server_hostname=args.tls)
        proto = s.selected_alpn_protocol()
        say(f"alpn {proto}")
        if proto != "h2":
            sys.exit(3)
    return s


# ---------------------------------------------------------------------------------------
# Well-behaved clients (python h2)
# ---------------------------------------------------------------------------------------


class Stream:
    def __init__(self, idx, sink):
        self.idx, self.sink = idx, sink
        self.sid = 0
        self.status = 0
        self.headers = []
        self.trailers = []
        self.bytes = 0
        self.ended = False
        self.reset = None
        self.interim = []
        self.data = bytearray()

    def line(self):
        tr = ";".join(f"{n}:{v}" for n, v in self.trailers)
        reset = "-" if self.reset is None else str(self.reset)
        interim = ",".join(self.interim) or "-"
        return (f"stream {self.idx} sid={self.sid} status={self.status} bytes={self.bytes} "
                f"end={int(self.ended)} reset={reset} interim={interim} trailers={tr}")


class Client:
    def __init__(self, sock, window=None):
        self.sock = sock
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        if window:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.by_sid = {}
        self.goaway = None
        self.closed = False
        self.got_settings = False
        self.acks_held = None  # a list while stalled: acknowledgements not yet given
        self.received = 0
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout):
        """Reads once (up to `timeout`) and handles what came. False when closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except OSError as e:
            say(f"error recv: {e}")
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            say(f"error protocol: {e!r}")
            self.closed = True
            return False
        for ev in events:
            self.handle(ev)
        try:
            self.flush()
        except OSError as e:
            say(f"error send: {e}")
            self.closed = True
            return False
        return True

    def handle(self, ev):
        st = self.by_sid.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.got_settings = True
        elif isinstance(ev, h2.events.ResponseReceived) and st:
            st.headers = [(n, v) for n, v in ev.headers]
            st.status = int(dict(st.headers).get(":status", "0"))
        elif isinstance(ev, h2.events.InformationalResponseReceived) and st:
            st.interim.append(dict(ev.headers).get(":status", "?"))
        elif isinstance(ev, h2.events.DataReceived):
            if st:
                st.bytes += len(ev.data)
                if st.sink is not None:
                    st.sink.write(ev.data)
                else:
                    st.data += ev.data
            self.received += len(ev.data)
            if ev.flow_controlled_length:
                if self.acks_held is not None:
                    self.acks_held.append((ev.flow_controlled_length, ev.stream_id))
                else:
                    self.ack(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived) and st:
            st.trailers = [(n, v) for n, v in ev.headers]
        elif isinstance(ev, h2.events.StreamEnded) and st:
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset) and st:
            st.reset = int(ev.error_code)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code), ev.last_stream_id)
            say(f"goaway code={int(ev.error_code)} last={ev.last_stream_id}")

    def ack(self, n, sid):
        try:
            self.conn.acknowledge_received_data(n, sid)
        except h2.exceptions.StreamClosedError:
            pass

    def wait_settings(self, within):
        end = time.monotonic() + within
        while not self.got_settings and time.monotonic() < end and self.pump(0.2):
            pass
        return self.got_settings

    def max_concurrent(self):
        return self.conn.remote_settings.max_concurrent_streams

    def send_body(self, sid, body, trailers):
        """Sends `body` on `sid` within the flow-control windows, then trailers or END_STREAM."""
        off = 0
        while off < len(body):
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                if not self.pump(0.5):
                    return False
                continue
            self.conn.send_data(sid, body[off:off + room])
            off += room
            self.flush()
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        else:
            self.conn.end_stream(sid)
        self.flush()
        return True


def request_headers(method, authority, path, scheme, extra=()):
    h = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
    return h + list(extra)


def mode_get(args):
    sock = dial(args)
    c = Client(sock, window=args.window)
    if not c.wait_settings(args.timeout):
        say("error no SETTINGS from the peer")
        return 1
    say(f"settings max_concurrent={c.max_concurrent()}")
    body = open(args.body_file, "rb").read() if args.body_file else b""
    trailers = [tuple(t.split(":", 1)) for t in args.trailer]
    scheme = "https" if args.tls else "http"
    streams = []
    for i, (method, authority, path) in enumerate(args.req):
        sink = open(f"{args.out}/{i}", "wb") if args.out else None
        streams.append((Stream(i, sink), method, authority, path))
    pending = list(streams)
    open_max = 0
    deadline = time.monotonic() + args.timeout
    stall_end = None
    while time.monotonic() < deadline:
        live = [s for s, *_ in streams if s.sid and not s.ended and s.reset is None]
        limit = 1 if args.serial else c.max_concurrent()
        while pending and len(live) < limit and c.goaway is None:
            st, method, authority, path = pending.pop(0)
            st.sid = c.conn.get_next_available_stream_id()
            c.by_sid[st.sid] = st
            extra = [("content-length", str(len(body)))] if body and not trailers else []
            if args.content_length is not None:
                extra = [("content-length", str(args.content_length))]
            if trailers:
                extra.append(("te", "trailers"))
            has_body = bool(body) or bool(trailers)
            c.conn.send_headers(st.sid, request_headers(method, authority, path, scheme, extra),
                                end_stream=not has_body)
            c.flush()
            if has_body:
                c.send_body(st.sid, body, trailers)
            live.append(st)
        open_max = max(open_max, len(live))
        if not pending and not live:
            break
        if c.acks_held is None and args.stall_secs and stall_end is None and c.received >= args.stall_at:
            c.acks_held = []
        if c.acks_held is not None and stall_end is None:
            stall_end = time.monotonic() + args.stall_secs
            say(f"stall begin received={c.received}")
        if stall_end is not None and c.acks_held is not None and time.monotonic() >= stall_end:
            say(f"stall end received={c.received}")
            for n, sid in c.acks_held:
                c.ack(n, sid)
            c.acks_held = None
            c.flush()
        if not c.pump(0.1) and not c.closed:
            break
        if c.closed:
            break
    for st, *_ in streams:
        if st.sink:
            st.sink.close()
        say(st.line())
        if args.headers:
            for n, v in st.headers:
                say(f"header {st.idx} {n}: {v}")
        if st.sink is None and args.print_body:
            say(f"body {st.idx} {st.data.decode('latin-1')!r}")
    say(f"open_max {open_max}")
    ok = sum(1 for st, *_ in streams if st.ended and st.reset is None)
    say(f"done ok={ok} of={len(streams)} closed={int(c.closed)}")
    return 0


def mode_connect(args):
    sock = dial(args)
    c = Client(sock)
    if not c.wait_settings(args.timeout):
        say("error no SETTINGS from the peer")
        return 1
    st = Stream(0, None)
    st.sid = c.conn.get_next_available_stream_id()
    c.by_sid[st.sid] = st
    if args.protocol:
        # RFC 8441 extended CONNECT (the peer must have sent SETTINGS_ENABLE_CONNECT_PROTOCOL).
        say(f"enable_connect_protocol={c.conn.remote_settings.enable_connect_protocol}")
        hdrs = [(":method", "CONNECT"), (":protocol", args.protocol), (":scheme", "http"),
                (":path", args.path), (":authority", args.authority), ("sec-websocket-version", "13")]
    else:
        hdrs = [(":method", "CONNECT"), (":authority", args.authority)]
    c.conn.send_headers(st.sid, hdrs)
    c.flush()
    deadline = time.monotonic() + args.timeout
    while not st.status and not st.ended and st.reset is None and time.monotonic() < deadline:
        if not c.pump(0.2):
            break
    say(f"connect status={st.status} headers={st.headers}")
    if st.status != 200:
        say(st.line())
        return 0
    rounds = [bytes((i * 7 + r) & 0xFF for i in range(args.size)) for r in (1, 2)]
    for r, chunk in enumerate(rounds):
        last = r == len(rounds) - 1
        sent_ok = c.send_body(st.sid, chunk, None) if last else send_open(c, st.sid, chunk)
        if not sent_ok:
            say(f"error sending round {r}")
            break
        want = sum(len(x) for x in rounds[:r + 1])
        while len(st.data) < want and st.reset is None and time.monotonic() < deadline:
            if not c.pump(0.2):
                break
        got = bytes(st.data[want - len(chunk):want])
        say(f"round {r} echoed={int(got == chunk)} have={len(st.data)} want={want} ended={int(st.ended)}")
    while not st.ended and st.reset is None and time.monotonic() < deadline:
        if not c.pump(0.2):
            break
    say(f"extra {len(st.data) - sum(len(x) for x in rounds)}")
    say(st.line())
    return 0


def send_open(c, sid, chunk):
    """DATA without END_STREAM, within the windows."""
    off = 0
    while off < len(chunk):
        room = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
        if room <= 0:
            if not c.pump(0.5):
                return False
            continue
        c.conn.send_data(sid, chunk[off:off + room])
        off += room
        c.flush()
    return True


def mode_steady(args):
    """One GET at a time until stdin closes: `steady ok=N failed=N slowest_ms=N`."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sock = dial(args)
    c = Client(sock)
    if not c.wait_settings(args.timeout):
        say("error no SETTINGS from the peer")
        return 1
    say("ready")
    method, authority, path = args.req[0]
    ok = failed = 0
    slowest = 0.0
    i = 0
    while not stop.is_set():
        st = Stream(i, None)
        i += 1
        st.sid = c.conn.get_next_available_stream_id()
        c.by_sid[st.sid] = st
        t0 = time.monotonic()
        c.conn.send_headers(st.sid, request_headers(method, authority, path, "http"), end_stream=True)
        try:
            c.flush()
        except OSError as e:
            say(f"error send: {e}")
            failed += 1
            break
        while not st.ended and st.reset is None and time.monotonic() - t0 < args.timeout:
            if not c.pump(0.1):
                break
        took = time.monotonic() - t0
        slowest = max(slowest, took)
        if st.ended and st.status == 200 and st.bytes == args.expect_bytes:
            ok += 1
        else:
            failed += 1
            say(f"fail {st.line()} after {took:.3f}s")
            if c.closed:
                break
        time.sleep(0.02)  # the pace of a steady client, not a wait for a condition
    say(f"steady ok={ok} failed={failed} slowest_ms={int(slowest * 1000)}")
    return 0


# ---------------------------------------------------------------------------------------
# Misbehaving clients (raw frames)
# ---------------------------------------------------------------------------------------


class RawConn:
    """A socket with a reader thread that parses frames, ACKs the peer's SETTINGS and
    records the first GOAWAY and the close."""

    def __init__(self, sock, opening):
        self.sock = sock
        # The opening (preface and first frame) goes before the reader may ACK anything.
        sock.sendall(opening)
        self.lock = threading.Lock()
        self.goaway = None
        self.closed = threading.Event()
        self.first_bytes = b""
        self.frames = 0
        self.read_error = None
        # Set once the peer's SETTINGS is ACKed: the floods start only then, so the ACK
        # never lands inside a header block (HEADERS ... CONTINUATION must be contiguous).
        self.acked = threading.Event()
        self.reader = threading.Thread(target=self.read_loop, daemon=True)
        self.reader.start()

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def read_loop(self):
        buf = b""
        self.sock.settimeout(None)
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                if len(self.first_bytes) < 16:
                    self.first_bytes += data[:16]
                buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[0:3], "big")
                    if len(buf) < 9 + length:
                        break
                    ftype, flags = buf[3], buf[4]
                    payload = buf[9:9 + length]
                    buf = buf[9 + length:]
                    self.frames += 1
                    if ftype == 7 and self.goaway is None and len(payload) >= 8:
                        last = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
                        code = int.from_bytes(payload[4:8], "big")
                        self.goaway = (code, last)
                    elif ftype == 4 and not flags & 1:
                        try:
                            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
                        except OSError:
                            pass
                        self.acked.set()
        except OSError as e:
            self.read_error = e
        self.closed.set()

    def done(self):
        return self.closed.is_set()


def flood(args):
    sock = dial(args)
    enc = hpack.Encoder()
    sent = 0
    auth, path = args.req[0][1], args.req[0][2]
    get_block = lambda: enc.encode(request_headers("GET", auth, path, "http"))
    kind = args.kind
    if kind == "bad-preface":
        opening = b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize()
    elif kind == "not-settings":
        opening = PREFACE + PingFrame(0, opaque_data=b"12345678").serialize()
    elif kind == "bad-settings":
        opening = PREFACE + SettingsFrame(0, settings={SettingCodes.ENABLE_PUSH: 2}).serialize()
    else:
        opening = PREFACE + SettingsFrame(0).serialize()
    raw = RawConn(sock, opening)

    def batches(make_one, total, per=500):
        nonlocal sent
        while sent < total and not raw.done() and raw.goaway is None:
            raw.send(b"".join(make_one(sent + k) for k in range(min(per, total - sent))))
            sent += min(per, total - sent)

    if kind not in ("bad-preface", "not-settings", "bad-settings") and not raw.acked.wait(args.timeout):
        say("error no SETTINGS from the peer")
    try:
        if kind in ("bad-preface", "not-settings", "bad-settings"):
            sent = 1
        elif kind == "oversized-frame":
            # A DATA frame of 20000 bytes: over the default SETTINGS_MAX_FRAME_SIZE (16384).
            raw.send(HeadersFrame(1, get_block(), flags=["END_HEADERS"]).serialize())
            raw.send((20000).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + b"x" * 20000)
            sent = 1
        elif kind == "rapid-reset":
            batches(lambda k: HeadersFrame(2 * k + 1, get_block(), flags=["END_HEADERS", "END_STREAM"])
                    .serialize() + RstStreamFrame(2 * k + 1, error_code=8).serialize(), args.count, per=50)
        elif kind == "continuation":
            raw.send(HeadersFrame(1, get_block(), flags=[]).serialize())
            filler = enc.encode([("x-flood", "a" * 1000)])
            batches(lambda k: ContinuationFrame(1, data=filler).serialize(), args.count, per=20)
        elif kind == "ping":
            batches(lambda k: PingFrame(0, opaque_data=k.to_bytes(8, "big")).serialize(), args.count)
        elif kind == "settings":
            batches(lambda k: SettingsFrame(0, settings={SettingCodes.MAX_CONCURRENT_STREAMS: 100})
                    .serialize(), args.count)
        elif kind == "empty-data":
            hdr = request_headers("POST", auth, "/echo", "http")
            raw.send(HeadersFrame(1, enc.encode(hdr), flags=["END_HEADERS"]).serialize())
            batches(lambda k: DataFrame(1, data=b"").serialize(), args.count)
        else:
            say(f"error unknown kind {kind}")
            return 2
    except OSError as e:
        say(f"send stopped: {e}")
    raw.closed.wait(args.timeout)
    if raw.goaway:
        say(f"goaway code={raw.goaway[0]} last={raw.goaway[1]}")
    say(f"first {raw.first_bytes[:12]!r}")
    say(f"sent {sent}")
    say(f"closed {int(raw.done())} read_error={raw.read_error!r}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["get", "connect", "steady", "flood"])
    p.add_argument("--connect", required=True, help="HOST:PORT to connect to (the proxy)")
    p.add_argument("--tls", help="speak TLS with this SNI (ALPN h2), trusting --cafile")
    p.add_argument("--cafile")
    p.add_argument("--req", nargs=3, action="append", default=[], metavar=("METHOD", "AUTHORITY", "PATH"))
    p.add_argument("--authority", help="connect: the CONNECT target")
    p.add_argument("--size", type=int, default=100000, help="connect: bytes per round")
    p.add_argument("--protocol", help="connect: extended CONNECT with this :protocol (RFC 8441)")
    p.add_argument("--path", default="/", help="connect: :path of an extended CONNECT")
    p.add_argument("--body-file")
    p.add_argument("--trailer", action="append", default=[])
    p.add_argument("--content-length", type=int, help="get: announce this content-length, whatever the body")
    p.add_argument("--out", help="get: write stream I's body to OUT/I")
    p.add_argument("--headers", action="store_true", help="get: print each response's fields")
    p.add_argument("--serial", action="store_true", help="get: one stream at a time")
    p.add_argument("--print-body", action="store_true")
    p.add_argument("--window", type=int, help="get: SETTINGS_INITIAL_WINDOW_SIZE to announce")
    p.add_argument("--stall-at", type=int, default=0, help="get: stall once this many bytes came")
    p.add_argument("--stall-secs", type=float, default=0.0, help="get: give no window for this long")
    p.add_argument("--expect-bytes", type=int, default=0, help="steady: the body size of a good answer")
    p.add_argument("--kind", help="flood: what to send")
    p.add_argument("--count", type=int, default=1000, help="flood: how many units")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    return {"get": mode_get, "connect": mode_connect, "steady": mode_steady, "flood": flood}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
