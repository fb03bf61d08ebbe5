//! The admin endpoint, served by the same ring: `/metrics` (Prometheus text),
//! `/healthz` (alive), `/readyz` (accepting traffic) and, to loopback clients only,
//! `/debug/connections` (every worker's live client connections: `view.rs`). One request
//! per connection.

use super::leg::Side;
use super::{Connection, Ctx, NextStep};
use crate::h1::{self, HeadLimits, RequestTarget};
use crate::stats;
use std::net::SocketAddr;
use uring::Io;

/// Whether an admin client may see `/debug/connections` (client addresses and targets):
/// only from the box itself. IPv4-mapped IPv6 loopback counts as loopback.
pub(crate) fn is_local(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
}

pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.reading {
        return NextStep::Wait;
    }
    let limits = HeadLimits { max_bytes: 16 * 1024, max_headers: 64 };
    match h1::parse_request(conn.client.input.data(ctx.pool), &limits) {
        Ok(Some((head, _))) => {
            let path = match &head.target {
                RequestTarget::Origin { path } => path.split('?').next().unwrap_or("").to_string(),
                _ => String::new(),
            };
            let (status, ctype, body) = match path.as_str() {
                "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", stats::render(ctx.all_stats)),
                "/healthz" => (200, "text/plain", "ok\n".to_string()),
                "/readyz" if ctx.ready => (200, "text/plain", "ready\n".to_string()),
                "/readyz" => (503, "text/plain", "draining\n".to_string()),
                "/debug/connections" if !is_local(conn.peer) => {
                    (403, "text/plain", "/debug/connections is served to loopback clients only\n".to_string())
                }
                "/debug/connections" => match ctx.control.poll_connections(ctx.worker, io.id(), ctx.now) {
                    // Asked, or still waiting: every worker answers on its tick, and this
                    // worker's tick wakes this connection when the view is ready.
                    None => return NextStep::Wait,
                    Some(answers) => {
                        (200, "text/plain; charset=utf-8", super::view::render(&answers, uring::SLAB_SIZE - 256))
                    }
                },
                _ => (
                    404,
                    "text/plain",
                    "not found: try /metrics, /healthz, /readyz or /debug/connections\n".to_string(),
                ),
            };
            let reason = match status {
                200 => "OK",
                403 => "Forbidden",
                404 => "Not Found",
                _ => "Service Unavailable",
            };
            let head_only = head.method == h1::Method::Head;
            let mut r = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nSluice-Worker: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len(),
                ctx.worker
            )
            .into_bytes();
            if !head_only {
                r.extend_from_slice(body.as_bytes());
            }
            respond_admin(conn, io, ctx, &r)
        }
        Ok(None) => {
            if conn.client.ended() {
                return NextStep::Close;
            }
            conn.read(io, ctx, Side::Client)
        }
        Err(e) => {
            let r = h1::error_response(e.status(), e.detail());
            respond_admin(conn, io, ctx, &r)
        }
    }
}

fn respond_admin(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, r: &[u8]) -> NextStep {
    // Admin responses are not proxied requests: keep them out of the request counters.
    if conn.send_own(io, ctx, r).is_none() {
        return NextStep::Close;
    }
    conn.phase = super::Phase::Respond;
    NextStep::Wait
}

#[cfg(test)]
mod tests {
    use super::is_local;

    #[test]
    fn only_loopback_clients_are_local() {
        for local in ["127.0.0.1:1", "127.3.2.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(is_local(Some(local.parse().unwrap())), "{local}");
        }
        for remote in ["192.0.2.2:1", "10.0.0.1:1", "[fd00::2]:1", "[::ffff:192.0.2.2]:1", "0.0.0.0:1"] {
            assert!(!is_local(Some(remote.parse().unwrap())), "{remote}");
        }
        assert!(!is_local(None), "an unknown peer is not local");
    }
}
