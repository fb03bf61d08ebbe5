//! HTTP/2 origin sessions as slots of their own (`Phase::H2Origin`), and the exchange's
//! side of them: an origin leg that is a link instead of a socket.
//!
//! An exchange to an https origin, or to a cleartext origin listed in
//! `h2.cleartext_origins`, asks the worker's registry (`http2::origins::Origins`) for a
//! session with a free stream before the pool. With none, it dials as before, offering
//! `h2` and `http/1.1`; when the origin picks `h2` (or, in cleartext, as soon as the TCP
//! connect is done: prior knowledge, the session's first bytes are the preface), the
//! exchange hands its socket and TLS session to a new session slot (`become_session`)
//! and talks to it through a link from then on. The session slot runs `h2`'s client over the origin leg exactly as
//! a client session runs its server over the client leg (`conn::http2`).

use super::leg::{Leg, Side};
use super::{CloseReason, Connection, Ctx, NextStep, Phase, UpstreamConn};
use crate::http2::keepalive::KeepAlive;
use crate::http2::links::LinkId;
use crate::http2::origin::OriginSession;
use crate::http2::origins::SessionView;
use crate::stats;
use crate::upstream::pool::PoolKey;
use uring::Io;

/// An origin session slot's state.
#[derive(Debug)]
pub(crate) struct OriginSide {
    pub session: OriginSession,
    /// Since when the session has had no stream (`pool.idle_timeout` counts from there).
    pub idle_since: Option<std::time::Instant>,
}

/// Before the pool: a stream on an open HTTP/2 session to this origin, if one has room.
/// True when the exchange's origin leg is now a link to it.
pub(crate) fn attach(conn: &mut Connection, io: &Io, ctx: &mut Ctx<'_>, key: &PoolKey) -> bool {
    let patience = ctx.cfg.timeouts.upstream_connect;
    let Some((token, session)) = ctx.origins.find(key, ctx.now, patience) else { return false };
    // A session decided in this turn has no slot yet: the worker names it in the link
    // when it inserts it.
    let link = match session {
        Some(s) => ctx.links.open(s),
        None => ctx.links.open_unowned(),
    };
    if let Some(l) = ctx.links.get(link) {
        l.exchange = Some(io.id());
    }
    ctx.origins.give(key, token, link);
    if let Some(s) = session {
        ctx.wake(s);
    }
    if let Some(ex) = conn.ex.as_mut() {
        ex.origin_link = Some(link);
    }
    conn.upstream = Some(UpstreamConn { key: key.clone(), reused: true, abandoned: false, lease: None });
    stats::bump(&ctx.stats.pool_hits, 1);
    true
}

/// The origin picked `h2` on this exchange's fresh connection (or is a cleartext origin
/// listed in `h2.cleartext_origins`, just connected): the socket, its TLS session if any
/// and its lease go to a new session slot, and the exchange's origin leg becomes a link
/// to it. False (nothing changed) while an operation still names the socket.
pub(crate) fn become_session(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> bool {
    let Some(ex) = conn.ex.as_mut() else { return false };
    let key = PoolKey { host: ex.host.clone(), port: ex.port, tls: ex.upstream_tls };
    if conn.origin.busy() {
        return false;
    }
    let Some((sock, _fixed)) = conn.origin.detach(io, ctx.ring) else { return false };
    let tls = conn.origin.tls.take();
    // A connection that nobody asked for while a session has room (a retry's fresh one;
    // a burst to an origin not known yet waits for one dial instead) joins that session,
    // and is closed; one dialled because every session was full becomes one more.
    if !ctx.origins.wants_session(&key) {
        drop((sock, tls));
        ex.lease = None;
        if let Some(up) = conn.upstream.as_mut() {
            up.lease = None;
        }
        stats::bump(&ctx.stats.h2_origin_surplus, 1);
        return attach(conn, io, ctx, &key);
    }
    let lease = ex.lease.take().or_else(|| conn.upstream.as_mut().and_then(|u| u.lease.take()));
    // The session's first stream is this exchange's; its session id is filled in when the
    // worker inserts the slot.
    let link = ctx.links.open_unowned();
    if let Some(l) = ctx.links.get(link) {
        l.exchange = Some(io.id());
    }
    ex.origin_link = Some(link);
    conn.upstream = Some(UpstreamConn { key: key.clone(), reused: false, abandoned: false, lease: None });
    let mut slot = Connection::detached(super::Role::Proxy, None, ctx.now);
    slot.origin = Leg::on(sock);
    slot.origin.tls = tls;
    slot.upstream = Some(UpstreamConn { key: key.clone(), reused: false, abandoned: false, lease });
    slot.phase = Phase::H2Origin;
    let window = ctx.cfg.h2.initial_stream_window;
    let (token, max_streams) = ctx.origins.reserve(key.clone());
    // The waker names the slot once it has one: it is set on the session's first run.
    let waker = std::task::Waker::noop().clone();
    let mut session = OriginSession::new(key, token, link, window, max_streams, waker, ctx.now);
    let h2 = &ctx.cfg.h2;
    session.keepalive = KeepAlive::new(h2.origin_ping_interval, h2.ping_timeout, ctx.now);
    slot.h2 = Some(Box::new(super::http2::H2::Origin(OriginSide { session, idle_since: None })));
    ctx.spawn.push(slot);
    true
}

/// One run of an origin session slot.
pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    let Some(side) = conn.h2.as_mut().and_then(|h| h.origin_mut()) else { return NextStep::Close };
    let me = io.id();
    side.session.set_waker(ctx.wakes.waker(me));
    for link in ctx.origins.take_inbox(&side.session.key, side.session.token) {
        side.session.add(link);
    }
    // Origin plaintext into the session.
    let data = conn.origin.input.data(ctx.pool);
    if !data.is_empty() {
        if let Some(k) = side.session.keepalive.as_mut() {
            k.heard(ctx.now);
        }
        let n = side.session.pipe().with(|q| {
            let n = q.inbound_room().min(data.len());
            q.tally_in.scan(&data[..n]);
            q.inbound.extend_from_slice(&data[..n]);
            n
        });
        conn.origin.input.start += n;
        conn.origin.input.release_if_empty(ctx.pool);
    }
    if conn.origin.ended() && conn.origin.input.is_empty() {
        side.session.pipe().with(|q| q.inbound_end = true);
    }
    let wakes = ctx.wakes;
    side.session.drive(ctx.links, &|id| wakes.wake(id));
    // Requests queued here for the origin's room go to a session that has room now (one
    // added since they queued, while this one's streams stay busy).
    let token = side.session.token;
    let room = match side.session.waiting() {
        0 => 0,
        _ => ctx.origins.room_elsewhere(&side.session.key, token),
    };
    if room > 0 {
        let moved = side.session.hand_back_waiting(room, ctx.links, &|id| wakes.wake(id));
        tracing::debug!(conn = %io.id(), room, moved, "origin session: queued requests handed back");
    }
    let key = &side.session.key;
    let accepting = side.session.accepting(ctx.now) && ctx.ready;
    let (streams, max) = (side.session.streams(), side.session.max_streams());
    let view = SessionView { streams, max, accepting, waiting: side.session.waiting() };
    ctx.origins.update(key, token, view);
    if accepting && streams < max {
        for id in ctx.origins.siblings_waiting(key, token) {
            tracing::debug!(conn = %io.id(), sibling = %id, "origin session has room: waking a sibling with queued requests");
            wakes.wake(id);
        }
    }
    let finished = side.session.finished();
    let pipe = side.session.pipe().clone();
    super::http2::send_frames(conn, io, ctx, Side::Origin, &pipe);
    if finished || conn.origin.error.is_some() {
        let why = conn.h2.as_ref().and_then(|h| h.origin()).and_then(|s| s.session.ending.clone());
        tracing::debug!(conn = %io.id(), why = why.as_deref().unwrap_or("the connection failed"), error = ?conn.origin.error, "origin session ends");
        conn.closing(CloseReason::OriginClosed);
        return NextStep::Close;
    }
    // Idle: closed after the pool's idle timeout; busy: no deadline of its own. Either
    // way, the next keep-alive PING or its timeout if those are on.
    if streams == 0 && !accepting {
        conn.closing(CloseReason::Done);
        return NextStep::Close;
    }
    let Some(side) = conn.h2.as_mut().and_then(|h| h.origin_mut()) else { return NextStep::Close };
    let idle = ctx.cfg.pool.idle_timeout;
    let at = super::http2::session_deadline(&mut side.idle_since, streams, idle, &side.session.keepalive, ctx.now);
    conn.set_deadline_at(io, ctx, at);
    let room = side_room(conn);
    if !conn.origin.reading && !conn.origin.ended() && room && conn.origin.input.is_empty() {
        return conn.read(io, ctx, Side::Origin);
    }
    NextStep::Wait
}

fn side_room(conn: &Connection) -> bool {
    conn.h2.as_ref().and_then(|h| h.origin()).is_some_and(|s| s.session.pipe().with(|q| q.inbound_room() > 0))
}

/// The session slot closes: its streams' exchanges see their origin fail, and it leaves
/// the registry (links handed to it and not taken fail too).
pub(crate) fn close_session(side: &mut OriginSide, ctx: &mut Ctx<'_>) {
    let wakes = ctx.wakes;
    for link in ctx.origins.remove(&side.session.key, side.session.token) {
        side.session.add(link);
    }
    side.session.abandon(ctx.links, &|id| wakes.wake(id));
}

impl Connection {
    /// For a new origin session slot: its origin, its registry token and the links it
    /// starts with.
    pub(crate) fn origin_session_start(&self) -> Option<(PoolKey, crate::http2::origins::Token, Vec<LinkId>)> {
        let side = self.h2.as_ref()?.origin()?;
        Some((side.session.key.clone(), side.session.token, side.session.waiting_links().to_vec()))
    }

    /// The link that stands in for this exchange's origin leg, if any.
    pub(crate) fn origin_link(&self) -> Option<LinkId> {
        self.ex.as_ref().and_then(|e| e.origin_link)
    }

    /// The exchange is done with its origin link (response complete, retry, give-up,
    /// close): the session learns it; the link is freed when the session let go first.
    pub(crate) fn drop_origin_link(&mut self, ctx: &mut Ctx<'_>) {
        let Some(link) = self.ex.as_mut().and_then(|e| e.origin_link.take()) else { return };
        self.origin.forget_outcome();
        self.origin.writing = None;
        let Some(l) = ctx.links.get(link) else { return };
        l.exchange_gone = true;
        match l.session {
            None => ctx.links.free(link),
            Some(_) => l.wake_session(ctx.wakes),
        }
    }
}
