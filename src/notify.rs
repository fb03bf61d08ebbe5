//! The systemd notify protocol (`sd_notify(3)`).
//!
//! Under `Type=notify` systemd passes the address of a datagram socket in `$NOTIFY_SOCKET`;
//! the service sends newline-separated `KEY=VALUE` assignments to it:
//!
//! | when | message |
//! | --- | --- |
//! | every listener is bound and the workers run | `READY=1` + `STATUS=serving on …` |
//! | SIGHUP received, reload starting | `RELOADING=1` + `MONOTONIC_USEC=…` |
//! | reload finished (applied or refused) | `READY=1` again |
//! | SIGTERM/SIGINT received, drain starting | `STOPPING=1` |
//!
//! The `sd-notify` crate supplies the messages ([`NotifyState`]) and the `CLOCK_MONOTONIC`
//! read for `MONOTONIC_USEC=`. What it lacks is kept here: a socket named explicitly
//! (tests) and Linux abstract sockets (`@name`, the `@` standing for the leading NUL
//! byte), which its `notify` would take for a relative path. Nothing pings a
//! `WatchdogSec=` (the unit sets none); that would be [`NotifyState::Watchdog`] sent every
//! half [`sd_notify::watchdog_enabled`].
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) the notifier is a
//! no-op, so callers never need to ask. Sending never blocks for long (systemd drains the
//! socket), and a send error is returned, not retried: callers ignore it, as systemd
//! treats notifications as best effort. Nothing here runs on a ring.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub use sd_notify::NotifyState;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// A client of the systemd notify socket; a no-op when there is none.
///
/// `Send + Sync`: one notifier can be shared by the signal-handling thread and the
/// start-up code.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The notifier systemd asked for through `$NOTIFY_SOCKET`; a no-op notifier when the
    /// variable is unset or empty. An address that cannot be used (a `vsock:` address, a
    /// path too long for a socket address) is an error the caller should report once and
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
    /// socket.
    pub fn with_path(path: impl AsRef<OsStr>) -> io::Result<Notifier> {
        let raw = path.as_ref();
        let addr = match raw.as_bytes() {
            [b'@', name @ ..] => SocketAddr::from_abstract_name(name)?,
            [b'/', ..] => SocketAddr::from_pathname(raw)?,
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
        Ok(Notifier { target: Some((UnixDatagram::unbound()?, addr)) })
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `states` in one datagram, one assignment a line.
    pub fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some((socket, addr)) = &self.target else {
            return Ok(());
        };
        let msg = states.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n");
        if socket.send_to_addr(msg.as_bytes(), addr)? != msg.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to the notify socket"));
        }
        Ok(())
    }

    /// `READY=1`: start-up finished (every listener bound, workers running), or a reload
    /// finished.
    pub fn ready(&self) -> io::Result<()> {
        self.send(&[NotifyState::Ready])
    }

    /// `READY=1` with a `STATUS=` line (shown by `systemctl status`) in the same datagram.
    /// A newline in `status` would start a new assignment, so CR and LF become spaces.
    pub fn ready_with_status(&self, status: &str) -> io::Result<()> {
        let status = status.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)])
    }

    /// `RELOADING=1` plus `MONOTONIC_USEC=` (when the reload began, which systemd uses to
    /// tell this reload from an older one). Follow with [`Notifier::ready`] when the
    /// reload is done, whether the new config was applied or refused.
    pub fn reloading(&self) -> io::Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.send(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?])
    }

    /// `STOPPING=1`: the drain has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.send(&[NotifyState::Stopping])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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

    fn monotonic_usec() -> i128 {
        match NotifyState::monotonic_usec_now().unwrap() {
            NotifyState::MonotonicUsec(usec) => usec,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sends_each_message_as_one_datagram() {
        let l = Listener::new();
        let n = Notifier::with_path(&l.path).unwrap();
        assert!(n.is_enabled());
        n.ready().unwrap();
        assert_eq!(l.recv(), "READY=1");
        n.stopping().unwrap();
        assert_eq!(l.recv(), "STOPPING=1");
        n.ready_with_status("serving on 127.0.0.1:8080").unwrap();
        assert_eq!(l.recv(), "READY=1\nSTATUS=serving on 127.0.0.1:8080");
        n.send(&[NotifyState::Watchdog, NotifyState::ExtendTimeoutUsec(5_000_000)]).unwrap();
        assert_eq!(l.recv(), "WATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000");
    }

    #[test]
    fn status_is_kept_on_one_line() {
        let l = Listener::new();
        let n = Notifier::with_path(&l.path).unwrap();
        n.ready_with_status("bad config\nREADY=1\r\n").unwrap();
        assert_eq!(l.recv(), "READY=1\nSTATUS=bad config READY=1  ");
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
        let usec: i128 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("a MONOTONIC_USEC= line")
            .parse()
            .expect("a number");
        assert!(lines.next().is_none(), "{msg:?}");
        assert!(0 < before && before <= usec && usec <= after, "{before} {usec} {after}");
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
        n.ready().unwrap();
        n.ready_with_status("x").unwrap();
        n.reloading().unwrap();
        n.stopping().unwrap();
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
        let n = Notifier::with_path(l.dir.join("gone.sock")).unwrap();
        assert!(n.ready().is_err());
    }
}
