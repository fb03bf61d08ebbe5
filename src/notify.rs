//! The systemd notify protocol (`sd_notify(3)`), on `std` alone.
//!
//! Under `Type=notify` systemd passes the path of a datagram socket in `$NOTIFY_SOCKET`;
//! the service sends newline-separated `KEY=VALUE` assignments to it:
//!
//! | when | message |
//! | --- | --- |
//! | every listener is bound and the workers run | `READY=1` |
//! | SIGHUP received, reload starting | `RELOADING=1` + `MONOTONIC_USEC=…` |
//! | reload finished (applied or refused) | `READY=1` again |
//! | SIGTERM/SIGINT received, drain starting | `STOPPING=1` |
//! | any time, free text for `systemctl status` | `STATUS=…` |
//! | every half `WATCHDOG_USEC`, if `WatchdogSec=` is set | `WATCHDOG=1` |
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) the notifier is a
//! no-op, so callers never need to ask. A path starting with `@` is a Linux abstract
//! socket (the `@` stands for the leading NUL byte).
//!
//! Sending never blocks for long: the socket is a datagram socket that systemd drains,
//! and a send error is returned, not retried. Callers normally ignore it (systemd
//! itself treats notifications as best effort); nothing here runs on a ring.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// A client of the systemd notify socket; a no-op when there is none.
///
/// `Send + Sync`: one notifier can be shared (`Arc`) by the signal-handling thread and
/// the start-up code.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// As given, for messages.
    display: OsString,
}

impl Notifier {
    /// The notifier systemd asked for through `$NOTIFY_SOCKET`; a no-op notifier when the
    /// variable is unset or empty. An address that cannot be used (a `vsock:` address, a
    /// path too long for a socket address) is an error the caller should log once and
    /// then carry on with [`Notifier::disabled`].
    pub fn from_env() -> io::Result<Notifier> {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            Some(v) if !v.is_empty() => Notifier::with_path(v),
            _ => Ok(Notifier::disabled()),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// A notifier for an explicit socket: a filesystem path, or `@name` for an abstract
    /// socket. Used by [`Notifier::from_env`] and by tests.
    pub fn with_path(path: impl AsRef<OsStr>) -> io::Result<Notifier> {
        let raw = path.as_ref();
        let bytes = raw.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(raw)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{NOTIFY_SOCKET_ENV}={}: expected an absolute path or @abstract-name",
                        raw.to_string_lossy()
                    ),
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier { target: Some(Target { socket, addr, display: raw.to_os_string() }) })
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The socket messages go to, as given (`None` when disabled).
    pub fn socket_path(&self) -> Option<&OsStr> {
        self.target.as_ref().map(|t| t.display.as_os_str())
    }

    /// Sends raw assignments (`"KEY=VALUE\nKEY2=VALUE2"`) in one datagram. Prefer the
    /// named methods; this is for combinations they do not cover.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        let sent = t.socket.send_to_addr(state.as_bytes(), &t.addr)?;
        if sent != state.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to the notify socket"));
        }
        Ok(())
    }

    /// `READY=1`: start-up finished (every listener bound, workers running), or a reload
    /// finished.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// `READY=1` with a `STATUS=` line in the same datagram.
    pub fn ready_with_status(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `RELOADING=1` plus `MONOTONIC_USEC=` (the time the reload began, which systemd
    /// uses to tell this reload from an older one). Follow with [`Notifier::ready`] when
    /// the reload is done, whether the new config was applied or refused.
    pub fn reloading(&self) -> io::Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `STOPPING=1`: the drain has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }

    /// `STATUS=…`: one line shown by `systemctl status`. Newlines are replaced by spaces
    /// (a newline would start a new assignment).
    pub fn status(&self, status: &str) -> io::Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: the keep-alive ping for `WatchdogSec=`.
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }
}

/// How often systemd expects [`Notifier::watchdog`] (`WatchdogSec=`), from
/// `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or names this process. Ping at half
/// this interval, as `sd_watchdog_enabled(3)` advises.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec = usec?.parse::<u64>().ok()?;
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != me {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `s` with every CR/LF turned into a space.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        s.replace(['\n', '\r'], " ").into()
    } else {
        s.into()
    }
}

/// `CLOCK_MONOTONIC` now, in microseconds: what systemd expects in `MONOTONIC_USEC=`.
///
/// This crate forbids unchecked code, so `clock_gettime(2)` is out of reach. On Linux
/// `std::time::Instant` *is* `CLOCK_MONOTONIC`, and its `Debug` output shows the raw
/// `timespec` (`Instant { tv_sec: 1708, tv_nsec: 811887208 }`), so that is read first:
/// exact to the nanosecond. That format is not a promise of `std`, so if it ever
/// changes the fallback is `/proc/uptime`, which is `CLOCK_BOOTTIME` at 10 ms
/// resolution: it also counts time spent suspended, so it is never *earlier* than
/// `CLOCK_MONOTONIC`. systemd only uses the value to check that a `RELOADING=1` is not
/// older than the reload it asked for, and a value on the late side passes that check.
/// A unit test pins the `Debug` format so a change is noticed.
pub fn monotonic_usec() -> u64 {
    instant_usec(Instant::now()).or_else(uptime_usec).unwrap_or(0)
}

/// Microseconds of an `Instant`, read from its `Debug` form.
fn instant_usec(t: Instant) -> Option<u64> {
    let text = format!("{t:?}");
    let field = |name: &str| -> Option<u64> {
        let start = text.find(name)? + name.len();
        let rest = text[start..].trim_start_matches([':', ' ']);
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    let secs = field("tv_sec")?;
    let nanos = field("tv_nsec")?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    secs.checked_mul(1_000_000)?.checked_add(nanos / 1000)
}

/// Microseconds since boot from `/proc/uptime` (`CLOCK_BOOTTIME`, 10 ms resolution).
fn uptime_usec() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let first = text.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut micros = 0u64;
    let mut scale = 100_000u64;
    for c in frac.chars().take(6) {
        micros += u64::from(c.to_digit(10)?) * scale;
        scale /= 10;
    }
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static SEQ: AtomicUsize = AtomicUsize::new(0);

    /// A bound datagram socket in a fresh temp dir, removed on drop.
    struct Listener {
        dir: PathBuf,
        path: PathBuf,
        sock: UnixDatagram,
    }

    impl Listener {
        fn new() -> Listener {
            let dir = std::env::temp_dir().join(format!(
                "sluice-notify-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("notify.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Listener { dir, path, sock }
        }

        fn recv(&self) -> String {
            recv(&self.sock)
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notify datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_each_message_as_one_datagram() {
        let l = Listener::new();
        let n = Notifier::with_path(&l.path).unwrap();
        assert!(n.is_enabled());
        assert_eq!(n.socket_path(), Some(l.path.as_os_str()));

        n.ready().unwrap();
        assert_eq!(l.recv(), "READY=1");
        n.stopping().unwrap();
        assert_eq!(l.recv(), "STOPPING=1");
        n.watchdog().unwrap();
        assert_eq!(l.recv(), "WATCHDOG=1");
        n.status("serving on 127.0.0.1:8080").unwrap();
        assert_eq!(l.recv(), "STATUS=serving on 127.0.0.1:8080");
        n.ready_with_status("reloaded").unwrap();
        assert_eq!(l.recv(), "READY=1\nSTATUS=reloaded");
        n.notify("EXTEND_TIMEOUT_USEC=5000000").unwrap();
        assert_eq!(l.recv(), "EXTEND_TIMEOUT_USEC=5000000");
    }

    #[test]
    fn status_is_kept_on_one_line() {
        let l = Listener::new();
        let n = Notifier::with_path(&l.path).unwrap();
        n.status("bad config\nREADY=1\r\n").unwrap();
        assert_eq!(l.recv(), "STATUS=bad config READY=1  ");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let l = Listener::new();
        let n = Notifier::with_path(&l.path).unwrap();
        let before = monotonic_usec();
        n.reloading().unwrap();
        let after = monotonic_usec();
        let msg = l.recv();
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("a MONOTONIC_USEC= line")
            .parse()
            .expect("a number");
        assert!(lines.next().is_none(), "{msg:?}");
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
    }

    #[test]
    fn abstract_sockets_are_supported() {
        let name = format!("sluice-notify-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::with_path(format!("@{name}")).unwrap();
        n.ready().unwrap();
        assert_eq!(recv(&sock), "READY=1");
    }

    #[test]
    fn disabled_notifier_sends_nothing_and_succeeds() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.socket_path(), None);
        n.ready().unwrap();
        n.reloading().unwrap();
        n.stopping().unwrap();
        n.status("x").unwrap();
        n.watchdog().unwrap();
    }

    #[test]
    fn relative_or_vsock_addresses_are_refused() {
        let e = Notifier::with_path("relative/notify.sock").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("NOTIFY_SOCKET=relative/notify.sock"), "{e}");
        assert!(Notifier::with_path("vsock:2:1234").is_err());
        let long = format!("/{}", "x".repeat(200));
        assert!(Notifier::with_path(long).is_err());
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_not_a_hang() {
        let l = Listener::new();
        let gone = l.dir.join("gone.sock");
        let n = Notifier::with_path(&gone).unwrap();
        assert!(n.ready().is_err());
    }

    #[test]
    fn instant_debug_format_gives_clock_monotonic() {
        // Pins the std `Debug` format monotonic_usec() relies on; if this fails, the
        // /proc/uptime fallback is in use (still correct for systemd, 10 ms coarse).
        let t = Instant::now();
        let usec = instant_usec(t).expect("Instant's Debug shows tv_sec/tv_nsec");
        let later = instant_usec(t + Duration::from_millis(1500)).unwrap();
        assert_eq!(later - usec, 1_500_000);
        // CLOCK_MONOTONIC never runs ahead of CLOCK_BOOTTIME (/proc/uptime rounds down
        // to 10 ms).
        let boot = uptime_usec().expect("/proc/uptime");
        assert!(usec <= boot + 20_000, "monotonic {usec} > boottime {boot}");
        assert!(usec > 0);
    }

    #[test]
    fn uptime_parses_with_its_two_decimals() {
        let u = uptime_usec().unwrap();
        assert!(u > 0);
        assert_eq!(u % 10_000, 0, "{u}: /proc/uptime has 10 ms resolution");
    }

    #[test]
    fn watchdog_interval_follows_watchdog_usec_and_pid() {
        let f = watchdog_interval_from;
        assert_eq!(f(None, None, 7), None);
        assert_eq!(f(Some("30000000"), None, 7), Some(Duration::from_secs(30)));
        assert_eq!(f(Some("30000000"), Some("7"), 7), Some(Duration::from_secs(30)));
        assert_eq!(f(Some("30000000"), Some("8"), 7), None);
        assert_eq!(f(Some("0"), None, 7), None);
        assert_eq!(f(Some("soon"), None, 7), None);
        // Without the variables set (as in a test run) there is no watchdog.
        if std::env::var_os("WATCHDOG_USEC").is_none() {
            assert_eq!(watchdog_interval(), None);
        }
    }
}
