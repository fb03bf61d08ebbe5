//! The end of an exchange: one access log line (when logging is on) and one
//! observation of the request-duration histogram, exactly once per exchange.

use super::{Connection, Ctx};
use crate::accesslog::AccessEntry;
use std::time::{Instant, SystemTime};

/// What the access log needs to know about an exchange, captured at its start.
#[derive(Debug)]
pub(crate) struct Facts {
    pub started: Instant,
    pub wall: SystemTime,
    pub method: String,
    pub target: String,
    pub bytes_in_at_start: u64,
    pub bytes_out_at_start: u64,
    pub logged: bool,
    /// The proxy-authentication user (the access log's user field).
    pub user: Option<std::sync::Arc<str>>,
}

impl Facts {
    pub fn new(conn: &Connection, now: Instant, method: &str, target: String) -> Facts {
        Facts {
            started: now,
            wall: SystemTime::now(),
            method: method.to_string(),
            target,
            // The head that starts the exchange (and whatever arrived with it) was read
            // before this point and still waits in `client.input`: it belongs to this exchange.
            // (Pipelined requests read during an exchange count there and again in
            // their own.)
            bytes_in_at_start: conn.bytes_in.saturating_sub(conn.client.input.len() as u64),
            bytes_out_at_start: conn.bytes_out,
            logged: false,
            // Inside an admitted CONNECT tunnel: its user (a checked request sets its own).
            user: conn.tunnel_target.as_ref().and_then(|t| t.user.clone()),
        }
    }
}

/// Records the exchange in progress (if any, and not yet recorded) with `status`.
pub(crate) fn finish(conn: &mut Connection, ctx: &mut Ctx<'_>, status: u16) {
    let (bytes_in, bytes_out, peer) = (conn.bytes_in, conn.bytes_out, conn.peer);
    let protocol = conn.protocol.log_name(conn.intercepted());
    let Some(ex) = conn.ex.as_mut() else { return };
    let facts = &mut ex.facts;
    if facts.logged {
        return;
    }
    facts.logged = true;
    let duration = ctx.now.saturating_duration_since(facts.started);
    ctx.stats.request_duration.observe(duration);
    if let Some(log) = ctx.access.as_deref_mut() {
        let upstream = format!("{}:{}", ex.host, ex.port);
        log.record(&AccessEntry {
            time: facts.wall,
            client: peer,
            method: &facts.method,
            target: &facts.target,
            status,
            bytes_out: bytes_out - facts.bytes_out_at_start,
            bytes_in: bytes_in - facts.bytes_in_at_start,
            duration,
            upstream: Some(&upstream),
            protocol,
            user: facts.user.as_deref(),
        });
    }
}

/// Records a response the proxy made before any exchange existed (a bad head).
pub(crate) fn refused(conn: &Connection, ctx: &mut Ctx<'_>, status: u16, bytes_out: u64) {
    if let Some(log) = ctx.access.as_deref_mut() {
        // What the client sent of the refused request is what waits in `client.input`.
        let bytes_in = conn.client.input.len() as u64;
        log.record(&AccessEntry {
            time: SystemTime::now(),
            client: conn.peer,
            method: "-",
            target: "-",
            status,
            bytes_out,
            bytes_in,
            duration: std::time::Duration::ZERO,
            upstream: None,
            protocol: conn.protocol.log_name(conn.intercepted()),
            user: None,
        });
    }
}
