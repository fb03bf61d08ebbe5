//! A worker's listeners and what happens when accepting fails.
//!
//! Each listener has one multishot accept in the ring. When the kernel ends it with an
//! error, the listener is armed again; but when the error says the process is out of a
//! resource (descriptors: `EMFILE`, `ENFILE`; memory: `ENOBUFS`, `ENOMEM`), arming it at
//! once would fail again at once and spin a core. It pauses instead, for a backoff that
//! doubles up to a second and resets on the next accepted connection, and the worker's
//! 100 ms tick arms it again. Every error is counted (`sluice_accept_errors_total`).
//!
//! The admin listener must keep answering when the proxy's clients have taken every
//! descriptor: the worker holds one spare descriptor ([`Spare`]), given up the moment the
//! admin accept runs out, so that the admin connection can be accepted; it is taken back
//! on a later tick.

use crate::conn::Role;
use std::fs::File;
use std::net::TcpListener;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener and its accept state.
pub(super) struct Listener {
    pub sock: Option<TcpListener>,
    pub role: Role,
    /// Its accept is being cancelled (drain).
    pub closing: bool,
    /// Not armed until then (an accept error asked to wait).
    pub paused_until: Option<Instant>,
    backoff: Duration,
    /// When an accept error was last logged (one line a second at most).
    last_warned: Option<Instant>,
}

/// What to do after an accept ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rearm {
    Now,
    /// Paused: the tick arms it again.
    Later,
}

impl Listener {
    pub fn new(sock: TcpListener, role: Role) -> Listener {
        Listener {
            sock: Some(sock),
            role,
            closing: false,
            paused_until: None,
            backoff: FIRST_BACKOFF,
            last_warned: None,
        }
    }

    /// A connection was accepted: the next error starts the backoff again.
    pub fn accepted(&mut self) {
        self.backoff = FIRST_BACKOFF;
    }

    /// The accept ended with `errno`: pause when it is out of a resource. True when the
    /// error is worth a log line now (rate-limited).
    pub fn failed(&mut self, errno: i32, now: Instant) -> (Rearm, bool) {
        let warn = self.last_warned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if warn {
            self.last_warned = Some(now);
        }
        if !out_of_resources(errno) {
            return (Rearm::Now, warn);
        }
        self.paused_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        (Rearm::Later, warn)
    }

    /// True when a pause is over (the caller arms the accept).
    pub fn resume_due(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(at) if at <= now && !self.closing && self.sock.is_some() => {
                self.paused_until = None;
                true
            }
            _ => false,
        }
    }
}

/// Errors that say the process (or the system) is out of descriptors or memory.
pub(super) fn out_of_resources(errno: i32) -> bool {
    matches!(errno, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
}

/// One descriptor held in reserve so the admin endpoint can accept when the table is full.
pub(super) struct Spare(Option<File>);

impl Spare {
    pub fn new() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Gives the descriptor up; true when there was one to give.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes one again when it was given up (and a descriptor is free).
    pub fn refill(&mut self) {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> Listener {
        Listener::new(TcpListener::bind("127.0.0.1:0").unwrap(), Role::Proxy)
    }

    #[test]
    fn out_of_descriptors_pauses_with_a_doubling_backoff() {
        let mut l = listener();
        let t0 = Instant::now();
        assert_eq!(l.failed(libc::EMFILE, t0).0, Rearm::Later);
        assert_eq!(l.paused_until, Some(t0 + FIRST_BACKOFF));
        assert!(!l.resume_due(t0));
        assert!(l.resume_due(t0 + FIRST_BACKOFF));
        assert_eq!(l.paused_until, None);
        assert_eq!(l.failed(libc::ENFILE, t0).0, Rearm::Later);
        assert_eq!(l.paused_until, Some(t0 + FIRST_BACKOFF * 2));
        for _ in 0..10 {
            l.failed(libc::EMFILE, t0);
        }
        assert_eq!(l.paused_until, Some(t0 + MAX_BACKOFF));
        l.accepted();
        l.failed(libc::EMFILE, t0);
        assert_eq!(l.paused_until, Some(t0 + FIRST_BACKOFF));
    }

    #[test]
    fn other_errors_rearm_at_once_and_warnings_are_rate_limited() {
        let mut l = listener();
        let t0 = Instant::now();
        assert_eq!(l.failed(libc::ECONNABORTED, t0), (Rearm::Now, true));
        assert_eq!(l.failed(libc::ECONNABORTED, t0 + Duration::from_millis(10)), (Rearm::Now, false));
        assert_eq!(l.failed(libc::ECONNABORTED, t0 + Duration::from_secs(2)), (Rearm::Now, true));
        assert_eq!(l.paused_until, None);
    }

    #[test]
    fn a_closing_listener_is_not_resumed() {
        let mut l = listener();
        let t0 = Instant::now();
        l.failed(libc::EMFILE, t0);
        l.closing = true;
        assert!(!l.resume_due(t0 + MAX_BACKOFF));
    }

    #[test]
    fn the_spare_is_given_once_and_taken_back() {
        let mut s = Spare::new();
        assert!(s.release());
        assert!(!s.release());
        s.refill();
        assert!(s.release());
    }
}
