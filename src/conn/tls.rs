//! TLS phases of a connection: detecting a ClientHello, choosing a forged certificate
//! (or passthrough) from its SNI, the client handshake, the upstream handshake with
//! verification, and the plumbing that moves ciphertext between rustls and the slabs.
//!
//! Plaintext keeps flowing through the legs' `input` exactly as for cleartext HTTP; only the
//! socket side changes: reads land in `raw_in` and are decrypted into the legs' `input`,
//! writes are encrypted by rustls and leave from `raw_out`.

use super::http1::{Exchange, TunnelState, UpstreamStep};
use super::leg::Side;
use super::{Connection, Ctx, NextStep, Phase};
use crate::h1;
use crate::tls::{self, TlsLeg};
use rustls::pki_types::ServerName;
use std::borrow::Cow;
use uring::Io;

/// The client's TLS handshake failed: counted, and named as the close reason.
fn tls_failed(conn: &mut Connection, ctx: &Ctx<'_>) {
    crate::stats::bump(&ctx.stats.tls_handshake_failures, 1);
    conn.closing(super::CloseReason::TlsFailed);
}

/// First bytes of a connection (or of an intercepted tunnel).
pub(crate) fn detect(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.reading {
        return NextStep::Wait;
    }
    let data = conn.client.input.data(ctx.pool);
    if data.len() < 2 {
        if conn.client.ended() && conn.client_stash.is_none() {
            return NextStep::Close;
        }
        return conn.read(io, ctx, Side::Client);
    }
    if tls::looks_like_tls(data) {
        conn.acceptor = Some(Box::default());
        conn.accepted_bytes = 0;
        conn.phase = Phase::TlsAccept;
        return NextStep::Continue;
    }
    if let Some((host, port)) = conn.tunnel_target.as_deref().map(|t| (t.host.clone(), t.port)) {
        // Not TLS inside an intercepted CONNECT: relay it untouched.
        return start_raw_tunnel(conn, ctx, host, port);
    }
    if ctx.cfg.h2.enabled && data[0] == b'P' {
        // Cleartext HTTP/2 with prior knowledge (RFC 9113 §3.3): its preface.
        match crate::http2::preface_state(data) {
            Some(true) => return super::http2::start(conn, io, ctx),
            // `PRI * HTTP/2.0` then something else: an HTTP/2 client with a broken
            // preface, answered by `h2` (GOAWAY PROTOCOL_ERROR), not as HTTP/1.1.
            Some(false) if crate::http2::claims_http2(data) => return super::http2::start(conn, io, ctx),
            None if !conn.client.ended() => return conn.read(io, ctx, Side::Client),
            _ => {}
        }
    }
    conn.phase = Phase::RequestHead;
    NextStep::Continue
}

/// Relays the client's bytes (already in `client.input`) to host:port without interception.
fn start_raw_tunnel(conn: &mut Connection, ctx: &Ctx<'_>, host: String, port: u16) -> NextStep {
    let facts = super::log::Facts::new(conn, ctx.now, "TUNNEL", format!("{host}:{port}"));
    let tunnel = TunnelState { established_sent: true, ..Default::default() };
    conn.ex = Some(Box::new(Exchange::tunnel(&host, port, tunnel, facts)));
    conn.phase = Phase::Upstream;
    NextStep::Continue
}

/// Reads the ClientHello, then picks passthrough or a forged certificate.
pub(crate) fn accept(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.reading {
        return NextStep::Wait;
    }
    let Some(acceptor) = conn.acceptor.as_mut() else {
        return NextStep::Close;
    };
    let data = conn.client.input.data(ctx.pool);
    match tls::read_client_hello(acceptor, data, &mut conn.accepted_bytes) {
        Err(tls::HelloError::Unreadable) => NextStep::Close,
        Ok(None) => {
            if conn.client.ended() || conn.client.input.room() == 0 {
                tls_failed(conn, ctx);
                return NextStep::Close;
            }
            conn.read(io, ctx, Side::Client)
        }
        Err(tls::HelloError::Refused) => {
            tls_failed(conn, ctx);
            NextStep::Close
        }
        Ok(Some(accepted)) => {
            conn.acceptor = None;
            let sni = accepted.client_hello().server_name().map(|s| s.to_ascii_lowercase());
            conn.sni = sni.clone().map(String::into_boxed_str);
            if let Some(name) = sni.as_deref() {
                if tls::is_passthrough(name, &ctx.cfg.passthrough) {
                    let port = conn.original_dst.map_or(443, |a| a.port());
                    let (host, port) = conn
                        .tunnel_target
                        .as_deref()
                        .map_or_else(|| (name.to_string(), port), |t| (t.host.clone(), t.port));
                    crate::stats::bump(&ctx.stats.tls_passthrough, 1);
                    return start_raw_tunnel(conn, ctx, host, port);
                }
            }
            let cert_name = match (&sni, conn.tunnel_target.as_deref()) {
                (Some(n), _) => n.clone(),
                (None, Some(t)) => t.host.clone(),
                (None, None) if conn.original_dst.is_some() => {
                    conn.original_dst.map(|a| a.ip().to_string()).unwrap_or_default()
                }
                (None, None) => {
                    conn.client.local_addr().map(|a| a.ip().to_string()).unwrap_or_else(|| "localhost".into())
                }
            };
            let config = match ctx.minter.config_for(&cert_name) {
                Ok(c) => c,
                Err(_) => {
                    tls_failed(conn, ctx);
                    return NextStep::Close;
                }
            };
            match accepted.into_connection(config) {
                Ok(server) => {
                    let mut leg = Box::new(TlsLeg::new(rustls::Connection::Server(server)));
                    leg.raw_in = std::mem::take(&mut conn.client.input);
                    leg.raw_in.start += conn.accepted_bytes;
                    conn.client.tls = Some(leg);
                    conn.phase = Phase::TlsHandshake;
                    NextStep::Continue
                }
                Err(_) => {
                    tls_failed(conn, ctx);
                    NextStep::Close
                }
            }
        }
    }
}

/// Drives the client handshake to completion.
pub(crate) fn handshake(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    let Some(t) = conn.client.tls.as_mut() else {
        return NextStep::Close;
    };
    t.pump(ctx.pool);
    if t.failed.is_some() {
        tls_failed(conn, ctx);
        // Send the alert rustls prepared, then close.
        if conn.client.writing.is_none() && conn.flush_tls(io, ctx, Side::Client) {
            conn.phase = Phase::Respond;
            return NextStep::Wait;
        }
        return NextStep::Close;
    }
    if conn.client.writing.is_none() {
        conn.flush_tls(io, ctx, Side::Client);
    }
    let Some(t) = conn.client.tls.as_ref() else {
        return NextStep::Close;
    };
    if !t.session.is_handshaking() {
        if conn.client.writing.is_some() {
            return NextStep::Wait;
        }
        crate::stats::bump(&ctx.stats.tls_handshakes, 1);
        if t.session.alpn_protocol() == Some(b"h2") {
            return super::http2::start(conn, io, ctx);
        }
        conn.phase = Phase::RequestHead;
        let t = ctx.cfg.timeouts.request_head;
        conn.set_deadline(io, ctx, t);
        return NextStep::Continue;
    }
    if conn.client.reading {
        return NextStep::Wait;
    }
    if conn.client.ended() {
        tls_failed(conn, ctx);
        return NextStep::Close;
    }
    conn.read(io, ctx, Side::Client)
}

/// Starts TLS toward the origin on a fresh TCP connection.
pub(crate) fn start_upstream(conn: &mut Connection, ctx: &mut Ctx<'_>, host: &str) -> Result<(), String> {
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
    // `h2` is offered unless the request offers an Upgrade (HTTP/1.1 carries it) or the
    // operator turned HTTP/2 towards origins off.
    let upgrade = conn.ex.as_ref().is_some_and(|e| e.h1.upgrade.is_some() || e.is_connect);
    let config = if ctx.cfg.h2.origins && !upgrade { ctx.upstream_tls } else { ctx.upstream_tls_h1 };
    let client = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    conn.origin.tls = Some(Box::new(TlsLeg::new(rustls::Connection::Client(client))));
    Ok(())
}

/// One step of the upstream handshake. `Ok(true)` when done.
pub(crate) fn upstream_handshake(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> Result<NextStep, String> {
    let Some(t) = conn.origin.tls.as_mut() else {
        return Err("no upstream TLS session".into());
    };
    t.pump(ctx.pool);
    if let Some(e) = &t.failed {
        let (label, why) = tls::upstream::failure_reason(e);
        ctx.stats.verify_failure(label);
        return Err(why);
    }
    if conn.origin.writing.is_none() {
        conn.flush_tls(io, ctx, Side::Origin);
    }
    let Some(t) = conn.origin.tls.as_ref() else {
        return Err("no upstream TLS session".into());
    };
    if !t.session.is_handshaking() && conn.origin.writing.is_none() {
        return Ok(NextStep::Continue);
    }
    if conn.origin.reading || conn.origin.writing.is_some() {
        return Ok(NextStep::Wait);
    }
    if conn.origin.ended() || t.raw_eof {
        return Err("upstream closed the connection during the TLS handshake".into());
    }
    Ok(match conn.read(io, ctx, Side::Origin) {
        NextStep::Continue => NextStep::Continue,
        other => other,
    })
}

/// The target of a request that arrived over intercepted TLS: the CONNECT authority,
/// then absolute-form, then Host (port 443 unless given), then SNI.
pub(crate) fn request_target<'a>(
    conn: &'a Connection,
    head: &'a h1::RequestHead<'_>,
) -> Result<(Cow<'a, str>, u16), h1::H1Error> {
    if let Some(t) = conn.tunnel_target.as_deref() {
        return Ok((Cow::Borrowed(&t.host), t.port));
    }
    if let h1::RequestTarget::Absolute { authority, https, .. } = &head.target {
        return Ok((Cow::Borrowed(&authority.host), authority.port_or(if *https { 443 } else { 80 })));
    }
    let port = conn.original_dst.map_or(443, |a| a.port());
    if let Some(a) = &head.host {
        return Ok((Cow::Borrowed(&a.host), a.port_or(port)));
    }
    if let Some(s) = &conn.sni {
        return Ok((Cow::Borrowed(s), port));
    }
    if let Some(a) = conn.original_dst {
        return Ok((Cow::Owned(a.ip().to_string()), a.port()));
    }
    head.upstream_target().map(|(h, p, _)| (Cow::Borrowed(h), p))
}

/// For `UpstreamStep` users: the step after a TCP connect when the origin needs TLS.
pub(crate) fn after_connect(conn: &mut Connection, ctx: &mut Ctx<'_>) -> Result<bool, String> {
    let Some(ex) = conn.ex.as_mut() else { return Ok(false) };
    if !ex.upstream_tls {
        return Ok(false);
    }
    let host = ex.host.clone();
    ex.upstream_step = UpstreamStep::TlsHandshake;
    start_upstream(conn, ctx, &host)?;
    Ok(true)
}
