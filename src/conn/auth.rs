//! Proxy authentication of an HTTP/1 request: who must authenticate, and the HTTP/1
//! rendering of the gate's verdict (`crate::auth` decides).
//!
//! The rule: with `[auth]` on, every request a client sends to the proxy as a proxy
//! (explicit-proxy requests, CONNECT) carries `Proxy-Authorization: Basic`. Two kinds of
//! request are admitted without: those of a transparently redirected client (it does not
//! know it talks to a proxy and cannot answer a 407: `allow_clients` alone admits it),
//! and those inside a CONNECT tunnel that was admitted (intercepted TLS), which belong to
//! the CONNECT's user. A refusal is a 407 with the challenge, a 429 with `Retry-After`
//! for a locked address, or a 503 when too many checks wait; the connection then closes.

use super::{Connection, Ctx, NextStep};
use crate::auth::{Gate, Verdict};
use crate::config::Config;
use crate::h1::RequestHead;
use std::sync::Arc;
use std::time::Instant;
use uring::Io;

/// What becomes of a request.
pub(crate) enum Admission {
    /// It goes on, as this user (None: no credentials were needed).
    Admit(Option<Arc<str>>),
    /// Parked while its credentials are checked: no operation in flight; the gate wakes
    /// the connection, whose `RequestHead` phase parses the head again and asks again.
    Wait,
    /// Refused: answered once the exchange exists, so that the log line names its target.
    Refuse(Refusal),
}

/// A refusal to render.
pub(crate) struct Refusal {
    status: u16,
    /// Extra header fields, with their line ends.
    fields: String,
    why: &'static str,
}

/// Asks the gate about `head` (when this request must authenticate). Takes the gate and
/// the config rather than the whole `Ctx`: the head still borrows the slab pool.
pub(crate) fn admit(
    conn: &Connection,
    io: &Io,
    gate: &mut Gate,
    cfg: &Config,
    now: Instant,
    head: &RequestHead<'_>,
) -> Admission {
    if !gate.enabled() || conn.original_dst.is_some() {
        return Admission::Admit(None);
    }
    if let Some(t) = &conn.tunnel_target {
        return Admission::Admit(t.user.clone());
    }
    let mut values = head.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("proxy-authorization"));
    // Two values are malformed credentials: nobody's, whichever would be read.
    let value = match (values.next(), values.next()) {
        (Some(v), None) => Some(v.value),
        (Some(_), Some(_)) => Some(&b""[..]),
        (None, _) => None,
    };
    let client = conn.peer.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.ip());
    match gate.check(value, client, now, io.id()) {
        Verdict::Admitted { user } => Admission::Admit(user),
        Verdict::Pending => Admission::Wait,
        Verdict::Challenge => Admission::Refuse(Refusal {
            status: 407,
            fields: crate::auth::basic::challenge_field(&cfg.auth.realm),
            why: "proxy authentication required",
        }),
        Verdict::Locked { retry_after } => Admission::Refuse(Refusal {
            status: 429,
            fields: format!("Retry-After: {}\r\n", retry_after.as_secs().max(1)),
            why: "too many failed proxy authentication attempts from this address; try again later",
        }),
        Verdict::Busy => Admission::Refuse(Refusal {
            status: 503,
            fields: "Retry-After: 1\r\n".into(),
            why: "proxy authentication is busy; try again in a moment",
        }),
    }
}

impl Refusal {
    /// Answers the request (the exchange is in `conn.ex`) and closes.
    pub(crate) fn render(self, conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
        conn.refuse_with(io, ctx, self.status, self.fields.as_bytes(), self.why)
    }
}
