//! The shared upstream leg: reuse a pooled connection, or resolve the name (without
//! blocking the ring) and connect to each address in turn. When it is ready the
//! exchange resumes where it left off: `SendRequest` for a request, `Tunnel` for CONNECT.

use super::http1::UpstreamStep;
use super::leg::Dial;
use super::{tag, Connection, Ctx, NextStep, Phase, UpstreamConn};
use crate::h1;
use crate::stats;
use crate::upstream::dns::Lookup;
use crate::upstream::is_own_listener;
use crate::upstream::pool::{Acquired, PoolKey, Pooled, Want};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use uring::{Io, Op};

/// Where the exchange goes once the upstream is ready.
fn resume(conn: &mut Connection, ctx: &mut Ctx<'_>) -> NextStep {
    let connect = conn.ex.as_ref().is_some_and(|e| e.is_connect);
    // A new connection's place in its origin's count now goes with the socket.
    if let (Some(ex), Some(up)) = (conn.ex.as_mut(), conn.upstream.as_mut()) {
        if let Some(lease) = ex.lease.take() {
            up.lease = Some(lease);
        }
    }
    // A finished DNS + TCP (+ TLS) leg: time it (pool hits have no start time).
    if let Some(started) = conn.ex.as_mut().and_then(|ex| ex.connect_started.take()) {
        ctx.stats.upstream_connect.observe(ctx.now.saturating_duration_since(started));
    }
    conn.phase = if connect { Phase::Tunnel } else { Phase::SendRequest };
    NextStep::Continue
}

fn fail(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, status: u16, why: &str) -> NextStep {
    conn.abandon_upstream(io, ctx);
    let r = h1::error_response(status, why);
    conn.respond(io, ctx, &r, true)
}

/// One step of finding an upstream connection.
pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.origin.dial == Dial::Connecting {
        return NextStep::Wait;
    }
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    match &mut ex.upstream_step {
        UpstreamStep::Start | UpstreamStep::Queued => {
            let again = matches!(ex.upstream_step, UpstreamStep::Queued);
            if !ex.is_connect {
                let key = PoolKey { host: ex.host.clone(), port: ex.port, tls: ex.upstream_tls };
                let retryable = ex.method.is_idempotent() && matches!(ex.req_body, super::http1::Body::None);
                let want = Want { retryable, fresh_only: ex.fresh_only, again };
                match ctx.upstreams.acquire(&key, ctx.now, want, io.id()) {
                    Acquired::Pooled(pooled) => {
                        stats::bump(&ctx.stats.pool_hits, 1);
                        tracing::debug!(conn = %io.id(), host = %key.host, port = key.port, "upstream pool hit");
                        let Pooled { sock, tls, lease } = pooled;
                        conn.upstream = Some(UpstreamConn { key, reused: true, abandoned: false, lease: Some(lease) });
                        conn.origin.sock = Some(sock);
                        conn.origin.tls = tls;
                        return resume(conn, ctx);
                    }
                    Acquired::Queued => {
                        // Every connection this worker may open to the origin is busy: wait
                        // for one (woken by the worker), within the connect deadline.
                        if !again {
                            ex.upstream_step = UpstreamStep::Queued;
                            let t = ctx.cfg.timeouts.upstream_connect;
                            conn.set_deadline(io, ctx, t);
                        }
                        return NextStep::Wait;
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
            NextStep::Continue
        }
        UpstreamStep::Resolving => {
            let host = ex.host.clone();
            let port = ex.port;
            match ctx.dns.lookup(&host, io.id(), ctx.now) {
                Lookup::Pending => NextStep::Wait,
                Lookup::Failed(e) => {
                    stats::bump(&ctx.stats.dns_failures, 1);
                    fail(conn, io, ctx, 502, &e)
                }
                Lookup::Ready(ips) => {
                    // The address this client reached us at is one of our listeners too,
                    // whatever interface it is on (listeners bound to 0.0.0.0).
                    let own_addr = conn.client.local_addr();
                    if !ips.is_empty() && ips.iter().all(|ip| crate::acl::any_contains(&ctx.cfg.deny_destinations, *ip))
                    {
                        return fail(conn, io, ctx, 403, "destination address is on the deny list");
                    }
                    let ips: Vec<_> = ips
                        .into_iter()
                        .filter(|ip| !crate::acl::any_contains(&ctx.cfg.deny_destinations, *ip))
                        .collect();
                    let addrs: Vec<SocketAddr> = ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .filter(|a| !is_own_listener(*a, ctx.listeners) && Some(*a) != own_addr)
                        .collect();
                    if addrs.is_empty() {
                        return fail(conn, io, ctx, 508, "the target is this proxy itself");
                    }
                    ex.upstream_step = UpstreamStep::Connecting { addrs, next: 0, last_error: None };
                    NextStep::Continue
                }
            }
        }
        UpstreamStep::TlsHandshake => match super::tls::upstream_handshake(conn, io, ctx) {
            Ok(NextStep::Continue) if conn.origin.tls.as_ref().is_some_and(|t| !t.session.is_handshaking()) => {
                conn.clear_deadline();
                resume(conn, ctx)
            }
            Ok(step) => step,
            Err(why) => fail(conn, io, ctx, 502, &why),
        },
        UpstreamStep::Connecting { addrs, next, last_error } => {
            if let Dial::Done { result } = std::mem::take(&mut conn.origin.dial) {
                tracing::debug!(conn = %io.id(), addr = %addrs[*next], errno = -result, "upstream connect done");
                if result == 0 {
                    if let Some(sock) = &conn.origin.sock {
                        let _ = sock.set_nodelay(true);
                    }
                    match super::tls::after_connect(conn, ctx) {
                        Ok(true) => return NextStep::Continue,
                        Ok(false) => {}
                        Err(why) => return fail(conn, io, ctx, 502, &why),
                    }
                    conn.clear_deadline();
                    return resume(conn, ctx);
                }
                let err = std::io::Error::from_raw_os_error(-result);
                *last_error = Some(format!("cannot connect to {}: {}", addrs[*next], err));
                *next += 1;
                conn.upstream = None;
                conn.origin.sock = None;
            }
            if *next >= addrs.len() {
                let why = last_error.clone().unwrap_or_else(|| "no address to connect to".into());
                return fail(conn, io, ctx, 502, &why);
            }
            let addr = addrs[*next];
            let key = PoolKey { host: ex.host.clone(), port: ex.port, tls: ex.upstream_tls };
            let sock = match Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP)) {
                Ok(s) => TcpStream::from(s),
                Err(e) => return fail(conn, io, ctx, 502, &format!("cannot create a socket: {e}")),
            };
            let fd = sock.as_raw_fd();
            conn.upstream = Some(UpstreamConn { key, reused: false, abandoned: false, lease: None });
            conn.origin.sock = Some(sock);
            tracing::debug!(conn = %io.id(), %addr, "upstream connect");
            ctx.ring.submit(io, tag::CONNECT, Op::Connect { fd, addr }, ctx.pool);
            conn.origin.dial = Dial::Connecting;
            NextStep::Wait
        }
    }
}
