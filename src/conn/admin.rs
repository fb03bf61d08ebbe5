//! The admin endpoint, served by the same ring: `/metrics` (Prometheus text),
//! `/healthz` (alive) and `/readyz` (accepting traffic). One request per connection.

use super::leg::Side;
use super::{Connection, Ctx, NextStep};
use crate::h1::{self, HeadLimits, RequestTarget};
use crate::stats;
use uring::Io;

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
                _ => (404, "text/plain", "not found: try /metrics, /healthz or /readyz\n".to_string()),
            };
            let reason = if status == 200 {
                "OK"
            } else if status == 404 {
                "Not Found"
            } else {
                "Service Unavailable"
            };
            let head_only = head.method == h1::Method::Head;
            let mut r = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
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
    let n = conn.out.fill(ctx.pool, r);
    conn.write(io, ctx, Side::Client, super::buf::BufId::Out, 0, n);
    conn.phase = super::Phase::Respond { close: true };
    NextStep::Wait
}
