//! One side of a proxied connection: its socket, its TLS session, the bytes read from
//! it, and the facts of its I/O (a read or write in flight, EOF, an error).
//!
//! A connection has two legs, the client's and the origin's, with the same shape: every
//! read, write, TLS flush and completion goes through the same code with a [`Side`],
//! and nothing is mirrored per side. The client leg's socket is there from the start;
//! the origin leg's comes from the pool or a connect and goes back to the pool (or is
//! closed) when the exchange ends.

use super::buf::{Buf, BufId};
use super::{tag, Connection, Ctx, NextStep};
use crate::stats;
use crate::tls::{Plain, TlsLeg};
use std::net::TcpStream;
use std::num::NonZeroI32;
use std::os::fd::{AsRawFd, RawFd};
use uring::{FixedFile, Io, Op, OpTag, Slab};

/// Which leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Origin,
}

impl Side {
    fn read_tag(self) -> OpTag {
        match self {
            Side::Client => tag::CLIENT_READ,
            Side::Origin => tag::UP_READ,
        }
    }

    fn write_tag(self) -> OpTag {
        match self {
            Side::Client => tag::CLIENT_WRITE,
            Side::Origin => tag::UP_WRITE,
        }
    }

    pub(crate) fn shutdown_tag(self) -> OpTag {
        match self {
            Side::Client => tag::CLIENT_SHUTDOWN,
            Side::Origin => tag::UP_SHUTDOWN,
        }
    }
}

/// A write in flight and where its slab goes back to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteJob {
    pub src: BufId,
    pub offset: u32,
    pub len: u32,
}

/// Where a write is: a partial send moves it.
type WriteMark = (u32, u32);

impl WriteJob {
    fn mark(self) -> WriteMark {
        (self.offset, self.len)
    }
}

/// A connection's progress marks ([`Connection::write_progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    bytes_in: u64,
    bytes_out: u64,
    /// The client's and the origin's write in flight.
    writes: (Option<WriteMark>, Option<WriteMark>),
}

/// One side of the connection.
#[derive(Debug, Default)]
pub(crate) struct Leg {
    /// The socket (the origin leg has none between exchanges).
    pub sock: Option<TcpStream>,
    /// The TLS session, when this side speaks TLS: reads land in its `raw_in` and are
    /// decrypted into `input`; writes are encrypted and leave from its `raw_out`.
    pub tls: Option<Box<TlsLeg>>,
    /// Plaintext read from this side and not consumed yet.
    pub input: Buf,
    /// A read is in flight.
    pub reading: bool,
    /// A write is in flight.
    pub writing: Option<WriteJob>,
    /// The peer closed its write side.
    pub eof: bool,
    /// The socket failed (errno), or the TLS session did (`EPROTO`).
    pub error: Option<NonZeroI32>,
    /// Client leg: the receive that waits on its socket between requests (a one-shot
    /// poll, or the multishot receive that stays armed across them).
    pub wait: ClientWait,
    /// Client leg: the poll said readable and nothing has read yet.
    pub readable: bool,
    /// Origin leg: where its connect is.
    pub dial: Dial,
}

/// What waits on the client socket for the next request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientWait {
    /// Nothing.
    #[default]
    Idle,
    /// A one-shot wait (`RecvSelect` or `PollIn`, `CLIENT_POLL`).
    Poll,
    /// The multishot receive (`CLIENT_RECV`, `conn::multishot`): armed, bytes arrive
    /// through it.
    Multishot,
    /// The multishot receive was cancelled; its last completion has not come back.
    Cancelling,
}

impl ClientWait {
    /// True while a multishot receive is in flight (armed or cancelled, not completed).
    pub(crate) fn multishot(self) -> bool {
        matches!(self, ClientWait::Multishot | ClientWait::Cancelling)
    }
}

/// The connect of an origin leg.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dial {
    #[default]
    Idle,
    /// A connect is in flight.
    Connecting,
    /// The connect completed with this result (0 or a negated errno); the upstream step
    /// takes it.
    Done { result: i32 },
}

impl Leg {
    /// A leg on a connected socket.
    pub(crate) fn on(sock: TcpStream) -> Leg {
        Leg { sock: Some(sock), ..Leg::default() }
    }

    /// The local address of the socket (where a client reached this proxy).
    pub(crate) fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.sock.as_ref()?.local_addr().ok()
    }

    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.sock.as_ref().map(|s| s.as_raw_fd())
    }

    /// Puts `sock` in this leg. Its operations name a slot of the ring's registered file
    /// table from now on (`kept`, the slot it comes back from the pool with, or a free
    /// one), or its fd when none is free.
    pub(crate) fn attach(&mut self, io: &mut Io, ring: &mut uring::Ring, sock: TcpStream, kept: Option<FixedFile>) {
        ring.attach_file(io, sock.as_raw_fd(), kept);
        self.sock = Some(sock);
    }

    /// Takes the socket out of this leg (to the pool, or to be closed on drop) with its
    /// table slot, when no operation names the slot any more; otherwise the slot goes back
    /// once they complete. Every socket leaves a leg through here (or with the whole slot).
    pub(crate) fn detach(&mut self, io: &mut Io, ring: &mut uring::Ring) -> Option<(TcpStream, Option<FixedFile>)> {
        let sock = self.sock.take()?;
        let fixed = ring.detach_file(io, sock.as_raw_fd());
        Some((sock, fixed))
    }

    /// The buffer the socket's bytes are read into: `input`, or the TLS session's
    /// ciphertext buffer once one took over.
    pub(crate) fn inbound(&self) -> &Buf {
        self.tls.as_ref().map_or(&self.input, |t| &t.raw_in)
    }

    pub(crate) fn inbound_mut(&mut self) -> &mut Buf {
        match self.tls.as_mut() {
            Some(t) => &mut t.raw_in,
            None => &mut self.input,
        }
    }

    /// The peer is gone or the socket failed: no more bytes will come.
    pub(crate) fn ended(&self) -> bool {
        self.eof || self.error.is_some()
    }

    /// True while an operation of this leg that a reuse must wait for is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.reading || self.writing.is_some() || self.dial == Dial::Connecting
    }

    /// Forgets the socket's outcome (EOF, error) before the leg carries a new socket.
    pub(crate) fn forget_outcome(&mut self) {
        self.eof = false;
        self.error = None;
        self.dial = Dial::Idle;
    }

    /// Records the first failure of this leg's socket (an errno; 0 counts as `EIO`).
    pub(crate) fn fail(&mut self, errno: i32) {
        if self.error.is_none() {
            self.error = NonZeroI32::new(errno).or(NonZeroI32::new(libc::EIO));
        }
    }

    /// Gives the TLS session's buffers back to the pool and drops it.
    pub(crate) fn drop_tls(&mut self, pool: &mut uring::SlabPool) {
        if let Some(mut t) = self.tls.take() {
            t.release(pool);
        }
    }
}

impl Connection {
    pub(crate) fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::Client => &self.client,
            Side::Origin => &self.origin,
        }
    }

    pub(crate) fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::Client => &mut self.client,
            Side::Origin => &mut self.origin,
        }
    }

    /// True when any buffer of this connection holds a slab, in hand or lent to an
    /// operation in flight (a write stuck on a slow reader holds its slab as surely).
    pub(crate) fn holds_slab(&self) -> bool {
        let leg_holds = |l: &Leg| {
            l.input.holds_slab() || l.tls.as_ref().is_some_and(|t| t.raw_in.holds_slab() || t.raw_out.holds_slab())
        };
        self.out.holds_slab() || leg_holds(&self.client) || leg_holds(&self.origin)
    }

    /// True in the phases that read an HTTP/1.1 request's head (and the first bytes,
    /// which tell the protocol): a slab taken for those bytes goes back once the request
    /// is out or parked, so the buffer budget lets it go to twice the budget, as a
    /// holder's read (`read`, and the provided-buffer receives in `multishot`).
    pub(crate) fn reads_a_request(&self) -> bool {
        matches!(self.phase, super::Phase::AwaitRequest { .. } | super::Phase::Detect | super::Phase::RequestHead)
    }

    /// Whether a read of `side` that needs a new slab counts as a holder's for the
    /// buffer budget (it waits only at twice the budget: `SlabPool::must_wait`), by the
    /// rules `read` explains: the connection holds a slab, reads through a link, finishes
    /// an exchange (the origin's response), or reads a request.
    pub(crate) fn budget_holds(&self, side: Side) -> bool {
        let finishes_an_exchange =
            side == Side::Origin && matches!(self.phase, super::Phase::ResponseHead | super::Phase::ResponseBody);
        self.holds_slab()
            || self.link_of(side).is_some()
            || finishes_an_exchange
            || (side == Side::Client && self.reads_a_request())
    }

    /// For a proxy connection that holds buffers while a write is in flight: marks that
    /// change whenever one of its bytes moves (a read or write submitted, a write partly
    /// done). The buffer-stall sweep compares them a while apart. None otherwise.
    pub(crate) fn write_progress(&self) -> Option<Progress> {
        let writes = (self.client.writing.map(WriteJob::mark), self.origin.writing.map(WriteJob::mark));
        if self.role != super::Role::Proxy || writes == (None, None) || !self.holds_slab() {
            return None;
        }
        Some(Progress { bytes_in: self.bytes_in, bytes_out: self.bytes_out, writes })
    }

    /// Asks for more bytes from `side` in its `input`. With TLS, plaintext already inside
    /// the session is moved in at once (`Continue`); otherwise a read is submitted (`Wait`).
    pub(crate) fn read(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, side: Side) -> NextStep {
        debug_assert!(!self.leg(side).reading);
        // The client's multishot receive delivers while a phase waits for a request, and
        // is cancelled before any other read of the client (two receives on one socket
        // could hand over bytes out of order); stashed bytes come first.
        if side == Side::Client {
            if let Some(step) = self.multishot_gate(io, ctx) {
                return step;
            }
        }
        // A read that needs a new slab waits while the worker's buffer budget is spent
        // (backpressure: its peer is not read either, so nothing piles up). The admin
        // endpoint never waits: it must answer while the proxy is saturated. A read through
        // a link moves bytes already in memory (and sees a cancelled stream at once): it
        // waits only at the hard limit, so that streams never wait on each other.
        //
        // Reading an origin's response finishes work already in flight (the request is
        // out, and the client's buffer went back with it: `conn::parked::release_sent`), so
        // it counts as a holder's read, as reading the response of a request whose buffer
        // is still held always did. So does reading a request: its slab goes back once
        // the request is out or parked, so requests of clients already connected are
        // still served while slow readers hold between once and twice the budget (new
        // clients are refused at the budget itself).
        let link = self.link_of(side);
        let target = self.leg(side).inbound();
        let holds = self.budget_holds(side);
        // While requests wait in the upstream queue, reading an origin's response head does
        // not wait: finishing the exchanges in flight is what gives their origin
        // connections to those requests. Queued requests give their slabs back
        // (`conn::parked`), but one too large to park holds its slab meanwhile, so a budget
        // such requests spent would otherwise hold every exchange and wedge the worker.
        // That is one slab per exchange in flight, bounded by the origin connections open;
        // with nobody queued, these reads wait at twice the budget like any holder's.
        // (Checked only once the budget says wait.)
        let frees_the_queue = || {
            side == Side::Origin
                && link.is_none()
                && matches!(self.phase, super::Phase::ResponseHead)
                && ctx.upstreams.waiting() > 0
        };
        if self.role == super::Role::Proxy && !target.has_slab() && ctx.pool.must_wait(holds) && !frees_the_queue() {
            ctx.pool.wait_for_slab(io.id(), holds);
            return NextStep::Wait;
        }
        if let Some(link) = link {
            return self.read_via_link(ctx, side, link);
        }
        let leg = self.leg_mut(side);
        let Some(fd) = leg.fd() else { return NextStep::Close };
        let (slab, offset, len) = match leg.tls.as_mut() {
            Some(t) => {
                match t.take_plaintext(&mut leg.input, ctx.pool) {
                    Plain::Got(n) => {
                        if side == Side::Client {
                            self.bytes_in += n as u64;
                            stats::bump(&ctx.stats.bytes_from_clients, n as u64);
                        }
                        return NextStep::Continue;
                    }
                    // The destination is full: the phase handler takes its bytes first.
                    Plain::Full => return NextStep::Continue,
                    Plain::Eof => {
                        leg.eof = true;
                        return NextStep::Continue;
                    }
                    Plain::Error => {
                        leg.fail(libc::EPROTO);
                        return NextStep::Continue;
                    }
                    Plain::Empty if t.raw_in.is_lent() => return NextStep::Wait,
                    Plain::Empty => t.raw_in.prepare_read(ctx.pool),
                }
            }
            None => leg.input.prepare_read(ctx.pool),
        };
        ctx.ring.submit(io, side.read_tag(), uring::Op::Recv { fd, slab, offset, len }, ctx.pool);
        leg.reading = true;
        NextStep::Wait
    }

    /// Sends `len` bytes of buffer `src` from `offset` to `side` (through its TLS
    /// session when it has one).
    pub(crate) fn write(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, side: Side, src: BufId, offset: usize, len: usize) {
        debug_assert!(self.leg(side).writing.is_none());
        if side == Side::Client {
            self.bytes_out += len as u64;
            stats::bump(&ctx.stats.bytes_to_clients, len as u64);
        }
        if let Some(link) = self.link_of(side) {
            self.write_via_link(ctx, side, link, src, offset, len);
            return;
        }
        if self.leg(side).tls.is_some() {
            self.encrypt_from(ctx, src, offset, len, side);
            self.flush_tls(io, ctx, side);
            return;
        }
        let Some(fd) = self.leg(side).fd() else { return };
        let job = WriteJob { src, offset: offset as u32, len: len as u32 };
        self.submit_write(io, ctx, fd, side, job);
    }

    fn submit_write(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, fd: RawFd, side: Side, job: WriteJob) {
        let slab = self.buf_mut(job.src).lend();
        let op = Op::Send { fd, slab, offset: job.offset as usize, len: job.len as usize };
        ctx.ring.submit(io, side.write_tag(), op, ctx.pool);
        self.leg_mut(side).writing = Some(job);
    }

    /// Copies plaintext from one of the buffers into `side`'s TLS session.
    pub(crate) fn encrypt_from(&mut self, ctx: &mut Ctx<'_>, src: BufId, offset: usize, len: usize, side: Side) {
        let (leg, other, out) = match side {
            Side::Client => (&mut self.client, &self.origin, &mut self.out),
            Side::Origin => (&mut self.origin, &self.client, &mut self.out),
        };
        let Some(t) = leg.tls.as_mut() else { return };
        let buf = match src {
            BufId::In(s) if s == side => &leg.input,
            BufId::In(_) => &other.input,
            BufId::Out => &*out,
            BufId::RawOut(_) => return,
        };
        // `offset` is an absolute slab offset and the caller has already advanced the
        // buffer's `start` past these bytes: read them through the slab directly.
        if let Some(bytes) = buf.slab_bytes(ctx.pool) {
            if offset + len <= bytes.len() {
                t.encrypt(&bytes[offset..offset + len]);
            }
        }
        if src == BufId::Out {
            self.out.release(ctx.pool);
        }
    }

    /// Sends pending ciphertext to `side`. True when a write was submitted.
    pub(crate) fn flush_tls(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, side: Side) -> bool {
        let leg = self.leg_mut(side);
        let Some(fd) = leg.fd().filter(|_| leg.writing.is_none()) else { return false };
        let Some(t) = leg.tls.as_mut() else { return false };
        let n = t.fill_out(ctx.pool);
        if n == 0 {
            return false;
        }
        let offset = t.raw_out.start;
        let slab = t.raw_out.lend();
        ctx.ring.submit(io, side.write_tag(), Op::Send { fd, slab, offset, len: n }, ctx.pool);
        leg.writing = Some(WriteJob { src: BufId::RawOut(side), offset: offset as u32, len: n as u32 });
        true
    }

    /// A read of `side` completed: plaintext into `input`, or ciphertext into the TLS
    /// session's `raw_in` (then decrypted).
    pub(crate) fn read_done(&mut self, ctx: &mut Ctx<'_>, side: Side, result: i32, slab: Option<Slab>) {
        let leg = self.leg_mut(side);
        leg.reading = false;
        let dst = leg.inbound_mut();
        if let Some(s) = slab {
            dst.give_back(s);
        }
        if result > 0 {
            dst.filled(result as usize);
        }
        if leg.tls.is_some() && result < 0 {
            leg.fail(-result);
        }
        match leg.tls.as_mut() {
            Some(t) => {
                if result == 0 {
                    t.raw_eof = true;
                }
                t.pump(ctx.pool);
            }
            None => {
                if result > 0 && side == Side::Client {
                    self.bytes_in += result as u64;
                    stats::bump(&ctx.stats.bytes_from_clients, result as u64);
                } else if result == 0 {
                    leg.eof = true;
                } else if result < 0 && result != -libc::EAGAIN {
                    // -EAGAIN (a non-blocking tunnel socket read on a worker thread): the
                    // phase handler simply reads again.
                    leg.fail(-result);
                }
            }
        }
    }

    /// A write of `side` completed. A short write sends the rest at once (`Some(Wait)`);
    /// `Some(Close)` when the completion makes no sense for this connection.
    pub(crate) fn write_done(
        &mut self,
        io: &mut Io,
        ctx: &mut Ctx<'_>,
        side: Side,
        result: i32,
        slab: Option<Slab>,
    ) -> Option<NextStep> {
        let Some(mut job) = self.leg_mut(side).writing.take() else {
            if let Some(s) = slab {
                ctx.pool.release(s);
            }
            return Some(NextStep::Close);
        };
        let Some(s) = slab else { return Some(NextStep::Close) };
        self.buf_mut(job.src).give_back(s);
        // -EAGAIN: a non-blocking tunnel socket was full when a worker thread ran the
        // write; nothing went out, so it is a short write of 0 bytes.
        let sent = if result == -libc::EAGAIN { 0 } else { result };
        if sent < 0 || result == 0 {
            self.leg_mut(side).fail(if result == 0 { libc::EPIPE } else { -result });
        } else if (sent as u32) < job.len {
            // Short write: send the rest before anything else goes to this peer.
            job.offset += sent as u32;
            job.len -= sent as u32;
            if let Some(fd) = self.leg(side).fd() {
                self.submit_write(io, ctx, fd, side, job);
                return Some(NextStep::Wait);
            }
        } else if job.src == BufId::Out {
            self.out.release(ctx.pool);
        } else if let BufId::RawOut(_) = job.src {
            // Everything of this batch is out; rustls may hold more ciphertext.
            self.buf_mut(job.src).clear();
            self.flush_tls(io, ctx, side);
        }
        None
    }

    pub(crate) fn buf_mut(&mut self, id: BufId) -> &mut Buf {
        match id {
            BufId::In(side) => &mut self.leg_mut(side).input,
            BufId::Out => &mut self.out,
            BufId::RawOut(side) => {
                let leg = match side {
                    Side::Client => &mut self.client,
                    Side::Origin => &mut self.origin,
                };
                match leg.tls.as_mut() {
                    Some(t) => &mut t.raw_out,
                    None => &mut self.out,
                }
            }
        }
    }
}
