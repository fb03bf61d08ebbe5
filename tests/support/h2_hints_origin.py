"""An HTTP/2-only TLS origin (ALPN h2, python `h2`) that answers every request with a
103 Early Hints (`link: </style.css>; rel=preload`) and then 200 with `hinted\n`.
Prints `ready` once it listens. Usage: h2_hints_origin.py IP CERT KEY (port 443)."""
import socket
import ssl
import sys
import threading

import h2.config
import h2.connection
import h2.events

ip, cert, key = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((ip, 443))
ls.listen(64)
print("ready", flush=True)


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
                if isinstance(ev, h2.events.StreamEnded):
                    sid = ev.stream_id
                    conn.send_headers(sid, [(":status", "103"), ("link", "</style.css>; rel=preload")])
                    conn.send_headers(sid, [(":status", "200"), ("content-length", "7")])
                    conn.send_data(sid, b"hinted\n", end_stream=True)
            s.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
        pass
    finally:
        raw.close()


while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
