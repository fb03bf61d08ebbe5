//! Shared harness for Sluice's end-to-end tests.
//!
//! Everything here is real: the proxy is the release/debug binary Cargo built
//! (`CARGO_BIN_EXE_sluice`), started on fresh loopback ports with its own config file;
//! the origins are small servers on `std::net` + threads that the tests start; clients
//! are raw `TcpStream`s, curl, wrk and openssl. Nothing is mocked.
//!
//! Pieces:
//! - [`Proxy`]: a guard around a running `sluice run` (killed on drop), with `/metrics`.
//! - [`Origin`]: an HTTP/1.1 keep-alive origin that counts accepts and requests and
//!   records every raw request head it received.
//! - [`EchoServer`] / [`GreetServer`]: raw TCP servers for CONNECT tunnels (half-close).
//! - [`TlsOrigin`]: `openssl s_server -www` with a per-run test CA.
//! - [`Client`], [`read_response`], [`exchange`]: a small strict HTTP/1.1 client side.
//! - [`curl`]: runs curl (optionally through the proxy) and parses what it got.
//! - [`skip`]: a test that cannot run says so (and fails in CI unless allowed: `skips`).
#![allow(dead_code)]

pub mod h2;
pub mod skips;
#[allow(unused_imports)]
pub use skips::skip;

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Trailer fields of a chunked body, in order.
pub type Trailers = Vec<(String, String)>;

/// The proxy binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

const SEQ: Ordering = Ordering::SeqCst;

// ---------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            UNIQUE.fetch_add(1, SEQ)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A loopback port that was free a moment ago (bind port 0, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port()
}

/// Polls `f` every 20 ms until it returns true or `within` passes.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Is `cmd` on PATH?
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// Deterministic payloads
// ---------------------------------------------------------------------------------------

/// Byte `i` of every test payload. Not periodic, so a lost, duplicated or reordered
/// block anywhere in a body shows up as a mismatch.
pub fn pattern_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 56) as u8) ^ (i as u8)
}

pub fn fill_pattern(offset: u64, out: &mut [u8]) {
    for (k, b) in out.iter_mut().enumerate() {
        *b = pattern_byte(offset + k as u64);
    }
}

/// The first `len` bytes of the test payload.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(0, &mut v);
    v
}

/// Writes the first `len` payload bytes to `path` (without holding them all in memory).
pub fn write_pattern_file(path: &Path, len: u64) {
    let mut f = BufWriter::new(fs::File::create(path).expect("create payload file"));
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill_pattern(off, &mut buf[..n]);
        f.write_all(&buf[..n]).expect("write payload file");
        off += n as u64;
    }
    f.flush().expect("flush payload file");
}

/// Checks that the file at `path` holds exactly the first `len` payload bytes.
pub fn check_pattern_file(path: &Path, len: u64) -> Result<(), String> {
    let mut f = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut f, &mut got).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        fill_pattern(off, &mut want[..n]);
        if let Some(i) = first_mismatch(&got[..n], &want[..n]) {
            return Err(format!("payload differs at byte {}", off + i as u64));
        }
        off += n as u64;
    }
    if off != len {
        return Err(format!("payload is {off} bytes, expected {len}"));
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Byte-for-byte equality with a readable failure (length and first differing offset,
/// never a 100 MiB dump).
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = first_mismatch(got, want).unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(16);
    panic!(
        "{what}: got {} bytes, expected {}; first difference at byte {at}\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[from..(at + 48).min(got.len())]),
        String::from_utf8_lossy(&want[from..(at + 48).min(want.len())]),
    );
}

/// A short, printable excerpt of some bytes for failure messages.
pub fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(600)]).into_owned();
    if b.len() > 600 {
        format!("{s}…({} bytes)", b.len())
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 wire helpers (shared by the origin and the test clients)
// ---------------------------------------------------------------------------------------

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A buffered reader over a stream that can hand out heads, lines and exact byte counts.
pub struct BufConn<S> {
    pub inner: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: Read> BufConn<S> {
    pub fn new(inner: S) -> Self {
        BufConn { inner, buf: Vec::with_capacity(64 * 1024), pos: 0 }
    }

    /// Bytes read from the stream but not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 256 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.inner.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one head (up to and including CRLF CRLF). `Ok(None)`: clean EOF before any
    /// byte of a head.
    pub fn read_head(&mut self, limit: usize) -> io::Result<Option<Vec<u8>>> {
        let mut searched = 0usize;
        loop {
            let avail = &self.buf[self.pos..];
            let from = searched.saturating_sub(3);
            if let Some(i) = find(&avail[from..], b"\r\n\r\n") {
                let end = from + i + 4;
                let head = avail[..end].to_vec();
                self.pos += end;
                return Ok(Some(head));
            }
            searched = avail.len();
            if avail.len() > limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
            if self.fill()? == 0 {
                if self.pos == self.buf.len() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF inside a head; got {:?}", excerpt(&self.buf[self.pos..])),
                ));
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    pub fn read_line(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = find(avail, b"\r\n") {
                let line = avail[..i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if avail.len() > limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF inside a line"));
            }
        }
    }

    pub fn read_exact_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n.min(256 << 20));
        while out.len() < n {
            if self.pos == self.buf.len() && self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} body bytes", out.len()),
                ));
            }
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(out)
    }

    /// Reads up to `n` bytes; fewer only at EOF.
    pub fn read_some(&mut self, n: usize) -> io::Result<Vec<u8>> {
        if self.pos == self.buf.len() {
            self.fill()?;
        }
        let take = n.min(self.buf.len() - self.pos);
        let out = self.buf[self.pos..self.pos + take].to_vec();
        self.pos += take;
        Ok(out)
    }

    pub fn read_to_end_vec(&mut self) -> io::Result<Vec<u8>> {
        let mut out = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        loop {
            let n = self.fill()?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
        }
    }

    /// A chunked body (strict: hex sizes, optional `;ext`, CRLF everywhere), then its
    /// trailer fields.
    pub fn read_chunked(&mut self) -> io::Result<(Vec<u8>, Trailers)> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut body = Vec::new();
        loop {
            let line = self.read_line(4096)?;
            let text = String::from_utf8_lossy(&line).into_owned();
            let size_part = text.split(';').next().unwrap_or("").trim_end();
            if size_part.is_empty() || size_part.len() > 15 || !size_part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("bad chunk size line {text:?}")));
            }
            let size = usize::from_str_radix(size_part, 16).map_err(|_| bad(format!("bad chunk size {text:?}")))?;
            if size == 0 {
                break;
            }
            let data = self.read_exact_vec(size)?;
            body.extend_from_slice(&data);
            let crlf = self.read_exact_vec(2)?;
            if crlf != b"\r\n" {
                return Err(bad(format!("chunk data not followed by CRLF: {crlf:?}")));
            }
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.read_line(16 * 1024)?;
            if line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let (n, v) = text.split_once(':').ok_or_else(|| bad(format!("bad trailer line {text:?}")))?;
            trailers.push((n.trim().to_string(), v.trim().to_string()));
        }
        Ok((body, trailers))
    }
}

/// A parsed head: the first line and the fields in order as received.
#[derive(Debug, Clone)]
pub struct Head {
    pub first_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// Whether any `name` field lists `token` (comma-separated, case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).iter().flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

pub fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header line {line:?}")))?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok(Head { first_line, headers })
}

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length,
    Chunked,
    Close,
    NoBody,
}

/// A response as the test client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub framing: Framing,
    /// Interim (1xx) statuses received before this final response.
    pub interim: Vec<u16>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn describe(&self) -> String {
        format!("{} {:?} body={:?}", self.head.first_line, self.head.headers, excerpt(&self.body))
    }
}

fn parse_status_line(line: &str) -> io::Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}")));
    }
    code.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad status {line:?}")))
}

/// Reads one final response (recording and skipping 1xx interim ones).
/// `head_request`: the request was HEAD, so the response has no body.
pub fn read_response<S: Read>(c: &mut BufConn<S>, head_request: bool) -> io::Result<Response> {
    let mut interim = Vec::new();
    loop {
        let raw = c
            .read_head(1 << 20)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response head"))?;
        let head = parse_head(&raw)?;
        let status = parse_status_line(&head.first_line)?;
        if (100..200).contains(&status) && status != 101 {
            interim.push(status);
            continue;
        }
        let (body, trailers, framing) = if head_request || status == 204 || status == 304 || status == 101 {
            (Vec::new(), Vec::new(), Framing::NoBody)
        } else if head.has_token("transfer-encoding", "chunked") {
            let (b, t) = c.read_chunked()?;
            (b, t, Framing::Chunked)
        } else if let Some(cl) = head.get("content-length") {
            let n: usize =
                cl.trim().parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad CL {cl:?}")))?;
            (c.read_exact_vec(n)?, Vec::new(), Framing::Length)
        } else {
            (c.read_to_end_vec()?, Vec::new(), Framing::Close)
        };
        return Ok(Response { status, head, body, trailers, framing, interim });
    }
}

// ---------------------------------------------------------------------------------------
// Test clients
// ---------------------------------------------------------------------------------------

/// A raw HTTP/1.1 client connection.
pub struct Client {
    pub conn: BufConn<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { conn: BufConn::new(s) }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.conn.inner
    }

    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.inner.write_all(data)
    }

    pub fn send_str(&mut self, data: &str) {
        self.send(data.as_bytes()).unwrap_or_else(|e| panic!("send {:?}: {e}", excerpt(data.as_bytes())));
    }

    pub fn try_response(&mut self, head_request: bool) -> io::Result<Response> {
        read_response(&mut self.conn, head_request)
    }

    pub fn response(&mut self) -> Response {
        self.try_response(false).unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    pub fn head_response(&mut self) -> Response {
        self.try_response(true).unwrap_or_else(|e| panic!("reading a HEAD response: {e}"))
    }

    /// `GET path` in origin-form with `Host: host`, and its response.
    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.send_str(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        self.try_response(false).unwrap_or_else(|e| panic!("GET {path}: reading the response: {e}"))
    }

    /// Waits for the peer to close. Ok(bytes received meanwhile); a reset counts as closed.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + within;
        let mut got = self.conn.buffered().to_vec();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("still open after {within:?}; received {:?}", excerpt(&got)));
            }
            self.conn.inner.set_read_timeout(Some(left)).unwrap();
            match self.conn.inner.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(got),
            }
        }
    }
}

/// Connects, writes `request` (write errors ignored: the proxy may close early), and
/// reads one response within `within`.
/// An address of this machine that is not loopback (the one it would reach the
/// internet from), for tests that need a client that is not on loopback; None on a
/// machine with only `lo`.
pub fn non_loopback_address() -> Option<std::net::IpAddr> {
    ["198.51.100.1:9", "[2001:db8::1]:9"].iter().find_map(|probe| {
        let target: SocketAddr = probe.parse().ok()?;
        let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
        let s = std::net::UdpSocket::bind(bind).ok()?;
        s.connect(target).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

pub fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> io::Result<Response> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(within))?;
    let _ = (&s).write_all(request);
    let mut c = BufConn::new(s);
    read_response(&mut c, false)
}

// ---------------------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------------------

/// A running `sluice run`, killed on drop. Logs go to files in its temp dir and are
/// printed when the test panics.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub dir: TempDir,
}

pub struct ProxyBuilder {
    config: String,
    resolve: Vec<String>,
    workers: usize,
    extra: Vec<String>,
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
    admin_ip: String,
    listen_ip: String,
}

impl ProxyBuilder {
    /// `--resolve NAME:ADDR`.
    pub fn resolve(mut self, name: &str, addr: &str) -> Self {
        self.resolve.push(format!("{name}:{addr}"));
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    /// Sets an environment variable of the proxy (`RUST_LOG` is removed unless set here,
    /// so a developer's own does not change what the tests see).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The admin listener's IP [default: 127.0.0.1], e.g. `0.0.0.0` to reach it from a
    /// non-loopback address of this machine.
    pub fn admin_ip(mut self, ip: &str) -> Self {
        self.admin_ip = ip.to_string();
        self
    }

    /// The proxy listener's IP [default: 127.0.0.1], e.g. `0.0.0.0` for clients on a
    /// non-loopback address of this machine (it still answers on 127.0.0.1).
    pub fn listen_ip(mut self, ip: &str) -> Self {
        self.listen_ip = ip.to_string();
        self
    }

    /// Starts the proxy through `command...` (which must end by exec'ing its arguments,
    /// so the proxy keeps the child's pid), e.g. `unshare --mount -- sh -c '...; exec "$@"' sh`.
    pub fn wrap(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn start(self) -> Proxy {
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = TempDir::new("proxy");
            let cfg = dir.write("sluice.toml", &self.config);
            let port = free_port();
            let admin_port = free_port();
            let stdout = fs::File::create(dir.join("stdout.log")).unwrap();
            let stderr = fs::File::create(dir.join("stderr.log")).unwrap();
            let mut cmd = match self.wrapper.split_first() {
                Some((prog, args)) => {
                    let mut c = Command::new(prog);
                    c.args(args).arg(BIN);
                    c
                }
                None => Command::new(BIN),
            };
            cmd.arg("run")
                .arg("--config")
                .arg(&cfg)
                .arg("--listen")
                .arg(format!("{}:{port}", self.listen_ip))
                .arg("--admin")
                .arg(format!("{}:{admin_port}", self.admin_ip))
                .arg("--workers")
                .arg(self.workers.to_string())
                .arg("--ca-dir")
                .arg(dir.join("ca"));
            for r in &self.resolve {
                cmd.arg("--resolve").arg(r);
            }
            cmd.env_remove("RUST_LOG");
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
            cmd.args(&self.extra).env("RUST_BACKTRACE", "1").stdin(Stdio::null()).stdout(stdout).stderr(stderr);
            let mut child = cmd.spawn().expect("spawn sluice");
            match wait_serving(&mut child, &dir, port) {
                Ok(()) => return Proxy { child, port, admin_port, dir },
                Err(port_race) => last_err = port_race,
            }
        }
        panic!("could not start sluice: {last_err}");
    }
}

/// Waits until a just-started proxy answers HTTP on `port`. `Err` (with its stderr) when
/// it exited because the port was taken meanwhile (try fresh ports); panics on any other
/// exit or after 15 s.
pub fn wait_serving(child: &mut Child, dir: &TempDir, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            let err = format!("sluice exited before listening ({status}): {log}");
            // Lost a port race (taken meanwhile, or the same free port drawn for the proxy
            // and the admin listener): try fresh ports.
            if log.to_lowercase().contains("in use") || log.contains("is also a listen address") {
                return Err(err);
            }
            panic!("{err}");
        }
        if answers_http(addr) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            panic!("sluice did not accept on {addr} within 15 s; stderr: {log}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `addr` answers an HTTP request with an HTTP response. Sent to the proxy at
/// start-up: a request without Host (a 400 that never leaves the proxy). A bare TCP
/// connect is not enough: a socket can accept during start-up and then go away.
pub fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    read_full(&mut s, &mut buf).is_ok_and(|n| n == 7 && &buf == b"HTTP/1.")
}

/// Sends `CONNECT target` on a new client connection and reads the response head only,
/// so a 200 leaves the client at the start of the tunnel.
pub fn send_connect(proxy: &Proxy, target: &str) -> (Head, Client) {
    let mut c = proxy.client();
    c.send_str(&format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    let raw = c
        .conn
        .read_head(64 * 1024)
        .unwrap_or_else(|e| panic!("CONNECT {target}: {e}"))
        .unwrap_or_else(|| panic!("CONNECT {target}: closed without a response"));
    (parse_head(&raw).expect("a response head"), c)
}

impl Proxy {
    pub fn builder(config: &str) -> ProxyBuilder {
        ProxyBuilder {
            config: config.to_string(),
            resolve: Vec::new(),
            workers: 2,
            extra: Vec::new(),
            wrapper: Vec::new(),
            env: Vec::new(),
            admin_ip: "127.0.0.1".to_string(),
            listen_ip: "127.0.0.1".to_string(),
        }
    }

    /// Starts with `config` as the TOML file, 2 workers, fresh ports.
    pub fn start(config: &str) -> Proxy {
        Proxy::builder(config).start()
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stderr_log(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    /// `GET /metrics` from the admin listener.
    pub fn metrics(&self) -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..50 {
            match self.admin_get("/metrics") {
                Ok(r) if r.status == 200 => return Ok(r.text()),
                Ok(r) => return Err(format!("GET /metrics answered {}", r.describe())),
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!("admin listener 127.0.0.1:{} unreachable: {last}", self.admin_port))
    }

    /// `/debug/connections`: a header line, then one line per live client connection
    /// (worker, id, client, target, protocol, state, age, bytes), for a failure message
    /// that says where connections are stuck.
    pub fn connections_view(&self) -> String {
        match self.admin_get("/debug/connections") {
            Ok(r) if r.status == 200 => r.text(),
            Ok(r) => format!("(GET /debug/connections answered {})", r.describe()),
            Err(e) => format!("(no /debug/connections: {e})"),
        }
    }

    /// One `GET path` to the admin listener (127.0.0.1), on a connection of its own.
    fn admin_get(&self, path: &str) -> io::Result<Response> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.admin_port).into();
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        exchange(addr, request.as_bytes(), Duration::from_secs(5))
    }

    /// The sum of every sample of metric family `family` (all label sets).
    pub fn metric(&self, family: &str) -> Result<f64, String> {
        let text = self.metrics()?;
        metric_sum(&text, family)
            .ok_or_else(|| format!("no `{family}` sample in /metrics:\n{}", &text[..text.len().min(3000)]))
    }

    /// Polls `family` until `pred` holds; Err(last value / error) after `within`.
    /// The sum of `family`'s samples whose labels include every one of `labels` (each
    /// written as in the exposition, `name="value"`).
    pub fn metric_labelled(&self, family: &str, labels: &[&str]) -> f64 {
        let text = self.metrics().unwrap_or_else(|e| panic!("{e}"));
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn wait_metric(&self, family: &str, within: Duration, pred: impl Fn(f64) -> bool) -> Result<f64, String> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.metric(family);
            if let Ok(x) = v {
                if pred(x) {
                    return Ok(x);
                }
            }
            if Instant::now() >= deadline {
                return Err(match v {
                    Ok(x) => format!("{family} is still {x} after {within:?}"),
                    Err(e) => e,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The proxy answers a plain GET through it (used after abuse to show it survived).
    pub fn assert_serves(&mut self, origin: &Origin) {
        for i in 0..4 {
            let r = exchange(
                self.addr(),
                format!("GET /bytes/{n} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", origin.host(), n = 100 + i)
                    .as_bytes(),
                Duration::from_secs(10),
            );
            match r {
                Ok(r) if r.status == 200 => assert_bytes_eq(&r.body, &pattern(100 + i), "body"),
                Ok(r) => panic!("proxy no longer serves: {}", r.describe()),
                Err(e) => panic!("proxy no longer serves: {e}; alive={}; stderr: {}", self.alive(), self.stderr_log()),
            }
        }
    }
}

/// What a proxy holds with no client connected: the yardstick for "everything a client
/// used was released" (see [`Proxy::assert_released`]).
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// Descriptors the proxy process holds (listeners, rings, pipes, log files).
    pub fds: usize,
}

impl Proxy {
    /// Descriptors the proxy process holds now, from `/proc/PID/fd`.
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(usize::MAX)
    }

    /// What the proxy's descriptors point at (sockets, pipes, files), for failure messages.
    pub fn fd_targets(&self) -> Vec<String> {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.flatten().filter_map(|e| fs::read_link(e.path()).ok()).map(|p| p.display().to_string()).collect()
            })
            .unwrap_or_default()
    }

    /// Client connection slots not yet freed (`sluice_connection_slots`): it drops only
    /// when the kernel has completed a connection's last operation and its descriptors
    /// are closed, unlike `sluice_connections_active`, which drops when closing starts.
    pub fn slots(&self) -> f64 {
        self.metric("sluice_connection_slots").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits (up to 10 s) until the proxy has freed every client slot: it is done with
    /// every client, so whatever it forwarded for them has been written.
    pub fn wait_no_clients(&self, what: &str) {
        let ok = wait_until(Duration::from_secs(10), || self.slots() == 0.0);
        assert!(ok, "{what}: {} client slot(s) still live", self.slots());
    }

    /// Waits (up to 10 s) until every worker runs its loop: each has published its ring
    /// counters (`sluice_ring_submissions_total{worker=..}` > 0), which it does only after
    /// opening its ring and resolver pipe. The proxy answers as soon as one worker is up,
    /// and under load the last one can open its descriptors well after that.
    pub fn wait_workers_started(&self) {
        let mut seen = Vec::new();
        let ok = wait_until(Duration::from_secs(10), || {
            let text = self.metrics().unwrap_or_else(|e| panic!("{e}"));
            seen = text
                .lines()
                .filter(|l| l.starts_with("sluice_ring_submissions_total{"))
                .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                .collect();
            !seen.is_empty() && seen.iter().all(|&v| v > 0.0)
        });
        assert!(ok, "not every worker started within 10 s: ring submissions per worker {seen:?}");
    }

    /// The baseline once start-up has settled: no client slot, and a descriptor count
    /// that stays the same over a few readings (workers start in parallel, so the first
    /// answer can come before the last worker opened its ring and pipes).
    pub fn baseline(&self) -> Baseline {
        self.wait_workers_started();
        let ok = wait_until(Duration::from_secs(5), || self.slots() == 0.0);
        assert!(ok, "a fresh proxy has client slots: {}", self.slots());
        let mut last = self.open_fds();
        let mut stable = 0;
        for _ in 0..100 {
            thread::sleep(Duration::from_millis(50));
            let now = self.open_fds();
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
            if stable >= 4 {
                break;
            }
        }
        Baseline { fds: last }
    }

    /// Waits (up to 10 s) until every client slot is freed and the proxy holds no more
    /// descriptors than at `base` plus its idle upstream connections; panics with what it
    /// holds otherwise. `what` says what was just released.
    pub fn assert_released(&self, base: &Baseline, what: &str) {
        let mut seen = (0.0, 0usize, 0.0);
        let ok = wait_until(Duration::from_secs(10), || {
            // Descriptors first: the admin connection of a scrape that just returned can
            // still be open in the proxy for a millisecond or two (it closes after the
            // client has its answer), and counted after the scrapes below it would be one
            // too many on most rounds. The previous round's scrapes are 20 ms old here.
            let fds = self.open_fds();
            let text = self.metrics().unwrap_or_else(|e| panic!("{e}"));
            let slots = metric_sum(&text, "sluice_connection_slots").expect("sluice_connection_slots in /metrics");
            let idle = metric_sum(&text, "sluice_upstream_pool_idle").unwrap_or(0.0);
            seen = (slots, fds, idle);
            slots == 0.0 && fds <= base.fds + idle as usize
        });
        assert!(
            ok,
            "{what}: not released: {} client slots still live; the proxy holds {} descriptors, {} at the \
             baseline plus {} idle upstream connections; it holds {:?}",
            seen.0,
            seen.1,
            base.fds,
            seen.2,
            self.fd_targets()
        );
    }
}

/// Sums every sample of `family` in Prometheus text (exact family name, any labels).
pub fn metric_sum(text: &str, family: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if &line[..name_end] != family {
            continue;
        }
        let rest = if line[name_end..].starts_with('{') {
            match line[name_end..].find('}') {
                Some(i) => &line[name_end + i + 1..],
                None => continue,
            }
        } else {
            &line[name_end..]
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.stderr_log();
            let tail: String = log.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("---- sluice stderr (tail) ----\n{tail}\n------------------------------");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Servers the tests start
// ---------------------------------------------------------------------------------------

/// A listener with the accept queue a real origin has (4096, as Sluice's own; the kernel
/// caps it at `net.core.somaxconn`), not std's 128: a crowd of clients makes the proxy
/// dial hundreds of origin connections at once, and SYNs past a full queue are dropped
/// and sent again 1, 3 and 7 s later (the kernel's `ListenOverflows`: about 2,000 in one
/// run of `tests/load.rs` with std's queue), so a loaded machine finished those exchanges
/// long after their clients had left.
fn listen_deep(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Accept loop on its own thread; one thread per connection; stopped on drop of the
/// owning server (flag + a wake-up connect).
fn spawn_acceptor(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    accepts: Arc<AtomicUsize>,
    handler: Arc<dyn Fn(TcpStream) + Send + Sync>,
) {
    thread::Builder::new()
        .name("test-acceptor".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop.load(SEQ) {
                    return;
                }
                let Ok(conn) = conn else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                accepts.fetch_add(1, SEQ);
                let h = handler.clone();
                let _ = thread::Builder::new().stack_size(256 * 1024).spawn(move || h(conn));
            }
        })
        .expect("spawn acceptor");
}

fn stop_acceptor(stop: &AtomicBool, addr: SocketAddr) {
    stop.store(true, SEQ);
    let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
}

struct CountGuard(Arc<AtomicUsize>);

impl CountGuard {
    fn new(c: &Arc<AtomicUsize>) -> Self {
        c.fetch_add(1, SEQ);
        CountGuard(c.clone())
    }
}

/// Increments its counter when dropped (a connection handler ended, however it ended).
struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, SEQ);
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SEQ);
    }
}

/// What the origin shares with the test.
pub struct OriginState {
    /// TCP connections accepted.
    pub accepts: Arc<AtomicUsize>,
    /// Request heads received.
    pub requests: Arc<AtomicUsize>,
    /// Requests whose body was received completely (the origin acted on them).
    pub complete: Arc<AtomicUsize>,
    /// Connections open right now.
    pub open: Arc<AtomicUsize>,
    /// Every raw request head received, in arrival order.
    pub heads: Mutex<Vec<String>>,
    /// Close a keep-alive connection after this long without a new request.
    idle_close: Option<Duration>,
}

/// An HTTP/1.1 origin server (keep-alive) for the tests. Endpoints:
///
/// - `/bytes/N`: N payload bytes ([`pattern`]) with Content-Length.
/// - `/chunked/N`: N payload bytes chunked (varied chunk sizes), trailer
///   `x-trailer: done`.
/// - `/echo`: the request body back (Content-Length), plus `x-seen-host`, `x-seen-via`,
///   `x-seen-method`, `x-seen-target`, `x-seen-framing` (length|chunked|none),
///   `x-seen-content-length`, `x-seen-expect`, `x-seen-trailers`.
/// - `/headers`: the request's header lines as received (one per line).
/// - `/slow/MS`: waits MS milliseconds, then answers `slow`.
/// - `/silent`: reads the request and never answers (waits for EOF).
/// - `/close` or `/close/N`: N (default 10000) payload bytes delimited by closing.
/// - `/abrupt/N`: N bytes with Content-Length, then closes without saying so.
/// - `/status/N`: status N (`status N\n`, no body for 204/304).
/// - `/early-hints`: a `103` interim response, then `200 hinted`.
/// - `/hop-response`: a response carrying hop-by-hop fields (`Connection: X-Secret`,
///   `X-Secret`, `Keep-Alive`, `Proxy-Connection`) and `X-Public: 1`.
/// - `/reject-early`: answers `401 denied` (Connection: close) on the head alone, without
///   waiting for the body; then drains whatever body comes and closes.
/// - `/not-modified-with-length`: a 304 with `Content-Length: 1234` (and no body).
/// - `/bigheader/N`: a 200 whose head carries an N-byte header field.
/// - `/garbage`: answers bytes that are not HTTP, then closes.
/// - `/hangup`: reads the request and closes without a byte of response.
/// - `/hangup-if-reused`: `200 fresh` as the first request of a connection; as a later
///   one, closes without a byte of response (a keep-alive connection that went bad).
/// - `/bad-framing`: a response with both Content-Length and Transfer-Encoding.
/// - `/stall/N`: a head announcing 2N bytes, N of them, then silence (until EOF).
/// - `/drip/N/MS`: a head announcing N bytes, then one byte every MS milliseconds.
pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    pub fn start() -> Origin {
        Origin::start_with(None)
    }

    /// An origin that closes keep-alive connections idle for `idle` (to test that the
    /// proxy's pool notices connections the origin closed).
    pub fn start_with_idle_close(idle: Duration) -> Origin {
        Origin::start_with(Some(idle))
    }

    /// An origin listening on `addr` (another loopback address such as `127.0.0.2:0`, or
    /// a given port); [`Origin::host`] and [`Origin::url`] name that address.
    pub fn start_on(addr: SocketAddr) -> Origin {
        Origin::start_bound(addr, None)
    }

    fn start_with(idle_close: Option<Duration>) -> Origin {
        Origin::start_bound(([127, 0, 0, 1], 0).into(), idle_close)
    }

    fn start_bound(bind: SocketAddr, idle_close: Option<Duration>) -> Origin {
        let listener = listen_deep(bind).unwrap_or_else(|e| panic!("bind origin on {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState {
            accepts: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(AtomicUsize::new(0)),
            complete: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(AtomicUsize::new(0)),
            heads: Mutex::new(Vec::new()),
            idle_close,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let st = state.clone();
        spawn_acceptor(listener, stop.clone(), state.accepts.clone(), Arc::new(move |s| origin_conn(s, st.clone())));
        Origin { addr, state, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `IP:PORT` it listens on (`127.0.0.1:PORT` unless started with [`Origin::start_on`]),
    /// for Host headers and URLs.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn accepts(&self) -> usize {
        self.state.accepts.load(SEQ)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(SEQ)
    }

    pub fn complete(&self) -> usize {
        self.state.complete.load(SEQ)
    }

    pub fn open(&self) -> usize {
        self.state.open.load(SEQ)
    }

    pub fn heads(&self) -> Vec<String> {
        self.state.heads.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) until every connection the origin accepted has been handled to
    /// its end, so its counters and heads are final; panics otherwise.
    pub fn wait_all_closed(&self, what: &str) {
        let ok = wait_until(Duration::from_secs(5), || self.open() == 0);
        assert!(ok, "{what}: the origin still has {} connection(s) open; it saw {:?}", self.open(), self.heads());
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        stop_acceptor(&self.stop, self.addr);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        103 => "Early Hints",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        417 => "Expectation Failed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a whole response with Content-Length (none for 204/304).
fn respond(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if status != 204 && status != 304 {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && status != 204 && status != 304 {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

pub fn write_pattern_stream(w: &mut impl Write, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        fill_pattern(off, &mut buf[..n]);
        w.write_all(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

fn origin_conn(stream: TcpStream, st: Arc<OriginState>) {
    let _open = CountGuard::new(&st.open);
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut w = BufWriter::with_capacity(64 * 1024, write_half);
    let mut c = BufConn::new(stream);
    let long = Duration::from_secs(120);
    let mut nth = 0usize; // requests on this connection so far
    loop {
        let _ = c.inner.set_read_timeout(Some(st.idle_close.unwrap_or(long)));
        let raw = match c.read_head(1 << 20) {
            Ok(Some(r)) => r,
            _ => return,
        };
        let _ = c.inner.set_read_timeout(Some(long));
        st.requests.fetch_add(1, SEQ);
        nth += 1;
        st.heads.lock().unwrap().push(String::from_utf8_lossy(&raw).into_owned());
        let Ok(head) = parse_head(&raw) else { return };
        let mut parts = head.first_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        if head.get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && (w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() || w.flush().is_err())
        {
            return;
        }
        if target.ends_with("/reject-early") {
            st.complete.fetch_add(1, SEQ);
            let _ = respond(&mut w, 401, &[], b"denied\n", false, true);
            let _ = c.inner.shutdown(Shutdown::Write);
            let _ = c.inner.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = c.read_to_end_vec();
            return;
        }
        let (body, trailers, framing) = if head.get("transfer-encoding").is_some() {
            if !head.has_token("transfer-encoding", "chunked") {
                return;
            }
            match c.read_chunked() {
                Ok((b, t)) => (b, t, "chunked"),
                Err(_) => return,
            }
        } else if let Some(cl) = head.get("content-length") {
            let Ok(n) = cl.parse::<usize>() else { return };
            match c.read_exact_vec(n) {
                Ok(b) => (b, Vec::new(), "length"),
                Err(_) => return,
            }
        } else {
            (Vec::new(), Vec::new(), "none")
        };
        st.complete.fetch_add(1, SEQ);
        let close = head.has_token("connection", "close")
            || (version == "HTTP/1.0" && !head.has_token("connection", "keep-alive"));
        let head_only = method == "HEAD";
        // Tolerate absolute-form here (the tests assert on the recorded heads instead).
        let path_q = match target.strip_prefix("http://") {
            Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/").to_string(),
            None => target.clone(),
        };
        let path = path_q.split('?').next().unwrap_or("").to_string();
        let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let arg = |i: usize| seg.get(i).and_then(|s| s.parse::<u64>().ok());
        let res: io::Result<bool> = (|| match seg[0] {
            "bytes" => {
                let n = arg(1).unwrap_or(0);
                let mut h = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n");
                h.push_str("Content-Type: application/octet-stream\r\n");
                if close {
                    h.push_str("Connection: close\r\n");
                }
                h.push_str("\r\n");
                w.write_all(h.as_bytes())?;
                if !head_only {
                    write_pattern_stream(&mut w, n)?;
                }
                w.flush()?;
                Ok(!close)
            }
            "chunked" => {
                let n = arg(1).unwrap_or(0) as usize;
                let mut h = String::from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n");
                h.push_str("Trailer: x-trailer\r\n");
                if close {
                    h.push_str("Connection: close\r\n");
                }
                h.push_str("\r\n");
                w.write_all(h.as_bytes())?;
                if !head_only {
                    let data = pattern(n);
                    let sizes = [1usize, 10, 100, 1000, 4096, 16384, 65536, 7, 300000];
                    let mut off = 0;
                    let mut k = 0;
                    while off < n {
                        let len = sizes[k % sizes.len()].min(n - off);
                        k += 1;
                        w.write_all(format!("{len:x}\r\n").as_bytes())?;
                        w.write_all(&data[off..off + len])?;
                        w.write_all(b"\r\n")?;
                        off += len;
                        if k % 3 == 0 {
                            w.flush()?;
                        }
                    }
                    w.write_all(b"0\r\nx-trailer: done\r\n\r\n")?;
                }
                w.flush()?;
                Ok(!close)
            }
            "echo" => {
                let seen = |n: &str| head.get_all(n).join(", ");
                let tr: Vec<String> = trailers.iter().map(|(n, v)| format!("{n}={v}")).collect();
                let hs = [
                    ("x-seen-host", seen("host")),
                    ("x-seen-via", seen("via")),
                    ("x-seen-method", method.clone()),
                    ("x-seen-target", target.clone()),
                    ("x-seen-framing", framing.to_string()),
                    ("x-seen-content-length", seen("content-length")),
                    ("x-seen-transfer-encoding", seen("transfer-encoding")),
                    ("x-seen-expect", seen("expect")),
                    ("x-seen-trailers", tr.join(",")),
                ];
                respond(&mut w, 200, &hs, &body, head_only, close)?;
                Ok(!close)
            }
            "headers" => {
                let text: String = head.headers.iter().map(|(n, v)| format!("{n}: {v}\n")).collect();
                respond(&mut w, 200, &[], text.as_bytes(), head_only, close)?;
                Ok(!close)
            }
            "slow" => {
                thread::sleep(Duration::from_millis(arg(1).unwrap_or(1000)));
                respond(&mut w, 200, &[], b"slow", head_only, close)?;
                Ok(!close)
            }
            "silent" => {
                let _ = c.read_to_end_vec();
                Ok(false)
            }
            "close" => {
                let n = arg(1).unwrap_or(10000);
                w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
                if !head_only {
                    write_pattern_stream(&mut w, n)?;
                }
                w.flush()?;
                Ok(false)
            }
            "abrupt" => {
                let n = arg(1).unwrap_or(100) as usize;
                respond(&mut w, 200, &[], &pattern(n), head_only, false)?;
                Ok(false)
            }
            "status" => {
                let code = arg(1).unwrap_or(200) as u16;
                respond(&mut w, code, &[], format!("status {code}\n").as_bytes(), head_only, close)?;
                Ok(!close)
            }
            "early-hints" => {
                w.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")?;
                w.flush()?;
                thread::sleep(Duration::from_millis(50));
                respond(&mut w, 200, &[], b"hinted", head_only, close)?;
                Ok(!close)
            }
            "hop-response" => {
                let hs = [
                    ("Connection", "X-Secret".to_string()),
                    ("X-Secret", "1".to_string()),
                    ("Keep-Alive", "timeout=5, max=100".to_string()),
                    ("Proxy-Connection", "keep-alive".to_string()),
                    ("X-Public", "1".to_string()),
                ];
                respond(&mut w, 200, &hs, b"hop", head_only, close)?;
                Ok(!close)
            }
            "bigheader" => {
                let n = arg(1).unwrap_or(100_000) as usize;
                respond(&mut w, 200, &[("X-Big", "h".repeat(n))], b"big", head_only, close)?;
                Ok(!close)
            }
            "garbage" => {
                w.write_all(b"SSH-2.0-OpenSSH_9.2 this is not HTTP\r\n\r\n")?;
                w.flush()?;
                Ok(false)
            }
            "hangup" => Ok(false),
            "hangup-if-reused" if nth > 1 => Ok(false),
            "hangup-if-reused" => {
                respond(&mut w, 200, &[], b"fresh", head_only, close)?;
                Ok(!close)
            }
            "not-modified-with-length" => {
                w.write_all(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n")?;
                w.flush()?;
                Ok(!close)
            }
            "bad-framing" => {
                w.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5\r\nhello\r\n0\r\n\r\n",
                )?;
                w.flush()?;
                Ok(false)
            }
            "stall" => {
                let n = arg(1).unwrap_or(1000);
                w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 2 * n).as_bytes())?;
                write_pattern_stream(&mut w, n)?;
                w.flush()?;
                let _ = c.read_to_end_vec();
                Ok(false)
            }
            "drip" => {
                let n = arg(1).unwrap_or(10);
                let ms = arg(2).unwrap_or(100);
                w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())?;
                w.flush()?;
                for i in 0..n {
                    thread::sleep(Duration::from_millis(ms));
                    w.write_all(&[pattern_byte(i)])?;
                    w.flush()?;
                }
                Ok(!close)
            }
            "" => {
                // The root, as a conformance suite asks for it (any method).
                respond(&mut w, 200, &[], b"sluice test origin\n", head_only, close)?;
                Ok(!close)
            }
            _ => {
                respond(&mut w, 404, &[], b"no such endpoint\n", head_only, close)?;
                Ok(!close)
            }
        })();
        match res {
            Ok(true) => {}
            _ => {
                let _ = w.flush();
                let _ = c.inner.shutdown(Shutdown::Write);
                // Drain briefly so a close with unread bytes does not turn into a reset.
                let _ = c.inner.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = c.read_some(1 << 16);
                return;
            }
        }
    }
}

/// A raw TCP echo server: echoes until EOF, then shuts down its write side.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    /// Bytes echoed so far, all connections.
    pub echoed: Arc<AtomicU64>,
    /// Connections that saw EOF from the client and closed cleanly.
    pub finished: Arc<AtomicUsize>,
    /// Connections that ended for any reason (EOF, reset, error).
    pub closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let echoed = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, f, cl) = (echoed.clone(), finished.clone(), closed.clone());
        spawn_acceptor(
            listener,
            stop.clone(),
            accepts.clone(),
            Arc::new(move |mut s: TcpStream| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                let _closed = CountOnDrop(cl.clone());
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            let _ = s.shutdown(Shutdown::Write);
                            f.fetch_add(1, SEQ);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                            e.fetch_add(n as u64, SEQ);
                        }
                        Err(ref x) if x.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            }),
        );
        EchoServer { addr, accepts, echoed, finished, closed, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        stop_acceptor(&self.stop, self.addr);
    }
}

/// A raw TCP server that speaks first: sends `greeting` payload bytes, shuts down its
/// write side, then reads until the client's EOF (counting what it received).
pub struct GreetServer {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    pub received: Arc<AtomicU64>,
    /// Connections that got the client's EOF after the greeting.
    pub finished: Arc<AtomicUsize>,
    /// Connections whose read side ended for any reason (EOF or reset).
    pub closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl GreetServer {
    pub fn start(greeting: u64) -> GreetServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind greet");
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, f, cl) = (received.clone(), finished.clone(), closed.clone());
        spawn_acceptor(
            listener,
            stop.clone(),
            accepts.clone(),
            Arc::new(move |mut s: TcpStream| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                let _closed = CountOnDrop(cl.clone());
                let reader = match s.try_clone() {
                    Ok(x) => x,
                    Err(_) => return,
                };
                let r2 = r.clone();
                let f2 = f.clone();
                // Read concurrently so neither side's buffers can deadlock the transfer.
                let rd = thread::spawn(move || {
                    let mut reader = reader;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) => {
                                f2.fetch_add(1, SEQ);
                                return;
                            }
                            Ok(n) => {
                                r2.fetch_add(n as u64, SEQ);
                            }
                            Err(ref x) if x.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return,
                        }
                    }
                });
                if write_pattern_stream(&mut s, greeting).is_ok() {
                    let _ = s.shutdown(Shutdown::Write);
                }
                let _ = rd.join();
            }),
        );
        GreetServer { addr, accepts, received, finished, closed, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for GreetServer {
    fn drop(&mut self) {
        stop_acceptor(&self.stop, self.addr);
    }
}

// ---------------------------------------------------------------------------------------
// TLS: a per-run test CA and an openssl s_server origin
// ---------------------------------------------------------------------------------------

fn openssl(args: &[&str], cwd: &Path) {
    let out = Command::new("openssl").args(args).current_dir(cwd).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test CA and one leaf certificate for `name`, made with openssl in `dir`.
/// Returns (ca.pem, leaf.pem, leaf.key).
pub fn make_test_pki(dir: &TempDir, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Sluice Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            &format!("/CN={name}"),
        ],
        d,
    );
    fs::write(
        d.join("leaf.ext"),
        format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
        d,
    );
    (d.join("ca.pem"), d.join("leaf.pem"), d.join("leaf.key"))
}

/// `openssl s_server -www` on a free loopback port, serving a certificate for `name`
/// signed by a test CA made for this run. Killed on drop.
pub struct TlsOrigin {
    child: Child,
    pub port: u16,
    pub ca_pem: PathBuf,
    pub name: String,
    _dir: TempDir,
}

impl TlsOrigin {
    pub fn start(name: &str) -> TlsOrigin {
        let dir = TempDir::new("tls");
        let (ca_pem, leaf, key) = make_test_pki(&dir, name);
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("openssl")
                .arg("s_server")
                .arg("-www")
                .arg("-quiet")
                .arg("-accept")
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&leaf)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn openssl s_server");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let ok = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if ok && matches!(child.try_wait(), Ok(None)) {
                return TlsOrigin { child, port, ca_pem, name: name.to_string(), _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

/// What a curl run produced.
#[derive(Debug)]
pub struct CurlOut {
    /// curl's exit code (0 = transfer fine; 28 = timeout; 52 = empty reply...).
    pub exit: i32,
    /// `%{http_code}` (0 when no response).
    pub status: u16,
    /// Fields of the final response head.
    pub headers: Vec<(String, String)>,
    /// Everything curl wrote with `-D` (all heads, trailers included).
    pub header_dump: String,
    pub body: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CurlOut {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn describe(&self) -> String {
        format!(
            "curl exit {} status {} after {:?}; stderr {:?}; headers {:?}; body {:?}",
            self.exit,
            self.status,
            self.elapsed,
            self.stderr.trim(),
            self.headers,
            excerpt(&self.body)
        )
    }

    /// Panics unless curl succeeded and the final status is `status`.
    pub fn expect_status(&self, status: u16) -> &Self {
        assert!(self.exit == 0 && self.status == status, "expected status {status}: {}", self.describe());
        self
    }
}

/// Runs `curl -sS --max-time 30 [-x proxy] ARGS`. The body is read into memory unless
/// `body_to` names a file to write it to.
pub fn curl_opts(proxy: Option<&Proxy>, args: &[&str], body_to: Option<&Path>) -> CurlOut {
    let dir = TempDir::new("curl");
    let hdr = dir.join("headers");
    let body_file = body_to.map(|p| p.to_path_buf()).unwrap_or_else(|| dir.join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30"]);
    if let Some(p) = proxy {
        cmd.arg("-x").arg(p.url());
    }
    cmd.arg("-D").arg(&hdr).arg("-o").arg(&body_file).args(["-w", "%{http_code}"]).args(args).stdin(Stdio::null());
    let t0 = Instant::now();
    let out = cmd.output().expect("run curl (is it installed?)");
    let elapsed = t0.elapsed();
    let header_dump = fs::read_to_string(&hdr).unwrap_or_default();
    // The final response head is the last block that starts with a status line.
    let mut headers = Vec::new();
    for block in header_dump.split("\r\n\r\n") {
        let block = block.trim_start_matches("\r\n");
        if block.starts_with("HTTP/") {
            headers = block
                .split("\r\n")
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
        }
    }
    let body = if body_to.is_some() { Vec::new() } else { fs::read(&body_file).unwrap_or_default() };
    CurlOut {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0),
        headers,
        header_dump,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    }
}

/// `curl -sS --max-time 30 [-x proxy] ARGS`, body in memory.
pub fn curl(proxy: Option<&Proxy>, args: &[&str]) -> CurlOut {
    curl_opts(proxy, args, None)
}
