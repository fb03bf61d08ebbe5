//! HTTP Upgrade on an HTTP/1.1 exchange (WebSocket and whatever else the operator
//! allows in `upgrade_protocols`): the offer that goes upstream with the request, and the
//! switch when the origin answers `101 Switching Protocols`.
//!
//! After a 101 the exchange *is* a tunnel: the rewritten 101 head (with its `Upgrade`
//! and `Connection: upgrade`) and whatever the origin sent after it wait in
//! `origin.input`, the client's bytes in `client.input`, and the CONNECT tunnel's pumps
//! (`tunnel.rs`) take over with the same idle deadline, splicing between cleartext
//! sockets, the TLS sessions' relay on intercepted legs, and the same metrics. The origin
//! connection is never pooled again, and leaves the origin's connection count
//! (`pool.max_connections_per_host`) as a CONNECT tunnel's never joins it. The exchange
//! ends when the tunnel does: one access-log line, status 101.
//!
//! The codec side (which protocols go, whether a 101 is acceptable) is `h1::upgrade`.

use super::http1::Exchange;
use super::{Connection, Ctx, NextStep, Phase};
use crate::h1::{self, UpgradeOffer};
use crate::stats;
use uring::Io;

/// Adds the Upgrade of `head` to its rewritten form in `rewritten` (which ends with its
/// blank line) when the operator allows one of its protocols; returns the Upgrade value
/// offered to the origin. An Upgrade that is not allowed is left out: the request goes
/// on as a plain one.
pub(crate) fn offer(rewritten: &mut Vec<u8>, head: &h1::RequestHead<'_>, allowed: &[String]) -> Option<Box<str>> {
    match h1::offer(head, allowed) {
        UpgradeOffer::None => None,
        UpgradeOffer::Stripped => {
            tracing::debug!(offered = ?upgrade_values(head), "upgrade not allowed: stripped");
            None
        }
        UpgradeOffer::Forward(protocols) => {
            h1::push_upgrade_fields(rewritten, &protocols);
            Some(protocols.into_boxed_str())
        }
    }
}

fn upgrade_values(head: &h1::RequestHead<'_>) -> Vec<String> {
    head.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect()
}

/// Checks a 101 against the Upgrade that was offered and writes its head for the client
/// into `out` (with the Upgrade fields of the protocols it switched to). Returns those
/// protocols, or why the switch cannot be relayed.
pub(crate) fn rewrite_101(
    ex: &Exchange,
    resp: &h1::ResponseHead<'_>,
    out: &mut Vec<u8>,
    via: &str,
) -> Result<String, &'static str> {
    let protocols = match ex.h1.upgrade.as_deref() {
        Some(offered) => h1::switched_to(resp, offered)?,
        None => return Err("the origin switched protocols without an Upgrade request"),
    };
    out.clear();
    resp.write_client(out, via, false, ex.h1.client_minor);
    h1::push_upgrade_fields(out, &protocols);
    Ok(protocols)
}

/// The origin answered `101 Switching Protocols` (`n` bytes of head at
/// `origin.input.start`), rewritten by [`rewrite_101`] into `ctx.scratch`: relay it and
/// turn the exchange into a tunnel, or refuse a switch nobody asked for (502).
pub(crate) fn switch(
    conn: &mut Connection,
    io: &mut Io,
    ctx: &mut Ctx<'_>,
    rewritten: Result<String, &'static str>,
    n: usize,
) -> NextStep {
    let protocols = match rewritten {
        Ok(p) => p,
        Err(why) => return refuse(conn, io, ctx, why),
    };
    let Some(ex) = conn.ex.as_mut() else { return NextStep::Close };
    let head_end = conn.origin.input.start + n;
    let Some(at) = conn.origin.input.place_before(ctx.pool, ctx.scratch, head_end) else {
        return refuse(conn, io, ctx, "response head too large after rewriting");
    };
    conn.origin.input.start = at;
    ex.status = 101;
    ex.response_started = true;
    // The 101 is the tunnel's first bytes to the client (from `origin.input`), not a 200
    // the tunnel writes itself.
    ex.tunnel.established_sent = true;
    ctx.stats.response(conn.protocol, Some(ex.method), 101);
    stats::bump(&ctx.stats.upgrades, 1);
    tracing::debug!(conn = %io.id(), host = %ex.host, port = ex.port, protocols = %protocols, "upgraded");
    // No longer an HTTP/1.1 connection: never pooled, and out of the origin's count.
    if let Some(up) = conn.upstream.as_mut() {
        up.abandoned = true;
        up.lease = None;
    }
    conn.phase = Phase::Tunnel;
    let t = ctx.cfg.timeouts.io_idle;
    conn.set_deadline(io, ctx, t);
    NextStep::Continue
}

/// A 101 the proxy cannot relay: the origin connection is dropped (it left HTTP/1.1) and
/// the client gets a 502.
fn refuse(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, why: &str) -> NextStep {
    tracing::info!(conn = %io.id(), why, "refused a 101 from the origin");
    conn.abandon_upstream(io, ctx);
    // Bytes of the new protocol may follow the head: none of it reaches the client.
    conn.origin.input.clear();
    conn.refuse(io, ctx, 502, why)
}
