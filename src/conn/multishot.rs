//! The client leg's multishot receive (`Op::RecvMulti` on the ring's provided buffers).
//!
//! A cleartext keep-alive client waits for its next request with one multishot receive,
//! armed at its first keep-alive wait (`AwaitRequest` after a first exchange) and left
//! armed across exchanges: each request then arrives in a completion of the same
//! operation, with no new submission and no new poll arm. The kernel picks a 4 KiB
//! provided buffer when bytes arrive; the completion copies them into `client.input` and
//! gives the buffer straight back, so an idle connection still holds no slab.
//!
//! It is armed only while the connection reads client bytes that way anyway (waiting for
//! a request, reading its head), and the connection takes back control of when it reads
//! (backpressure) in two ways:
//! - **Unwanted bytes.** Bytes that arrive in any other phase (a pipelined request while
//!   the response is being written, a body sent after its head, tunnel bytes after a
//!   CONNECT) are kept, in order, and the receive is cancelled ([`Op::Cancel`] by its
//!   tag, so a write in flight on the socket is not touched). So are bytes that did not
//!   fit where they go.
//! - **A read of its own.** A phase that reads the client with its own slab (a request
//!   body, a tunnel, the linger, TLS after an intercepted CONNECT) cancels it first and
//!   reads once its last completion has come back: two receives on one socket could
//!   deliver bytes out of order.
//!
//! Bytes from completions after that decision still go to the leg: appended to
//! `client.input` (to the TLS session's `raw_in` once one took over), or, while that
//! buffer is lent to a write or full, to `Connection::client_stash` (on the heap), which
//! is moved in, ahead of any later byte, as soon as there is room. The stash holds at most
//! what the kernel delivers between the decision and the cancel (one batch), and never
//! more than [`uring::MULTISHOT_LIMIT`] (16 KiB) and one provided buffer where the kernel
//! takes that limit (Linux 6.17): the receive then ends by itself once it has delivered
//! that much (a last completion with bytes), and the next keep-alive wait arms another.
//!
//! **The buffer budget** applies to these bytes as to any read of a request
//! (`Connection::read`): a connection holding no slab (a keep-alive client between
//! requests, a new client's first bytes, which come through the same provided buffers)
//! takes one for them only below twice the budget, as a holder's read would (the slab
//! goes back once the request is out). Past that they wait in the stash, the receive is
//! not renewed (a multishot one is cancelled), and the connection queues for the budget;
//! its wake moves them in. So clients that each send part of a request and stop
//! (slowloris) hold at most twice the budget in slabs, and a few KiB of heap each past
//! it, instead of a slab each however many they are; `timeouts.request_head` ends them
//! (a 408 for a request whose bytes waited).
//!
//! **Uploads.** A multishot receive hands over whatever reaches the socket until its
//! cancel lands, in provided buffers of 4 KiB: for a request body that follows its head
//! at once, that is every byte the kernel holds when the worker next runs its task work
//! (about 200 KiB a request for 1 MiB uploads without the byte limit, each buffer a
//! completion, a copy into the stash and one out of it). So a client whose last request carried
//! [`UPLOAD_BYTES`] or more waits for its next one with a one-shot receive, and the body
//! is read into the request's slab the ordinary way; it goes back to the multishot
//! receive after a smaller request.
//!
//! A receive that ends by itself (its byte limit, EOF,
//! an error, `-ENOBUFS` when no provided buffer is free) is not re-armed at once: the
//! phase reads the ordinary way, and the next keep-alive wait arms a new one. The
//! receive counts as one operation in flight until its last completion (no "more"
//! flag), so `begin_close` cancels it with the others and the slot is freed only after.
//! TLS client legs never arm one (their bytes go through the session).

use super::leg::{ClientWait, Side};
use super::{tag, Connection, Ctx, NextStep, Phase, Role};
use crate::stats;
use std::os::fd::RawFd;
use uring::{Io, Op, ProvidedBuf};

/// A request of this many bytes or more (head and body, as received) is an upload: the
/// client's next keep-alive wait takes a one-shot receive instead of the multishot one.
pub(crate) const UPLOAD_BYTES: u64 = 16 * 1024;

impl Connection {
    /// Arms the multishot receive on the client socket (the keep-alive wait).
    pub(crate) fn arm_multishot(&mut self, io: &mut Io, ctx: &mut Ctx<'_>, fd: RawFd) {
        debug_assert!(self.client.wait == ClientWait::Idle && self.client.tls.is_none());
        ctx.ring.submit(io, tag::CLIENT_RECV, Op::RecvMulti { fd }, ctx.pool);
        self.client.wait = ClientWait::Multishot;
        stats::bump(&ctx.stats.multishot_arms, 1);
    }

    /// Cancels the multishot receive if it is armed; its last completion comes back later.
    pub(crate) fn stop_multishot(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) {
        if self.client.wait == ClientWait::Multishot {
            ctx.ring.submit(io, tag::CANCEL, Op::Cancel { tag: tag::CLIENT_RECV }, ctx.pool);
            self.client.wait = ClientWait::Cancelling;
            stats::bump(&ctx.stats.multishot_cancels, 1);
        }
    }

    /// Client bytes a phase has not taken: in `client.input`, or in the stash (the budget
    /// refused them a slab, or the buffer was lent or full when they came). Either way a
    /// request has started.
    pub(crate) fn client_bytes_pending(&self) -> bool {
        !self.client.input.is_empty() || self.client_stash.is_some()
    }

    /// The phases that read client bytes the way the multishot receive delivers them.
    fn wants_multishot(&self) -> bool {
        matches!(self.phase, Phase::AwaitRequest { .. } | Phase::RequestHead) && self.client.tls.is_none()
    }

    /// Before a client read of its own: `Some(step)` when the multishot receive or the
    /// stash answers it, `None` when the read may go to the kernel.
    pub(crate) fn multishot_gate(&mut self, io: &mut Io, ctx: &mut Ctx<'_>) -> Option<NextStep> {
        if self.client_stash.is_some() && self.drain_stash(ctx, true) > 0 {
            return Some(NextStep::Continue);
        }
        match self.client.wait {
            // Nothing could move: a read now would overtake the stash. The buffer is lent
            // or full (the completion that gives it back, or the phase that takes its
            // bytes, drains the stash), or the budget refused it a slab (its wake does).
            _ if self.client_stash.is_some() => {
                if !budget_allows(self, ctx.pool) {
                    ctx.pool.wait_for_slab(io.id(), self.budget_holds(Side::Client));
                }
                Some(NextStep::Wait)
            }
            ClientWait::Multishot if self.wants_multishot() => Some(NextStep::Wait),
            ClientWait::Multishot | ClientWait::Cancelling => {
                self.stop_multishot(io, ctx);
                Some(NextStep::Wait)
            }
            ClientWait::Idle | ClientWait::Poll => None,
        }
    }

    /// A completion of the multishot receive.
    pub(crate) fn multishot_done(
        &mut self,
        io: &mut Io,
        ctx: &mut Ctx<'_>,
        result: i32,
        more: bool,
        provided: Option<ProvidedBuf>,
    ) {
        if !more {
            self.client.wait = ClientWait::Idle;
        }
        let mut kept_all = true;
        match (provided, result) {
            (Some(p), n) => {
                if n > 0 {
                    if !more {
                        // Bytes and no "more": the receive ended by itself (its byte limit,
                        // or a completion queue too full to post another).
                        stats::bump(&ctx.stats.multishot_ended, 1);
                    }
                    kept_all = take_client_bytes(self, ctx, &p);
                    if self.client.tls.is_none() {
                        self.bytes_in += n as u64;
                        stats::bump(&ctx.stats.bytes_from_clients, n as u64);
                    }
                } else if n == 0 {
                    self.client.eof = true;
                }
                ctx.ring.recycle_provided(p);
            }
            // No provided buffer was free: the bytes wait in the socket. The keep-alive
            // wait reads them the ordinary way; another phase reads them when it reads.
            (None, r) if r == -libc::ENOBUFS => {
                stats::bump(&ctx.stats.multishot_nobufs, 1);
                if matches!(self.phase, Phase::AwaitRequest { .. }) {
                    self.client.readable = true;
                }
            }
            (None, r) if r == -libc::ECANCELED => {}
            (None, 0) => self.client.eof = true,
            (None, r) if r < 0 => self.client.fail(-r),
            (None, _) => {}
        }
        // Bytes the connection cannot use now, or that did not fit: stop the receive so
        // the client's further bytes wait in the kernel (TCP backpressure).
        if more && (!kept_all || !self.wants_multishot()) {
            self.stop_multishot(io, ctx);
        }
    }

    /// Moves stashed bytes into the leg's buffer; returns how many. `compact`: the
    /// buffer's bytes may move (no exchange may send them again from where they are).
    pub(crate) fn drain_stash(&mut self, ctx: &mut Ctx<'_>, compact: bool) -> usize {
        let Some(mut stash) = self.client_stash.take() else { return 0 };
        let n = append(self, ctx.pool, &stash, compact);
        if n < stash.len() {
            stash.drain(..n);
            self.client_stash = Some(stash);
        }
        n
    }
}

/// Appends the bytes of a provided buffer behind whatever came before them (the stash
/// first); what does not fit is stashed. False when anything was stashed.
pub(crate) fn take_client_bytes(conn: &mut Connection, ctx: &mut Ctx<'_>, p: &ProvidedBuf) -> bool {
    let bytes = ctx.ring.provided_bytes(p);
    // While an exchange may send its request head again (a retry rewinds `input.start`),
    // the bytes in the buffer must stay where they are.
    let compact = conn.ex.is_none();
    let n = if conn.client_stash.is_none() { append(conn, ctx.pool, bytes, compact) } else { 0 };
    if n < bytes.len() {
        conn.client_stash.get_or_insert_with(Default::default).extend_from_slice(&bytes[n..]);
        return false;
    }
    true
}

/// Appends to the client leg's plaintext buffer, or to its TLS session's ciphertext
/// buffer once one took over (then decrypts); returns how many bytes fit (none while
/// the buffer is lent).
fn append(conn: &mut Connection, pool: &mut uring::SlabPool, bytes: &[u8], compact: bool) -> usize {
    if !budget_allows(conn, pool) {
        return 0;
    }
    let leg = &mut conn.client;
    let buf = leg.inbound_mut();
    let n = if compact {
        let Some(room) = buf.room_mut(pool) else { return 0 };
        let n = room.len().min(bytes.len());
        room[..n].copy_from_slice(&bytes[..n]);
        buf.filled(n);
        n
    } else {
        buf.append(pool, bytes)
    };
    if n > 0 {
        if let Some(t) = leg.tls.as_mut() {
            t.pump(pool);
        }
    }
    n
}

/// The buffer budget (`Connection::read`) applies to received bytes as to reads: while
/// the connection reads a request ([`Connection::reads_a_request`]), a buffer with no
/// slab (in hand or lent) takes one only as `read` would let it ([`Connection::budget_holds`]:
/// below twice the budget, as a holder's read).
/// Otherwise the bytes wait in the stash and the connection queues for the budget
/// (`multishot_gate`, which every request phase reaches before reading again, so the
/// stash holds one receive's worth at most: a one-shot receive is not renewed, a
/// multishot one is cancelled). In other phases (an HTTP/2 session, a tunnel, the
/// linger) the bytes take their slab as before: those phases do not read through the
/// gate, and they bound their reads themselves.
fn budget_allows(conn: &Connection, pool: &uring::SlabPool) -> bool {
    conn.role != Role::Proxy
        || conn.client.inbound().holds_slab()
        || !conn.reads_a_request()
        || !pool.must_wait(conn.budget_holds(Side::Client))
}
