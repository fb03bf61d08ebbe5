//! HTTP/2 test helpers: the python probe (`h2probe.py` beside this file) run and its
//! output parsed, and [`TlsFront`], a TLS terminator on `IP:443` in front of a plain
//! [`super::Origin`] so interception tests get every endpoint of the test origin.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::{make_test_pki, wait_until, TempDir};

/// The probe script.
pub const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/h2probe.py");

/// Whether `python3` can import `h2` (installed by `.ci/setup`).
pub fn have_python_h2() -> bool {
    Command::new("python3")
        .args(["-c", "import h2.connection, hyperframe, hpack"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One `stream ...` line of the probe.
#[derive(Debug, Clone, Default)]
pub struct StreamLine {
    pub idx: usize,
    pub sid: u32,
    pub status: u16,
    pub bytes: u64,
    pub ended: bool,
    /// RST_STREAM code received, if any.
    pub reset: Option<u32>,
    /// 1xx statuses received before the final one.
    pub interim: Vec<u16>,
    pub trailers: Vec<(String, String)>,
    /// Response fields (only with `--headers`).
    pub headers: Vec<(String, String)>,
}

impl StreamLine {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a probe run printed.
#[derive(Debug)]
pub struct ProbeOut {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ProbeOut {
    pub fn describe(&self) -> String {
        format!("probe exit {}\nstdout:\n{}\nstderr:\n{}", self.exit, self.stdout, self.stderr)
    }

    /// The rest of the first line that starts with `word ` (or is `word`).
    pub fn line(&self, word: &str) -> Option<&str> {
        self.stdout.lines().find_map(|l| {
            if l == word {
                Some("")
            } else {
                l.strip_prefix(word).and_then(|r| r.strip_prefix(' '))
            }
        })
    }

    /// `key=value` of the first line starting with `word`.
    pub fn field(&self, word: &str, key: &str) -> Option<String> {
        let rest = self.line(word)?;
        rest.split_whitespace().find_map(|t| t.strip_prefix(key).and_then(|v| v.strip_prefix('=')).map(String::from))
    }

    /// The GOAWAY the probe received: (error code, last stream id).
    pub fn goaway(&self) -> Option<(u32, u32)> {
        Some((self.field("goaway", "code")?.parse().ok()?, self.field("goaway", "last")?.parse().ok()?))
    }

    pub fn streams(&self) -> Vec<StreamLine> {
        let mut out: Vec<StreamLine> = Vec::new();
        for l in self.stdout.lines() {
            if let Some(rest) = l.strip_prefix("stream ") {
                let mut it = rest.split_whitespace();
                let mut s = StreamLine {
                    idx: it.next().and_then(|x| x.parse().ok()).unwrap_or(usize::MAX),
                    ..Default::default()
                };
                for tok in it {
                    let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
                    match k {
                        "sid" => s.sid = v.parse().unwrap_or(0),
                        "status" => s.status = v.parse().unwrap_or(0),
                        "bytes" => s.bytes = v.parse().unwrap_or(0),
                        "end" => s.ended = v == "1",
                        "reset" => s.reset = v.parse().ok(),
                        "interim" => s.interim = v.split(',').filter_map(|x| x.parse().ok()).collect(),
                        "trailers" => {
                            s.trailers = v
                                .split(';')
                                .filter(|t| !t.is_empty())
                                .filter_map(|t| t.split_once(':'))
                                .map(|(n, v)| (n.to_string(), v.to_string()))
                                .collect()
                        }
                        _ => {}
                    }
                }
                out.push(s);
            } else if let Some(rest) = l.strip_prefix("header ") {
                let (idx, field) = rest.split_once(' ').unwrap_or((rest, ""));
                let (n, v) = field.split_once(": ").unwrap_or((field, ""));
                if let Some(s) = idx.parse::<usize>().ok().and_then(|i| out.iter_mut().find(|s| s.idx == i)) {
                    s.headers.push((n.to_string(), v.to_string()));
                } else if let Ok(i) = idx.parse::<usize>() {
                    // Header lines follow their stream line; keep them even if not.
                    out.push(StreamLine {
                        idx: i,
                        headers: vec![(n.to_string(), v.to_string())],
                        ..Default::default()
                    });
                }
            }
        }
        out
    }
}

/// Runs `python3 h2probe.py ARGS` to its end.
pub fn probe(args: &[&str]) -> ProbeOut {
    let out =
        Command::new("python3").arg(PROBE).args(args).stdin(Stdio::null()).output().expect("run python3 h2probe.py");
    ProbeOut {
        exit: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A probe running in the background (e.g. `steady`): its stdout lines arrive on a
/// channel; closing its stdin ([`Background::finish`]) tells a `steady` probe to stop.
pub struct Background {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    pub fn start(args: &[&str]) -> Background {
        Background::start_script(PROBE, args)
    }

    /// Another python3 script (e.g. a server that prints `ready`) run the same way.
    pub fn start_script(script: &str, args: &[&str]) -> Background {
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3 h2probe.py");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("probe stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Background { child, stdin, lines, seen: Vec::new() }
    }

    /// Waits up to `within` for a stdout line starting with `word`.
    pub fn wait_line(&mut self, word: &str, within: Duration) -> Result<String, String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.starts_with(word)) {
                return Ok(l.clone());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return Err(format!("no `{word}` line within {within:?}; saw {:?}", self.seen)),
            }
        }
    }

    /// Closes its stdin and collects everything it printed until it exits.
    pub fn finish(mut self, within: Duration) -> ProbeOut {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
        let exited = wait_until(within, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = self.child.kill();
        }
        let status = self.child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(l);
        }
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        ProbeOut { exit: if exited { status } else { -9 }, stdout: self.seen.join("\n") + "\n", stderr }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A TLS front for the plain test origin
// ---------------------------------------------------------------------------------------

/// A byte relay with TLS on one side. `server IP CERT KEY BACKEND`: a TLS listener on
/// IP:443 (ALPN http/1.1) relaying to a plain BACKEND. `client IP CA NAME BACKEND`: a
/// plain listener on IP:443 relaying to a TLS BACKEND (server name NAME verified against
/// CA, ALPN h2). Half-closes cross over.
const FRONT_PY: &str = r#"
import select, socket, ssl, sys, threading
mode, ip, a, b, backend = sys.argv[1:6]
bhost, bport = backend.rsplit(":", 1)
if mode == "server":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a, b)
    ctx.set_alpn_protocols(["http/1.1"])
else:
    ctx = ssl.create_default_context(cafile=a)
    ctx.set_alpn_protocols(["h2"])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((ip, 443))
ls.listen(256)

def relay(c):
    try:
        c.settimeout(30)
        if mode == "server":
            t = ctx.wrap_socket(c, server_side=True)
            b = socket.create_connection((bhost, int(bport)), timeout=30)
        else:
            t = ctx.wrap_socket(socket.create_connection((bhost, int(bport)), timeout=30), server_hostname=sys.argv[4])
            b = c
    except Exception:
        c.close()
        return
    t.setblocking(False)
    b.setblocking(False)
    to_b, to_t = bytearray(), bytearray()
    t_eof = b_eof = b_shut = False
    try:
        while True:
            if t_eof and not to_b and not b_shut:
                b.shutdown(socket.SHUT_WR)
                b_shut = True
            if b_eof and not to_t:
                break
            r = []
            if not t_eof and len(to_b) < (1 << 20):
                r.append(t)
            if not b_eof and len(to_t) < (1 << 20):
                r.append(b)
            w = ([b] if to_b else []) + ([t] if to_t else [])
            if t in r and t.pending():
                rr, ww = [t], []
            else:
                rr, ww, _ = select.select(r, w, [], 120)
                if not rr and not ww:
                    break
            if t in rr:
                try:
                    d = t.recv(65536)
                    if d:
                        to_b += d
                    else:
                        t_eof = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except (ssl.SSLError, OSError):
                    t_eof = True
            if b in rr:
                d = b.recv(65536)
                if d:
                    to_t += d
                else:
                    b_eof = True
            if b in ww and to_b:
                n = b.send(to_b)
                del to_b[:n]
            if t in ww and to_t:
                try:
                    n = t.send(to_t[:65536])
                    del to_t[:n]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
    except OSError:
        pass
    for s in (t, b):
        try:
            s.close()
        except OSError:
            pass

while True:
    c, _ = ls.accept()
    threading.Thread(target=relay, args=(c,), daemon=True).start()
"#;

static NEXT_FRONT_IP: AtomicUsize = AtomicUsize::new(0);

/// A loopback address for one front: 127.78.(pid-based).(counter), distinct per test
/// process and per front within it (tls.rs uses 127.77.x.y).
fn fresh_front_ip() -> String {
    let n = NEXT_FRONT_IP.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() as usize;
    format!("127.78.{}.{}", (pid + n / 250) % 250 + 1, n % 250 + 2)
}

/// A python3 TLS terminator on `IP:443` (certificate for `name` from a per-run test CA,
/// ALPN `http/1.1`) relaying to a plain backend: an HTTP/1.1 TLS origin with every
/// endpoint of the test [`super::Origin`] behind it. Killed on drop.
pub struct TlsFront {
    child: Child,
    pub ip: String,
    pub ca_pem: std::path::PathBuf,
    pub name: String,
    _dir: TempDir,
}

impl TlsFront {
    pub fn start(name: &str, backend: SocketAddr) -> TlsFront {
        let dir = TempDir::new("tlsfront");
        let (ca_pem, leaf, key) = make_test_pki(&dir, name);
        let (child, ip) = spawn_relay(&dir, "server", &[leaf.as_os_str(), key.as_os_str()], backend);
        TlsFront { child, ip, ca_pem, name: name.to_string(), _dir: dir }
    }
}

/// Starts the relay script on a fresh `IP:443`: `mode`, then `args`, then `backend`.
fn spawn_relay(dir: &TempDir, mode: &str, args: &[&std::ffi::OsStr], backend: SocketAddr) -> (Child, String) {
    let script = dir.join("relay.py");
    fs::write(&script, FRONT_PY).expect("write relay.py");
    for _ in 0..5 {
        let ip = fresh_front_ip();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(mode)
            .arg(&ip)
            .args(args)
            .arg(backend.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 TLS relay");
        let addr: SocketAddr = format!("{ip}:443").parse().unwrap();
        let up = wait_until(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
                || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if up && matches!(child.try_wait(), Ok(None)) {
            return (child, ip);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("python3 TLS relay did not start");
}

/// A plain listener on `IP:443` whose connections go on over TLS (ALPN `h2`, server name
/// `name` verified against `ca_pem`) to `backend`: lets a cleartext-only HTTP/2 client
/// (the conformance suite) talk to the proxy's intercepting TLS listener. Killed on drop.
pub struct TlsBridge {
    child: Child,
    pub ip: String,
    _dir: TempDir,
}

impl TlsBridge {
    pub fn start(name: &str, ca_pem: &std::path::Path, backend: SocketAddr) -> TlsBridge {
        let dir = TempDir::new("tlsbridge");
        let (child, ip) = spawn_relay(&dir, "client", &[ca_pem.as_os_str(), std::ffi::OsStr::new(name)], backend);
        TlsBridge { child, ip, _dir: dir }
    }
}

impl Drop for TlsBridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// nghttpd: a real HTTP/2 origin, over TLS or in cleartext (h2c)
// ---------------------------------------------------------------------------------------

/// `nghttpd -v --echo-upload` serving `docroot`: on `IP:443` with a certificate for `name`
/// from a per-run test CA ([`Nghttpd::start`]), or on `IP:80` in cleartext, prior
/// knowledge only ([`Nghttpd::start_cleartext`]). Its verbose log tells how many HTTP/2
/// sessions it had. Killed on drop.
pub struct Nghttpd {
    child: Child,
    pub ip: String,
    pub port: u16,
    /// The CA of its certificate (`None` in cleartext).
    pub ca_pem: Option<std::path::PathBuf>,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Nghttpd {
    pub fn start(name: &str, docroot: &std::path::Path) -> Nghttpd {
        let dir = TempDir::new("nghttpd");
        let (ca_pem, leaf, key) = make_test_pki(&dir, name);
        Nghttpd::launch(dir, docroot, 443, &[key.as_os_str(), leaf.as_os_str()], Some(ca_pem))
    }

    /// HTTP/2 over cleartext TCP with prior knowledge (an HTTP/1.1 request is refused:
    /// nghttpd reads it as a bad preface).
    pub fn start_cleartext(docroot: &std::path::Path) -> Nghttpd {
        Nghttpd::launch(TempDir::new("nghttpd"), docroot, 80, &["--no-tls".as_ref()], None)
    }

    /// The same, announcing `max_streams` as its SETTINGS_MAX_CONCURRENT_STREAMS.
    pub fn start_cleartext_limited(docroot: &std::path::Path, max_streams: u32) -> Nghttpd {
        let m = format!("--max-concurrent-streams={max_streams}");
        Nghttpd::launch(TempDir::new("nghttpd"), docroot, 80, &["--no-tls".as_ref(), m.as_ref()], None)
    }

    fn launch(
        dir: TempDir,
        docroot: &std::path::Path,
        port: u16,
        tls_args: &[&std::ffi::OsStr],
        ca_pem: Option<std::path::PathBuf>,
    ) -> Nghttpd {
        let log = dir.join("nghttpd.log");
        for _ in 0..5 {
            let ip = fresh_front_ip();
            let mut cmd = Command::new("nghttpd");
            cmd.args(["-v", "--echo-upload", "-a", &ip, "-d"]).arg(docroot).arg(port.to_string());
            // nghttpd's usage: options may follow the port, and the key and certificate do.
            let mut child = cmd
                .args(tls_args)
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log).expect("nghttpd log"))
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nghttpd");
            let addr = SocketAddr::new(ip.parse().expect("an IP"), port);
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return Nghttpd { child, ip, port, ca_pem, log, _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nghttpd did not start");
    }

    /// HTTP/2 sessions nghttpd has seen (the distinct `[id=N]` of its log that received
    /// a SETTINGS frame).
    pub fn sessions(&self) -> usize {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        // Only connections that got as far as the client's SETTINGS: the readiness check of
        // `start` (a bare TCP connect) is logged as a session that `closed`.
        let mut ids: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("recv SETTINGS frame"))
            .filter_map(|l| l.strip_prefix("[id="))
            .filter_map(|r| r.split(']').next())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    /// Header fields nghttpd received (`name: value`), all streams, in order.
    pub fn received_fields(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once("recv (stream_id="))
            .filter_map(|(_, r)| r.split_once(") "))
            .map(|(_, f)| f.to_string())
            .collect()
    }

    /// `:path` values of the requests nghttpd received, in order.
    pub fn paths(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(|l| l.split_once(":path: ")).map(|(_, p)| p.trim().to_string()).collect()
    }

    /// Its process id (to stop it with SIGSTOP: an origin that goes silent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Skips (see `support::skip`) unless python3 with `h2` and the given tools are here.
pub fn ready(tools: &[&str]) -> bool {
    if !have_python_h2() {
        super::skip("python3 cannot import h2 (run .ci/setup)");
        return false;
    }
    for t in tools {
        if !super::have(t) {
            super::skip(&format!("{t} is not installed (run .ci/setup)"));
            return false;
        }
    }
    true
}
