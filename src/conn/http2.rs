//! The `H2` phase: a client connection that speaks HTTP/2 (ALPN `h2` on intercepted TLS,
//! or the cleartext preface). Its client leg carries the frames; each stream is proxied by
//! an exchange slot of its own (`conn::stream`), linked to this one (`http2::links`).
//!
//! One run of the phase: client plaintext goes into the session (watched for floods),
//! the session is driven (new streams get exchanges, bytes move between streams and
//! links), its frames go out on the client leg, and the client is read again while the
//! session has room. It ends when `h2` is done with the connection and the last frames
//! (a GOAWAY) are out.

use super::buf::BufId;
use super::leg::{ClientWait, Side};
use super::{CloseReason, Connection, Ctx, NextStep, Phase};
use crate::http2::floods::{FloodLimits, FrameWatch, Verdict};
use crate::http2::keepalive::{Due, KeepAlive};
use crate::http2::pipe::Pipe;
use crate::http2::rules::StreamRules;
use crate::http2::session::{Ending, NewStream, Session};
use crate::stats;
use std::time::Instant;
use uring::Io;

/// A connection's HTTP/2 side: the server of a client connection, or the client of an
/// origin session slot (`conn::origin_session`).
/// (Boxed whole in the connection; an origin session slot, one per origin and worker,
/// pays the client side's size, which is not worth a second box on every client.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum H2 {
    Client(H2Client),
    Origin(super::origin_session::OriginSide),
}

impl H2 {
    pub(crate) fn client_mut(&mut self) -> Option<&mut H2Client> {
        match self {
            H2::Client(c) => Some(c),
            H2::Origin(_) => None,
        }
    }

    pub(crate) fn origin(&self) -> Option<&super::origin_session::OriginSide> {
        match self {
            H2::Origin(o) => Some(o),
            H2::Client(_) => None,
        }
    }

    pub(crate) fn origin_mut(&mut self) -> Option<&mut super::origin_session::OriginSide> {
        match self {
            H2::Origin(o) => Some(o),
            H2::Client(_) => None,
        }
    }

    /// The slot closes: every stream's exchange stops (or sees its origin fail).
    pub(crate) fn abandon(&mut self, ctx: &mut Ctx<'_>) {
        match self {
            H2::Client(c) => c.abandon(ctx),
            H2::Origin(o) => super::origin_session::close_session(o, ctx),
        }
    }
}

/// A client connection's HTTP/2 side.
#[derive(Debug)]
pub(crate) struct H2Client {
    session: Session,
    floods: FrameWatch,
    /// New streams the last drive opened, waiting for their exchange slots.
    new: Vec<NewStream>,
    /// Since when the connection has had no stream (its idle timeout counts from there).
    idle_since: Option<Instant>,
    /// Where the client reached this proxy, asked of the socket once (every stream's
    /// exchange needs it, for the access rules on our own addresses).
    local: Option<std::net::SocketAddr>,
}

impl H2Client {
    /// The connection closes: every stream's exchange stops.
    pub(crate) fn abandon(&mut self, ctx: &mut Ctx<'_>) {
        let wakes = ctx.wakes;
        self.session.abandon(ctx.links, &|id| wakes.wake(id));
    }
}

/// Turns `conn` into an HTTP/2 connection (its preface may already be in `client.input`).
pub(crate) fn start(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    let settings = crate::http2::Settings { config: ctx.cfg.h2.clone() };
    let mut session = Session::new(&settings, ctx.wakes.waker(io.id()));
    session.keepalive = KeepAlive::new(ctx.cfg.h2.client_ping_interval, ctx.cfg.h2.ping_timeout, ctx.now);
    let rules = StreamRules::new(ctx.cfg.h2.max_frame_size, ctx.cfg.h2.max_concurrent_streams);
    let floods = FrameWatch::new(FloodLimits::default(), rules);
    let local = conn.client.local_addr();
    let client = H2Client { session, floods, new: Vec::new(), idle_since: None, local };
    conn.h2 = Some(Box::new(H2::Client(client)));
    conn.protocol = crate::protocol::Protocol::H2;
    stats::bump(&ctx.stats.h2_connections, 1);
    conn.phase = Phase::H2;
    let idle = ctx.cfg.timeouts.request_head;
    conn.set_deadline(io, ctx, idle);
    NextStep::Continue
}

/// One run of the phase.
pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if feed(conn, io, ctx) {
        conn.closing(CloseReason::Refused);
    }
    let Some(h2) = conn.h2.as_mut().and_then(|h| h.client_mut()) else { return NextStep::Close };
    if conn.client.ended() && conn.client.input.is_empty() {
        h2.session.feed_end();
    }
    if !ctx.ready {
        h2.session.shut_down();
    }
    let wakes = ctx.wakes;
    h2.session.drive(ctx.links, io.id(), &|id| wakes.wake(id), &mut h2.new);
    let mut new = std::mem::take(&mut h2.new);
    let local = h2.local;
    for s in new.drain(..) {
        ctx.spawn.push(super::stream::exchange_for(conn, s.link, local, ctx.now));
        stats::bump(&ctx.stats.h2_streams, 1);
    }
    let Some(h2) = conn.h2.as_mut().and_then(|h| h.client_mut()) else { return NextStep::Close };
    h2.new = new;
    let streams = h2.session.streams();
    let finished = h2.session.ending().cloned();
    let pipe = h2.session.pipe().clone();
    send_frames(conn, io, ctx, Side::Client, &pipe);
    let Some(h2) = conn.h2.as_mut().and_then(|h| h.client_mut()) else { return NextStep::Close };
    if let Some(ending) = finished {
        if conn.client.writing.is_some() || h2.session.has_outbound() {
            return NextStep::Wait;
        }
        record_ending(conn, ctx, &ending);
        return NextStep::Close;
    }
    if conn.client.error.is_some() {
        return NextStep::Close;
    }
    let wants_input = h2.session.wants_input();
    let quiet = streams == 0 && !h2.session.has_outbound() && conn.client.writing.is_none();
    // Idle (no stream): the client's keep-alive deadline; busy: each stream has its own.
    // Either way, the next keep-alive PING or its timeout if those are on.
    let at =
        session_deadline(&mut h2.idle_since, streams, ctx.cfg.timeouts.client_idle, &h2.session.keepalive, ctx.now);
    conn.set_deadline_at(io, ctx, at);
    let can_read = !conn.client.reading && conn.client.wait == ClientWait::Idle && !conn.client.ended();
    if can_read && wants_input && conn.client.input.is_empty() {
        if quiet && !conn.client.readable {
            match plaintext_waiting(conn, ctx) {
                Waiting::Plaintext => return NextStep::Continue,
                Waiting::Ciphertext => {
                    conn.client.readable = false;
                    return conn.read(io, ctx, Side::Client);
                }
                Waiting::Nothing => {}
            }
            // Nothing to do until the client speaks: wait without holding a slab, as an
            // idle HTTP/1.1 client does (a receive on the provided-buffer ring in
            // cleartext, readiness under TLS).
            conn.client.input.release_if_empty(ctx.pool);
            conn.poll_client(io, ctx);
            return NextStep::Wait;
        }
        conn.client.readable = false;
        return conn.read(io, ctx, Side::Client);
    }
    NextStep::Wait
}

/// What a quiet TLS client already sent that the session holds.
enum Waiting {
    /// Plaintext, now in `client.input` (or the session's end, or its failure, recorded).
    Plaintext,
    /// Ciphertext not decrypted yet: read on.
    Ciphertext,
    Nothing,
}

fn plaintext_waiting(conn: &mut Connection, ctx: &mut Ctx<'_>) -> Waiting {
    let Some(t) = conn.client.tls.as_mut() else { return Waiting::Nothing };
    match t.take_plaintext(&mut conn.client.input, ctx.pool) {
        crate::tls::Plain::Got(_) | crate::tls::Plain::Full => Waiting::Plaintext,
        crate::tls::Plain::Eof => {
            conn.client.eof = true;
            Waiting::Plaintext
        }
        crate::tls::Plain::Error => {
            conn.client.fail(libc::EPROTO);
            Waiting::Plaintext
        }
        crate::tls::Plain::Empty if !t.raw_in.is_empty() || t.raw_in.is_lent() => Waiting::Ciphertext,
        crate::tls::Plain::Empty => Waiting::Nothing,
    }
}

/// The frames `h2` queued go out on `side` (the client's, or an origin session's), one
/// slab at a time, when nothing is being written there.
pub(crate) fn send_frames(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, side: Side, pipe: &Pipe) {
    if conn.leg(side).writing.is_some() || conn.out.is_lent() {
        return;
    }
    let (out, pool) = (&mut conn.out, &mut *ctx.pool);
    let (n, received, sent) = pipe.with(|q| {
        // Nothing queued: no slab taken (an idle connection holds none).
        let n = if q.outbound.is_empty() {
            0
        } else {
            out.fill(pool, &q.outbound[..q.outbound.len().min(uring::SLAB_SIZE)])
        };
        q.tally_out.scan(&q.outbound[..n]);
        q.outbound.drain(..n);
        (n, q.tally_in.take(), q.tally_out.take())
    });
    let origin = side == Side::Origin;
    ctx.stats.h2_resets(origin, false, &received);
    ctx.stats.h2_resets(origin, true, &sent);
    if n > 0 {
        conn.write(io, ctx, side, BufId::Out, 0, n);
    }
}

/// Client plaintext into the session, as much as it takes now, watched for floods. True
/// when the client flooded (the session then ends with GOAWAY ENHANCE_YOUR_CALM).
fn feed(conn: &mut Connection, io: &Io, ctx: &mut Ctx<'_>) -> bool {
    let Some(h2) = conn.h2.as_mut().and_then(|h| h.client_mut()) else { return false };
    let data = conn.client.input.data(ctx.pool);
    if data.is_empty() {
        return false;
    }
    if let Some(k) = h2.session.keepalive.as_mut() {
        k.heard(ctx.now);
    }
    let n = data.len().min(h2.session.inbound_room());
    let session = &mut h2.session;
    let verdict = h2.floods.filter(&data[..n], ctx.now, &mut |kept| session.feed(kept));
    if let Some(code) = h2.floods.goaway_received() {
        if code != h2::Reason::NO_ERROR {
            ctx.stats.h2_goaway(false, code);
        }
        tracing::debug!(conn = %io.id(), ?code, "HTTP/2 GOAWAY from the client");
    }
    ctx.stats.h2_resets(false, false, &h2.floods.resets_received());
    conn.client.input.start += n;
    conn.client.input.release_if_empty(ctx.pool);
    let reason = match verdict {
        None => return false,
        Some(Verdict::Flood(flood)) => {
            ctx.stats.h2_flood(flood);
            tracing::info!(conn = %io.id(), kind = flood.label(), "HTTP/2 flood: GOAWAY ENHANCE_YOUR_CALM");
            h2::Reason::ENHANCE_YOUR_CALM
        }
        Some(Verdict::Violation(reason)) => {
            tracing::debug!(conn = %io.id(), ?reason, "HTTP/2 connection error in a frame header");
            reason
        }
    };
    ctx.stats.h2_goaway(true, reason);
    h2.session.abort(reason);
    true
}

/// An HTTP/2 session's next deadline: its idle timeout (`idle` after its last stream
/// ended, tracked in `idle_since`) while it has no stream, or the next keep-alive event,
/// whichever comes first.
pub(crate) fn session_deadline(
    idle_since: &mut Option<Instant>,
    streams: usize,
    idle: std::time::Duration,
    keepalive: &Option<KeepAlive>,
    now: Instant,
) -> Option<Instant> {
    let idle_end = if streams == 0 {
        Some(*idle_since.get_or_insert(now) + idle)
    } else {
        *idle_since = None;
        None
    };
    match (idle_end, keepalive.as_ref().map(KeepAlive::next_due)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A deadline of an HTTP/2 session (client or origin) fired: a keep-alive PING is due
/// (sent: the step runs and writes it), or the peer left one unanswered (the session
/// ends, `Timeout`). `None`: it is the session's idle timeout, handled as any timeout.
pub(crate) fn keepalive_due(conn: &mut Connection, io: &Io, ctx: &mut Ctx<'_>) -> Option<NextStep> {
    let (keepalive, idle_end) = match conn.h2.as_deref_mut()? {
        H2::Client(c) => (c.session.keepalive.as_mut(), c.idle_since.map(|t| t + ctx.cfg.timeouts.client_idle)),
        H2::Origin(o) => (o.session.keepalive.as_mut(), o.idle_since.map(|t| t + ctx.cfg.pool.idle_timeout)),
    };
    if idle_end.is_some_and(|end| end <= ctx.now) {
        return None;
    }
    if keepalive.map(|k| k.on_due(ctx.now)) == Some(Due::Dead) {
        let timeout = ctx.cfg.h2.ping_timeout;
        tracing::info!(conn = %io.id(), ?timeout, "HTTP/2 peer silent: no answer to a PING, closing");
        stats::bump(&ctx.stats.timeouts, 1);
        conn.closing(CloseReason::Timeout);
        return Some(NextStep::Close);
    }
    // A PING to write, or an early entry: the step runs and arms the next deadline.
    Some(NextStep::Continue)
}

fn record_ending(conn: &mut Connection, ctx: &Ctx<'_>, ending: &Ending) {
    match ending {
        Ending::Closed => conn.closing(CloseReason::Done),
        Ending::Aborted { .. } => conn.closing(CloseReason::Refused),
        Ending::Failed { reason, ours, detail } => {
            ctx.stats.h2_goaway(*ours, *reason);
            tracing::debug!(reason = ?reason, ours, detail = %detail, "HTTP/2 connection error");
            conn.closing(if *ours { CloseReason::Refused } else { CloseReason::ClientError });
        }
    }
}
