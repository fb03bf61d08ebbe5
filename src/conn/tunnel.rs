//! Tunnels: after a CONNECT (`200 Connection Established`) or an accepted HTTP Upgrade,
//! bytes both ways through the ring.
//!
//! Each direction starts as a read-then-write pump on its own slab (`client.input` client→origin,
//! `origin.input` origin→client). A direction whose read fills a whole slab is carrying bulk data:
//! once its slab is empty it switches to a [`SplicePump`], which moves bytes socket →
//! pipe → socket with `Op::Splice` and never copies them through user space. Chatty
//! tunnels (SSH, WebSocket-like traffic) never fill a slab and keep the cheaper copy
//! path: a splice runs on one of io_uring's worker threads, a copy on this one. Both legs
//! must be cleartext sockets to splice (a TLS leg's bytes go through its session).
//!
//! One side's EOF shuts down the other side's write half once every byte read before it
//! has been written (after a `close_notify` when that side speaks TLS); the tunnel ends
//! when both directions are done, or at once on an error.
//!
//! The same tunnel carries an exchange the origin upgraded (`upgrade.rs`, a 101): then
//! its first bytes to the client are the 101 head, already in `origin.input`, and on
//! intercepted TLS both legs relay through their sessions (decrypted, re-encrypted).

use super::buf::{Buf, BufId};
use super::leg::Side;
use super::{tag, Connection, Ctx, NextStep};
use crate::h1;
use crate::stats;
use uring::{Io, Op, OpTag, Pipe, SLAB_SIZE};

/// Pipe room asked for per spliced direction: one splice moves up to this much.
const PIPE_CAPACITY: usize = 1 << 20;

/// One value for each direction of a tunnel.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PerDirection<T> {
    pub to_origin: T,
    pub to_client: T,
}

impl<T> PerDirection<T> {
    pub(crate) fn get(&self, dir: Direction) -> &T {
        match dir {
            Direction::ToOrigin => &self.to_origin,
            Direction::ToClient => &self.to_client,
        }
    }

    pub(crate) fn get_mut(&mut self, dir: Direction) -> &mut T {
        match dir {
            Direction::ToOrigin => &mut self.to_origin,
            Direction::ToClient => &mut self.to_client,
        }
    }
}

/// The spliced directions of a tunnel. A pipe is dropped only when no operation names it
/// (its direction is done, or the connection is freed).
#[derive(Debug, Default)]
pub(crate) struct Splicing {
    pumps: PerDirection<Option<SplicePump>>,
}

impl Splicing {
    /// True while a splice or poll of either direction is in the kernel.
    pub(crate) fn busy(&self) -> bool {
        [&self.pumps.to_origin, &self.pumps.to_client].into_iter().flatten().any(|p| p.op != PumpOp::Idle)
    }

    /// The pipes' descriptors (a splice from a socket into a pipe is the pipe's operation
    /// as far as cancelling by descriptor goes).
    pub(crate) fn fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        [&self.pumps.to_origin, &self.pumps.to_client]
            .into_iter()
            .flatten()
            .flat_map(|p| [p.pipe.read_fd(), p.pipe.write_fd()])
    }
}

/// One direction moving through a pipe.
#[derive(Debug)]
struct SplicePump {
    pipe: Pipe,
    /// Bytes in the pipe not spliced out yet.
    held: usize,
    /// The one operation of this direction in flight.
    op: PumpOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpOp {
    Idle,
    /// Splicing from the source socket into the pipe.
    Fill,
    /// The source had nothing: waiting for it to become readable.
    AwaitReadable,
    /// Splicing from the pipe into the destination socket.
    Drain,
    /// The destination was full: waiting for it to become writable.
    AwaitWritable,
}

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    ToOrigin,
    ToClient,
}

impl Direction {
    /// The leg this direction reads from.
    fn source(self) -> Side {
        match self {
            Direction::ToOrigin => Side::Client,
            Direction::ToClient => Side::Origin,
        }
    }

    /// The leg this direction writes to.
    fn destination(self) -> Side {
        match self {
            Direction::ToOrigin => Side::Origin,
            Direction::ToClient => Side::Client,
        }
    }

    pub(crate) fn tag(self) -> OpTag {
        match self {
            Direction::ToOrigin => tag::SPLICE_TO_ORIGIN,
            Direction::ToClient => tag::SPLICE_TO_CLIENT,
        }
    }
}

/// What the copy pump of a direction is doing: its slab and the I/O facts of its two
/// legs (the source's read and EOF, the destination's write).
struct CopyLane<'a> {
    buf: &'a Buf,
    reading: bool,
    writing: bool,
    source_eof: bool,
}

fn copy_lane(conn: &Connection, dir: Direction) -> CopyLane<'_> {
    let (src, dst) = (conn.leg(dir.source()), conn.leg(dir.destination()));
    // The client's multishot receive (cancelled when the tunnel starts) counts as its read
    // until its last completion is back.
    let reading = src.reading || src.wait.multishot();
    CopyLane { buf: &src.input, reading, writing: dst.writing.is_some(), source_eof: src.eof }
}

fn copy_buf_mut(conn: &mut Connection, dir: Direction) -> &mut Buf {
    &mut conn.leg_mut(dir.source()).input
}

pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    if conn.ex.is_none() {
        return NextStep::Close;
    }
    if conn.client.error.is_some() || conn.origin.error.is_some() {
        return NextStep::Close;
    }
    // The tunnel reads the client at its own pace (and may splice from its socket).
    conn.stop_multishot(io, ctx);
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    if !ex.tunnel.established_sent {
        if conn.client.writing.is_some() {
            return NextStep::Wait;
        }
        ex.tunnel.established_sent = true;
        ex.status = 200;
        stats::bump(&ctx.stats.tunnels, 1);
        ctx.stats.response(conn.protocol, Some(crate::h1::Method::Connect), 200);
        let n = conn.out.fill(ctx.pool, h1::CONNECT_ESTABLISHED);
        conn.write(io, ctx, Side::Client, BufId::Out, 0, n);
    }
    let mut again = false;
    for dir in [Direction::ToOrigin, Direction::ToClient] {
        if !is_done(conn, dir) && pump(conn, io, ctx, dir) == NextStep::Continue {
            again = true;
        }
    }
    let both_done = is_done(conn, Direction::ToOrigin) && is_done(conn, Direction::ToClient);
    let busy = conn.splice.as_ref().is_some_and(|s| s.busy());
    if both_done && conn.client.writing.is_none() && conn.origin.writing.is_none() && !busy {
        return NextStep::Close;
    }
    let t = ctx.cfg.timeouts.io_idle;
    conn.refresh_deadline(io, ctx, t);
    if again {
        NextStep::Continue
    } else {
        NextStep::Wait
    }
}

fn is_done(conn: &Connection, dir: Direction) -> bool {
    conn.ex.as_ref().is_none_or(|ex| *ex.tunnel.done.get(dir))
}

/// Moves one direction along: by splice when it has a pipe, else by copy through its
/// slab (switching to splice when the slab filled and is now empty).
fn pump(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction) -> NextStep {
    if spliced(conn, dir).is_none() && ready_to_splice(conn, dir) && start_splicing(conn, ctx, dir) {
        stats::bump(&ctx.stats.tunnel_splices, 1);
    }
    if spliced(conn, dir).is_some() {
        splice_step(conn, io, ctx, dir);
        return NextStep::Wait;
    }
    copy_step(conn, io, ctx, dir)
}

fn spliced(conn: &mut Connection, dir: Direction) -> Option<&mut SplicePump> {
    conn.splice.as_mut()?.pumps.get_mut(dir).as_mut()
}

/// A bulk direction whose copy pump has nothing in flight or buffered, between two
/// cleartext sockets.
fn ready_to_splice(conn: &Connection, dir: Direction) -> bool {
    let Some(ex) = conn.ex.as_ref() else { return false };
    let lane = copy_lane(conn, dir);
    *ex.tunnel.bulk.get(dir)
        && lane.buf.is_empty()
        && !lane.buf.is_lent()
        && !lane.reading
        && !lane.writing
        && !lane.source_eof
        && !(dir.source() == Side::Client && conn.client_stash.is_some())
        && conn.client.tls.is_none()
        && conn.stream.is_none()
        && conn.origin.tls.is_none()
        && conn.upstream.is_some()
}

/// Opens the direction's pipe and makes both sockets non-blocking: a splice runs on an
/// io_uring worker thread, and on a blocking socket it would park that thread until the
/// peer sends (stalling every other tunnel's splices behind it). io_uring's own receives
/// and sends still poll for readiness on non-blocking sockets. Without a pipe (fd limit),
/// the direction keeps copying.
fn start_splicing(conn: &mut Connection, ctx: &mut Ctx<'_>, dir: Direction) -> bool {
    // The other direction may have made them non-blocking already.
    let nonblocking = match (&conn.splice, &conn.upstream) {
        (Some(_), _) => Ok(()),
        (None, _) => match (&conn.client.sock, &conn.origin.sock) {
            (Some(c), Some(o)) => c.set_nonblocking(true).and_then(|_| o.set_nonblocking(true)),
            _ => Err(std::io::ErrorKind::NotConnected.into()),
        },
    };
    // A pipe smaller than a slab (the per-user pipe budget is spent) would splice less
    // per worker-thread handoff than one copy moves: keep copying then.
    let pipe = nonblocking.and_then(|_| Pipe::new(PIPE_CAPACITY)).ok().filter(|p| p.capacity() >= SLAB_SIZE);
    let Some(pipe) = pipe else {
        // Stay on the copy path for good; no retry per read.
        if let Some(ex) = conn.ex.as_mut() {
            *ex.tunnel.bulk.get_mut(dir) = false;
        }
        return false;
    };
    // The copy pump's slab is empty and idle: give it back for other connections.
    copy_buf_mut(conn, dir).release_if_empty(ctx.pool);
    let pump = SplicePump { pipe, held: 0, op: PumpOp::Idle };
    *conn.splice.get_or_insert_with(Default::default).pumps.get_mut(dir) = Some(pump);
    true
}

/// The copy pump: write what the slab holds, else pass on EOF, else read.
fn copy_step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction) -> NextStep {
    let lane = copy_lane(conn, dir);
    if lane.writing || lane.buf.is_lent() {
        return NextStep::Wait;
    }
    if !lane.buf.is_empty() {
        let (start, len, full) = (lane.buf.start, lane.buf.len(), lane.buf.end == SLAB_SIZE);
        if let Some(ex) = conn.ex.as_mut() {
            *ex.tunnel.bulk.get_mut(dir) |= full;
        }
        copy_buf_mut(conn, dir).start += len;
        conn.write(io, ctx, dir.destination(), BufId::In(dir.source()), start, len);
        return NextStep::Wait;
    }
    if lane.source_eof {
        if send_close_notify(conn, io, ctx, dir.destination()) {
            return NextStep::Wait;
        }
        shut_down_write(conn, io, ctx, dir);
        copy_buf_mut(conn, dir).release_if_empty(ctx.pool);
        return NextStep::Wait;
    }
    if lane.reading {
        return NextStep::Wait;
    }
    conn.read(io, ctx, dir.source())
}

/// The direction's source and destination sockets.
fn ends(conn: &Connection, dir: Direction) -> Option<(i32, i32)> {
    Some((conn.leg(dir.source()).fd()?, conn.leg(dir.destination()).fd()?))
}

/// A TLS destination (an upgraded exchange on intercepted legs) hears of the end as a
/// `close_notify` before its socket is half-closed. True while that alert is being sent
/// (rustls queues it once; the next call finds nothing to send).
fn send_close_notify(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, side: Side) -> bool {
    let Some(t) = conn.leg_mut(side).tls.as_mut() else { return false };
    t.session.send_close_notify();
    conn.flush_tls(io, ctx, side)
}

/// The source reached EOF and everything before it is out: half-close the destination.
fn shut_down_write(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction) {
    if let Some((_, dst)) = ends(conn, dir) {
        ctx.ring.submit(io, dir.destination().shutdown_tag(), Op::ShutdownWrite { fd: dst }, ctx.pool);
    } else if dir.destination() == Side::Client {
        // An HTTP/2 stream's tunnel: END_STREAM towards the client.
        conn.end_link(ctx);
    }
    if let Some(ex) = conn.ex.as_mut() {
        *ex.tunnel.done.get_mut(dir) = true;
    }
}

/// The splice pump: drain the pipe, else pass on EOF, else fill it.
fn splice_step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction) {
    let Some((src, dst)) = ends(conn, dir) else { return };
    let source_eof = copy_lane(conn, dir).source_eof;
    let Some(p) = spliced(conn, dir) else { return };
    if p.op != PumpOp::Idle {
        return;
    }
    let op = if p.held > 0 {
        p.op = PumpOp::Drain;
        Op::Splice { fd_in: p.pipe.read_fd(), fd_out: dst, len: p.held as u32 }
    } else if source_eof {
        shut_down_write(conn, io, ctx, dir);
        // Nothing names the pipe any more (no op in flight): close it now rather than
        // hold it, and its share of the pipe budget, for the rest of the tunnel.
        if let Some(s) = conn.splice.as_mut() {
            *s.pumps.get_mut(dir) = None;
        }
        return;
    } else {
        p.op = PumpOp::Fill;
        Op::Splice { fd_in: src, fd_out: p.pipe.write_fd(), len: p.pipe.capacity() as u32 }
    };
    ctx.ring.submit(io, dir.tag(), op, ctx.pool);
}

/// Records a completion of a spliced direction (a splice or the poll after `-EAGAIN`).
pub(crate) fn splice_done(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction, result: i32) {
    let Some((src, dst)) = ends(conn, dir) else { return };
    let Some(p) = spliced(conn, dir) else { return };
    let done = std::mem::replace(&mut p.op, PumpOp::Idle);
    let src_is_client = dir.source() == Side::Client;
    let mut error = None;
    match (done, result) {
        (PumpOp::Fill, r) if r == -libc::EAGAIN => {
            p.op = PumpOp::AwaitReadable;
            ctx.ring.submit(io, dir.tag(), Op::PollIn { fd: src }, ctx.pool);
        }
        (PumpOp::Drain, r) if r == -libc::EAGAIN => {
            p.op = PumpOp::AwaitWritable;
            ctx.ring.submit(io, dir.tag(), Op::PollOut { fd: dst }, ctx.pool);
        }
        (PumpOp::Fill, 0) => conn.leg_mut(dir.source()).eof = true,
        (PumpOp::Fill, n) if n > 0 => {
            p.held += n as usize;
            // Bytes from the client count when they come in (as on the copy path).
            if src_is_client {
                conn.bytes_in += n as u64;
                stats::bump(&ctx.stats.bytes_from_clients, n as u64);
            }
        }
        (PumpOp::Drain, n) if n > 0 => {
            p.held -= (n as usize).min(p.held);
            // Bytes to the client count when they go out.
            if !src_is_client {
                conn.bytes_out += n as u64;
                stats::bump(&ctx.stats.bytes_to_clients, n as u64);
            }
        }
        (PumpOp::Drain, 0) => error = Some(libc::EPIPE),
        (PumpOp::AwaitReadable | PumpOp::AwaitWritable, r) if r >= 0 => {}
        (_, r) => error = Some(-r),
    }
    if let Some(e) = error {
        // Whose fault: the source's while filling, the destination's while draining.
        let source_failed = matches!(done, PumpOp::Fill | PumpOp::AwaitReadable);
        let side = if source_failed { dir.source() } else { dir.destination() };
        conn.leg_mut(side).fail(e);
    }
}
