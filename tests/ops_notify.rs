//! The systemd notify protocol, end to end: the release binary is started the way systemd
//! starts a `Type=notify` service (with `$NOTIFY_SOCKET` naming a datagram socket this
//! test binds), and the test checks what arrives: `READY=1` once the listener accepts,
//! `RELOADING=1` + `MONOTONIC_USEC=` then `READY=1` around a SIGHUP, `STOPPING=1` on
//! SIGTERM followed by exit 0. Also: an abstract socket (`@name`) works, and a socket
//! nobody listens on never stops the proxy from starting.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sluice-ops-notify-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The proxy under test; killed on drop if still running.
struct Sluice {
    child: Child,
    listen: SocketAddr,
    stderr_path: PathBuf,
}

impl Sluice {
    /// Starts `sluice run` with `NOTIFY_SOCKET=notify` (or without it when `None`).
    fn start(dir: &TempDir, notify: Option<&str>) -> Sluice {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let config = dir.join("sluice.toml");
        std::fs::write(&config, "").unwrap();
        let stderr_path = dir.join("stderr.log");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&dir.0)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin])
            .args(["--workers", "1"])
            .arg("--ca-dir")
            .arg(dir.join("CA"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n);
        }
        let child = cmd.spawn().expect("start sluice");
        Sluice { child, listen, stderr_path }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn accepts(&self) -> bool {
        TcpStream::connect_timeout(&self.listen, Duration::from_secs(1)).is_ok()
    }

    /// Waits for the process to exit (up to `within`).
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bound notify socket, as systemd holds it.
struct NotifySocket {
    sock: UnixDatagram,
    /// Every assignment received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind_path(path: &Path) -> NotifySocket {
        NotifySocket::from(UnixDatagram::bind(path).expect("bind notify socket"))
    }

    fn bind_abstract(name: &str) -> NotifySocket {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        NotifySocket::from(UnixDatagram::bind_addr(&addr).expect("bind abstract socket"))
    }

    fn from(sock: UnixDatagram) -> NotifySocket {
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        NotifySocket { sock, seen: Vec::new() }
    }

    /// Receives until an assignment `want` (e.g. `READY=1`) arrives after position
    /// `from` in `seen`; returns its index in `seen`.
    fn wait_for(&mut self, want: &str, from: usize, within: Duration, sluice: &mut Sluice) -> usize {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.seen[from..].iter().position(|l| l == want) {
                return from + i;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {want} within {within:?}; received {:?}; sluice {}; stderr:\n{}",
                    self.seen,
                    match sluice.child.try_wait() {
                        Ok(Some(st)) => format!("exited: {st}"),
                        _ => "still running".to_string(),
                    },
                    sluice.stderr()
                );
            }
            if let Ok(n) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.extend(text.split('\n').filter(|l| !l.is_empty()).map(String::from));
            }
        }
    }
}

const START: Duration = Duration::from_secs(20);

#[test]
fn ready_is_sent_once_the_listener_accepts() {
    let dir = TempDir::new("ready");
    let path = dir.join("notify.sock");
    let mut ns = NotifySocket::bind_path(&path);
    let mut sluice = Sluice::start(&dir, Some(path.to_str().unwrap()));
    let ready = ns.wait_for("READY=1", 0, START, &mut sluice);
    // READY=1 promises a working listener: no retry loop here.
    assert!(sluice.accepts(), "READY=1 arrived but {} refuses connections", sluice.listen);
    assert!(!ns.seen[..ready].iter().any(|l| l == "STOPPING=1"), "{:?}", ns.seen);
    // Exactly one READY=1 at start-up. Datagrams from one sender arrive in order, so
    // once STOPPING=1 (sent after a SIGTERM) is here, every start-up message is too.
    sluice.signal("TERM");
    let stopping = ns.wait_for("STOPPING=1", ready + 1, Duration::from_secs(10), &mut sluice);
    assert_eq!(ns.seen[..stopping].iter().filter(|l| *l == "READY=1").count(), 1, "{:?}", ns.seen);
}

#[test]
fn sighup_sends_reloading_with_monotonic_usec_then_ready() {
    let dir = TempDir::new("reload");
    let path = dir.join("notify.sock");
    let mut ns = NotifySocket::bind_path(&path);
    let mut sluice = Sluice::start(&dir, Some(path.to_str().unwrap()));
    let first = ns.wait_for("READY=1", 0, START, &mut sluice);

    let before = monotonic_usec();
    sluice.signal("HUP");
    let reloading = ns.wait_for("RELOADING=1", first + 1, Duration::from_secs(10), &mut sluice);
    let usec: u64 = ns
        .seen
        .iter()
        .skip(reloading)
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= with RELOADING=1: {:?}", ns.seen))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    let after = monotonic_usec();
    // The reload began after we sent SIGHUP and before the message arrived, on
    // CLOCK_MONOTONIC (not e.g. wall-clock time).
    assert!(before <= usec && usec <= after, "MONOTONIC_USEC={usec} is not in [{before}, {after}]");
    ns.wait_for("READY=1", reloading + 1, Duration::from_secs(10), &mut sluice);
    assert!(sluice.accepts(), "still serving after the reload");
}

#[test]
fn sigterm_sends_stopping_and_exits_0() {
    let dir = TempDir::new("stop");
    let path = dir.join("notify.sock");
    let mut ns = NotifySocket::bind_path(&path);
    let mut sluice = Sluice::start(&dir, Some(path.to_str().unwrap()));
    let ready = ns.wait_for("READY=1", 0, START, &mut sluice);
    sluice.signal("TERM");
    ns.wait_for("STOPPING=1", ready + 1, Duration::from_secs(10), &mut sluice);
    let st = sluice
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("still running 40 s after SIGTERM; stderr:\n{}", sluice.stderr()));
    assert_eq!(st.code(), Some(0), "exit status {st}; stderr:\n{}", sluice.stderr());
}

#[test]
fn abstract_notify_socket_gets_ready() {
    let dir = TempDir::new("abstract");
    let name = format!("sluice-ops-notify-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
    let mut ns = NotifySocket::bind_abstract(&name);
    let mut sluice = Sluice::start(&dir, Some(&format!("@{name}")));
    ns.wait_for("READY=1", 0, START, &mut sluice);
    assert!(sluice.accepts());
}

#[test]
fn a_dead_notify_socket_does_not_stop_start_up() {
    // systemd gone or the socket removed: notifications fail, the proxy must still run.
    let dir = TempDir::new("dead");
    let path = dir.join("nobody-listens.sock");
    let mut sluice = Sluice::start(&dir, Some(path.to_str().unwrap()));
    let deadline = Instant::now() + START;
    while !sluice.accepts() {
        if let Ok(Some(st)) = sluice.child.try_wait() {
            panic!("exited with {st}; stderr:\n{}", sluice.stderr());
        }
        assert!(Instant::now() < deadline, "not listening after {START:?}; stderr:\n{}", sluice.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // And it serves: a request gets an HTTP answer (whatever the status).
    let mut s = TcpStream::connect(sluice.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::Write;
    s.write_all(b"GET /nonexistent HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&got));
}

/// CLOCK_MONOTONIC now, in µs (what systemd expects in `MONOTONIC_USEC=`).
fn monotonic_usec() -> u64 {
    match sd_notify::NotifyState::monotonic_usec_now().expect("clock_gettime") {
        sd_notify::NotifyState::MonotonicUsec(usec) => usec as u64,
        other => panic!("{other:?}"),
    }
}
