//! Keep-alive PINGs for one HTTP/2 connection (RFC 9113 §6.7): when the peer has sent
//! nothing for `interval`, a PING goes out (through `h2`'s user ping, so it never cuts
//! into a frame `h2` is writing); when nothing at all comes back within `timeout`, the
//! peer is gone (a dead origin, a client behind a NAT that forgot it) and the session
//! ends instead of waiting for TCP to notice. Any byte from the peer counts as an answer.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// A PING went out.
    Pinged,
    /// No answer within the timeout.
    Dead,
}

/// The keep-alive of one session.
pub struct KeepAlive {
    interval: Duration,
    timeout: Duration,
    last_heard: Instant,
    /// When the unanswered PING went out.
    sent_at: Option<Instant>,
    /// `h2`'s user-ping handle, once the handshake is done.
    pong: Option<h2::PingPong>,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive").field("interval", &self.interval).field("sent_at", &self.sent_at).finish()
    }
}

impl KeepAlive {
    /// `None` when `interval` is zero (keep-alive off).
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Option<KeepAlive> {
        (!interval.is_zero()).then_some(KeepAlive { interval, timeout, last_heard: now, sent_at: None, pong: None })
    }

    /// The handshake is done: `h2`'s ping handle (taken once from its connection).
    pub fn attach(&mut self, pong: Option<h2::PingPong>) {
        self.pong = pong;
    }

    /// The peer sent bytes.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.sent_at = None;
    }

    /// Takes `h2`'s pong, if it came (a new PING can only go out after that).
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        if let Some(p) = self.pong.as_mut() {
            if let Poll::Ready(Ok(_)) = p.poll_pong(cx) {
                self.sent_at = None;
            }
        }
    }

    /// When something is next due.
    pub fn next_due(&self) -> Instant {
        match self.sent_at {
            Some(sent) => sent + self.timeout,
            None => self.last_heard + self.interval,
        }
    }

    /// Acts on what is due at `now`.
    pub fn on_due(&mut self, now: Instant) -> Due {
        if now < self.next_due() {
            return Due::Nothing;
        }
        if self.sent_at.is_some() {
            return Due::Dead;
        }
        let Some(p) = self.pong.as_mut() else { return Due::Nothing };
        match p.send_ping(h2::Ping::opaque()) {
            Ok(()) => {
                self.sent_at = Some(now);
                Due::Pinged
            }
            // A PING of ours is still out (its pong not polled yet): wait for it.
            Err(_) => {
                self.sent_at = Some(now);
                Due::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_pinged_then_declared_dead_and_any_byte_answers() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(KeepAlive::new(Duration::ZERO, s, t0).is_none(), "zero: off");
        let mut k = KeepAlive::new(30 * s, 10 * s, t0).unwrap();
        assert_eq!(k.next_due(), t0 + 30 * s);
        assert_eq!(k.on_due(t0 + 10 * s), Due::Nothing);
        k.heard(t0 + 20 * s);
        assert_eq!(k.next_due(), t0 + 50 * s, "bytes push the PING back");
        // Without h2's handle (handshake not done) nothing is sent, and nothing is dead.
        assert_eq!(k.on_due(t0 + 50 * s), Due::Nothing);
        k.sent_at = Some(t0 + 50 * s); // as if a PING had gone out
        assert_eq!(k.next_due(), t0 + 60 * s);
        assert_eq!(k.on_due(t0 + 55 * s), Due::Nothing);
        assert_eq!(k.on_due(t0 + 60 * s), Due::Dead);
        k.heard(t0 + 59 * s);
        assert_eq!(k.on_due(t0 + 60 * s), Due::Nothing, "an answer clears the PING");
    }
}
