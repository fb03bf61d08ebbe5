//! TLS phases of a connection: detecting a ClientHello, choosing a forged certificate
//! (or passthrough) from its SNI, the client handshake, the upstream handshake with
//! verification, and the plumbing that moves ciphertext between rustls and the slabs.
//!
//! Plaintext keeps flowing through `cin`/`uin` exactly as for cleartext HTTP; only the
//! socket side changes: reads land in `raw_in` and are decrypted into `cin`/`uin`,
//! writes are encrypted by rustls and leave from `raw_out`.

use super::buf::BufId;
use super::http1::{Exchange, TunnelState, UpstreamStep};
use super::{tag, Connection, Ctx, NextStep, Phase, WriteJob};
use crate::h1;
use crate::tls::{self, TlsLeg};
use rustls::pki_types::ServerName;
use std::os::fd::AsRawFd;
use uring::{Io, Op, Slab};

/// A TLS record header: handshake (0x16), major version 3.
fn looks_like_tls(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x16 && bytes[1] == 0x03
}

/// First bytes of a connection (or of an intercepted tunnel).
pub(crate) fn detect(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.io.client_read {
        return NextStep::Wait;
    }
    let data = conn.cin.data(ctx.pool);
    if data.len() < 2 {
        if conn.io.client_eof || conn.io.client_error.is_some() {
            return NextStep::Close;
        }
        return conn.read_client(io, ctx);
    }
    if looks_like_tls(data) {
        conn.acceptor = Some(Box::default());
        conn.accepted_bytes = 0;
        conn.phase = Phase::TlsAccept;
        return NextStep::Continue;
    }
    if let Some((host, port)) = conn.tunnel_target.as_deref().cloned() {
        // Not TLS inside an intercepted CONNECT: relay it untouched.
        return start_raw_tunnel(conn, ctx, host, port);
    }
    conn.phase = Phase::RequestHead;
    NextStep::Continue
}

/// Relays the client's bytes (already in `cin`) to host:port without interception.
fn start_raw_tunnel(conn: &mut Connection, ctx: &Ctx<'_>, host: String, port: u16) -> NextStep {
    let facts = super::log::Facts::new(conn, ctx.now, "TUNNEL", format!("{host}:{port}"));
    let tunnel = TunnelState { established_sent: true, ..Default::default() };
    conn.ex = Some(Box::new(Exchange::tunnel(host, port, tunnel, facts)));
    conn.phase = Phase::Upstream;
    NextStep::Continue
}

/// Reads the ClientHello, then picks passthrough or a forged certificate.
pub(crate) fn accept(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.io.client_read {
        return NextStep::Wait;
    }
    let Some(acceptor) = conn.acceptor.as_mut() else {
        return NextStep::Close;
    };
    let data = conn.cin.data(ctx.pool);
    if conn.accepted_bytes < data.len() {
        let mut rest = &data[conn.accepted_bytes..];
        match acceptor.read_tls(&mut rest) {
            Ok(n) => conn.accepted_bytes += n,
            Err(_) => return NextStep::Close,
        }
    }
    match acceptor.accept() {
        Ok(None) => {
            if conn.io.client_eof || conn.io.client_error.is_some() || conn.cin.room() == 0 {
                crate::stats::bump(&ctx.stats.tls_handshake_failures, 1);
                return NextStep::Close;
            }
            conn.read_client(io, ctx)
        }
        Err(_) => {
            crate::stats::bump(&ctx.stats.tls_handshake_failures, 1);
            NextStep::Close
        }
        Ok(Some(accepted)) => {
            conn.acceptor = None;
            let sni = accepted.client_hello().server_name().map(|s| s.to_ascii_lowercase());
            conn.sni = sni.clone();
            if let Some(name) = sni.as_deref() {
                if tls::is_passthrough(name, &ctx.cfg.passthrough) {
                    let port = conn.original_dst.map_or(443, |a| a.port());
                    let (host, port) =
                        conn.tunnel_target.as_deref().cloned().unwrap_or_else(|| (name.to_string(), port));
                    crate::stats::bump(&ctx.stats.tls_passthrough, 1);
                    return start_raw_tunnel(conn, ctx, host, port);
                }
            }
            let cert_name = match (&sni, conn.tunnel_target.as_deref()) {
                (Some(n), _) => n.clone(),
                (None, Some((host, _))) => host.clone(),
                (None, None) if conn.original_dst.is_some() => {
                    conn.original_dst.map(|a| a.ip().to_string()).unwrap_or_default()
                }
                (None, None) => {
                    conn.client.local_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "localhost".into())
                }
            };
            let config = match ctx.minter.config_for(&cert_name) {
                Ok(c) => c,
                Err(_) => {
                    crate::stats::bump(&ctx.stats.tls_handshake_failures, 1);
                    return NextStep::Close;
                }
            };
            match accepted.into_connection(config) {
                Ok(server) => {
                    let mut leg = Box::new(TlsLeg::new(rustls::Connection::Server(server)));
                    leg.raw_in = std::mem::take(&mut conn.cin);
                    leg.raw_in.start += conn.accepted_bytes;
                    conn.ctls = Some(leg);
                    conn.phase = Phase::TlsHandshake;
                    NextStep::Continue
                }
                Err(_) => {
                    crate::stats::bump(&ctx.stats.tls_handshake_failures, 1);
                    NextStep::Close
                }
            }
        }
    }
}

/// Drives the client handshake to completion.
pub(crate) fn handshake(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    let Some(t) = conn.ctls.as_mut() else {
        return NextStep::Close;
    };
    t.pump(ctx.pool);
    if t.failed.is_some() {
        crate::stats::bump(&ctx.stats.tls_handshake_failures, 1);
        // Send the alert rustls prepared, then close.
        if conn.io.client_write.is_none() && conn.flush_client_tls(io, ctx) {
            conn.phase = Phase::Respond { close: true };
            return NextStep::Wait;
        }
        return NextStep::Close;
    }
    if conn.io.client_write.is_none() {
        conn.flush_client_tls(io, ctx);
    }
    let Some(t) = conn.ctls.as_ref() else {
        return NextStep::Close;
    };
    if !t.session.is_handshaking() {
        if conn.io.client_write.is_some() {
            return NextStep::Wait;
        }
        crate::stats::bump(&ctx.stats.tls_handshakes, 1);
        conn.phase = Phase::RequestHead;
        let t = ctx.cfg.timeouts.request_head;
        conn.set_deadline(io, ctx, t);
        return NextStep::Continue;
    }
    if conn.io.client_read {
        return NextStep::Wait;
    }
    if conn.io.client_eof || conn.io.client_error.is_some() {
        crate::stats::bump(&ctx.stats.tls_handshake_failures, 1);
        return NextStep::Close;
    }
    conn.read_client(io, ctx)
}

/// Starts TLS toward the origin on a fresh TCP connection.
pub(crate) fn start_upstream(conn: &mut Connection, ctx: &mut Ctx<'_>, host: &str) -> Result<(), String> {
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
    let client = rustls::ClientConnection::new(ctx.upstream_tls.clone(), name).map_err(|e| e.to_string())?;
    conn.utls = Some(Box::new(TlsLeg::new(rustls::Connection::Client(client))));
    Ok(())
}

/// One step of the upstream handshake. `Ok(true)` when done.
pub(crate) fn upstream_handshake(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> Result<NextStep, String> {
    let Some(t) = conn.utls.as_mut() else {
        return Err("no upstream TLS session".into());
    };
    t.pump(ctx.pool);
    if let Some(e) = &t.failed {
        let (label, why) = tls::upstream::failure_reason(e);
        ctx.stats.verify_failure(label);
        return Err(why);
    }
    if conn.io.up_write.is_none() {
        conn.flush_up_tls(io, ctx);
    }
    let Some(t) = conn.utls.as_ref() else {
        return Err("no upstream TLS session".into());
    };
    if !t.session.is_handshaking() && conn.io.up_write.is_none() {
        return Ok(NextStep::Continue);
    }
    if conn.io.up_read || conn.io.up_write.is_some() {
        return Ok(NextStep::Wait);
    }
    if conn.io.up_eof || conn.io.up_error.is_some() || t.raw_eof {
        return Err("upstream closed the connection during the TLS handshake".into());
    }
    Ok(match conn.read_upstream(io, ctx) {
        NextStep::Continue => NextStep::Continue,
        other => other,
    })
}

/// A raw (ciphertext) read finished on one leg.
pub(crate) fn raw_read_done(conn: &mut Connection, ctx: &mut Ctx<'_>, client: bool, result: i32, slab: Option<Slab>) {
    let leg = if client { conn.ctls.as_mut() } else { conn.utls.as_mut() };
    let Some(t) = leg else {
        if let Some(s) = slab {
            ctx.pool.release(s);
        }
        return;
    };
    if let Some(s) = slab {
        t.raw_in.give_back(s);
    }
    if result > 0 {
        t.raw_in.filled(result as usize);
    } else if result == 0 {
        t.raw_eof = true;
    } else if client {
        conn.io.client_error = Some(-result);
    } else {
        conn.io.up_error = Some(-result);
    }
    if let Some(t) = if client { conn.ctls.as_mut() } else { conn.utls.as_mut() } {
        t.pump(ctx.pool);
    }
}

impl Connection {
    /// Copies plaintext from one of the buffers into the leg's TLS session.
    pub(crate) fn encrypt_from(&mut self, ctx: &mut Ctx<'_>, src: BufId, offset: usize, len: usize, client: bool) {
        let leg = if client { self.ctls.as_mut() } else { self.utls.as_mut() };
        let Some(t) = leg else { return };
        let buf = match src {
            BufId::Cin => &self.cin,
            BufId::Uin => &self.uin,
            BufId::Out => &self.out,
            BufId::ClientRawOut | BufId::UpRawOut => return,
        };
        let start = buf.start;
        // `offset` is an absolute slab offset; the buffer's data view starts at `start`,
        // and the caller has already advanced `start` past these bytes, so read them
        // through the slab directly.
        if let Some(bytes) = buf.slab_bytes(ctx.pool) {
            if offset + len <= bytes.len() {
                t.encrypt(&bytes[offset..offset + len]);
            }
        }
        let _ = start;
        if src == BufId::Out {
            self.out.release(ctx.pool);
        }
    }

    /// Sends pending ciphertext to the client. True when a write was submitted.
    pub(crate) fn flush_client_tls(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) -> bool {
        self.flush_tls(io, ctx, true)
    }

    /// Sends pending ciphertext to the origin. True when a write was submitted.
    pub(crate) fn flush_up_tls(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) -> bool {
        self.flush_tls(io, ctx, false)
    }

    fn flush_tls(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, client: bool) -> bool {
        let (fd, busy) = if client {
            (Some(self.client.as_raw_fd()), self.io.client_write.is_some())
        } else {
            (self.up_fd(), self.io.up_write.is_some())
        };
        let Some(fd) = fd.filter(|_| !busy) else { return false };
        let leg = if client { self.ctls.as_mut() } else { self.utls.as_mut() };
        let Some(t) = leg else { return false };
        let n = t.fill_out(ctx.pool);
        if n == 0 {
            return false;
        }
        let offset = t.raw_out.start;
        let slab = t.raw_out.lend();
        let (op_tag, src) =
            if client { (tag::CLIENT_WRITE, BufId::ClientRawOut) } else { (tag::UP_WRITE, BufId::UpRawOut) };
        ctx.ring.submit(io, op_tag, Op::Send { fd, slab, offset, len: n }, ctx.pool);
        let job = Some(WriteJob { src, offset: offset as u32, len: n as u32 });
        if client {
            self.io.client_write = job;
        } else {
            self.io.up_write = job;
        }
        true
    }
}

/// The target of a request that arrived over intercepted TLS: the CONNECT authority,
/// then absolute-form, then Host (port 443 unless given), then SNI.
pub(crate) fn request_target(conn: &Connection, head: &h1::RequestHead) -> Result<(String, u16), h1::H1Error> {
    if let Some((h, p)) = conn.tunnel_target.as_deref() {
        return Ok((h.clone(), *p));
    }
    if let h1::RequestTarget::Absolute { authority, https, .. } = &head.target {
        return Ok((authority.host.clone(), authority.port_or(if *https { 443 } else { 80 })));
    }
    let port = conn.original_dst.map_or(443, |a| a.port());
    if let Some(a) = &head.host {
        return Ok((a.host.clone(), a.port_or(port)));
    }
    if let Some(s) = &conn.sni {
        return Ok((s.clone(), port));
    }
    if let Some(a) = conn.original_dst {
        return Ok((a.ip().to_string(), a.port()));
    }
    head.upstream_target().map(|(h, p, _)| (h, p))
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
