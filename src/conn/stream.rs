//! The exchange of one HTTP/2 stream: a connection slot whose client leg is a link to its
//! session (`http2::links`) instead of a socket, running the same HTTP/1.1 state machine
//! as any client, so every rule of that machine (access, authentication, forwarding
//! headers, the upstream pool, retries, timeouts, tunnels and upgrades, the access log)
//! applies to every stream unchanged.
//!
//! The client leg's I/O goes through the link: a read takes the request bytes the session
//! translated (or waits: the session wakes this slot when it adds some); a write hands
//! the response bytes to the session and completes once the link has room for more, which
//! is how a slow HTTP/2 reader slows the origin. The exchange serves one request, then
//! closes; closing tells the session (and frees the link when the session let go first).

use super::buf::BufId;
use super::leg::{Side, WriteJob};
use super::{Connection, Ctx, NextStep};
use crate::http2::links::LinkId;
use std::time::Instant;

/// The client side of a stream's exchange.
#[derive(Debug)]
pub(crate) struct StreamSide {
    pub link: LinkId,
    /// The HTTP/2 connection is intercepted TLS.
    pub tls: bool,
    /// Where the client reached this proxy (one of our own addresses, never a target).
    pub local: Option<std::net::SocketAddr>,
}

/// The exchange slot for a new stream of `session`: it inherits what the client
/// connection knows (peer, the transparent destination, the SNI and CONNECT target of an
/// intercepted session) and `local`, where the client reached this proxy.
pub(crate) fn exchange_for(
    session: &Connection,
    link: LinkId,
    local: Option<std::net::SocketAddr>,
    now: Instant,
) -> Connection {
    let mut c = Connection::detached(session.role, session.peer, now);
    c.protocol = crate::protocol::Protocol::H2;
    c.original_dst = session.original_dst;
    c.sni = session.sni.clone();
    c.tunnel_target = session.tunnel_target.as_deref().map(|t| Box::new(t.clone()));
    c.stream = Some(Box::new(StreamSide { link, tls: session.intercepted(), local }));
    c
}

impl Connection {
    /// The link of a stream's exchange, if this is one.
    pub(crate) fn link(&self) -> Option<LinkId> {
        self.stream.as_ref().map(|s| s.link)
    }

    /// The link standing in for `side`'s socket, if one does: a stream's exchange reads
    /// its request from (and writes its response to) its session through `link()`; an
    /// exchange on an HTTP/2 origin session does the same with its origin through
    /// `origin_link()`. Either way the exchange reads `to_exchange` and writes `to_session`.
    pub(crate) fn link_of(&self, side: Side) -> Option<LinkId> {
        match side {
            Side::Client => self.link(),
            Side::Origin => self.origin_link(),
        }
    }

    /// A read of `side` through its link: the bytes waiting in it (`Continue`), its end,
    /// or `Wait` until the session wakes this slot.
    pub(crate) fn read_via_link(&mut self, ctx: &mut Ctx<'_>, side: Side, link: LinkId) -> NextStep {
        let Some(l) = ctx.links.get(link).filter(|l| !l.cancelled) else {
            self.leg_mut(side).fail(libc::ECONNRESET);
            return NextStep::Continue;
        };
        let pending = l.pending_for_exchange();
        if pending.is_empty() {
            if l.to_exchange_end {
                self.leg_mut(side).eof = true;
                return NextStep::Continue;
            }
            return NextStep::Wait;
        }
        let leg = match side {
            Side::Client => &mut self.client,
            Side::Origin => &mut self.origin,
        };
        let Some(room) = leg.input.room_mut(ctx.pool) else { return NextStep::Wait };
        let n = room.len().min(pending.len());
        room[..n].copy_from_slice(&pending[..n]);
        leg.input.filled(n);
        l.taken_by_exchange(n);
        if side == Side::Client {
            self.bytes_in += n as u64;
        }
        if std::mem::take(&mut l.session_waits_for_room) {
            l.wake_session(ctx.wakes);
        }
        NextStep::Continue
    }

    /// A write to `side` through its link: the bytes go into the link now; the write
    /// completes (`link_progress`) once the link has room: in the same run when it still
    /// has (the worker's `drive` runs the exchange on at once), else when the session,
    /// having taken bytes out, wakes this slot.
    pub(crate) fn write_via_link(
        &mut self,
        ctx: &mut Ctx<'_>,
        side: Side,
        link: LinkId,
        src: BufId,
        offset: usize,
        len: usize,
    ) {
        let bytes = match src {
            BufId::Out => self.out.slab_bytes(ctx.pool),
            BufId::In(s) => self.leg(s).input.slab_bytes(ctx.pool),
            BufId::RawOut(_) => None,
        };
        match ctx.links.get(link) {
            Some(l) => {
                if let Some(b) = bytes.and_then(|b| b.get(offset..offset + len)) {
                    l.to_session.extend_from_slice(b);
                }
                l.wake_session(ctx.wakes);
            }
            None => self.leg_mut(side).fail(libc::EPIPE),
        }
        self.leg_mut(side).writing = Some(WriteJob { src, offset: offset as u32, len: len as u32 });
    }

    /// On every run of an exchange: completes a write through a link once the link has
    /// room (or is gone), as a socket's write completion would. True when one completed.
    pub(crate) fn link_progress(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut completed = false;
        for side in [Side::Client, Side::Origin] {
            let Some(link) = self.link_of(side) else { continue };
            let Some(job) = self.leg(side).writing else { continue };
            let room = match ctx.links.get(link) {
                Some(l) if l.cancelled => {
                    self.leg_mut(side).fail(libc::EPIPE);
                    true
                }
                // Woken by the session once it took bytes out (`Link::wake_exchange`).
                Some(l) => l.exchange_write_completes(),
                None => true,
            };
            if !room {
                continue;
            }
            self.leg_mut(side).writing = None;
            if job.src == BufId::Out {
                self.out.release(ctx.pool);
            }
            completed = true;
        }
        completed
    }

    /// The exchange half-closes its side towards the client (a tunnel's origin finished).
    pub(crate) fn end_link(&mut self, ctx: &mut Ctx<'_>) {
        let Some(link) = self.link() else { return };
        if let Some(l) = ctx.links.get(link) {
            l.to_session_end = true;
            l.wake_session(ctx.wakes);
        }
    }

    /// The exchange's slot closes: the session learns it; the link is freed when the
    /// session let go of it already.
    pub(crate) fn leave_link(&mut self, ctx: &mut Ctx<'_>) {
        let Some(link) = self.link() else { return };
        let Some(l) = ctx.links.get(link) else { return };
        l.exchange_gone = true;
        if l.session.is_none() {
            ctx.links.free(link);
        } else {
            l.wake_session(ctx.wakes);
        }
    }
}
