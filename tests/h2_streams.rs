//! One HTTP/2 stream's life through the proxy (issue 14, points 3, 5 and 7): a 103 Early
//! Hints relayed before the final response, a `content-length` that DATA contradicts
//! (a stream error, never a complete request at the origin), an RFC 8441 WebSocket
//! (extended CONNECT) turned into an HTTP/1.1 `Upgrade: websocket`, and draining: SIGTERM
//! sends GOAWAY (NO_ERROR) yet lets the open stream finish.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::h2::{probe, ready, Background};
use support::*;

#[test]
fn early_hints_are_relayed_before_the_final_response() {
    if !ready(&[]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let connect = format!("127.0.0.1:{}", proxy.port);
    let out = probe(&["get", "--connect", &connect, "--req", "GET", &origin.host(), "/early-hints", "--print-body"]);
    let s = out.streams().into_iter().next().unwrap_or_else(|| panic!("{}", out.describe()));
    assert!(s.ended && s.status == 200, "{}", out.describe());
    // Breaks when 1xx answers are swallowed (or sent as the final response).
    assert_eq!(s.interim, vec![103], "{}", out.describe());
    assert!(out.stdout.contains("body 0 'hinted'"), "{}", out.describe());
}

#[test]
fn a_content_length_that_data_contradicts_never_reaches_the_origin_as_a_request() {
    if !ready(&[]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("h2cl");
    let body = dir.write("body", b"12345");
    let connect = format!("127.0.0.1:{}", proxy.port);
    // 5 bytes of DATA and END_STREAM under `content-length: 10`: RFC 9113 §8.1.1 makes it
    // malformed, a stream error.
    let out = probe(&[
        "get",
        "--connect",
        &connect,
        "--req",
        "POST",
        &origin.host(),
        "/echo",
        "--body-file",
        body.to_str().unwrap(),
        "--content-length",
        "10",
    ]);
    let s = out.streams().into_iter().next().unwrap_or_else(|| panic!("{}", out.describe()));
    assert!(s.reset.is_some() || s.status >= 400, "a malformed request was answered {}: {}", s.status, out.describe());
    // Only that stream: the connection is not torn down for it.
    assert!(out.stdout.contains("closed=0"), "{}", out.describe());
    origin.wait_all_closed("after the malformed request");
    // Breaks when the short body is forwarded as if it were whole (the origin would act on it).
    assert_eq!(origin.complete(), 0, "the origin got a complete request: {:?}", origin.heads());
}

/// A python WebSocket-ish origin: answers an HTTP/1.1 `Upgrade: websocket` with 101 and
/// the right `Sec-WebSocket-Accept`, then echoes raw bytes until EOF, prints `eof` and
/// closes its write side. Prints `ready PORT` first and `head <first line>|<upgrade>`
/// for each request.
const WS_ORIGIN: &str = r#"
import base64, hashlib, socket, sys, threading
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(16)
print("ready", ls.getsockname()[1], flush=True)
def conn(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            return
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    print("head", lines[0] + "|" + fields.get("upgrade", "-"), flush=True)
    key = fields.get("sec-websocket-key", "")
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: " + accept + "\r\n\r\n").encode() + rest)
    while True:
        d = c.recv(65536)
        if not d:
            print("eof", flush=True)
            c.shutdown(socket.SHUT_WR)
            return
        c.sendall(d)
while True:
    c, _ = ls.accept()
    threading.Thread(target=conn, args=(c,), daemon=True).start()
"#;

#[test]
fn an_rfc8441_websocket_becomes_an_http11_upgrade_and_carries_bytes_both_ways() {
    if !ready(&[]) {
        return;
    }
    let dir = TempDir::new("h2ws");
    let script = dir.write("ws.py", WS_ORIGIN);
    let mut ws = Background::start_script(script.to_str().unwrap(), &[]);
    let port = ws.wait_line("ready", Duration::from_secs(10)).unwrap_or_else(|e| panic!("ws origin: {e}"));
    let port = port.trim_start_matches("ready ").to_string();
    let proxy = Proxy::start("");
    let connect = format!("127.0.0.1:{}", proxy.port);
    let authority = format!("127.0.0.1:{port}");
    let out = probe(&[
        "connect",
        "--connect",
        &connect,
        "--authority",
        &authority,
        "--protocol",
        "websocket",
        "--path",
        "/chat",
        "--size",
        "50000",
        "--timeout",
        "10",
    ]);
    // Breaks when SETTINGS_ENABLE_CONNECT_PROTOCOL is not announced.
    assert!(out.stdout.contains("enable_connect_protocol=1"), "{}", out.describe());
    assert_eq!(out.field("connect", "status").as_deref(), Some("200"), "{}", out.describe());
    let head = ws.wait_line("head", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}\n{}", out.describe()));
    assert_eq!(head, "head GET /chat HTTP/1.1|websocket", "the origin's request");
    // Breaks when the upgraded connection's bytes are not relayed as DATA both ways.
    assert_eq!(out.field("round 0", "echoed").as_deref(), Some("1"), "{}", out.describe());
    assert_eq!(out.field("round 1", "echoed").as_deref(), Some("1"), "{}", out.describe());
    // END_STREAM is the client's half-close: the origin sees EOF and its close ends the stream.
    ws.wait_line("eof", Duration::from_secs(5)).unwrap_or_else(|e| panic!("END_STREAM not passed on: {e}"));
    let s = out.streams().into_iter().next().unwrap_or_else(|| panic!("{}", out.describe()));
    assert!(s.ended && s.reset.is_none(), "{}", out.describe());
}

#[test]
fn draining_sends_goaway_and_lets_the_open_stream_finish() {
    if !ready(&["nghttp"]) {
        return;
    }
    let origin = Origin::start();
    let mut proxy = Proxy::start("");
    let dir = TempDir::new("h2drain");
    let log = dir.join("nghttp.log");
    let mut client = Command::new("nghttp")
        .args(["-v", "-H", &format!(":authority: {}", origin.host())])
        .arg(format!("http://127.0.0.1:{}/slow/2000", proxy.port))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("run nghttp");
    assert!(wait_until(Duration::from_secs(10), || origin.requests() == 1), "the stream never reached the origin");
    let term = Command::new("kill").args(["-TERM", &proxy.pid().to_string()]).status().unwrap();
    assert!(term.success());
    let done = wait_until(Duration::from_secs(15), || matches!(client.try_wait(), Ok(Some(_))));
    if !done {
        let _ = client.kill();
    }
    let _ = client.wait();
    let text = fs::read_to_string(&log).unwrap_or_default();
    // Breaks when draining closes the connection without GOAWAY, or kills the open stream.
    assert!(text.contains("recv GOAWAY frame") && text.contains("error_code=NO_ERROR"), "no GOAWAY:\n{text}");
    assert!(text.contains(":status: 200"), "the open stream was not answered:\n{text}");
    assert!(text.contains("recv DATA frame <length=4"), "the open stream's body (`slow`):\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    let ended = lines.windows(2).any(|w| w[0].contains("recv DATA frame") && w[1].contains("END_STREAM"));
    assert!(ended, "the open stream did not end with END_STREAM:\n{text}");
    // With nothing left open, the drain ends long before timeouts.drain (30 s).
    assert!(wait_until(Duration::from_secs(10), || !proxy.alive()), "the proxy still runs after its last stream");
}

#[test]
fn streams_one_after_another_reuse_one_pooled_origin_connection() {
    if !ready(&[]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let connect = format!("127.0.0.1:{}", proxy.port);
    let mut args = vec!["get".to_string(), "--connect".into(), connect, "--serial".into()];
    for i in 0..10 {
        args.extend(["--req".into(), "GET".into(), origin.host(), format!("/bytes/{}", 100 + i)]);
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    // Ten streams on one connection, each opened once the previous one ended.
    let out = probe(&refs);
    assert!(out.stdout.contains("done ok=10 of=10"), "{}", out.describe());
    assert_eq!(out.line("open_max"), Some("1"), "{}", out.describe());
    assert_eq!(origin.requests(), 10);
    // Breaks when a stream's exchange neither takes a pooled connection nor gives its own back.
    assert_eq!(origin.accepts(), 1, "10 streams one after another used {} origin connections", origin.accepts());
}

/// Holds N HTTP/2 connections over TLS (ALPN h2, through interception) idle: preface,
/// empty SETTINGS, the proxy's SETTINGS acknowledged; prints `ready`, then waits for its
/// stdin to close. Usage: SCRIPT PORT N.
const IDLE_TLS_CLIENTS: &str = r#"
import socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
conns = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="origin.test")
    assert s.selected_alpn_protocol() == "h2"
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    buf = b""
    while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
        buf += s.recv(65536)
    s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
    conns.append(s)
print("ready", flush=True)
sys.stdin.read()
"#;

#[test]
fn idle_http2_clients_hold_no_buffer() {
    if !ready(&[]) {
        return;
    }
    let proxy = Proxy::builder("").workers(1).start();
    let dir = TempDir::new("h2idle");
    let script = dir.write("idle.py", IDLE_TLS_CLIENTS);
    let mut clients = Background::start_script(script.to_str().unwrap(), &[&proxy.port.to_string(), "40"]);
    clients.wait_line("ready", Duration::from_secs(30)).expect("40 idle TLS h2 clients");
    proxy.wait_metric("sluice_connections_active", Duration::from_secs(5), |v| v == 40.0).expect("40 clients");
    // Breaks when an idle session keeps a slab (its frame writer took one with nothing to
    // write): the buffer budget then caps idle HTTP/2 clients at its size per worker, and
    // the 40 sessions hold 40. A clean-clone CI run under load read 2 for 5 s (once in
    // many runs; not reproduced, cause not established: the admin connections answering
    // these polls hold buffers of their own): up to 2 are tolerated.
    let slabs = proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(5), |v| v <= 2.0);
    assert!(slabs.is_ok(), "40 idle HTTP/2 clients hold slabs: {slabs:?}");
    drop(clients);
}
