//! CONNECT tunnels: `200 Connection Established`, then bytes both ways through the ring.
//!
//! Each direction starts as a read-then-write pump on its own slab (`cin` client→origin,
//! `uin` origin→client). A direction whose read fills a whole slab is carrying bulk data:
//! once its slab is empty it switches to a [`SplicePump`], which moves bytes socket →
//! pipe → socket with `Op::Splice` and never copies them through user space. Chatty
//! tunnels (SSH, WebSocket-like traffic) never fill a slab and keep the cheaper copy
//! path: a splice runs on one of io_uring's worker threads, a copy on this one. Both legs
//! must be cleartext sockets to splice (a TLS leg's bytes go through its session).
//!
//! One side's EOF shuts down the other side's write half once every byte read before it
//! has been written; the tunnel ends when both directions are done, or at once on an
//! error.

use super::buf::BufId;
use super::{tag, Connection, Ctx, NextStep};
use crate::h1;
use crate::stats;
use uring::{Io, Op, OpTag, Pipe, SLAB_SIZE};

/// Pipe room asked for per spliced direction: one splice moves up to this much.
const PIPE_CAPACITY: usize = 1 << 20;

/// The two spliced directions of a tunnel (kept on the connection, so the pipes stay
/// open until the connection is freed: after every splice naming them has completed).
#[derive(Debug, Default)]
pub(crate) struct Splicing {
    to_origin: Option<SplicePump>,
    to_client: Option<SplicePump>,
}

impl Splicing {
    /// True while a splice or poll of either direction is in the kernel.
    pub(crate) fn busy(&self) -> bool {
        [&self.to_origin, &self.to_client].into_iter().flatten().any(|p| p.op != PumpOp::Idle)
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
    pub(crate) fn tag(self) -> OpTag {
        match self {
            Direction::ToOrigin => tag::SPLICE_TO_ORIGIN,
            Direction::ToClient => tag::SPLICE_TO_CLIENT,
        }
    }
}

pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    if conn.io.client_error.is_some() || conn.io.up_error.is_some() {
        return NextStep::Close;
    }
    if !ex.tunnel.established_sent {
        if conn.io.client_write.is_some() {
            return NextStep::Wait;
        }
        ex.tunnel.established_sent = true;
        ex.status = 200;
        stats::bump(&ctx.stats.tunnels, 1);
        ctx.stats.response(Some(crate::h1::Method::Connect), 200);
        let n = conn.out.fill(ctx.pool, h1::CONNECT_ESTABLISHED);
        conn.write_client(io, ctx, BufId::Out, 0, n);
    }
    let mut again = false;
    for dir in [Direction::ToOrigin, Direction::ToClient] {
        if !is_done(conn, dir) && pump(conn, io, ctx, dir) == NextStep::Continue {
            again = true;
        }
    }
    let both_done = is_done(conn, Direction::ToOrigin) && is_done(conn, Direction::ToClient);
    let busy = conn.splice.as_ref().is_some_and(|s| s.busy());
    if both_done && conn.io.client_write.is_none() && conn.io.up_write.is_none() && !busy {
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
    conn.ex.as_ref().is_none_or(|ex| match dir {
        Direction::ToOrigin => ex.tunnel.client_to_upstream_done,
        Direction::ToClient => ex.tunnel.upstream_to_client_done,
    })
}

fn mark_done(conn: &mut Connection, dir: Direction) {
    if let Some(ex) = conn.ex.as_mut() {
        match dir {
            Direction::ToOrigin => ex.tunnel.client_to_upstream_done = true,
            Direction::ToClient => ex.tunnel.upstream_to_client_done = true,
        }
    }
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
    let s = conn.splice.as_mut()?;
    match dir {
        Direction::ToOrigin => s.to_origin.as_mut(),
        Direction::ToClient => s.to_client.as_mut(),
    }
}

/// A bulk direction whose copy pump has nothing in flight or buffered, between two
/// cleartext sockets.
fn ready_to_splice(conn: &Connection, dir: Direction) -> bool {
    let Some(ex) = conn.ex.as_ref() else { return false };
    let (bulk, buf, reading, writing, eof) = match dir {
        Direction::ToOrigin => {
            (ex.tunnel.bulk_to_origin, &conn.cin, conn.io.client_read, conn.io.up_write.is_some(), conn.io.client_eof)
        }
        Direction::ToClient => {
            (ex.tunnel.bulk_to_client, &conn.uin, conn.io.up_read, conn.io.client_write.is_some(), conn.io.up_eof)
        }
    };
    bulk && buf.is_empty()
        && !buf.is_lent()
        && !reading
        && !writing
        && !eof
        && conn.ctls.is_none()
        && conn.utls.is_none()
        && conn.upstream.is_some()
}

/// Opens the direction's pipe and makes both sockets non-blocking: a splice runs on an
/// io_uring worker thread, and on a blocking socket it would park that thread until the
/// peer sends (stalling every other tunnel's splices behind it). io_uring's own receives
/// and sends still poll for readiness on non-blocking sockets. Without a pipe (fd limit),
/// the direction keeps copying.
fn start_splicing(conn: &mut Connection, ctx: &mut Ctx<'_>, dir: Direction) -> bool {
    let nonblocking = conn.client.set_nonblocking(true).and_then(|_| match &conn.upstream {
        Some(up) => up.sock.set_nonblocking(true),
        None => Err(std::io::ErrorKind::NotConnected.into()),
    });
    // A pipe smaller than a slab (the per-user pipe budget is spent) would splice less
    // per worker-thread handoff than one copy moves: keep copying then.
    let pipe = nonblocking.and_then(|_| Pipe::new(PIPE_CAPACITY)).ok().filter(|p| p.capacity() >= SLAB_SIZE);
    let pipe = match pipe {
        Some(p) => p,
        None => {
            // Stay on the copy path for good; no retry per read.
            if let Some(ex) = conn.ex.as_mut() {
                ex.tunnel.bulk_to_origin &= dir != Direction::ToOrigin;
                ex.tunnel.bulk_to_client &= dir != Direction::ToClient;
            }
            return false;
        }
    };
    // The copy pump's slab is empty and idle: give it back for other connections.
    match dir {
        Direction::ToOrigin => conn.cin.release_if_empty(ctx.pool),
        Direction::ToClient => conn.uin.release_if_empty(ctx.pool),
    }
    let pump = SplicePump { pipe, held: 0, op: PumpOp::Idle };
    let s = conn.splice.get_or_insert_with(Default::default);
    match dir {
        Direction::ToOrigin => s.to_origin = Some(pump),
        Direction::ToClient => s.to_client = Some(pump),
    }
    true
}

/// The copy pump: write what the slab holds, else pass on EOF, else read.
fn copy_step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction) -> NextStep {
    let to_origin = dir == Direction::ToOrigin;
    let (writing, buf, eof, reading) = if to_origin {
        (conn.io.up_write.is_some(), &conn.cin, conn.io.client_eof, conn.io.client_read)
    } else {
        (conn.io.client_write.is_some(), &conn.uin, conn.io.up_eof, conn.io.up_read)
    };
    if writing || buf.is_lent() {
        return NextStep::Wait;
    }
    if !buf.is_empty() {
        let (start, len, full) = (buf.start, buf.len(), buf.end == SLAB_SIZE);
        if let Some(ex) = conn.ex.as_mut() {
            if to_origin {
                ex.tunnel.bulk_to_origin |= full;
            } else {
                ex.tunnel.bulk_to_client |= full;
            }
        }
        if to_origin {
            conn.cin.start += len;
            conn.write_upstream(io, ctx, BufId::Cin, start, len);
        } else {
            conn.uin.start += len;
            conn.write_client(io, ctx, BufId::Uin, start, len);
        }
        return NextStep::Wait;
    }
    if eof {
        shut_down_write(conn, io, ctx, dir);
        if to_origin {
            conn.cin.release_if_empty(ctx.pool);
        } else {
            conn.uin.release_if_empty(ctx.pool);
        }
        return NextStep::Wait;
    }
    if reading {
        return NextStep::Wait;
    }
    if to_origin {
        conn.read_client(io, ctx)
    } else {
        conn.read_upstream(io, ctx)
    }
}

/// The direction's source and destination sockets.
fn ends(conn: &Connection, dir: Direction) -> Option<(i32, i32)> {
    let (client, origin) = (conn.client_fd(), conn.up_fd()?);
    Some(match dir {
        Direction::ToOrigin => (client, origin),
        Direction::ToClient => (origin, client),
    })
}

/// The source reached EOF and everything before it is out: half-close the destination.
fn shut_down_write(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction) {
    if let Some((_, dst)) = ends(conn, dir) {
        let t = if dir == Direction::ToOrigin { tag::UP_SHUTDOWN } else { tag::CLIENT_SHUTDOWN };
        ctx.ring.submit(io, t, Op::ShutdownWrite { fd: dst }, ctx.pool);
    }
    mark_done(conn, dir);
}

/// The splice pump: drain the pipe, else pass on EOF, else fill it.
fn splice_step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>, dir: Direction) {
    let Some((src, dst)) = ends(conn, dir) else { return };
    let eof = match dir {
        Direction::ToOrigin => conn.io.client_eof,
        Direction::ToClient => conn.io.up_eof,
    };
    let Some(p) = spliced(conn, dir) else { return };
    if p.op != PumpOp::Idle {
        return;
    }
    let op = if p.held > 0 {
        p.op = PumpOp::Drain;
        Op::Splice { fd_in: p.pipe.read_fd(), fd_out: dst, len: p.held as u32 }
    } else if eof {
        shut_down_write(conn, io, ctx, dir);
        // Nothing names the pipe any more (no op in flight): close it now rather than
        // hold it, and its share of the pipe budget, for the rest of the tunnel.
        if let Some(s) = conn.splice.as_mut() {
            match dir {
                Direction::ToOrigin => s.to_origin = None,
                Direction::ToClient => s.to_client = None,
            }
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
    let src_is_client = dir == Direction::ToOrigin;
    let mut moved_out = 0;
    let mut moved_in = 0;
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
        (PumpOp::Fill, 0) => {
            if src_is_client {
                conn.io.client_eof = true;
            } else {
                conn.io.up_eof = true;
            }
        }
        (PumpOp::Fill, n) if n > 0 => {
            p.held += n as usize;
            moved_in = n as u64;
        }
        (PumpOp::Drain, n) if n > 0 => {
            p.held -= (n as usize).min(p.held);
            moved_out = n as u64;
        }
        (PumpOp::Drain, 0) => error = Some(libc::EPIPE),
        (PumpOp::AwaitReadable | PumpOp::AwaitWritable, r) if r >= 0 => {}
        (_, r) => error = Some(-r),
    }
    if dir == Direction::ToOrigin && moved_in > 0 {
        conn.bytes_in += moved_in;
        stats::bump(&ctx.stats.bytes_from_clients, moved_in);
    }
    if dir == Direction::ToClient && moved_out > 0 {
        conn.bytes_out += moved_out;
        stats::bump(&ctx.stats.bytes_to_clients, moved_out);
    }
    if let Some(e) = error {
        // Whose fault: the source's while filling, the destination's while draining.
        let source_failed = matches!(done, PumpOp::Fill | PumpOp::AwaitReadable);
        let client_side = src_is_client == source_failed;
        let slot = if client_side { &mut conn.io.client_error } else { &mut conn.io.up_error };
        slot.get_or_insert(e);
    }
}
