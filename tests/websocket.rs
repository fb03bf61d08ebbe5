//! WebSocket and HTTP Upgrade end to end (RFC 9110 §7.8, RFC 6455): a real WebSocket
//! origin written here (the handshake and frames by hand over std sockets, plain and
//! rustls TLS), clients speaking the handshake and masked frames by hand.
//!
//! Covered: ws through the explicit proxy (absolute-form) and Host-routed, frames both
//! ways after the 101 (origin-first, pipelined right behind the request, a bulk frame
//! that splices), `wss://` through `--intercept-connect`, a request body sent before the
//! switch, a protocol the operator does not allow and `h2c` stripped (and `h2c` refused
//! by `check-config`), a declined Upgrade answered as a normal response whose origin
//! connection is not pooled, a 101 nobody asked for (or to another protocol) refused
//! with 502, the idle timeout closing an idle upgraded tunnel, one access-log line with
//! status 101 and the bytes both ways, and an Upgrade to an origin listed in
//! `h2.cleartext_origins` still made in HTTP/1.1.

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------------------
// Sec-WebSocket-Accept (RFC 6455 §4.2.2): SHA-1 and base64, by hand
// ---------------------------------------------------------------------------------------

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn accept_key(key: &str) -> String {
    base64(&sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes()))
}

#[test]
fn the_accept_key_is_the_rfc_6455_example() {
    assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

// ---------------------------------------------------------------------------------------
// Frames (RFC 6455 §5.2): FIN set, no fragmentation
// ---------------------------------------------------------------------------------------

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CLOSE: u8 = 8;

fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A client's frame: masked (RFC 6455 §5.3), with a key that changes per frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let seed = payload.len() as u32 ^ 0x5a17_c3e1;
    frame(opcode, payload, Some(seed.rotate_left(payload.len() as u32 % 31).to_be_bytes()))
}

struct Frame {
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

fn read_frame<S: Read>(c: &mut BufConn<S>) -> io::Result<Frame> {
    let h = c.read_exact_vec(2)?;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => u16::from_be_bytes(c.read_exact_vec(2)?.try_into().unwrap()) as usize,
        127 => u64::from_be_bytes(c.read_exact_vec(8)?.try_into().unwrap()) as usize,
        n => n as usize,
    };
    let key = if masked { Some(c.read_exact_vec(4)?) } else { None };
    let mut payload = c.read_exact_vec(len)?;
    if let Some(k) = key {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= k[i % 4]);
    }
    Ok(Frame { opcode: h[0] & 0x0f, masked, payload })
}

/// A stream the origin and the clients speak over: TCP, or TLS on TCP.
trait Wire: Read + Write + Send + 'static {
    /// Ends our side cleanly (a TLS `close_notify` first).
    fn finish(&mut self);
}

impl Wire for TcpStream {
    fn finish(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// TLS over TCP, on either side.
macro_rules! tls_wire {
    ($conn:ty) => {
        impl Wire for rustls::StreamOwned<$conn, TcpStream> {
            fn finish(&mut self) {
                self.conn.send_close_notify();
                let _ = self.flush();
                let _ = self.sock.shutdown(Shutdown::Write);
            }
        }
    };
}
tls_wire!(rustls::ServerConnection);
tls_wire!(rustls::ClientConnection);

impl Wire for Box<dyn Wire> {
    fn finish(&mut self) {
        (**self).finish()
    }
}

fn send<S: Wire>(c: &mut BufConn<S>, bytes: &[u8]) {
    c.inner.write_all(bytes).and_then(|_| c.inner.flush()).unwrap_or_else(|e| panic!("send: {e}"));
}

// ---------------------------------------------------------------------------------------
// The WebSocket origin
// ---------------------------------------------------------------------------------------

/// A WebSocket origin on a loopback port, plain or TLS, one thread per connection.
///
/// - A WebSocket handshake (`Connection: upgrade`, `Upgrade: websocket`) on any path
///   gets a 101 with the right `Sec-WebSocket-Accept`. Then: a request body comes back
///   first as a text frame `body: ...`; on `/push` the origin speaks first (`hello from
///   the origin`); then every text or binary frame is echoed with the same opcode, and a
///   close frame is answered with one and ends the connection.
/// - `/declined`: a 403 whatever the request asked for (keep-alive).
/// - `/other-protocol`: a 101 that switches to `foo`, then bytes of it.
/// - `/switch-anyway`: a 101 to websocket whatever the request asked for.
/// - Anything else: 200 with `upgrade=<Upgrade or -> connection=<Connection or ->`
///   (keep-alive).
struct WsOrigin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepts: Arc<AtomicUsize>,
    /// Frames from a client that were not masked.
    unmasked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

type Upgrader = Arc<dyn Fn(TcpStream) -> Option<Box<dyn Wire>> + Send + Sync>;

impl WsOrigin {
    fn start() -> WsOrigin {
        WsOrigin::start_with(Arc::new(|s| Some(Box::new(s) as Box<dyn Wire>)))
    }

    /// Speaks TLS with `cert`/`key` (PEM).
    fn start_tls(cert: &Path, key: &Path) -> WsOrigin {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_file(cert).expect("origin cert")];
        let key = PrivateKeyDer::from_pem_file(key).expect("origin key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("origin TLS config");
        let cfg = Arc::new(cfg);
        WsOrigin::start_with(Arc::new(move |s| {
            let conn = rustls::ServerConnection::new(cfg.clone()).ok()?;
            Some(Box::new(rustls::StreamOwned::new(conn, s)) as Box<dyn Wire>)
        }))
    }

    fn start_with(upgrade: Upgrader) -> WsOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the ws origin");
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accepts = Arc::new(AtomicUsize::new(0));
        let unmasked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, a, u, st) = (heads.clone(), accepts.clone(), unmasked.clone(), stop.clone());
        thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(SeqCst) {
                    return;
                }
                let Ok(s) = s else { continue };
                a.fetch_add(1, SeqCst);
                let (h, u, upgrade) = (h.clone(), u.clone(), upgrade.clone());
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let _ = s.set_nodelay(true);
                    if let Some(wire) = upgrade(s) {
                        let _ = serve(&mut BufConn::new(wire), &h, &u);
                    }
                });
            }
        });
        WsOrigin { addr, heads, accepts, unmasked, stop }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The last request head the origin received, parsed.
    fn last_head(&self) -> Head {
        let heads = self.heads();
        parse_head(heads.last().expect("the origin saw no request").as_bytes()).unwrap()
    }

    fn accepts(&self) -> usize {
        self.accepts.load(SeqCst)
    }
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
    }
}

fn respond<S: Wire>(c: &mut BufConn<S>, status: &str, body: &str) {
    let r = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}", body.len());
    send(c, r.as_bytes());
}

fn serve<S: Wire>(c: &mut BufConn<S>, heads: &Mutex<Vec<String>>, unmasked: &AtomicUsize) -> io::Result<()> {
    loop {
        let Some(raw) = c.read_head(64 * 1024)? else { return Ok(()) };
        heads.lock().unwrap().push(String::from_utf8_lossy(&raw).into_owned());
        let head = parse_head(&raw)?;
        let path = head.first_line.split(' ').nth(1).unwrap_or("").to_string();
        let body = match head.get("content-length") {
            Some(n) => c.read_exact_vec(n.parse().unwrap_or(0))?,
            None => Vec::new(),
        };
        let wants_ws = head.has_token("connection", "upgrade") && head.has_token("upgrade", "websocket");
        let key = head.get("sec-websocket-key").unwrap_or("").to_string();
        match path.as_str() {
            "/declined" => respond(c, "403 Forbidden", "no websocket here\n"),
            "/other-protocol" => {
                send(c, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\nFOO-BYTES");
                return Ok(());
            }
            "/switch-anyway" => {
                let r = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(&key)
                );
                send(c, r.as_bytes());
                send(c, &frame(TEXT, b"switched anyway", None));
                return Ok(());
            }
            _ if wants_ws => return websocket(c, &path, &key, &body, unmasked),
            _ => {
                let seen = |n: &str| head.get_all(n).join(" | ");
                let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
                let text = format!("upgrade={} connection={}\n", or_dash(seen("upgrade")), or_dash(seen("connection")));
                respond(c, "200 OK", &text);
            }
        }
    }
}

/// After the 101: the body first, the origin's own greeting on `/push`, then echo until
/// a close frame.
fn websocket<S: Wire>(
    c: &mut BufConn<S>,
    path: &str,
    key: &str,
    body: &[u8],
    unmasked: &AtomicUsize,
) -> io::Result<()> {
    let r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    let mut first = r.into_bytes();
    if !body.is_empty() {
        first.extend_from_slice(&frame(TEXT, &[b"body: ", body].concat(), None));
    }
    if path == "/push" {
        first.extend_from_slice(&frame(TEXT, b"hello from the origin", None));
    }
    send(c, &first);
    loop {
        let f = read_frame(c)?;
        if !f.masked {
            unmasked.fetch_add(1, SeqCst);
        }
        match f.opcode {
            CLOSE => {
                send(c, &frame(CLOSE, &f.payload, None));
                c.inner.finish();
                // Until the client's side closes too (no reset over unread bytes).
                let _ = c.read_to_end_vec();
                return Ok(());
            }
            TEXT | BINARY => send(c, &frame(f.opcode, &f.payload, None)),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

const KEY: &str = "x3JJHMbDL1EzLkh9GBhXDw==";

fn tcp_to(proxy: &Proxy) -> TcpStream {
    let s = TcpStream::connect_timeout(&proxy.addr(), Duration::from_secs(5)).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.set_nodelay(true);
    s
}

/// A WebSocket handshake request for `target` (absolute- or origin-form).
fn ws_request(target: &str, host: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// Reads the response head to a handshake and checks it is a proper 101.
fn expect_101<S: Read>(c: &mut BufConn<S>) -> Head {
    let raw = c.read_head(64 * 1024).expect("the handshake's response").expect("a response head");
    let head = parse_head(&raw).unwrap();
    assert!(head.first_line.starts_with("HTTP/1.1 101 "), "expected 101, got {:?}", String::from_utf8_lossy(&raw));
    assert!(head.has_token("upgrade", "websocket"), "101 without Upgrade: websocket: {head:?}");
    assert!(head.has_token("connection", "upgrade"), "101 without Connection: upgrade: {head:?}");
    assert_eq!(head.get("sec-websocket-accept"), Some(accept_key(KEY).as_str()), "{head:?}");
    head
}

fn expect_frame<S: Read>(c: &mut BufConn<S>, opcode: u8, payload: &[u8], what: &str) {
    let f = read_frame(c).unwrap_or_else(|e| panic!("{what}: reading a frame: {e}"));
    assert!(!f.masked, "{what}: a frame from the origin arrived masked");
    assert_eq!(f.opcode, opcode, "{what}: opcode");
    assert_bytes_eq(&f.payload, payload, what);
}

/// Text frames there and back, then the close handshake; the connection must end cleanly.
fn echo_and_close<S: Wire>(c: &mut BufConn<S>, what: &str) {
    for i in 0..3 {
        let text = format!("ping {i} {what}");
        send(c, &client_frame(TEXT, text.as_bytes()));
        expect_frame(c, TEXT, text.as_bytes(), &format!("{what}: echo {i}"));
    }
    send(c, &client_frame(CLOSE, &1000u16.to_be_bytes()));
    expect_frame(c, CLOSE, &1000u16.to_be_bytes(), &format!("{what}: close"));
    match c.read_to_end_vec() {
        Ok(rest) => assert!(rest.is_empty(), "{what}: bytes after the close frame: {:?}", excerpt(&rest)),
        Err(e) => panic!("{what}: the connection did not end cleanly after the close handshake: {e}"),
    }
    c.inner.finish();
}

/// `sluice_tunnels_total{kind=KIND}`.
fn tunnels(proxy: &Proxy, kind: &str) -> f64 {
    let text = proxy.metrics().unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("sluice_tunnels_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn websocket_through_the_explicit_proxy_relays_frames_both_ways() {
    let origin = WsOrigin::start();
    let proxy = Proxy::start("");
    let base = proxy.baseline();
    let mut c = BufConn::new(tcp_to(&proxy));
    let target = format!("http://{}/push", origin.host());
    send(&mut c, ws_request(&target, &origin.host(), "").as_bytes());
    let head = expect_101(&mut c);
    assert!(head.get("via").is_some_and(|v| v.contains("1.1 ")), "the 101 carries our Via: {head:?}");

    // The origin saw the Upgrade with its connection option, in origin-form.
    let seen = origin.last_head();
    assert_eq!(seen.first_line, "GET /push HTTP/1.1", "{seen:?}");
    assert!(seen.has_token("upgrade", "websocket"), "Upgrade stripped on the way: {seen:?}");
    assert!(seen.has_token("connection", "upgrade"), "Connection: upgrade stripped on the way: {seen:?}");
    assert_eq!(seen.get("sec-websocket-key"), Some(KEY));

    // The origin speaks first; then a bulk frame both ways (it splices), then the echo.
    expect_frame(&mut c, TEXT, b"hello from the origin", "the origin's greeting");
    let bulk = pattern(3 << 20);
    let writer = {
        let mut w = c.inner.try_clone().unwrap();
        let f = client_frame(BINARY, &bulk);
        thread::spawn(move || w.write_all(&f))
    };
    expect_frame(&mut c, BINARY, &bulk, "a 3 MiB binary frame echoed");
    writer.join().unwrap().expect("send the bulk frame");
    proxy
        .wait_metric("sluice_tunnel_splices_total", Duration::from_secs(5), |v| v >= 1.0)
        .expect("a bulk direction of an upgraded cleartext tunnel splices");
    echo_and_close(&mut c, "explicit proxy");
    assert_eq!(origin.unmasked.load(SeqCst), 0, "client frames reach the origin masked, as sent");
    assert_eq!(tunnels(&proxy, "upgrade"), 1.0, "the upgraded exchange is a tunnel in the metrics");
    assert_eq!(tunnels(&proxy, "connect"), 0.0);
    proxy.assert_released(&base, "a closed WebSocket");
}

#[test]
fn websocket_via_a_host_routed_request_with_frames_pipelined_behind_it() {
    let origin = WsOrigin::start();
    let proxy = Proxy::start("");
    let mut c = BufConn::new(tcp_to(&proxy));
    // The first frame leaves in the same segment as the handshake: it waits in the
    // proxy while the request goes, and follows it once the origin switched.
    let mut first = ws_request("/echo", &origin.host(), "").into_bytes();
    first.extend_from_slice(&client_frame(TEXT, b"early bird"));
    send(&mut c, &first);
    expect_101(&mut c);
    expect_frame(&mut c, TEXT, b"early bird", "the frame sent right behind the request");
    let seen = origin.last_head();
    assert_eq!(seen.first_line, "GET /echo HTTP/1.1");
    assert!(seen.has_token("upgrade", "websocket") && seen.has_token("connection", "upgrade"), "{seen:?}");
    echo_and_close(&mut c, "Host-routed");
    proxy.wait_no_clients("a closed Host-routed WebSocket");
}

#[test]
fn a_websocket_to_an_h2c_listed_origin_still_goes_over_http11() {
    let origin = WsOrigin::start();
    // The operator says this destination speaks HTTP/2 in cleartext: its ordinary requests
    // go over h2c, but an Upgrade exists only in HTTP/1.1.
    let proxy = Proxy::start(&format!("[h2]\ncleartext_origins = [\"{}\"]\n", origin.host()));
    let mut c = BufConn::new(tcp_to(&proxy));
    send(&mut c, ws_request("/echo", &origin.host(), "").as_bytes());
    // Breaks when an Upgrade goes to the h2c session (the origin would get a preface).
    expect_101(&mut c);
    assert_eq!(origin.last_head().first_line, "GET /echo HTTP/1.1");
    echo_and_close(&mut c, "h2c-listed origin");
    assert_eq!(proxy.metric("sluice_h2_origin_sessions_total"), Ok(0.0));
}

#[test]
fn a_request_body_goes_before_the_switch() {
    let origin = WsOrigin::start();
    let proxy = Proxy::start("");
    let mut c = BufConn::new(tcp_to(&proxy));
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\nContent-Length: 11\r\n\r\nhello world",
        origin.host()
    );
    send(&mut c, req.as_bytes());
    expect_101(&mut c);
    expect_frame(&mut c, TEXT, b"body: hello world", "the body, read by the origin before it switched");
    echo_and_close(&mut c, "after a body");
}

#[test]
fn wss_through_an_intercepted_connect() {
    let pki = TempDir::new("wss-pki");
    let (ca, cert, key) = make_test_pki(&pki, "ws.test");
    let origin = WsOrigin::start_tls(&cert, &key);
    let port = origin.addr.port();
    let proxy = Proxy::builder(&format!("connect_ports = [{port}]\n"))
        .resolve("ws.test", "127.0.0.1")
        .arg("--intercept-connect")
        .arg("--upstream-ca")
        .arg(ca.to_str().unwrap())
        .start();
    let base = proxy.baseline();

    // CONNECT, then TLS with the forged certificate, then the handshake inside.
    let mut tcp = BufConn::new(tcp_to(&proxy));
    send(&mut tcp, format!("CONNECT ws.test:{port} HTTP/1.1\r\nHost: ws.test:{port}\r\n\r\n").as_bytes());
    let raw = tcp.read_head(4096).unwrap().expect("the CONNECT's answer");
    assert!(raw.starts_with(b"HTTP/1.1 200 "), "{:?}", String::from_utf8_lossy(&raw));
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let sluice_ca = proxy.dir.path().join("ca").join("ca.pem");
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&sluice_ca).expect("the Sluice CA")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("ws.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut c = BufConn::new(rustls::StreamOwned::new(conn, tcp.inner));

    send(&mut c, ws_request("/push", &format!("ws.test:{port}"), "").as_bytes());
    expect_101(&mut c);
    let seen = origin.last_head();
    assert!(seen.has_token("upgrade", "websocket") && seen.has_token("connection", "upgrade"), "{seen:?}");
    expect_frame(&mut c, TEXT, b"hello from the origin", "the origin's greeting through both TLS sessions");
    // Larger than a slab and than rustls' send buffer: the relay through both sessions
    // must neither splice ciphertext nor drop plaintext.
    let bulk = pattern(1 << 20);
    send(&mut c, &client_frame(BINARY, &bulk));
    expect_frame(&mut c, BINARY, &bulk, "a 1 MiB frame echoed through interception");
    // The origin's close_notify reaches the client as one: a clean TLS end, no truncation.
    echo_and_close(&mut c, "wss");
    assert_eq!(tunnels(&proxy, "upgrade"), 1.0);
    proxy.assert_released(&base, "a closed wss WebSocket");
}

#[test]
fn an_upgrade_the_operator_does_not_allow_is_stripped_and_the_request_goes_on() {
    let origin = WsOrigin::start();
    let proxy = Proxy::start("");
    let mut c = Client::connect(proxy.addr());
    let h = origin.host();
    // A protocol not on the list: the request goes as a plain one, and the connection
    // stays usable (keep-alive).
    c.send_str(&format!("GET /plain HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: foo/2\r\n\r\n"));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "upgrade=- connection=-\n", "the origin saw the Upgrade");
    // Only the allowed protocols of a list go.
    c.send_str(&format!(
        "GET /plain HTTP/1.1\r\nHost: {h}\r\nConnection: upgrade\r\nUpgrade: foo, websocket/13\r\n\r\n"
    ));
    let r = c.response();
    assert_eq!(r.text(), "upgrade=websocket/13 connection=upgrade\n", "only websocket is forwarded");
    let r = c.get(&h, "/plain");
    assert_eq!(r.status, 200, "the client connection is still alive: {}", r.describe());

    // With no protocol allowed, a WebSocket handshake is an ordinary request too.
    let closed = Proxy::start("upgrade_protocols = []\n");
    let mut c = Client::connect(closed.addr());
    c.send_str(&ws_request("/plain", &h, ""));
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "upgrade=- connection=-\n"), "{}", r.describe());
    assert_eq!(tunnels(&closed, "upgrade"), 0.0);
}

#[test]
fn h2c_is_never_forwarded_as_an_upgrade() {
    let origin = WsOrigin::start();
    let proxy = Proxy::start("upgrade_protocols = [\"websocket\", \"foo\"]\n");
    let mut c = Client::connect(proxy.addr());
    let h = origin.host();
    // What `curl --http2 http://...` sends: the request goes on in HTTP/1.1.
    c.send_str(&format!(
        "GET /plain HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    ));
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "upgrade=- connection=-\n"), "{}", r.describe());
    assert!(origin.last_head().get("http2-settings").is_none(), "{:?}", origin.last_head());
    c.send_str(&format!("GET /plain HTTP/1.1\r\nHost: {h}\r\nConnection: upgrade\r\nUpgrade: h2c, foo\r\n\r\n"));
    assert_eq!(c.response().text(), "upgrade=foo connection=upgrade\n");

    // And no operator can allow it.
    let dir = TempDir::new("ws-cfg");
    let f = dir.write("h2c.toml", "upgrade_protocols = [\"websocket\", \"h2c\"]\n");
    let out = Command::new(BIN).arg("check-config").arg(&f).output().expect("run sluice check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "h2c accepted by check-config: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("upgrade_protocols") && err.contains("h2c") && err.contains("line 1"), "{err}");
}

#[test]
fn a_declined_upgrade_is_a_normal_response_and_its_origin_connection_is_not_pooled() {
    let origin = WsOrigin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let mut c = Client::connect(proxy.addr());
    let h = origin.host();
    c.send_str(&ws_request("/declined", &h, ""));
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (403, "no websocket here\n"), "{}", r.describe());
    assert!(r.header("connection").is_none_or(|v| !v.eq_ignore_ascii_case("close")), "{}", r.describe());
    // The client's connection goes on; the origin connection that was offered the
    // Upgrade does not serve the next request.
    let r = c.get(&h, "/plain");
    assert_eq!((r.status, r.text().as_str()), (200, "upgrade=- connection=-\n"), "{}", r.describe());
    assert_eq!(origin.accepts(), 2, "the declined Upgrade's origin connection was pooled and reused");
    let r = c.get(&h, "/plain");
    assert_eq!(r.status, 200);
    assert_eq!(origin.accepts(), 2, "an ordinary request's origin connection is pooled");
}

#[test]
fn a_101_nobody_asked_for_or_to_another_protocol_is_a_502() {
    let origin = WsOrigin::start();
    let proxy = Proxy::start("");
    let base = proxy.baseline();
    let h = origin.host();
    let r = exchange(
        proxy.addr(),
        format!("GET /switch-anyway HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .expect("an answer");
    assert_eq!(r.status, 502, "a switch without an Upgrade request: {}", r.describe());
    assert!(r.text().contains("without an Upgrade request"), "{}", r.describe());
    let r = exchange(proxy.addr(), ws_request("/other-protocol", &h, "").as_bytes(), Duration::from_secs(10))
        .expect("an answer");
    assert_eq!(r.status, 502, "a switch to a protocol not offered: {}", r.describe());
    assert!(!r.text().contains("FOO-BYTES"), "bytes of the other protocol leaked: {}", r.describe());
    assert_eq!(tunnels(&proxy, "upgrade"), 0.0);
    proxy.assert_released(&base, "two refused switches");
}

#[test]
fn an_idle_upgraded_tunnel_is_closed_at_io_idle() {
    let origin = WsOrigin::start();
    // 2 s: the tunnel moves its deadline only when it would move by more than a second.
    let proxy = Proxy::start("[timeouts]\nio_idle = 2\n");
    let base = proxy.baseline();
    let mut conn = BufConn::new(tcp_to(&proxy));
    send(&mut conn, ws_request("/echo", &origin.host(), "").as_bytes());
    expect_101(&mut conn);
    // Traffic keeps it open past io_idle...
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(3000) {
        send(&mut conn, &client_frame(TEXT, b"still here"));
        expect_frame(&mut conn, TEXT, b"still here", "an echo while active");
        thread::sleep(Duration::from_millis(250));
    }
    // ...silence closes it.
    let quiet = Instant::now();
    let mut c = Client { conn };
    let rest = c.wait_closed(Duration::from_secs(6)).expect("the idle upgraded tunnel was not closed");
    assert!(rest.is_empty(), "{:?}", excerpt(&rest));
    let after = quiet.elapsed();
    assert!(after >= Duration::from_millis(900), "closed after {after:?} of silence, well before io_idle");
    proxy.assert_released(&base, "an upgraded tunnel closed at io_idle");
}

#[test]
fn the_upgraded_exchange_has_one_access_log_line_with_101_and_its_bytes() {
    let dir = TempDir::new("ws-log");
    let log = dir.join("access.jsonl");
    let origin = WsOrigin::start();
    let config = format!("access_log = {:?}\naccess_log_format = \"json\"\n", log.display().to_string());
    let proxy = Proxy::builder(&config).workers(1).start();
    let mut s = tcp_to(&proxy);
    let client = s.local_addr().unwrap();
    let target = format!("http://{}/echo", origin.host());
    let t0 = Instant::now();
    let request = ws_request(&target, &origin.host(), "");
    let frames = [client_frame(TEXT, b"one"), client_frame(TEXT, b"two"), client_frame(CLOSE, &1000u16.to_be_bytes())];
    s.write_all(request.as_bytes()).unwrap();
    let mut c = BufConn::new(s);
    let head = c.read_head(4096).unwrap().unwrap();
    let mut received = head.len();
    for (f, want) in frames.iter().zip([&b"one"[..], b"two", &1000u16.to_be_bytes()]) {
        send(&mut c, f);
        let got = read_frame(&mut c).unwrap();
        assert_eq!(got.payload, want);
        received += frame(got.opcode, &got.payload, None).len();
    }
    assert!(c.read_to_end_vec().unwrap().is_empty());
    let elapsed = t0.elapsed();
    drop(c);
    let sent = request.len() + frames.iter().map(Vec::len).sum::<usize>();

    // Anchor: a later exchange's line proves the worker has written the tunnel's.
    proxy.wait_no_clients("the closed WebSocket");
    let anchor = exchange(
        proxy.addr(),
        format!("GET http://{}/plain?anchor HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", origin.host())
            .as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(anchor.status, 200);
    let ok = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("/plain?anchor")
    });
    assert!(ok, "the anchor's line never came");
    let text = std::fs::read_to_string(&log).unwrap();
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(&format!("\"client\":\"{client}\""))).collect();
    assert_eq!(ours.len(), 1, "one line for the upgraded exchange: {text}");
    let line = ours[0];
    for want in [
        "\"method\":\"GET\"".to_string(),
        format!("\"target\":\"{target}\""),
        "\"status\":101".to_string(),
        format!("\"bytes_in\":{sent},"),
        format!("\"bytes_out\":{received},"),
        format!("\"upstream\":\"{}\"", origin.host()),
    ] {
        assert!(line.contains(&want), "{want} not in {line}");
    }
    let ms: f64 = line
        .split("\"duration_ms\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(ms > 0.0 && ms <= elapsed.as_secs_f64() * 1000.0 + 200.0, "duration {ms} ms for {elapsed:?}: {line}");
}
