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
//! (keep-alive) AwaitRequest`, with `Tunnel` after a CONNECT, `Respond` for responses
//! the proxy makes itself, and `Admin` for the admin endpoint.
//!
//! Buffers: `cin` holds bytes read from the client, `uin` bytes read from the origin,
//! `out` responses the proxy writes itself. Each holds a slab only while it has data or
//! an operation in flight; an idle keep-alive connection holds none.

mod admin;
pub(crate) mod buf;
mod http1;
mod log;
mod tls;
mod tunnel;
mod upstream;

use crate::config::Config;
use crate::stats::{self, WorkerStats};
use crate::timers::{TimerKey, Timers};
use crate::upstream::dns::Resolver;
use crate::upstream::pool::{PoolKey, UpstreamPool};
use buf::{Buf, BufId};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
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
}

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
    AwaitRequest,
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
    /// Relaying bytes both ways after CONNECT (progress in the exchange).
    Tunnel,
    /// Writing a response the proxy made itself (`out`), then closing or going on.
    Respond { close: bool },
    /// Serving the admin endpoint.
    Admin,
    /// Response sent while the client was still sending: drain its bytes, then close.
    Linger,
}

/// A write in flight and where its slab goes back to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteJob {
    src: BufId,
    offset: u32,
    len: u32,
}

/// The upstream socket of the current exchange.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub sock: TcpStream,
    pub key: PoolKey,
    pub reused: bool,
    /// Set when the exchange gave up on it: never pooled, closed with the connection.
    pub abandoned: bool,
    /// Its place in the origin's connection count (`pool.max_connections_per_host`),
    /// released when it is dropped. None for tunnels, which are not counted.
    pub lease: Option<crate::upstream::pool::Lease>,
}

/// The facts of in-flight I/O, updated by completions, read by phase handlers.
#[derive(Debug, Default)]
pub(crate) struct IoState {
    client_read: bool,
    client_poll: bool,
    client_write: Option<WriteJob>,
    up_read: bool,
    up_write: Option<WriteJob>,
    connecting: bool,
    connect_result: Option<i32>,
    client_eof: bool,
    client_error: Option<i32>,
    up_eof: bool,
    up_error: Option<i32>,
    /// The client polled readable and nothing has read yet.
    client_readable: bool,
}

/// One client connection.
pub struct Connection {
    /// TLS toward the client (intercepted), when the client spoke TLS.
    pub(crate) ctls: Option<Box<crate::tls::TlsLeg>>,
    /// TLS toward the origin, for https targets.
    pub(crate) utls: Option<Box<crate::tls::TlsLeg>>,
    /// Reads the ClientHello before a certificate is chosen.
    pub(crate) acceptor: Option<Box<rustls::server::Acceptor>>,
    /// Bytes of `cin` already given to the acceptor.
    pub(crate) accepted_bytes: usize,
    /// The CONNECT authority whose tunnel this connection now carries (interception).
    pub(crate) tunnel_target: Option<Box<(String, u16)>>,
    /// The server name the client asked for in its ClientHello.
    pub(crate) sni: Option<String>,
    pub(crate) role: Role,
    pub(crate) client: TcpStream,
    pub(crate) peer: Option<SocketAddr>,
    /// Where the client meant to go before a REDIRECT rule sent it here (transparent mode).
    pub(crate) original_dst: Option<SocketAddr>,
    /// Bytes received from / sent to the client (plaintext), for the access log.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) phase: Phase,
    pub(crate) cin: Buf,
    pub(crate) uin: Buf,
    pub(crate) out: Buf,
    pub(crate) upstream: Option<UpstreamConn>,
    pub(crate) ex: Option<Box<http1::Exchange>>,
    /// A tunnel's spliced directions. A pipe is closed only when no operation names it
    /// (its direction is done, or the connection is freed): the kernel resolves a
    /// splice's pipe fd when the splice runs.
    pub(crate) splice: Option<Box<tunnel::Splicing>>,
    pub(crate) io: IoState,
    /// The armed timer entry: at or before `deadline`.
    pub(crate) timer: Option<TimerKey>,
    /// When this connection's phase times out, if it can.
    deadline: Option<Instant>,
    pub(crate) requests: u32,
}

impl Connection {
    /// A freshly accepted client.
    pub fn new(client: TcpStream, peer: Option<SocketAddr>, role: Role) -> Connection {
        let original_dst = if role == Role::Proxy { redirected_from(&client) } else { None };
        Connection {
            role,
            client,
            peer,
            original_dst,
            bytes_in: 0,
            bytes_out: 0,
            phase: if role == Role::Admin { Phase::Admin } else { Phase::AwaitRequest },
            ctls: None,
            utls: None,
            acceptor: None,
            accepted_bytes: 0,
            tunnel_target: None,
            sni: None,
            cin: Buf::default(),
            uin: Buf::default(),
            out: Buf::default(),
            upstream: None,
            ex: None,
            splice: None,
            io: IoState::default(),
            timer: None,
            deadline: None,
            requests: 0,
        }
    }

    /// Starts a fresh connection: admin clients get the head deadline at once.
    pub fn start(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
        if self.role == Role::Admin {
            let t = ctx.cfg.timeouts.request_head;
            self.set_deadline(io, ctx, t);
        }
        advance(self, io, ctx)
    }

    /// True for a proxy client (not an admin endpoint connection).
    pub fn is_client(&self) -> bool {
        self.role == Role::Proxy
    }

    /// True while the exchange waits in its origin's queue for a connection.
    pub fn is_queued_for_upstream(&self) -> bool {
        matches!(self.phase, Phase::Upstream)
            && self.ex.as_ref().is_some_and(|e| matches!(e.upstream_step, http1::UpstreamStep::Queued))
    }

    /// True between requests (nothing in flight that a drain should wait for).
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::AwaitRequest) && self.ex.is_none() && self.role == Role::Proxy
    }

    pub(crate) fn client_fd(&self) -> RawFd {
        self.client.as_raw_fd()
    }

    pub(crate) fn up_fd(&self) -> Option<RawFd> {
        self.upstream.as_ref().map(|u| u.sock.as_raw_fd())
    }

    fn buf_mut(&mut self, id: BufId) -> &mut Buf {
        match id {
            BufId::Cin => &mut self.cin,
            BufId::Uin => &mut self.uin,
            BufId::Out => &mut self.out,
            BufId::ClientRawOut => match self.ctls.as_mut() {
                Some(t) => &mut t.raw_out,
                None => &mut self.out,
            },
            BufId::UpRawOut => match self.utls.as_mut() {
                Some(t) => &mut t.raw_out,
                None => &mut self.out,
            },
        }
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

    /// No deadline any more; an armed entry stays and is dropped when it fires.
    pub(crate) fn clear_deadline(&mut self) {
        self.deadline = None;
    }

    /// Removes the timer entry itself (the connection is closing).
    fn drop_timer(&mut self, ctx: &mut Ctx<'_>) {
        self.deadline = None;
        ctx.timers.clear(self.timer.take());
    }

    /// Asks for more client bytes in `cin`. With TLS, decrypted bytes already buffered
    /// are moved in at once (`Continue`); otherwise a read is submitted (`Wait`).
    pub(crate) fn read_client(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
        self.read_leg(io, ctx, true)
    }

    /// Asks for more origin bytes in `uin` (decrypting like `read_client`).
    pub(crate) fn read_upstream(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
        self.read_leg(io, ctx, false)
    }

    /// One read on either leg: plaintext already inside the TLS session first, else a
    /// receive into `cin`/`uin` (cleartext) or the session's `raw_in` (TLS).
    fn read_leg(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, client: bool) -> NextStep {
        debug_assert!(!(if client { self.io.client_read } else { self.io.up_read }));
        let fd = if client { Some(self.client_fd()) } else { self.up_fd() };
        let Some(fd) = fd else { return NextStep::Close };
        let (leg, dst) = if client { (self.ctls.as_mut(), &mut self.cin) } else { (self.utls.as_mut(), &mut self.uin) };
        let (slab, offset, len) = match leg {
            Some(t) => {
                let (eof, error) = match t.take_plaintext(dst, ctx.pool) {
                    crate::tls::Plain::Got(n) => {
                        if client {
                            self.bytes_in += n as u64;
                            stats::bump(&ctx.stats.bytes_from_clients, n as u64);
                        }
                        return NextStep::Continue;
                    }
                    // The destination is full: the phase handler takes its bytes first.
                    crate::tls::Plain::Full => return NextStep::Continue,
                    crate::tls::Plain::Eof => (true, None),
                    crate::tls::Plain::Error => (false, Some(libc::EPROTO)),
                    crate::tls::Plain::Empty if t.raw_in.is_lent() => return NextStep::Wait,
                    crate::tls::Plain::Empty => (false, None),
                };
                if eof || error.is_some() {
                    let (eof_flag, error_slot) = if client {
                        (&mut self.io.client_eof, &mut self.io.client_error)
                    } else {
                        (&mut self.io.up_eof, &mut self.io.up_error)
                    };
                    *eof_flag |= eof;
                    if error.is_some() {
                        *error_slot = error;
                    }
                    return NextStep::Continue;
                }
                t.raw_in.prepare_read(ctx.pool)
            }
            None => dst.prepare_read(ctx.pool),
        };
        let t = if client { tag::CLIENT_READ } else { tag::UP_READ };
        ctx.ring.submit(io, t, Op::Recv { fd, slab, offset, len }, ctx.pool);
        if client {
            self.io.client_read = true;
        } else {
            self.io.up_read = true;
        }
        NextStep::Wait
    }

    /// Waits for the client to become readable without holding a slab.
    pub(crate) fn poll_client(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        debug_assert!(!self.io.client_poll);
        let fd = self.client_fd();
        // Cleartext clients wait with a receive on the provided-buffer ring: the first
        // bytes arrive in one operation and no buffer is held while idle. TLS clients
        // (whose bytes go through the session) wait for readability.
        let op = if self.ctls.is_none() && ctx.ring.has_buf_ring() { Op::RecvSelect { fd } } else { Op::PollIn { fd } };
        ctx.ring.submit(io, tag::CLIENT_POLL, op, ctx.pool);
        self.io.client_poll = true;
    }

    /// Sends `len` bytes of buffer `src` from `offset` to the client.
    pub(crate) fn write_client(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, src: BufId, offset: usize, len: usize) {
        debug_assert!(self.io.client_write.is_none());
        if self.ctls.is_some() {
            self.encrypt_from(ctx, src, offset, len, true);
            self.bytes_out += len as u64;
            stats::bump(&ctx.stats.bytes_to_clients, len as u64);
            self.flush_client_tls(io, ctx);
            return;
        }
        let fd = self.client_fd();
        let job = WriteJob { src, offset: offset as u32, len: len as u32 };
        self.submit_write(io, ctx, fd, tag::CLIENT_WRITE, job);
        self.io.client_write = Some(job);
        self.bytes_out += len as u64;
        stats::bump(&ctx.stats.bytes_to_clients, len as u64);
    }

    /// Sends `len` bytes of buffer `src` from `offset` to the origin.
    pub(crate) fn write_upstream(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, src: BufId, offset: usize, len: usize) {
        debug_assert!(self.io.up_write.is_none());
        if self.utls.is_some() {
            self.encrypt_from(ctx, src, offset, len, false);
            self.flush_up_tls(io, ctx);
            return;
        }
        let Some(fd) = self.up_fd() else { return };
        let job = WriteJob { src, offset: offset as u32, len: len as u32 };
        self.submit_write(io, ctx, fd, tag::UP_WRITE, job);
        self.io.up_write = Some(job);
    }

    fn submit_write(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, fd: RawFd, t: OpTag, job: WriteJob) {
        let slab = self.buf_mut(job.src).lend();
        let op = Op::Send { fd, slab, offset: job.offset as usize, len: job.len as usize };
        ctx.ring.submit(io, t, op, ctx.pool);
    }

    /// Queues a response the proxy makes itself and switches to `Respond`.
    pub(crate) fn respond(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, bytes: &[u8], close: bool) -> NextStep {
        let status = status_of(bytes);
        if let Some(status) = status {
            ctx.stats.response(self.ex.as_ref().map(|e| e.method), status);
            ctx.stats.error(status);
        }
        // Something still being written to the client: the response cannot be framed
        // after it, so the connection ends without it.
        let blocked = self.out.is_lent() || self.io.client_write.is_some();
        let sent = if blocked {
            0
        } else {
            let n = self.out.fill(ctx.pool, bytes);
            self.write_client(io, ctx, BufId::Out, 0, n);
            n
        };
        // Logged once the response is queued, so that its bytes count.
        if let Some(status) = status {
            if self.ex.is_some() {
                log::finish(self, ctx, status);
            } else if self.role == Role::Proxy {
                log::refused(self, ctx, status, sent as u64);
            }
        }
        if blocked {
            return NextStep::Close;
        }
        self.phase = Phase::Respond { close };
        let idle = ctx.cfg.timeouts.io_idle;
        self.set_deadline(io, ctx, idle);
        NextStep::Wait
    }

    /// Gives up on the upstream connection: cancel its operations; it is never pooled.
    pub(crate) fn abandon_upstream(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        if let Some(up) = self.upstream.as_mut() {
            if !up.abandoned {
                up.abandoned = true;
                if self.io.up_read || self.io.up_write.is_some() || self.io.connecting {
                    let fd = up.sock.as_raw_fd();
                    ctx.ring.submit(io, tag::CANCEL, Op::CancelFd { fd }, ctx.pool);
                }
            }
        }
    }

    /// Releases everything this connection holds and cancels its operations. The worker
    /// then closes the slot, which is freed once the cancelled operations have completed.
    pub fn begin_close(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        self.drop_timer(ctx);
        // An exchange still open here ended without a clean finish: a tunnel closing, or
        // a client or origin that went away (499 when nothing was answered yet).
        let status = self.ex.as_ref().map(|e| if e.status != 0 { e.status } else { 499 }).unwrap_or(0);
        if status != 0 {
            log::finish(self, ctx, status);
        }
        for b in [&mut self.cin, &mut self.uin, &mut self.out] {
            b.release(ctx.pool);
        }
        for t in [self.ctls.as_mut(), self.utls.as_mut()].into_iter().flatten() {
            t.release(ctx.pool);
        }
        // Whatever is in flight (the slot's own count, not this connection's view of it),
        // every descriptor it owns gets a cancel: the slot is freed only once they all
        // completed, and its descriptors close only then.
        if io.inflight() > 0 {
            let pipes = self.splice.iter().flat_map(|s| s.fds());
            for fd in std::iter::once(self.client_fd()).chain(self.up_fd()).chain(pipes) {
                ctx.ring.submit(io, tag::CANCEL, Op::CancelFd { fd }, ctx.pool);
            }
        }
        if self.role == Role::Proxy {
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

fn status_of(bytes: &[u8]) -> Option<u16> {
    let s = bytes.get(9..12)?;
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Records one completion of this connection, then advances its state machine.
pub fn on_completion(
    conn: &mut Connection,
    io: &mut Io,
    ctx: &mut Ctx<'_>,
    t: OpTag,
    result: i32,
    slab: Option<Slab>,
    mut provided: Option<ProvidedBuf>,
) -> NextStep {
    match t {
        tag::CLIENT_READ if conn.ctls.is_some() => {
            conn.io.client_read = false;
            tls::raw_read_done(conn, ctx, true, result, slab);
        }
        tag::UP_READ if conn.utls.is_some() => {
            conn.io.up_read = false;
            tls::raw_read_done(conn, ctx, false, result, slab);
        }
        tag::CLIENT_READ => {
            conn.io.client_read = false;
            if let Some(s) = slab {
                conn.cin.give_back(s);
            }
            if result > 0 {
                conn.cin.filled(result as usize);
                conn.bytes_in += result as u64;
                stats::bump(&ctx.stats.bytes_from_clients, result as u64);
            } else if result == 0 {
                conn.io.client_eof = true;
            } else if result != -libc::EAGAIN {
                // -EAGAIN (a non-blocking tunnel socket read on a worker thread): the
                // phase handler simply reads again.
                conn.io.client_error = Some(-result);
            }
        }
        tag::CLIENT_POLL => {
            conn.io.client_poll = false;
            match (provided.take(), result) {
                (Some(p), n) => {
                    if n > 0 {
                        let bytes = ctx.ring.provided_bytes(&p);
                        if let Some(room) = conn.cin.room_mut(ctx.pool) {
                            let k = bytes.len().min(room.len());
                            room[..k].copy_from_slice(&bytes[..k]);
                            conn.cin.filled(k);
                        }
                        conn.bytes_in += n as u64;
                        stats::bump(&ctx.stats.bytes_from_clients, n as u64);
                    } else if n == 0 {
                        conn.io.client_eof = true;
                    }
                    ctx.ring.recycle_provided(p);
                }
                // No provided buffer was free: read the ordinary way.
                (None, r) if r == -libc::ENOBUFS => conn.io.client_readable = true,
                (None, 0) => conn.io.client_eof = true,
                (None, r) if r < 0 => conn.io.client_error = Some(-r),
                (None, _) => conn.io.client_readable = true,
            }
        }
        tag::UP_READ => {
            conn.io.up_read = false;
            if let Some(s) = slab {
                conn.uin.give_back(s);
            }
            if result > 0 {
                conn.uin.filled(result as usize);
            } else if result == 0 {
                conn.io.up_eof = true;
            } else if result != -libc::EAGAIN {
                conn.io.up_error = Some(-result);
            }
        }
        tag::CLIENT_WRITE | tag::UP_WRITE => {
            let to_client = t == tag::CLIENT_WRITE;
            let job = if to_client { conn.io.client_write.take() } else { conn.io.up_write.take() };
            let Some(mut job) = job else {
                if let Some(s) = slab {
                    ctx.pool.release(s);
                }
                return NextStep::Close;
            };
            let Some(s) = slab else {
                return NextStep::Close;
            };
            conn.buf_mut(job.src).give_back(s);
            // -EAGAIN: a non-blocking tunnel socket was full when a worker thread ran
            // the write; nothing went out, so it is a short write of 0 bytes.
            let sent = if result == -libc::EAGAIN { 0 } else { result };
            if sent < 0 || result == 0 {
                let err = if result == 0 { libc::EPIPE } else { -result };
                if to_client {
                    conn.io.client_error = Some(err);
                } else {
                    conn.io.up_error = Some(err);
                }
            } else if (sent as u32) < job.len {
                // Short write: send the rest before anything else goes to this peer.
                job.offset += sent as u32;
                job.len -= sent as u32;
                let fd = if to_client { Some(conn.client_fd()) } else { conn.up_fd() };
                if let Some(fd) = fd {
                    conn.submit_write(io, ctx, fd, t, job);
                    if to_client {
                        conn.io.client_write = Some(job);
                    } else {
                        conn.io.up_write = Some(job);
                    }
                    return NextStep::Wait;
                }
            } else if job.src == BufId::Out {
                conn.out.release(ctx.pool);
            } else if job.src == BufId::ClientRawOut || job.src == BufId::UpRawOut {
                // Everything of this batch is out; rustls may hold more ciphertext.
                conn.buf_mut(job.src).clear();
                if to_client {
                    conn.flush_client_tls(io, ctx);
                } else {
                    conn.flush_up_tls(io, ctx);
                }
            }
        }
        tag::CONNECT => {
            conn.io.connecting = false;
            conn.io.connect_result = Some(result);
        }
        tag::SPLICE_TO_ORIGIN => tunnel::splice_done(conn, io, ctx, tunnel::Direction::ToOrigin, result),
        tag::SPLICE_TO_CLIENT => tunnel::splice_done(conn, io, ctx, tunnel::Direction::ToClient, result),
        tag::CLIENT_SHUTDOWN | tag::UP_SHUTDOWN | tag::CANCEL => {}
        _ => {}
    }
    // Only a client poll selects a provided buffer; whatever else carries one gives it back.
    if let Some(p) = provided {
        ctx.ring.recycle_provided(p);
    }
    advance(conn, io, ctx)
}

/// Runs phase handlers until one waits or closes.
pub fn advance(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    for _ in 0..LOOP_GUARD {
        let step = match conn.phase {
            Phase::AwaitRequest => http1::await_request(conn, io, ctx),
            Phase::Detect => tls::detect(conn, io, ctx),
            Phase::TlsAccept => tls::accept(conn, io, ctx),
            Phase::TlsHandshake => tls::handshake(conn, io, ctx),
            Phase::RequestHead => http1::request_head(conn, io, ctx),
            Phase::Upstream => upstream::step(conn, io, ctx),
            Phase::SendRequest => http1::send_request(conn, io, ctx),
            Phase::ResponseHead => http1::response_head(conn, io, ctx),
            Phase::ResponseBody => http1::response_body(conn, io, ctx),
            Phase::Tunnel => tunnel::step(conn, io, ctx),
            Phase::Respond { close } => respond_step(conn, io, ctx, close),
            Phase::Admin => admin::step(conn, io, ctx),
            Phase::Linger => http1::linger_step(conn, io, ctx),
        };
        if step != NextStep::Continue {
            return step;
        }
    }
    debug_assert!(false, "loop guard hit in phase {:?}", conn.phase);
    NextStep::Close
}

fn respond_step(conn: &mut Connection, _io: &mut Io, _ctx: &mut Ctx<'_>, close: bool) -> NextStep {
    if conn.io.client_write.is_some() {
        return NextStep::Wait;
    }
    if conn.io.client_error.is_some() || close {
        return NextStep::Close;
    }
    conn.phase = Phase::AwaitRequest;
    NextStep::Continue
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
    stats::bump(&ctx.stats.timeouts, 1);
    match conn.phase {
        Phase::AwaitRequest | Phase::Detect | Phase::TlsAccept | Phase::TlsHandshake | Phase::Admin => NextStep::Close,
        Phase::RequestHead => {
            if conn.requests == 0 || !conn.cin.is_empty() {
                let r = crate::h1::error_response(408, "request head not received in time");
                conn.respond(io, ctx, &r, true)
            } else {
                NextStep::Close
            }
        }
        Phase::Upstream => {
            conn.abandon_upstream(io, ctx);
            let why = if conn.is_queued_for_upstream() {
                "no connection to the origin became free in time (pool.max_connections_per_host)"
            } else {
                "upstream connect timed out"
            };
            let r = crate::h1::error_response(504, why);
            conn.respond(io, ctx, &r, true)
        }
        Phase::ResponseHead | Phase::SendRequest => {
            conn.abandon_upstream(io, ctx);
            let sent_anything = conn.ex.as_ref().is_some_and(|e| e.response_started);
            if sent_anything {
                return NextStep::Close;
            }
            let r = crate::h1::error_response(504, "upstream did not answer in time");
            conn.respond(io, ctx, &r, true)
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
        assert!(size <= 416, "Connection grew to {size} bytes (416 after issue 11)");
    }
}
