//! HTTP/1.1 phases of a client connection: waiting for a request, reading its head,
//! sending it upstream with its body, reading the response head and forwarding the
//! response body, then keep-alive. The codec (parsing, rewriting, chunk framing) is the
//! sans-I/O `crate::h1`; this module moves bytes between it and the ring.
//!
//! Heads are rewritten in place: the rewritten head is written into the slab right in
//! front of the first body byte (the buffer keeps headroom for it), so head and body
//! leave in one write.

use super::buf::{BufId, HEADROOM};
use super::leg::{ClientWait, Side};
use super::tunnel::PerDirection;
use super::{Connection, Ctx, NextStep, Phase, UpstreamConn};
use crate::h1::{self, BodyFraming, ChunkedDecoder, HeadLimits, Method};
use crate::stats;
use std::borrow::Cow;
use uring::Io;

/// How much of a message body is still to come.
#[derive(Debug, Default)]
pub(crate) enum Body {
    #[default]
    None,
    Length {
        remaining: u64,
    },
    Chunked {
        decoder: ChunkedDecoder,
    },
    UntilEof,
    Done,
}

impl Body {
    fn from_framing(f: BodyFraming, max_trailer: usize) -> Body {
        match f {
            BodyFraming::None | BodyFraming::Length(0) => Body::None,
            BodyFraming::Length(n) => Body::Length { remaining: n },
            BodyFraming::Chunked => Body::Chunked { decoder: ChunkedDecoder::new(max_trailer) },
            BodyFraming::CloseDelimited => Body::UntilEof,
        }
    }

    pub(crate) fn finished(&self) -> bool {
        matches!(self, Body::None | Body::Done)
    }

    /// How many of `avail` bytes belong to this body (and advances past them).
    fn take(&mut self, avail: &[u8]) -> Result<usize, h1::H1Error> {
        match self {
            Body::None | Body::Done => Ok(0),
            Body::Length { remaining } => {
                let n = (*remaining).min(avail.len() as u64);
                *remaining -= n;
                if *remaining == 0 {
                    *self = Body::Done;
                }
                Ok(n as usize)
            }
            Body::Chunked { decoder } => {
                if avail.is_empty() {
                    return Ok(0);
                }
                let p = decoder.feed(avail)?;
                if p.done {
                    *self = Body::Done;
                }
                Ok(p.consumed)
            }
            Body::UntilEof => Ok(avail.len()),
        }
    }
}

/// Progress of connecting upstream.
#[derive(Debug, Default)]
pub(crate) enum UpstreamStep {
    #[default]
    Start,
    Resolving,
    /// Waiting in the origin's queue: for a connection (`pool.max_connections_per_host`),
    /// or for the answer of the dial learning whether the origin speaks HTTP/2.
    /// `in_queue` until the pool hands out its turn (`Connection::take_queue_turn`): a
    /// wake for anything else (bytes from the client) leaves it waiting where it is.
    Queued {
        waits_for: crate::upstream::pool::QueuedFor,
        in_queue: bool,
    },
    Connecting {
        addrs: Vec<std::net::SocketAddr>,
        next: usize,
        last_error: Option<String>,
    },
    /// TCP is up; the TLS handshake with the origin is running.
    TlsHandshake,
}

/// CONNECT tunnel progress.
#[derive(Debug, Default)]
pub(crate) struct TunnelState {
    pub established_sent: bool,
    /// The direction's source reached EOF and the destination was half-closed.
    pub done: PerDirection<bool>,
    /// A read of this direction filled a whole slab: it splices once its slab is empty.
    pub bulk: PerDirection<bool>,
}

/// One request/response exchange (or one tunnel): the protocol-neutral core (target,
/// method, status, timings and log facts, retry state, the upstream sub-machine's
/// progress) and the HTTP/1.1 framing of both messages in `h1`. An HTTP/2 or HTTP/3
/// stream will carry the same core with its own framing.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub method: Method,
    /// The origin's host: the exchange outlives the head it came from (whose bytes the
    /// rewritten head overwrites). The upstream pool's key shares it.
    pub host: std::rc::Rc<str>,
    pub port: u16,
    pub is_connect: bool,
    /// A response byte (interim or final) went to the client: a failure can no longer
    /// be answered with an error response.
    pub response_started: bool,
    /// Times the request was sent again after its origin failed (see `upstream_failed`).
    pub retries: u8,
    /// Skip the pool (a retry must use a fresh connection).
    pub fresh_only: bool,
    pub upstream_step: UpstreamStep,
    /// The place in the origin's connection count taken for a connection being dialled;
    /// it goes to the socket once connected.
    pub lease: Option<crate::upstream::pool::Lease>,
    pub tunnel: TunnelState,
    /// The origin is spoken to over TLS (the client came over intercepted TLS).
    pub upstream_tls: bool,
    /// The status sent to the client (0 until a response head went out).
    pub status: u16,
    /// Timing and log facts.
    pub facts: super::log::Facts,
    /// When the current upstream connect attempt began.
    pub connect_started: Option<std::time::Instant>,
    /// How the request and response are framed on HTTP/1.1.
    pub h1: H1Framing,
    /// The origin leg is a stream of an HTTP/2 origin session (`conn::origin_session`).
    pub origin_link: Option<crate::http2::links::LinkId>,
}

/// The HTTP/1.1 side of an exchange: both messages' framing and where their heads are.
#[derive(Debug, Default)]
pub(crate) struct H1Framing {
    pub client_minor: u8,
    pub client_keep_alive: bool,
    pub req_body: Body,
    /// Bytes of the rewritten request head at `client.input.start` not sent yet.
    pub head_pending: usize,
    /// Where the rewritten head sits in `client.input` (for a retry on a fresh connection).
    pub head_at: usize,
    pub head_len: usize,
    /// The request's bytes while its slab is given back (`conn::parked`): all of them
    /// while it waits in its origin's queue, the rewritten head once it is out (a retry
    /// sends it again from there).
    pub parked: Option<Box<[u8]>>,
    pub expect_continue: bool,
    pub continue_sent: bool,
    pub resp_body: Body,
    pub resp_head_pending: usize,
    /// The response head already waited once for the rest of its small body.
    pub coalesce_tried: bool,
    pub resp_keep_alive: bool,
    pub close_client: bool,
    /// Strip chunked framing from the response (HTTP/1.0 client).
    pub dechunk: bool,
    /// The response began before the request body was all forwarded.
    pub early_response: bool,
    /// The Upgrade offered to the origin (`websocket`), when one was allowed
    /// (`conn::upgrade`): a 101 may switch to it, and the origin connection is not pooled.
    pub upgrade: Option<Box<str>>,
}

impl Exchange {
    /// A raw tunnel to host:port (CONNECT, passthrough, or non-TLS bytes in an
    /// intercepted tunnel).
    pub(crate) fn tunnel(host: &str, port: u16, tunnel: TunnelState, facts: super::log::Facts) -> Exchange {
        Exchange {
            method: Method::Connect,
            host: host.into(),
            port,
            is_connect: true,
            response_started: true,
            retries: 0,
            fresh_only: true,
            upstream_step: UpstreamStep::Start,
            lease: None,
            tunnel,
            upstream_tls: false,
            status: 200,
            facts,
            connect_started: None,
            origin_link: None,
            h1: H1Framing { client_minor: 1, close_client: true, ..H1Framing::default() },
        }
    }

    /// The request may be sent again on a fresh connection if the first one failed
    /// before an answer: idempotent, and no body (nothing the origin may have consumed).
    pub(crate) fn retryable(&self) -> bool {
        self.method.is_idempotent() && matches!(self.h1.req_body, Body::None)
    }
}

fn limits(ctx: &Ctx<'_>) -> HeadLimits {
    HeadLimits { max_bytes: ctx.cfg.limits.max_header_bytes, max_headers: ctx.cfg.limits.max_headers }
}

/// Between requests: hold no slab, wait until the client has something to say.
pub(crate) fn await_request(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    // The first bytes of a connection go through detection (TLS or HTTP/1).
    // An HTTP/2 stream's exchange serves its one request.
    if conn.stream.is_some() {
        if conn.requests > 0 {
            conn.closing(super::CloseReason::Done);
            return NextStep::Close;
        }
        conn.phase = Phase::RequestHead;
        let t = ctx.cfg.timeouts.request_head;
        conn.set_deadline(io, ctx, t);
        return NextStep::Continue;
    }
    let next = if conn.requests == 0 && conn.client.tls.is_none() { Phase::Detect } else { Phase::RequestHead };
    // Bytes the multishot receive could not put in `client.input` during the exchange
    // come first (no exchange now: they may move to the front of the buffer).
    if conn.client_stash.is_some() {
        conn.drain_stash(ctx, true);
    }
    if conn.client.input.is_empty() && conn.client.wait != ClientWait::Poll {
        if let Some(t) = conn.client.tls.as_mut() {
            // Decrypted bytes may already wait inside the TLS session (pipelining).
            match t.take_plaintext(&mut conn.client.input, ctx.pool) {
                crate::tls::Plain::Got(_) | crate::tls::Plain::Full => {}
                crate::tls::Plain::Eof | crate::tls::Plain::Error => return NextStep::Close,
                crate::tls::Plain::Empty if !t.raw_in.is_empty() || t.raw_in.is_lent() => {
                    conn.phase = next;
                    return NextStep::Continue;
                }
                crate::tls::Plain::Empty => conn.client.input.release_if_empty(ctx.pool),
            }
        }
    }
    if conn.client_bytes_pending() {
        conn.phase = next;
        let t = ctx.cfg.timeouts.request_head;
        conn.set_deadline(io, ctx, t);
        return NextStep::Continue;
    }
    if conn.client.error.is_some() || conn.client.eof {
        return NextStep::Close;
    }
    if conn.client.readable {
        conn.client.readable = false;
        conn.phase = next;
        if conn.requests > 0 {
            let t = ctx.cfg.timeouts.request_head;
            conn.set_deadline(io, ctx, t);
        }
        return NextStep::Continue;
    }
    if conn.client.wait == ClientWait::Poll {
        return NextStep::Wait;
    }
    conn.client.input.release_if_empty(ctx.pool);
    conn.origin.input.release_if_empty(ctx.pool);
    // A multishot receive still armed from the last request brings the next one; one
    // being cancelled completes first, and the next wait arms a new one.
    if !conn.client.wait.multishot() {
        conn.poll_client(io, ctx);
    }
    let t = if conn.requests == 0 { ctx.cfg.timeouts.request_head } else { ctx.cfg.timeouts.client_idle };
    conn.set_deadline(io, ctx, t);
    NextStep::Wait
}

/// Reads until a whole head is in `client.input`, then validates and routes it, and
/// rewrites it for the origin.
///
/// The parsed head borrows `client.input` (and the pool) until its rewritten form is in
/// `ctx.scratch`: until then the connection is only read, but for fields apart from
/// `client` (`requests`, `ex`), and of `ctx` only other fields than the pool are written.
pub(crate) fn request_head(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.reading {
        return NextStep::Wait;
    }
    let limits = limits(ctx);
    let (head, n) = match h1::parse_request(conn.client.input.data(ctx.pool), &limits) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return incomplete_request_head(conn, io, ctx),
        Err(e) => return conn.refuse(io, ctx, e.status(), e.detail()),
    };
    // Proxy authentication first: a request parked for its check runs all of this again.
    let admission = match super::auth::admit(conn, io, ctx.auth, ctx.cfg, ctx.now, &head) {
        super::auth::Admission::Wait => return NextStep::Wait,
        admission => admission,
    };
    conn.requests += 1;
    stats::bump(&ctx.stats.requests, 1);
    if head.loops_through(ctx.via) {
        return conn.refuse(io, ctx, 508, "request already passed through this proxy");
    }
    let (host, port, is_connect) = match route(conn, &head) {
        Ok(t) => t,
        Err(e) => return conn.refuse(io, ctx, e.status(), e.detail()),
    };
    if is_connect && !ctx.cfg.connect_ports.contains(&port) {
        return conn.refuse(io, ctx, 403, "CONNECT to this port is not allowed");
    }
    let mut ex = new_exchange(conn, ctx, &head, &host, port, is_connect);
    match admission {
        super::auth::Admission::Refuse(refusal) => {
            conn.ex = Some(ex);
            return refusal.render(conn, io, ctx);
        }
        super::auth::Admission::Admit(user) => ex.facts.user = user,
        super::auth::Admission::Wait => {}
    }
    if is_connect {
        conn.client.input.start += n;
        if ctx.cfg.intercept_connect && conn.client.tls.is_none() && conn.stream.is_none() {
            return intercept_connect(conn, io, ctx, &ex);
        }
    } else {
        let hop = crate::forwarding::Hop {
            via: ctx.via,
            rules: ctx.cfg.forwarding,
            client: conn.peer.map(|p| p.ip()),
            https: conn.intercepted(),
        };
        ctx.scratch.clear();
        head.write_upstream(ctx.scratch, &hop);
        if head.host.is_none() && !matches!(head.target, h1::RequestTarget::Absolute { .. }) {
            // HTTP/1.0 without Host (transparent mode): HTTP/1.1 upstream needs one.
            add_host(ctx.scratch, &ex.host, ex.port, ex.upstream_tls);
        }
        ex.h1.upgrade = super::upgrade::offer(ctx.scratch, &head, &ctx.cfg.upgrade_protocols);
        if let Err(e) = place_request_head(conn, ctx, &mut ex, n) {
            return conn.refuse(io, ctx, e.status(), e.detail());
        }
    }
    conn.ex = Some(ex);
    conn.phase = Phase::Upstream;
    NextStep::Continue
}

/// Not a whole head yet: read more, or answer why there will not be one.
fn incomplete_request_head(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.error.is_some() {
        return NextStep::Close;
    }
    // The rest of the head may wait in the stash, sent before the client's end.
    if conn.client.eof && conn.client_stash.is_none() {
        if conn.client.input.is_empty() {
            return NextStep::Close;
        }
        return conn.refuse(io, ctx, 400, "connection closed in the middle of a request head");
    }
    if conn.client.input.room() == 0 && conn.client.input.start <= HEADROOM {
        return conn.refuse(io, ctx, 431, "request head too large");
    }
    conn.read(io, ctx, Side::Client)
}

/// Where a request goes: host, port, and whether it is a CONNECT. Over intercepted TLS
/// the CONNECT authority or SNI decide (`tls::request_target`); in transparent mode a
/// request without Host goes where the client was headed.
fn route<'a>(conn: &'a Connection, head: &'a h1::RequestHead<'_>) -> Result<(Cow<'a, str>, u16, bool), h1::H1Error> {
    if conn.intercepted() && head.method != Method::Connect {
        return super::tls::request_target(conn, head).map(|(h, p)| (h, p, false));
    }
    match (head.upstream_target(), conn.original_dst) {
        (Err(_), Some(dst)) if head.method != Method::Connect => {
            Ok((Cow::Owned(dst.ip().to_string()), dst.port(), false))
        }
        (t, _) => t.map(|(h, p, c)| (Cow::Borrowed(h), p, c)),
    }
}

fn new_exchange(
    conn: &Connection,
    ctx: &Ctx<'_>,
    head: &h1::RequestHead<'_>,
    host: &str,
    port: u16,
    is_connect: bool,
) -> Box<Exchange> {
    // Log facts own their strings only when the access log is on (no per-request
    // allocation otherwise).
    let logging = ctx.access.is_some();
    let log_target = if logging { describe_target(head, conn.intercepted()) } else { String::new() };
    Box::new(Exchange {
        method: head.method,
        host: host.into(),
        port,
        is_connect,
        response_started: false,
        retries: 0,
        fresh_only: false,
        upstream_step: UpstreamStep::Start,
        lease: None,
        tunnel: TunnelState::default(),
        // Over intercepted TLS, or an absolute-form https:// target from a cleartext client.
        // (A CONNECT over an intercepted HTTP/2 session opens a raw tunnel.)
        upstream_tls: (conn.intercepted() && !is_connect)
            || matches!(head.target, h1::RequestTarget::Absolute { https: true, .. }),
        status: 0,
        facts: super::log::Facts::new(conn, ctx.now, if logging { head.method_raw } else { "" }, log_target),
        connect_started: None,
        origin_link: None,
        h1: H1Framing {
            client_minor: head.minor_version,
            client_keep_alive: head.keep_alive,
            req_body: Body::from_framing(head.framing, ctx.cfg.limits.max_header_bytes),
            expect_continue: head.expect_continue,
            close_client: !head.keep_alive,
            ..H1Framing::default()
        },
    })
}

/// `intercept_connect`: answer the CONNECT at once, then look at what the client sends
/// inside the tunnel (TLS to intercept, or anything else to relay).
fn intercept_connect(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, ex: &Exchange) -> NextStep {
    let user = ex.facts.user.clone();
    conn.tunnel_target = Some(Box::new(super::TunnelTarget { host: ex.host.to_string(), port: ex.port, user }));
    ctx.stats.response(conn.protocol, Some(Method::Connect), 200);
    stats::bump(&ctx.stats.tunnels, 1);
    if conn.send_own(io, ctx, h1::CONNECT_ESTABLISHED).is_none() {
        return NextStep::Close;
    }
    conn.phase = Phase::Detect;
    NextStep::Continue
}

/// Puts the rewritten request head (in `ctx.scratch`) in place of the client's (`n` bytes
/// at `client.input.start`), right before its first body byte, and checks a chunked
/// body's first bytes before anything reaches the origin, so a malformed chunk size is
/// refused without the origin ever seeing the request.
fn place_request_head(
    conn: &mut Connection,
    ctx: &mut Ctx<'_>,
    ex: &mut Exchange,
    n: usize,
) -> Result<(), h1::H1Error> {
    let len = ctx.scratch.len();
    let head_end = conn.client.input.start + n;
    let Some(at) = conn.client.input.place_before(ctx.pool, ctx.scratch, head_end) else {
        return Err(h1::H1Error::new(h1::H1ErrorKind::HeadTooLarge, "request head too large after rewriting"));
    };
    conn.client.input.start = at;
    ex.h1.head_pending = len;
    ex.h1.head_at = at;
    ex.h1.head_len = len;
    if let Body::Chunked { decoder } = &ex.h1.req_body {
        decoder.clone().feed(&conn.client.input.data(ctx.pool)[len..])?;
    }
    Ok(())
}

/// Sends the rewritten head and the request body upstream.
pub(crate) fn send_request(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    // The origin may answer before it has the whole body (401, 413, ...): relay that at
    // once; the rest of the body is not forwarded and both connections end after it.
    if !conn.origin.input.is_empty() && conn.ex.as_ref().is_some_and(|e| e.h1.head_pending == 0) {
        // (A stream of an HTTP/2 origin session is full duplex: its body goes on.)
        let duplex = conn.origin_link().is_some();
        if let Some(ex) = conn.ex.as_mut().filter(|_| !duplex) {
            ex.h1.early_response = true;
        }
        conn.phase = Phase::ResponseHead;
        let t = ctx.cfg.timeouts.upstream_response;
        conn.set_deadline(io, ctx, t);
        return NextStep::Continue;
    }
    // Once the head is out, listen to the origin while the body goes (an early answer
    // may come while a write is blocked because the origin stopped reading).
    if conn.ex.as_ref().is_some_and(|e| e.h1.head_pending == 0 && !e.h1.req_body.finished())
        && !conn.origin.reading
        && !conn.origin.input.is_lent()
        && !conn.origin.eof
        && conn.origin.error.is_none()
        && conn.read(io, ctx, Side::Origin) == NextStep::Continue
    {
        return NextStep::Continue;
    }
    if conn.origin.writing.is_some() {
        return NextStep::Wait;
    }
    if conn.origin.error.is_some() {
        return upstream_failed(conn, io, ctx, "upstream connection failed while sending the request");
    }
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    if !conn.client.input.is_lent() {
        let data = conn.client.input.data(ctx.pool);
        let head = ex.h1.head_pending.min(data.len());
        let body = match ex.h1.req_body.take(&data[head..]) {
            Ok(n) => n,
            Err(e) => {
                conn.abandon_upstream(io, ctx);
                return conn.refuse(io, ctx, e.status(), e.detail());
            }
        };
        let total = head + body;
        if total > 0 {
            ex.h1.head_pending -= head;
            let start = conn.client.input.start;
            conn.client.input.start += total;
            conn.write(io, ctx, Side::Origin, BufId::In(Side::Client), start, total);
            let t = ctx.cfg.timeouts.io_idle;
            conn.refresh_deadline(io, ctx, t);
            return NextStep::Wait;
        }
    }
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    if ex.h1.req_body.finished() && ex.h1.head_pending == 0 {
        conn.phase = Phase::ResponseHead;
        let t = ctx.cfg.timeouts.upstream_response;
        conn.set_deadline(io, ctx, t);
        return NextStep::Continue;
    }
    if ex.h1.expect_continue && !ex.h1.continue_sent && conn.client.writing.is_none() && !conn.out.is_lent() {
        ex.h1.continue_sent = true;
        let n = conn.out.fill(ctx.pool, h1::CONTINUE_100);
        conn.write(io, ctx, Side::Client, BufId::Out, 0, n);
    }
    if conn.client.reading {
        return NextStep::Wait;
    }
    if conn.client.ended() {
        // The client left in the middle of its body: nothing can be answered.
        return NextStep::Close;
    }
    conn.read(io, ctx, Side::Client)
}

/// Most times a request the origin never processed is sent again.
const UNPROCESSED_RETRIES: u8 = 3;

/// The origin failed before a response byte reached the client.
fn upstream_failed(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, why: &str) -> NextStep {
    // An HTTP/2 origin that never processed the request (refused stream, GOAWAY below
    // it): safe to send again whatever the method (RFC 9113 §8.7).
    let link = conn.origin_link().and_then(|l| ctx.links.get(l));
    let (unprocessed, moved) = link.map_or((false, false), |l| (l.unprocessed, l.unprocessed && l.moved));
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    let reused = conn.upstream.as_ref().is_some_and(|u| u.reused);
    // Once after a reused connection failed (it may have been closed by the origin as we
    // wrote); a few times when the origin refused it unprocessed (a burst to a new session
    // before its SETTINGS said how many streams it takes); and whenever a session handed it
    // back unsent for another one with room (bounded by the exchange's deadline).
    let retryable = ((reused && ex.method.is_idempotent() && ex.retries == 0)
        || (unprocessed && ex.retries < UNPROCESSED_RETRIES)
        || moved)
        && !ex.response_started
        && matches!(ex.h1.req_body, Body::None)
        && (conn.client.input.has_slab() || ex.h1.parked.is_some())
        && conn.origin.input.is_empty()
        && !conn.client.input.is_lent();
    if retryable && !conn.origin.reading && conn.origin.writing.is_none() {
        if !moved {
            ex.retries += 1;
        }
        // A request the origin did not process may share a session again; after any
        // other failure, only a fresh connection is trusted.
        ex.fresh_only = !unprocessed;
        ex.h1.head_pending = ex.h1.head_len;
        ex.upstream_step = UpstreamStep::Start;
        if ex.h1.parked.is_some() {
            super::parked::unpark(conn, ctx);
        } else {
            conn.client.input.start = ex.h1.head_at;
        }
        conn.upstream = None;
        conn.drop_origin_link(ctx);
        drop(conn.origin.detach(io, ctx.ring));
        conn.origin.drop_tls(ctx.pool);
        conn.origin.forget_outcome();
        if !moved {
            stats::bump(&ctx.stats.upstream_retries, 1);
        }
        conn.phase = Phase::Upstream;
        return NextStep::Continue;
    }
    let started = ex.response_started;
    conn.abandon_upstream(io, ctx);
    if started {
        return NextStep::Close;
    }
    conn.refuse(io, ctx, 502, why)
}

/// Reads and rewrites the response head. The parsed head borrows `origin.input` (and the
/// pool) until its rewritten form is in `ctx.scratch`, as in `request_head`.
pub(crate) fn response_head(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    pump_request_body(conn, io, ctx);
    super::parked::release_sent(conn, ctx);
    // An interim (1xx) head may still be on its way to the client from `origin.input`.
    if conn.origin.reading || conn.client.writing.is_some() || conn.origin.input.is_lent() {
        return NextStep::Wait;
    }
    let protocol = conn.protocol;
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    let limits = limits(ctx);
    // Interim heads the client does not get are dropped here, all of them in one step
    // (an origin may send any number: one transition each would trip the loop guard).
    let parsed = loop {
        match h1::parse_response(conn.origin.input.data(ctx.pool), &limits, ex.method) {
            Ok(Some((resp, n))) if resp.is_informational() && !relays_interim(ex, &resp) => {
                conn.origin.input.start += n;
            }
            other => break other,
        }
    };
    let (mut resp, n) = match parsed {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return incomplete_response_head(conn, io, ctx),
        Err(e) => {
            conn.abandon_upstream(io, ctx);
            return conn.refuse(io, ctx, 502, &format!("bad response from upstream: {}", e.detail()));
        }
    };
    if resp.is_informational() {
        ctx.scratch.clear();
        resp.write_client(ctx.scratch, ctx.via, false, ex.h1.client_minor);
        return interim_head(conn, io, ctx, n);
    }
    if resp.status == 101 {
        let rewritten = super::upgrade::rewrite_101(ex, &resp, ctx.scratch, ctx.via);
        return super::upgrade::switch(conn, io, ctx, rewritten, n);
    }
    let body_framing = resp.framing;
    // An HTTP/1.0 client cannot read chunked framing: strip it and end the body
    // by closing (RFC 9112 §6.1).
    ex.h1.dechunk = ex.h1.client_minor == 0 && body_framing == BodyFraming::Chunked;
    if ex.h1.dechunk {
        resp.dechunk();
    }
    let close =
        !ex.h1.client_keep_alive || resp.framing == BodyFraming::CloseDelimited || !ctx.ready || ex.h1.early_response;
    ctx.scratch.clear();
    resp.write_client(ctx.scratch, ctx.via, close, ex.h1.client_minor);
    let (status, keep_alive) = (resp.status, resp.keep_alive);
    let len = ctx.scratch.len();
    let head_end = conn.origin.input.start + n;
    let Some(at) = conn.origin.input.place_before(ctx.pool, ctx.scratch, head_end) else {
        return upstream_failed(conn, io, ctx, "response head too large after rewriting");
    };
    conn.origin.input.start = at;
    ex.h1.resp_head_pending = len;
    ex.h1.resp_body = Body::from_framing(body_framing, ctx.cfg.limits.max_header_bytes);
    // An origin that was offered an Upgrade and declined it is not trusted with
    // the next request: it may have acted on the Upgrade anyway.
    ex.h1.resp_keep_alive = keep_alive && ex.h1.upgrade.is_none();
    ex.h1.close_client = close;
    ex.status = status;
    ctx.stats.response(protocol, Some(ex.method), status);
    conn.phase = Phase::ResponseBody;
    let t = ctx.cfg.timeouts.io_idle;
    conn.set_deadline(io, ctx, t);
    NextStep::Continue
}

/// Not a whole response head yet: read more, or fail the exchange.
fn incomplete_response_head(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.origin.ended() {
        let why = if conn.origin.input.is_empty() {
            "upstream closed the connection without answering"
        } else {
            "upstream closed the connection in the middle of the response head"
        };
        return upstream_failed(conn, io, ctx, why);
    }
    // Full only when compacting would not make room (heads already consumed,
    // such as interim ones, leave room in front).
    if conn.origin.input.has_slab() && conn.origin.input.room() == 0 && conn.origin.input.start <= HEADROOM {
        return upstream_failed(conn, io, ctx, "upstream response head too large");
    }
    conn.read(io, ctx, Side::Origin)
}

/// An interim head (103 Early Hints, ...), rewritten in `ctx.scratch`: relayed to
/// HTTP/1.1 clients (RFC 9110 §15.2) from where it was read (`n` bytes at
/// `origin.input.start`). A 100 is dropped when the proxy already said 100-continue, and
/// an HTTP/1.0 client never gets a 1xx.
fn interim_head(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, n: usize) -> NextStep {
    let Some(ex) = conn.ex.as_mut() else { return NextStep::Close };
    let head_end = conn.origin.input.start + n;
    conn.origin.input.start = head_end;
    let len = ctx.scratch.len();
    // One that cannot be rewritten in place is dropped: interim responses are advisory.
    let Some(at) = conn.origin.input.place_before(ctx.pool, ctx.scratch, head_end) else {
        return NextStep::Continue;
    };
    ex.response_started = true;
    conn.write(io, ctx, Side::Client, BufId::In(Side::Origin), at, len);
    NextStep::Wait
}

/// Whether an interim head goes to the client: not to an HTTP/1.0 client, and not a 100
/// when the proxy already said 100-continue.
fn relays_interim(ex: &Exchange, resp: &h1::ResponseHead<'_>) -> bool {
    ex.h1.client_minor == 1 && !(resp.status == 100 && ex.h1.continue_sent)
}

/// Forwards the response body, then ends the exchange.
pub(crate) fn response_body(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    pump_request_body(conn, io, ctx);
    if conn.client.writing.is_some() {
        return NextStep::Wait;
    }
    if conn.client.error.is_some() {
        return NextStep::Close;
    }
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    let data = conn.origin.input.data(ctx.pool);
    let head = ex.h1.resp_head_pending.min(data.len());
    if head > 0
        && !ex.h1.coalesce_tried
        && should_wait_for_small_body(&ex.h1.resp_body, data.len() - head, conn.origin.input.room())
        && !conn.origin.eof
        && conn.origin.error.is_none()
    {
        // The head arrived without all of its small body (origins often write the head,
        // then the body): one more read lets both leave in one segment, which costs the
        // proxy, the client and the loopback one send, one wakeup and one ACK less. Only
        // once: after that read, whatever is here goes, so the head is never held back long.
        if conn.origin.reading {
            return NextStep::Wait;
        }
        ex.h1.coalesce_tried = true;
        return conn.read(io, ctx, Side::Origin);
    }
    let taken =
        if ex.h1.dechunk { dechunk(conn, ctx, head) } else { ex.h1.resp_body.take(&data[head..]).map(|n| (n, n)) };
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    let (consumed, body) = match taken {
        Ok(n) => n,
        Err(_) => {
            // The origin broke the chunked framing mid-body: the client cannot be told
            // cleanly any more, so the connection ends.
            conn.abandon_upstream(io, ctx);
            return NextStep::Close;
        }
    };
    if head + consumed > 0 {
        ex.h1.resp_head_pending -= head;
        ex.response_started = true;
        let start = conn.origin.input.start;
        conn.origin.input.start += head + consumed;
        if head + body == 0 {
            // Only framing bytes this time (chunk sizes, trailers): nothing to send.
            return NextStep::Continue;
        }
        conn.write(io, ctx, Side::Client, BufId::In(Side::Origin), start, head + body);
        let t = ctx.cfg.timeouts.io_idle;
        conn.refresh_deadline(io, ctx, t);
        return NextStep::Wait;
    }
    if matches!(ex.h1.resp_body, Body::UntilEof) && conn.origin.eof {
        ex.h1.resp_body = Body::Done;
    }
    if ex.h1.resp_body.finished() && ex.h1.resp_head_pending == 0 {
        return finish_exchange(conn, io, ctx);
    }
    if conn.origin.reading {
        return NextStep::Wait;
    }
    if conn.origin.ended() {
        // Truncated by the origin: the client must see the connection end.
        return NextStep::Close;
    }
    conn.read(io, ctx, Side::Origin)
}

/// Full duplex, for a stream of an HTTP/2 origin session (gRPC's bidirectional calls send
/// while they receive): while the response is read and relayed, the rest of the request
/// body keeps going to the origin, one write at a time. Its completions run the response
/// phase again, which calls this again.
fn pump_request_body(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) {
    if conn.origin_link().is_none() {
        return;
    }
    for _ in 0..2 {
        let Some(ex) = conn.ex.as_mut() else { return };
        if ex.h1.req_body.finished() || ex.h1.head_pending > 0 || ex.h1.early_response {
            return;
        }
        if conn.origin.writing.is_some() || conn.client.input.is_lent() {
            return;
        }
        let data = conn.client.input.data(ctx.pool);
        match ex.h1.req_body.take(data) {
            Ok(0) => {}
            Ok(n) => {
                let start = conn.client.input.start;
                conn.client.input.start += n;
                conn.write(io, ctx, Side::Origin, BufId::In(Side::Client), start, n);
                return;
            }
            Err(_) => return,
        }
        if conn.client.reading || conn.client.ended() {
            return;
        }
        if conn.read(io, ctx, Side::Client) != NextStep::Continue {
            return;
        }
    }
}

/// The largest response body the proxy waits for before sending the head (see
/// `response_body`): small enough that the wait never delays a large transfer.
const COALESCE_MAX_BODY: u64 = 16 * 1024;

/// True when a response head should wait for the rest of its body: the body has a length,
/// is small, is not all here yet, and fits in the buffer's free room.
fn should_wait_for_small_body(body: &Body, have: usize, room: usize) -> bool {
    match body {
        Body::Length { remaining } => {
            let missing = remaining.saturating_sub(have as u64);
            *remaining <= COALESCE_MAX_BODY && missing > 0 && missing <= room as u64
        }
        _ => false,
    }
}

/// Pools the upstream when it can be reused, and either closes or waits for the next request.
fn finish_exchange(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    let status = conn.ex.as_ref().map_or(0, |e| e.status);
    super::log::finish(conn, ctx, status);
    // A stream of an HTTP/2 origin session ends here; the session stays.
    conn.drop_origin_link(ctx);
    let Some(ex) = conn.ex.take() else {
        return NextStep::Close;
    };
    let reusable = ex.h1.resp_keep_alive
        && conn.origin.input.is_empty()
        && !conn.origin.reading
        && conn.origin.writing.is_none()
        && !conn.origin.eof
        && conn.origin.error.is_none();
    if conn.origin.busy() {
        // Operations still run on the origin socket: cancel them; the socket stays with
        // this connection (closed once they complete) and the client connection ends.
        conn.abandon_upstream(io, ctx);
        conn.clear_deadline();
        return linger(conn, io, ctx);
    }
    let tls_clean =
        conn.origin.tls.as_ref().is_none_or(|t| t.raw_in.is_empty() && !t.raw_out.is_lent() && t.failed.is_none());
    if let (Some(up), Some((sock, fixed))) = (conn.upstream.take(), conn.origin.detach(io, ctx.ring)) {
        let UpstreamConn { key, abandoned, lease, .. } = up;
        if let (true, false, true, Some(lease)) = (reusable, abandoned, tls_clean, lease) {
            let tls = conn.origin.tls.take().map(|mut t| {
                t.release(ctx.pool);
                t
            });
            ctx.upstreams.put(key, crate::upstream::pool::Pooled { sock, tls, lease, fixed }, ctx.now);
        }
    }
    conn.origin.drop_tls(ctx.pool);
    conn.origin.forget_outcome();
    conn.origin.input.clear();
    conn.origin.input.release_if_empty(ctx.pool);
    conn.clear_deadline();
    if ex.h1.early_response || !ex.h1.req_body.finished() {
        return linger(conn, io, ctx);
    }
    if ex.h1.close_client {
        return NextStep::Close;
    }
    conn.keep_client_fixed(io, ctx);
    let request_bytes = conn.bytes_in.saturating_sub(ex.facts.bytes_in_at_start);
    conn.phase = Phase::AwaitRequest { after_upload: request_bytes >= super::multishot::UPLOAD_BYTES };
    NextStep::Continue
}

/// The response is out but the client may still be sending a body we will not read:
/// half-close our side and drain its bytes for a moment, so closing with unread data does
/// not reset the connection before the client has read the response.
pub(crate) fn linger(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.tls.is_none() {
        if let Some(fd) = conn.client_fd() {
            ctx.ring.submit(io, Side::Client.shutdown_tag(), uring::Op::ShutdownWrite { fd }, ctx.pool);
        }
    }
    conn.phase = Phase::Linger;
    conn.set_deadline(io, ctx, std::time::Duration::from_secs(2));
    NextStep::Continue
}

/// Reads and drops client bytes until EOF or the linger deadline.
pub(crate) fn linger_step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.writing.is_some() || conn.client.reading {
        return NextStep::Wait;
    }
    if conn.client.ended() {
        return NextStep::Close;
    }
    if !conn.client.input.is_lent() {
        conn.client.input.clear();
    }
    conn.read(io, ctx, Side::Client)
}

/// The request target as an operator reads it in the access log.
fn describe_target(head: &h1::RequestHead, tls: bool) -> String {
    match &head.target {
        h1::RequestTarget::Origin { path } => match &head.host {
            Some(h) => format!("{}://{}{}", if tls { "https" } else { "http" }, h, path),
            None => path.to_string(),
        },
        h1::RequestTarget::Absolute { https, authority, path } => {
            format!("{}://{}{}", if *https { "https" } else { "http" }, authority, path)
        }
        h1::RequestTarget::Authority(a) => a.to_string(),
        h1::RequestTarget::Asterisk => "*".into(),
    }
}

/// Validates the chunked bytes after the head and moves their payload together right
/// after it. Returns (input bytes consumed, payload bytes now following the head).
fn dechunk(conn: &mut Connection, ctx: &mut Ctx<'_>, head: usize) -> Result<(usize, usize), h1::H1Error> {
    let Some(ex) = conn.ex.as_mut() else { return Ok((0, 0)) };
    let Body::Chunked { decoder } = &mut ex.h1.resp_body else { return Ok((0, 0)) };
    let base = conn.origin.input.start + head;
    let mut ranges = Vec::new();
    let progress = decoder.feed_with_data(&conn.origin.input.data(ctx.pool)[head..], &mut ranges)?;
    if progress.done {
        ex.h1.resp_body = Body::Done;
    }
    let mut payload = 0;
    if let Some(bytes) = conn.origin.input.slab_mut(ctx.pool) {
        for r in ranges {
            let len = r.end - r.start;
            bytes.copy_within(base + r.start..base + r.end, base + payload);
            payload += len;
        }
    }
    Ok((progress.consumed, payload))
}

/// Inserts `Host: host[:port]` right after the request line of a rewritten head.
fn add_host(head: &mut Vec<u8>, host: &str, port: u16, tls: bool) {
    let Some(eol) = head.windows(2).position(|w| w == b"\r\n") else { return };
    let default = if tls { 443 } else { 80 };
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let line = if port == default { format!("Host: {host}\r\n") } else { format!("Host: {host}:{port}\r\n") };
    let at = eol + 2;
    head.splice(at..at, line.into_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_small_incomplete_length_body_that_fits_is_waited_for() {
        let len = |n| Body::Length { remaining: n };
        assert!(should_wait_for_small_body(&len(1024), 0, 60_000));
        assert!(should_wait_for_small_body(&len(1024), 1000, 60_000));
        assert!(!should_wait_for_small_body(&len(1024), 1024, 60_000), "complete already");
        assert!(!should_wait_for_small_body(&len(COALESCE_MAX_BODY + 1), 0, 60_000), "too large to hold the head for");
        assert!(!should_wait_for_small_body(&len(1024), 0, 100), "does not fit after the data");
        assert!(!should_wait_for_small_body(&Body::UntilEof, 0, 60_000));
        assert!(!should_wait_for_small_body(&Body::None, 0, 60_000));
    }

    #[test]
    fn host_goes_right_after_the_request_line() {
        let mut h = b"GET /x HTTP/1.1\r\nVia: 1.1 s\r\n\r\n".to_vec();
        add_host(&mut h, "10.0.0.1", 8080, false);
        assert_eq!(h, b"GET /x HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nVia: 1.1 s\r\n\r\n");
        let mut h = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        add_host(&mut h, "::1", 443, true);
        assert_eq!(h, b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n");
    }
}
