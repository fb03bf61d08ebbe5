//! A client connection and its chained state machine.
//!
//! The worker hands every completion of a connection to [`on_completion`], which records
//! what the kernel did (bytes read, bytes written, EOF, error) and then runs
//! [`advance`]: the current [`Phase`]'s handler looks at the facts and returns a
//! [`NextStep`]: `Continue` into the next phase now, `Wait` for I/O it has submitted, or
//! `Close`. A guard bounds the transitions per event so a bug cannot spin a worker.
//!
//! Phases (HTTP/1.1; see docs/ARCHITECTURE.md for the diagram):
//! `AwaitRequest → RequestHead → Upstream → SendRequest → ResponseHead → ResponseBody →
//! (keep-alive) AwaitRequest`, with `Tunnel` after a CONNECT or an accepted Upgrade (101),
//! `Respond` for responses the proxy makes itself, and `Admin` for the admin endpoint.
//!
//! Buffers: `client.input` holds bytes read from the client, `origin.input` bytes read from the origin,
//! `out` responses the proxy writes itself. Each holds a slab only while it has data or
//! an operation in flight; an idle keep-alive connection holds none.

mod admin;
mod auth;
pub(crate) mod buf;
mod close;
mod endpoint;
mod http1;
mod http2;
pub(crate) mod leg;
mod log;
pub(crate) mod multishot;
mod origin_session;
mod parked;
mod stream;
mod tls;
mod tunnel;
mod upgrade;
mod upstream;
pub(crate) mod view;

use crate::config::Config;
use crate::stats::{self, WorkerStats};
use crate::timers::{TimerKey, Timers};
use crate::upstream::dns::Resolver;
use crate::upstream::pool::{PoolKey, QueuedFor, UpstreamPool};
use buf::{Buf, BufId};
pub(crate) use close::CloseReason;
pub use endpoint::Endpoint;
use leg::{Dial, Leg, Side};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use uring::{Io, Op, OpTag, ProvidedBuf, Ring, Slab, SlabPool};

/// Operation tags (tags below 4 carry a slab).
pub(crate) mod tag {
    use uring::OpTag;
    pub const CLIENT_READ: OpTag = OpTag(0);
    pub const CLIENT_WRITE: OpTag = OpTag(1);
    pub const UP_READ: OpTag = OpTag(2);
    pub const UP_WRITE: OpTag = OpTag(3);
    pub const CLIENT_POLL: OpTag = OpTag(4);
    pub const CONNECT: OpTag = OpTag(5);
    pub const CANCEL: OpTag = OpTag(6);
    pub const CLIENT_SHUTDOWN: OpTag = OpTag(7);
    pub const UP_SHUTDOWN: OpTag = OpTag(8);
    /// A tunnel direction's splice, or its poll after the splice found nothing to move.
    pub const SPLICE_TO_ORIGIN: OpTag = OpTag(9);
    pub const SPLICE_TO_CLIENT: OpTag = OpTag(10);
    /// The client leg's multishot receive (`multishot`): one submission, many completions.
    pub const CLIENT_RECV: OpTag = OpTag(11);
}

/// What a client is told when no connection to the origin could be made, whatever the
/// reason (refused, unreachable, timed out): the reason goes to the log only, so the
/// proxy is no port-scan oracle.
pub(crate) const CONNECT_FAILED: &str = "cannot connect to the origin";

/// The one text of a refused destination (the deny list, or this machine itself).
pub(crate) const DESTINATION_DENIED: &str = "destination address is on the deny list";

/// Most state transitions one event may cause.
const LOOP_GUARD: u32 = 64;

/// What a phase handler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Run the (new) current phase now.
    Continue,
    /// I/O is in flight (or a wake-up is arranged); return to the ring.
    Wait,
    /// Tear the connection down.
    Close,
}

/// Everything of the worker a connection may use besides itself.
pub struct Ctx<'a> {
    pub ring: &'a mut Ring,
    pub pool: &'a mut SlabPool,
    pub cfg: &'a Config,
    pub dns: &'a mut Resolver,
    /// Proxy authentication (`crate::auth`).
    pub auth: &'a mut crate::auth::Gate,
    pub upstreams: &'a mut UpstreamPool,
    pub timers: &'a mut Timers,
    pub stats: &'a WorkerStats,
    pub all_stats: &'a [WorkerStats],
    pub now: Instant,
    pub scratch: &'a mut Vec<u8>,
    pub via: &'a str,
    pub listeners: &'a [SocketAddr],
    pub ready: bool,
    pub minter: &'a mut crate::tls::mint::Minter,
    pub upstream_tls: &'a std::sync::Arc<rustls::ClientConfig>,
    pub access: Option<&'a mut crate::accesslog::AccessLog>,
    /// The links between HTTP/2 sessions and their streams' exchanges.
    pub links: &'a mut crate::http2::links::Links,
    /// Exchanges of new HTTP/2 streams, for the worker to put in slots of their own.
    pub spawn: &'a mut Vec<Connection>,
    /// The worker's HTTP/2 origin sessions, by origin.
    pub origins: &'a mut crate::http2::origins::Origins,
    /// The upstream TLS config offering only `http/1.1` (requests that offer an Upgrade,
    /// or `h2.origins = false`).
    pub upstream_tls_h1: &'a std::sync::Arc<rustls::ClientConfig>,
    /// Slots the worker runs again after the current batch.
    pub wakes: &'a uring::ReadyQueue,
    /// This machine's own addresses (`local_targets`).
    pub local: &'a crate::upstream::local::LocalAddrs,
    /// Shared with the other workers (`/debug/connections` asks them through it).
    pub control: &'a crate::control::Control,
    /// This worker's index.
    pub worker: usize,
}

impl Ctx<'_> {
    /// Asks the worker to run slot `id` again after this batch (it re-checks its own
    /// state: a spurious wake is harmless).
    pub fn wake(&self, id: uring::ConnId) {
        self.wakes.wake(id);
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Proxy,
    Admin,
}

/// Where a connection is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Between requests (or before the first): no slab held, waiting for readability.
    AwaitRequest {
        /// The last request was an upload (`multishot::UPLOAD_BYTES` or more): the wait
        /// for the next one is a one-shot receive, not the multishot one.
        after_upload: bool,
    },
    /// The first bytes decide: TLS ClientHello, or HTTP/1.
    Detect,
    /// Reading the ClientHello (SNI, ALPN) before choosing a certificate or passthrough.
    TlsAccept,
    /// Completing the client-side TLS handshake with a forged certificate.
    TlsHandshake,
    /// Reading and parsing a request head.
    RequestHead,
    /// Finding an upstream connection: pool, resolve, connect (progress in the exchange).
    Upstream,
    /// Sending the request head and body to the origin.
    SendRequest,
    /// Waiting for and parsing the response head.
    ResponseHead,
    /// Forwarding the response body.
    ResponseBody,
    /// Relaying bytes both ways after CONNECT or a 101 (progress in the exchange).
    Tunnel,
    /// Writing a response the proxy made itself (`out`), then closing.
    Respond,
    /// Serving the admin endpoint.
    Admin,
    /// Response sent while the client was still sending: drain its bytes, then close.
    Linger,
    /// An HTTP/2 connection: frames on the client leg, each stream an exchange of its own
    /// (`conn::http2`).
    H2,
    /// An HTTP/2 session to an origin, serving the exchanges linked to it
    /// (`conn::origin_session`).
    H2Origin,
}

impl Phase {
    /// The phase's name, for diagnostics and `/debug/connections`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Phase::AwaitRequest { .. } => "AwaitRequest",
            Phase::Detect => "Detect",
            Phase::TlsAccept => "TlsAccept",
            Phase::TlsHandshake => "TlsHandshake",
            Phase::RequestHead => "RequestHead",
            Phase::Upstream => "Upstream",
            Phase::SendRequest => "SendRequest",
            Phase::ResponseHead => "ResponseHead",
            Phase::ResponseBody => "ResponseBody",
            Phase::Tunnel => "Tunnel",
            Phase::Respond => "Respond",
            Phase::Admin => "Admin",
            Phase::Linger => "Linger",
            Phase::H2 => "H2",
            Phase::H2Origin => "H2Origin",
        }
    }
}

/// The origin connection of the current exchange: where it goes back to. Its socket
/// and TLS session are the origin [`Leg`].
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub key: PoolKey,
    pub reused: bool,
    /// Set when the exchange gave up on it: never pooled, closed with the connection.
    pub abandoned: bool,
    /// Its place in the origin's connection count (`pool.max_connections_per_host`),
    /// released when it is dropped. None for tunnels, which are not counted.
    pub lease: Option<crate::upstream::pool::Lease>,
}

/// The CONNECT an intercepting connection carries the tunnel of.
#[derive(Debug, Clone)]
pub(crate) struct TunnelTarget {
    pub host: String,
    pub port: u16,
    /// Who the CONNECT authenticated as (proxy authentication): what the tunnel carries
    /// is theirs.
    pub user: Option<std::sync::Arc<str>>,
}

/// One client connection.
pub struct Connection {
    /// The client's side: its socket, TLS when intercepted, the bytes it sent.
    pub(crate) client: Leg,
    /// The origin's side for the current exchange.
    pub(crate) origin: Leg,
    /// Reads the ClientHello before a certificate is chosen.
    pub(crate) acceptor: Option<Box<rustls::server::Acceptor>>,
    /// Bytes of `client.input` already given to the acceptor.
    pub(crate) accepted_bytes: usize,
    /// The CONNECT whose tunnel this connection now carries (interception).
    pub(crate) tunnel_target: Option<Box<TunnelTarget>>,
    /// The server name the client asked for in its ClientHello (boxed: only intercepted
    /// TLS connections have one, and every connection pays for the field).
    pub(crate) sni: Option<Box<str>>,
    pub(crate) role: Role,
    /// What the client speaks (metrics labels, the access log's protocol field).
    pub(crate) protocol: crate::protocol::Protocol,
    pub(crate) peer: Option<SocketAddr>,
    /// Where the client meant to go before a REDIRECT rule sent it here (transparent mode).
    pub(crate) original_dst: Option<SocketAddr>,
    /// Bytes received from / sent to the client (plaintext), for the access log.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) phase: Phase,
    pub(crate) out: Buf,
    pub(crate) upstream: Option<UpstreamConn>,
    pub(crate) ex: Option<Box<http1::Exchange>>,
    /// A tunnel's spliced directions. A pipe is closed only when no operation names it
    /// (its direction is done, or the connection is freed): the kernel resolves a
    /// splice's pipe fd when the splice runs.
    pub(crate) splice: Option<Box<tunnel::Splicing>>,
    /// The armed timer entry: at or before `deadline`.
    pub(crate) timer: Option<TimerKey>,
    /// When this connection's phase times out, if it can.
    deadline: Option<Instant>,
    pub(crate) requests: u32,
    /// The cause of the close, when one was named where it happened (`closing`).
    pub(crate) close_reason: Option<CloseReason>,
    /// When it was accepted (its age in `/debug/connections`), in 8 bytes.
    pub(crate) accepted: view::Stamp,
    /// Client bytes a receive delivered while `client.input` was lent or full, or had no
    /// slab and the buffer budget refused it one (`multishot`): they go in before any byte
    /// read later.
    /// (Boxed: one pointer on every connection, for a rarely used vector.)
    #[allow(clippy::box_collection)]
    pub(crate) client_stash: Option<Box<Vec<u8>>>,
    /// The HTTP/2 session, once the client speaks HTTP/2 (`Phase::H2`).
    pub(crate) h2: Option<Box<http2::H2>>,
    /// For the exchange of an HTTP/2 stream: its link to the session, which stands in
    /// for a client socket (`conn::stream`).
    pub(crate) stream: Option<Box<stream::StreamSide>>,
}

impl Connection {
    /// A freshly accepted client.
    pub fn new(client: TcpStream, peer: Option<SocketAddr>, role: Role, now: Instant) -> Connection {
        let original_dst = if role == Role::Proxy { redirected_from(&client) } else { None };
        let mut c = Connection::detached(role, peer, now);
        c.client = Leg::on(client);
        c.original_dst = original_dst;
        c
    }

    /// A connection without a client socket (an HTTP/2 stream's exchange gets its link).
    pub(crate) fn detached(role: Role, peer: Option<SocketAddr>, now: Instant) -> Connection {
        Connection {
            role,
            client: Leg::default(),
            protocol: crate::protocol::Protocol::Http1,
            origin: Leg::default(),
            peer,
            original_dst: None,
            bytes_in: 0,
            bytes_out: 0,
            phase: if role == Role::Admin { Phase::Admin } else { Phase::AwaitRequest { after_upload: false } },
            acceptor: None,
            accepted_bytes: 0,
            tunnel_target: None,
            sni: None,
            out: Buf::default(),
            upstream: None,
            ex: None,
            splice: None,
            timer: None,
            deadline: None,
            requests: 0,
            close_reason: None,
            accepted: view::Stamp::at(now),
            client_stash: None,
            h2: None,
            stream: None,
        }
    }

    /// True when the client leg is intercepted TLS (directly, or for an HTTP/2 stream,
    /// its session's).
    pub(crate) fn intercepted(&self) -> bool {
        self.client.tls.is_some() || self.stream.as_ref().is_some_and(|s| s.tls)
    }

    /// Starts a fresh connection: admin clients get the head deadline at once.
    pub fn start(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
        if self.role == Role::Admin {
            let t = ctx.cfg.timeouts.request_head;
            self.set_deadline(io, ctx, t);
        }
        advance(self, io, ctx)
    }

    /// True for a proxy client (not an admin endpoint connection, nor the exchange of an
    /// HTTP/2 stream, whose client is its session's).
    pub fn is_client(&self) -> bool {
        self.role == Role::Proxy && self.stream.is_none() && !self.is_origin_session()
    }

    /// True for an HTTP/2 origin session slot.
    pub(crate) fn is_origin_session(&self) -> bool {
        self.h2.as_ref().is_some_and(|h| h.origin().is_some())
    }

    /// The pool gives the exchange its turn in its origin's queue: true (and no longer in
    /// the queue) when it was waiting there; false for a stale entry (the client left,
    /// or the exchange moved on).
    pub fn take_queue_turn(&mut self) -> bool {
        if !matches!(self.phase, Phase::Upstream) {
            return false;
        }
        match self.ex.as_mut().map(|e| &mut e.upstream_step) {
            Some(http1::UpstreamStep::Queued { in_queue, .. }) if *in_queue => {
                *in_queue = false;
                true
            }
            _ => false,
        }
    }

    /// True between requests (nothing in flight that a drain should wait for).
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::AwaitRequest { .. }) && self.ex.is_none() && self.is_client()
    }

    pub(crate) fn client_fd(&self) -> Option<RawFd> {
        self.client.fd()
    }

    pub(crate) fn up_fd(&self) -> Option<RawFd> {
        self.origin.fd()
    }

    /// Sets the single deadline of this connection. Deadlines are lazy: the timer entry
    /// only moves when the new deadline is earlier than the armed one; a later deadline is
    /// just recorded, and the early entry re-arms itself for it when it fires (see
    /// `on_deadline`). A keep-alive request then costs one timer insertion, not five.
    pub(crate) fn set_deadline(&mut self, io: &Io, ctx: &mut Ctx<'_>, after: Duration) {
        let at = ctx.now + after;
        self.deadline = Some(at);
        match self.timer {
            Some(armed) if armed.at() <= at => {}
            _ => self.timer = Some(ctx.timers.set(self.timer, at, io.id())),
        }
    }

    /// Moves the deadline only when it would move by more than a second (cheap "no
    /// progress" timers for long transfers).
    pub(crate) fn refresh_deadline(&mut self, io: &Io, ctx: &mut Ctx<'_>, after: Duration) {
        let at = ctx.now + after;
        match self.deadline {
            Some(d) if at.saturating_duration_since(d) < Duration::from_secs(1) => {}
            _ => self.set_deadline(io, ctx, after),
        }
    }

    /// The deadline at `at`, or none.
    pub(crate) fn set_deadline_at(&mut self, io: &Io, ctx: &mut Ctx<'_>, at: Option<Instant>) {
        match at {
            Some(at) => self.set_deadline(io, ctx, at.saturating_duration_since(ctx.now)),
            None => self.clear_deadline(),
        }
    }

    /// No deadline any more; an armed entry stays and is dropped when it fires.
    pub(crate) fn clear_deadline(&mut self) {
        self.deadline = None;
    }

    /// Removes the timer entry itself (the connection is closing).
    fn drop_timer(&mut self, ctx: &mut Ctx<'_>) {
        self.deadline = None;
        ctx.timers.clear(self.timer.take());
    }

    /// A client that keeps its connection for another request gets a slot in the ring's
    /// registered file table (kept until the slot is freed), so its operations skip the
    /// kernel's descriptor lookup. Not before: a one-request connection would pay a table
    /// install and removal for the two or three operations it has.
    pub(crate) fn keep_client_fixed(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        if let Some(fd) = self.client_fd().filter(|fd| !io.uses_fixed(*fd)) {
            ctx.ring.attach_file(io, fd, None);
        }
    }

    /// Waits for the client to become readable without holding a slab.
    pub(crate) fn poll_client(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        debug_assert_eq!(self.client.wait, leg::ClientWait::Idle);
        let Some(fd) = self.client_fd() else { return };
        // Cleartext clients wait with a receive on the provided-buffer ring: the first
        // bytes arrive in one operation and no buffer is held while idle. From the first
        // keep-alive wait on, that receive is a multishot one that stays armed across
        // requests (`multishot`); a connection's first request (which may be TLS, or its
        // only one) and the request after an upload take a one-shot receive. TLS clients
        // (whose bytes go through the session) wait for readability.
        let after_upload = matches!(self.phase, Phase::AwaitRequest { after_upload: true });
        if self.requests > 0 && !after_upload && self.client.tls.is_none() && ctx.ring.has_buf_ring() {
            self.arm_multishot(io, ctx, fd);
            return;
        }
        let op = if self.client.tls.is_none() && ctx.ring.has_buf_ring() {
            Op::RecvSelect { fd }
        } else {
            Op::PollIn { fd }
        };
        ctx.ring.submit(io, tag::CLIENT_POLL, op, ctx.pool);
        self.client.wait = leg::ClientWait::Poll;
    }

    /// Answers the request (or the bytes that were to be one) with a response the proxy
    /// makes itself, rendered in the client's protocol (an HTTP/1.1 error page with
    /// `Connection: close`), and closes once it is out. The status is recorded as the
    /// exchange's fact for the log and the counters.
    pub(crate) fn refuse(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, status: u16, why: &str) -> NextStep {
        self.refuse_with(io, ctx, status, b"", why)
    }

    /// [`Connection::refuse`] with extra header fields (whole lines, e.g. a 407's
    /// `Proxy-Authenticate`).
    pub(crate) fn refuse_with(
        &mut self,
        io: &mut Io,
        ctx: &mut Ctx<'_>,
        status: u16,
        fields: &[u8],
        why: &str,
    ) -> NextStep {
        // An HTTP/1.1 page either way: an HTTP/2 stream's exchange writes it into its
        // link, and the session sends it as `:status` HEADERS and DATA (without the
        // connection fields).
        let page = crate::h1::error_response_with(status, fields, why);
        ctx.stats.response(self.protocol, self.ex.as_ref().map(|e| e.method), status);
        ctx.stats.error(status);
        if let Some(ex) = self.ex.as_mut() {
            ex.status = status;
        }
        self.closing(CloseReason::Refused);
        let sent = self.send_own(io, ctx, &page);
        // Logged once the response is queued, so that its bytes count.
        if self.ex.is_some() {
            log::finish(self, ctx, status);
        } else if self.role == Role::Proxy {
            log::refused(self, ctx, status, sent.unwrap_or(0) as u64);
        }
        if sent.is_none() {
            return NextStep::Close;
        }
        self.phase = Phase::Respond;
        let idle = ctx.cfg.timeouts.io_idle;
        self.set_deadline(io, ctx, idle);
        NextStep::Wait
    }

    /// Writes bytes the proxy makes itself (a response, `200 Connection Established`) to
    /// the client from `out`; returns how many. None, and nothing sent, while something
    /// is still being written to the client: these bytes could not be framed after it.
    pub(crate) fn send_own(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, bytes: &[u8]) -> Option<usize> {
        if self.out.is_lent() || self.client.writing.is_some() {
            return None;
        }
        let n = self.out.fill(ctx.pool, bytes);
        self.write(io, ctx, Side::Client, BufId::Out, 0, n);
        Some(n)
    }

    /// Gives up on the upstream connection: cancel its operations; it is never pooled.
    /// A name it waited for is no longer awaited by it.
    pub(crate) fn abandon_upstream(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        upstream::stop_resolving(self, io, ctx);
        // A dial learning its origin's protocol that is given up lets the requests waiting
        // for its answer go on now (not once this slot is freed, after its error page).
        if let Some(lease) = self.ex.as_mut().and_then(|e| e.lease.as_mut()) {
            lease.give_up_learning();
        }
        self.drop_origin_link(ctx);
        if let Some(up) = self.upstream.as_mut() {
            if !up.abandoned {
                up.abandoned = true;
                if let Some(fd) = self.origin.fd().filter(|_| self.origin.busy()) {
                    ctx.ring.submit(io, tag::CANCEL, Op::CancelFd { fd }, ctx.pool);
                }
            }
        }
    }

    /// Releases everything this connection holds and cancels its operations. The worker
    /// then closes the slot, which is freed once the cancelled operations have completed.
    pub fn begin_close(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        self.drop_timer(ctx);
        upstream::stop_resolving(self, io, ctx);
        // Decided now, from what the legs recorded, unless named where it happened.
        let reason = self.close_reason();
        self.close_reason = Some(reason);
        tracing::debug!(
            conn = %io.id(),
            phase = %self.phase.name(),
            reason = reason.name(),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            requests = self.requests,
            "close"
        );
        // An exchange still open here ended without a clean finish: a tunnel closing, or
        // a client or origin that went away (499 when nothing was answered yet).
        let status = self.ex.as_ref().map(|e| if e.status != 0 { e.status } else { 499 }).unwrap_or(0);
        if status != 0 {
            log::finish(self, ctx, status);
        }
        for b in [&mut self.client.input, &mut self.origin.input, &mut self.out] {
            b.release(ctx.pool);
        }
        for t in [self.client.tls.as_mut(), self.origin.tls.as_mut()].into_iter().flatten() {
            t.release(ctx.pool);
        }
        // Whatever is in flight (the slot's own count, not this connection's view of it),
        // every descriptor it owns gets a cancel: the slot is freed only once they all
        // completed, and its descriptors close only then.
        if io.inflight() > 0 {
            let pipes = self.splice.iter().flat_map(|s| s.fds());
            for fd in self.client_fd().into_iter().chain(self.up_fd()).chain(pipes) {
                ctx.ring.submit(io, tag::CANCEL, Op::CancelFd { fd }, ctx.pool);
            }
        }
        if let Some(h2) = self.h2.as_mut() {
            h2.abandon(ctx);
            if self.is_origin_session() {
                stats::drop_one(&ctx.stats.h2_origin_sessions_active);
            }
        }
        self.drop_origin_link(ctx);
        if self.stream.is_some() {
            self.leave_link(ctx);
            stats::drop_one(&ctx.stats.h2_streams_active);
        }
        if self.is_client() {
            stats::drop_one(&ctx.stats.connections_active);
        }
    }
}

/// The pre-REDIRECT destination of a transparently intercepted client, when it differs
/// from the address the client actually reached.
fn redirected_from(client: &TcpStream) -> Option<SocketAddr> {
    let original = crate::sys::original_dst(client).ok()?;
    (client.local_addr().ok()? != original).then_some(original)
}

/// Records one completion of this connection (`more`: another completion of the same
/// multishot operation follows), then advances its state machine.
#[allow(clippy::too_many_arguments)]
pub fn on_completion(
    conn: &mut Connection,
    io: &mut Io,
    ctx: &mut Ctx<'_>,
    t: OpTag,
    result: i32,
    more: bool,
    slab: Option<Slab>,
    mut provided: Option<ProvidedBuf>,
) -> NextStep {
    match t {
        tag::CLIENT_RECV => conn.multishot_done(io, ctx, result, more, provided.take()),
        tag::CLIENT_READ => conn.read_done(ctx, Side::Client, result, slab),
        tag::UP_READ => conn.read_done(ctx, Side::Origin, result, slab),
        tag::CLIENT_WRITE | tag::UP_WRITE => {
            let side = if t == tag::CLIENT_WRITE { Side::Client } else { Side::Origin };
            if let Some(step) = conn.write_done(io, ctx, side, result, slab) {
                if let Some(p) = provided {
                    ctx.ring.recycle_provided(p);
                }
                return step;
            }
        }
        tag::CLIENT_POLL => conn.idle_receive_done(ctx, result, provided.take()),
        tag::CONNECT => {
            conn.origin.dial = Dial::Done { result };
        }
        tag::SPLICE_TO_ORIGIN => tunnel::splice_done(conn, io, ctx, tunnel::Direction::ToOrigin, result),
        tag::SPLICE_TO_CLIENT => tunnel::splice_done(conn, io, ctx, tunnel::Direction::ToClient, result),
        _ => {}
    }
    // Only a client poll or the multishot receive selects a provided buffer; whatever else
    // carries one gives it back.
    if let Some(p) = provided {
        ctx.ring.recycle_provided(p);
    }
    // Bytes the multishot receive stashed go in as soon as their buffer is back (a
    // write of it completed), before anything reads again.
    if conn.client_stash.is_some() {
        let compact = conn.ex.is_none();
        conn.drain_stash(ctx, compact);
    }
    advance(conn, io, ctx)
}

impl Connection {
    /// The idle client's receive (into a provided buffer, or a poll when none was free)
    /// completed: its bytes go into the client's input.
    fn idle_receive_done(&mut self, ctx: &mut Ctx<'_>, result: i32, provided: Option<ProvidedBuf>) {
        self.client.wait = leg::ClientWait::Idle;
        match (provided, result) {
            (Some(p), n) => {
                if n > 0 {
                    multishot::take_client_bytes(self, ctx, &p);
                    self.bytes_in += n as u64;
                    stats::bump(&ctx.stats.bytes_from_clients, n as u64);
                } else if n == 0 {
                    self.client.eof = true;
                }
                ctx.ring.recycle_provided(p);
            }
            // No provided buffer was free: read the ordinary way.
            (None, r) if r == -libc::ENOBUFS => self.client.readable = true,
            (None, 0) => self.client.eof = true,
            (None, r) if r < 0 => self.client.fail(-r),
            (None, _) => self.client.readable = true,
        }
    }
}

/// Runs phase handlers until one waits or closes.
pub fn advance(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    // An exchange writing through a link: the write completes once the link has room.
    conn.link_progress(ctx);
    for _ in 0..LOOP_GUARD {
        let from = std::mem::discriminant(&conn.phase);
        let name = conn.phase.name();
        let step = match conn.phase {
            Phase::AwaitRequest { .. } => http1::await_request(conn, io, ctx),
            Phase::Detect => tls::detect(conn, io, ctx),
            Phase::TlsAccept => tls::accept(conn, io, ctx),
            Phase::TlsHandshake => tls::handshake(conn, io, ctx),
            Phase::RequestHead => http1::request_head(conn, io, ctx),
            Phase::Upstream => upstream::phase(conn, io, ctx),
            Phase::SendRequest => http1::send_request(conn, io, ctx),
            Phase::ResponseHead => http1::response_head(conn, io, ctx),
            Phase::ResponseBody => http1::response_body(conn, io, ctx),
            Phase::Tunnel => tunnel::step(conn, io, ctx),
            Phase::Respond => respond_step(conn, io, ctx),
            Phase::Admin => admin::step(conn, io, ctx),
            Phase::Linger => http1::linger_step(conn, io, ctx),
            Phase::H2 => http2::step(conn, io, ctx),
            Phase::H2Origin => origin_session::step(conn, io, ctx),
        };
        if std::mem::discriminant(&conn.phase) != from {
            tracing::debug!(conn = %io.id(), from = %name, to = %conn.phase.name(), "phase");
        }
        if step != NextStep::Continue {
            return step;
        }
    }
    debug_assert!(false, "loop guard hit in phase {:?}", conn.phase);
    conn.closing(CloseReason::Internal);
    NextStep::Close
}

/// The proxy's own response is on its way. Once it is out, a cleartext client (or one
/// whose unread bytes are known) gets the linger: closing with its bytes unread would
/// reset the connection, and the client could lose the response before reading it.
fn respond_step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.client.writing.is_some() {
        return NextStep::Wait;
    }
    if conn.client.ended() || conn.stream.is_some() || (conn.client.tls.is_some() && conn.client.input.is_empty()) {
        return NextStep::Close;
    }
    http1::linger(conn, io, ctx)
}

/// A deadline of this connection fired.
pub fn on_deadline(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    conn.timer = None;
    match conn.deadline {
        None => return NextStep::Wait,
        Some(at) if at > ctx.now => {
            // The entry was armed for an earlier deadline that has since moved later.
            conn.timer = Some(ctx.timers.set(None, at, io.id()));
            return NextStep::Wait;
        }
        Some(_) => conn.deadline = None,
    }
    if matches!(conn.phase, Phase::H2 | Phase::H2Origin) {
        if let Some(step) = http2::keepalive_due(conn, io, ctx) {
            return step;
        }
    }
    if matches!(conn.phase, Phase::Linger) {
        // The linger's planned end, not a timeout: the reason named before it stands.
        return NextStep::Close;
    }
    conn.closing(CloseReason::Timeout);
    stats::bump(&ctx.stats.timeouts, 1);
    match conn.phase {
        Phase::AwaitRequest { .. } | Phase::Detect | Phase::TlsAccept | Phase::TlsHandshake | Phase::Admin => {
            NextStep::Close
        }
        Phase::RequestHead => {
            if conn.requests == 0 || conn.client_bytes_pending() {
                conn.refuse(io, ctx, 408, "request head not received in time")
            } else {
                NextStep::Close
            }
        }
        Phase::Upstream => {
            parked::unpark(conn, ctx);
            conn.abandon_upstream(io, ctx);
            let queued = conn.ex.as_ref().and_then(|e| match e.upstream_step {
                http1::UpstreamStep::Queued { waits_for, .. } => Some(waits_for),
                _ => None,
            });
            let why = match queued {
                Some(QueuedFor::Room) => {
                    "no connection to the origin became free in time (pool.max_connections_per_host)"
                }
                // The same text as a refused connect (waiting for another dial to the
                // origin counts as this one's): a client must not tell a filtered port
                // from a closed one (the detail is in the log).
                Some(QueuedFor::Protocol) | None => CONNECT_FAILED,
            };
            conn.refuse(io, ctx, 504, why)
        }
        Phase::ResponseHead | Phase::SendRequest => {
            conn.abandon_upstream(io, ctx);
            let sent_anything = conn.ex.as_ref().is_some_and(|e| e.response_started);
            if sent_anything {
                return NextStep::Close;
            }
            conn.refuse(io, ctx, 504, "upstream did not answer in time")
        }
        _ => NextStep::Close,
    }
}

#[cfg(test)]
mod tests {
    /// An idle keep-alive client costs its slot (this struct plus the slot's `Io`) and
    /// little else (`bench/run.sh` idle: about 600 bytes per connection). A field added
    /// here is paid by every idle client: box what only some phases need.
    #[test]
    fn an_idle_connection_stays_small() {
        let size = std::mem::size_of::<super::Connection>();
        // 440: issue 11's 424 plus two pointers for HTTP/2 (`h2`: the session of an HTTP/2
        // client; `stream`: the link of a stream's exchange), boxed so that an idle
        // HTTP/1.1 client pays 16 bytes for them.
        assert!(size <= 440, "Connection grew to {size} bytes (440 after issue 14's HTTP/2 pointers)");
    }
}
