"""An HTTP/2-only TLS origin (ALPN h2, python `h2`) that behaves as a test needs.
Prints `ready` once it listens. Usage: h2_scripted_origin.py MODE IP CERT KEY (port 443).

MODE `hints`: every request gets a 103 Early Hints (`link: </style.css>; rel=preload`),
then 200 with `hinted\\n`.
MODE `goaway`: on each connection the first request (stream 1) gets 200 with `served\\n`;
any later one is not processed: GOAWAY (last stream 1, NO_ERROR) and the connection
closes, as a server shutting down or rotating connections does.
MODE `hold`: each connection takes one stream at a time (SETTINGS_MAX_CONCURRENT_STREAMS
1); `/hold` is never answered (it prints `held` when it has it), any other path gets 200
with `served\n`; connections after the first wait 0.3 s before their TLS handshake.
MODE `early`: every request is answered as soon as its head arrives (200, `early\n`, the
stream ended) and its body is never read: no WINDOW_UPDATE, so a large body stops at the
first window."""
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

mode, ip, cert, key = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((ip, 443))
ls.listen(64)
print("ready", flush=True)


def answer(conn, sid, body, hints=False):
    if hints:
        conn.send_headers(sid, [(":status", "103"), ("link", "</style.css>; rel=preload")])
    conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
    conn.send_data(sid, body, end_stream=True)


def serve(raw, n):
    try:
        if mode == "hold" and n > 1:
            # Later connections are slow to come up: requests arriving meanwhile queue.
            time.sleep(0.3)
        s = ctx.wrap_socket(raw, server_side=True)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        if mode == "hold":
            conn.local_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        conn.initiate_connection()
        paths = {}
        s.sendall(conn.data_to_send())
        while True:
            data = s.recv(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    paths[ev.stream_id] = dict(ev.headers).get(b":path", b"")
                    if mode == "early":
                        answer(conn, ev.stream_id, b"early\n")
                        continue
                if not isinstance(ev, h2.events.StreamEnded):
                    continue
                if mode == "hold":
                    # `/hold` is never answered: the connection's one stream stays busy.
                    if paths.get(ev.stream_id) != b"/hold":
                        answer(conn, ev.stream_id, b"served\n")
                    else:
                        print("held", flush=True)
                elif mode == "hints":
                    answer(conn, ev.stream_id, b"hinted\n", hints=True)
                elif ev.stream_id == 1:
                    answer(conn, ev.stream_id, b"served\n")
                else:
                    conn.close_connection(last_stream_id=1)
                    s.sendall(conn.data_to_send())
                    return
            s.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
        pass
    finally:
        raw.close()


accepted = 0
while True:
    c, _ = ls.accept()
    accepted += 1
    # Frames go out as they are written (a SETTINGS held back by Nagle would leave the
    # proxy assuming the default stream limit for 40 ms).
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(c, accepted), daemon=True).start()
