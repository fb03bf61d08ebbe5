//! The upstream sub-machine: reuse a pooled connection, or resolve the name (without
//! blocking the ring), connect to each address in turn and (for https origins) run the
//! TLS handshake; an origin that speaks HTTP/2 (by ALPN, or listed in
//! `h2.cleartext_origins`) becomes a shared session (`conn::origin_session`). It knows
//! nothing of the client's protocol: each step returns an [`Outcome`], and the caller
//! moves on when the origin leg is ready or renders a failure in its own protocol (an
//! HTTP/1 error page, which an HTTP/2 stream's session sends as a `:status 502`).

use super::http1::UpstreamStep;
use super::leg::Dial;
use super::{tag, Connection, Ctx, NextStep, Phase, UpstreamConn};
use crate::stats;
use crate::upstream::dns::Lookup;
use crate::upstream::is_own_listener;
use crate::upstream::pool::{Acquired, PoolKey, Pooled, Want};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use uring::{Io, Op};

/// What one step of the upstream sub-machine came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Progress was made: run the next step now.
    Continue,
    /// Waiting: for a connect or handshake I/O, a name, or a turn in the origin's queue.
    Pending,
    /// The origin leg is connected (and secured) and may carry the request.
    Ready,
    /// No origin connection: the status the client should see, and why.
    Failed { status: u16, reason: String },
}

fn failed(status: u16, reason: impl Into<String>) -> Outcome {
    Outcome::Failed { status, reason: reason.into() }
}

/// The origin leg is ready: the lease goes with the socket, and a new leg's set-up time
/// is observed (pool hits have none).
fn ready(conn: &mut Connection, ctx: &mut Ctx<'_>) -> Outcome {
    if let (Some(ex), Some(up)) = (conn.ex.as_mut(), conn.upstream.as_mut()) {
        if let Some(lease) = ex.lease.take() {
            up.lease = Some(lease);
        }
    }
    if let Some(started) = conn.ex.as_mut().and_then(|ex| ex.connect_started.take()) {
        ctx.stats.upstream_connect.observe(ctx.now.saturating_duration_since(started));
    }
    Outcome::Ready
}

/// The `Upstream` phase of an HTTP/1 exchange or a tunnel: runs the sub-machine and
/// goes on to `SendRequest` or `Tunnel` once the origin leg is ready, or answers the
/// failure with an HTTP/1 error page.
pub(crate) fn phase(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    match step(conn, io, ctx) {
        Outcome::Continue => NextStep::Continue,
        Outcome::Pending => NextStep::Wait,
        Outcome::Ready => {
            let connect = conn.ex.as_ref().is_some_and(|e| e.is_connect);
            conn.phase = if connect { Phase::Tunnel } else { Phase::SendRequest };
            NextStep::Continue
        }
        Outcome::Failed { status, reason } => {
            conn.abandon_upstream(io, ctx);
            conn.refuse(io, ctx, status, &reason)
        }
    }
}

/// One step of finding an upstream connection.
pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> Outcome {
    if conn.origin.dial == Dial::Connecting {
        return Outcome::Pending;
    }
    let Some(ex) = conn.ex.as_ref() else {
        return failed(500, "no exchange to find an origin for");
    };
    match ex.upstream_step {
        UpstreamStep::Start => from_pool(conn, io, ctx, false),
        // Woken for something else while it waits: its place in the queue stands.
        UpstreamStep::Queued { in_queue: true, .. } => Outcome::Pending,
        UpstreamStep::Queued { in_queue: false, .. } => {
            super::parked::unpark(conn, ctx);
            from_pool(conn, io, ctx, true)
        }
        UpstreamStep::Resolving => resolve(conn, io, ctx),
        UpstreamStep::Connecting { .. } => connect(conn, io, ctx),
        UpstreamStep::TlsHandshake => match super::tls::upstream_handshake(conn, io, ctx) {
            Ok(NextStep::Continue) if conn.origin.tls.as_ref().is_some_and(|t| !t.session.is_handshaking()) => {
                conn.clear_deadline();
                let h2 = conn.origin.tls.as_ref().is_some_and(|t| t.session.alpn_protocol() == Some(b"h2"));
                learned(conn, h2);
                if h2 && !super::origin_session::become_session(conn, io, ctx) {
                    return failed(502, "the origin chose HTTP/2 and its connection could not be handed over");
                }
                ready(conn, ctx)
            }
            Ok(NextStep::Continue) => Outcome::Continue,
            Ok(NextStep::Wait) => Outcome::Pending,
            Ok(NextStep::Close) => failed(502, "the origin connection is gone"),
            Err(why) => failed(502, why),
        },
    }
}

/// The fresh connection's handshake said whether the origin speaks HTTP/2: requests
/// that waited for that answer (this dial was learning it) get their turn.
fn learned(conn: &mut Connection, h2: bool) {
    if let Some(lease) = conn.ex.as_mut().and_then(|ex| ex.lease.as_mut()) {
        lease.learned(h2);
    }
}

/// A request HTTP/2 may carry to the origin: not a tunnel, not an Upgrade (HTTP/1.1 only).
fn fits_h2(ex: &super::http1::Exchange) -> bool {
    !ex.is_connect && ex.h1.upgrade.is_none()
}

/// A cleartext origin the operator listed as speaking HTTP/2 (`h2.cleartext_origins`), for
/// a request HTTP/2 may carry: its connection starts with the preface, no TLS, no Upgrade.
fn prior_knowledge(ex: &super::http1::Exchange, ctx: &Ctx<'_>) -> bool {
    !ex.upstream_tls && fits_h2(ex) && ctx.cfg.h2.speaks_h2c(&ex.host, ex.port)
}

/// A pooled connection to the origin, a turn in its queue, or the go-ahead to dial one
/// (tunnels always dial). `again`: a queued request that was woken.
fn from_pool(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, again: bool) -> Outcome {
    // An HTTP/2 session to this origin with a free stream comes before the pool (not for a
    // retry, which wants a fresh connection, nor for an Upgrade, which HTTP/1.1 carries):
    // TLS origins that picked `h2`, cleartext ones listed in `h2.cleartext_origins`.
    let shared = conn.ex.as_ref().and_then(|ex| {
        let may_share = (ex.upstream_tls || prior_knowledge(ex, ctx)) && fits_h2(ex) && !ex.fresh_only;
        may_share.then(|| PoolKey { host: ex.host.clone(), port: ex.port, tls: ex.upstream_tls })
    });
    // Such a request waits while another dial learns whether the origin speaks HTTP/2
    // (`pool::OriginProtocol`), when its own dial would offer `h2`.
    let shares =
        shared.is_some() && (ctx.cfg.h2.origins || conn.ex.as_ref().is_some_and(|ex| prior_knowledge(ex, ctx)));
    if let Some(key) = shared {
        if super::origin_session::attach(conn, io, ctx, &key) {
            tracing::debug!(conn = %io.id(), host = %key.host, port = key.port, "stream on an HTTP/2 origin session");
            return ready(conn, ctx);
        }
    }
    let Some(ex) = conn.ex.as_mut() else { return failed(500, "no exchange") };
    if !ex.is_connect {
        let key = PoolKey { host: ex.host.clone(), port: ex.port, tls: ex.upstream_tls };
        let want = Want { retryable: ex.retryable(), fresh_only: ex.fresh_only, again, shares };
        match ctx.upstreams.acquire(&key, ctx.now, want, io.id()) {
            Acquired::Pooled(Pooled { sock, tls, lease, fixed }) => {
                stats::bump(&ctx.stats.pool_hits, 1);
                tracing::debug!(conn = %io.id(), host = %key.host, port = key.port, "upstream pool hit");
                conn.upstream = Some(UpstreamConn { key, reused: true, abandoned: false, lease: Some(lease) });
                conn.origin.attach(io, ctx.ring, sock, fixed);
                conn.origin.tls = tls;
                return ready(conn, ctx);
            }
            Acquired::Queued { waits_for } => {
                // Every connection this worker may open to the origin is busy, or another
                // dial is learning its protocol: wait (the pool wakes this slot), within
                // the connect deadline (armed when it first queued).
                ex.upstream_step = UpstreamStep::Queued { waits_for, in_queue: true };
                if !again {
                    let t = ctx.cfg.timeouts.upstream_connect;
                    conn.set_deadline(io, ctx, t);
                }
                super::parked::park_queued(conn, ctx, again);
                return Outcome::Pending;
            }
            Acquired::Connect(lease) => {
                stats::bump(&ctx.stats.pool_misses, 1);
                ex.lease = Some(lease);
            }
        }
    }
    ex.upstream_step = UpstreamStep::Resolving;
    ex.connect_started = Some(ctx.now);
    if !again {
        let t = ctx.cfg.timeouts.upstream_connect;
        conn.set_deadline(io, ctx, t);
    }
    Outcome::Continue
}

/// The origin's addresses (the resolver's cache, pins, or an answer to wait for), minus
/// denied destinations and this proxy's own listeners.
fn resolve(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> Outcome {
    // The address this client reached us at is one of our listeners too, whatever
    // interface it is on (listeners bound to 0.0.0.0).
    let own_addr = conn.client.local_addr().or_else(|| conn.stream.as_ref().and_then(|s| s.local));
    let reach_local = crate::upstream::local::may_reach_local(ctx.cfg.local_targets, conn.peer);
    let Some(ex) = conn.ex.as_mut() else { return failed(500, "no exchange") };
    let ips = match ctx.dns.lookup(&ex.host, io.id(), ctx.now) {
        Lookup::Pending => return Outcome::Pending,
        Lookup::Failed(e) => {
            stats::bump(&ctx.stats.dns_failures, 1);
            return failed(502, e);
        }
        Lookup::Ready(ips) => ips,
    };
    // The deny list, and this machine itself for clients that may not reach it: one
    // refusal, one text, whatever the spelling of the address.
    let denied = |ip: &std::net::IpAddr| {
        crate::acl::any_contains(&ctx.cfg.deny_destinations, *ip) || (!reach_local && ctx.local.contains(*ip))
    };
    if !ips.is_empty() && ips.iter().all(denied) {
        tracing::debug!(conn = %io.id(), host = %ex.host, "destination denied");
        return failed(403, super::DESTINATION_DENIED);
    }
    let addrs: Vec<SocketAddr> = ips
        .iter()
        .filter(|ip| !denied(ip))
        .map(|ip| SocketAddr::new(*ip, ex.port))
        .filter(|a| !is_own_listener(*a, ctx.listeners) && Some(*a) != own_addr)
        .collect();
    if addrs.is_empty() {
        return failed(508, "the target is this proxy itself");
    }
    ex.upstream_step = UpstreamStep::Connecting { addrs, next: 0, last_error: None };
    Outcome::Continue
}

/// The exchange no longer waits for its name (it timed out, failed or closed): the
/// resolver drops a lookup nobody waits for.
pub(crate) fn stop_resolving(conn: &mut Connection, io: &Io, ctx: &mut Ctx<'_>) {
    if let (Phase::Upstream, Some(ex)) = (&conn.phase, conn.ex.as_ref()) {
        if matches!(ex.upstream_step, UpstreamStep::Resolving) {
            ctx.dns.forget(&ex.host, io.id());
        }
    }
}

/// Takes the last connect's result (the leg is ready, or the next address is tried),
/// and dials the next address.
fn connect(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> Outcome {
    let Some(ex) = conn.ex.as_mut() else { return failed(500, "no exchange") };
    let UpstreamStep::Connecting { addrs, next, last_error } = &mut ex.upstream_step else {
        return failed(500, "not connecting");
    };
    if let Dial::Done { result } = std::mem::take(&mut conn.origin.dial) {
        tracing::debug!(conn = %io.id(), addr = %addrs[*next], errno = -result, "upstream connect done");
        if result == 0 {
            if let Some(sock) = &conn.origin.sock {
                let _ = sock.set_nodelay(true);
            }
            match super::tls::after_connect(conn, ctx) {
                Ok(true) => return Outcome::Continue,
                Ok(false) => {}
                Err(why) => return failed(502, why),
            }
            conn.clear_deadline();
            let h2c = conn.ex.as_ref().is_some_and(|ex| prior_knowledge(ex, ctx));
            learned(conn, h2c);
            if h2c && !super::origin_session::become_session(conn, io, ctx) {
                return failed(502, "the cleartext HTTP/2 origin's connection could not be handed over");
            }
            return ready(conn, ctx);
        }
        let err = std::io::Error::from_raw_os_error(-result);
        tracing::info!(conn = %io.id(), host = %ex.host, addr = %addrs[*next], error = %err, "upstream connect failed");
        *last_error = Some(super::CONNECT_FAILED.to_string());
        *next += 1;
        conn.upstream = None;
        drop(conn.origin.detach(io, ctx.ring));
    }
    let Some(&addr) = addrs.get(*next) else {
        let why = last_error.clone().unwrap_or_else(|| "no address to connect to".into());
        return failed(502, why);
    };
    let key = PoolKey { host: ex.host.clone(), port: ex.port, tls: ex.upstream_tls };
    let sock = match Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP)) {
        Ok(s) => TcpStream::from(s),
        Err(e) => return failed(502, format!("cannot create a socket: {e}")),
    };
    let fd = sock.as_raw_fd();
    conn.upstream = Some(UpstreamConn { key, reused: false, abandoned: false, lease: None });
    conn.origin.attach(io, ctx.ring, sock, None);
    tracing::debug!(conn = %io.id(), %addr, "upstream connect");
    ctx.ring.submit(io, tag::CONNECT, Op::Connect { fd, addr }, ctx.pool);
    conn.origin.dial = Dial::Connecting;
    Outcome::Pending
}
