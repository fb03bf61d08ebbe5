"""An HTTP/2-only TLS origin (ALPN h2, python `h2`) that behaves as a test needs.
Prints `ready` once it listens. Usage: h2_scripted_origin.py MODE IP CERT KEY (port 443).

MODE `hints`: every request gets a 103 Early Hints (`link: </style.css>; rel=preload`),
then 200 with `hinted\\n`.
MODE `goaway`: on each connection the first request (stream 1) gets 200 with `served\\n`;
any later one is not processed: GOAWAY (last stream 1, NO_ERROR) and the connection
closes, as a server shutting down or rotating connections does."""
import socket
import ssl
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

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


def serve(raw):
    try:
        s = ctx.wrap_socket(raw, server_side=True)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        while True:
            data = s.recv(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if not isinstance(ev, h2.events.StreamEnded):
                    continue
                if mode == "hints":
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


while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
