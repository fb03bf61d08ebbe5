//! The in-memory backend of a [`Ring`](crate::Ring): operations are recorded instead of
//! submitted, and a test completes them with the results it chooses.
//!
//! A ring made by [`Uring::in_memory`](crate::Uring::in_memory) goes through the same
//! submission path as a kernel ring (slabs park in the slot's lane, the in-flight count
//! moves), and its completions are decoded by the same `Conns::complete`: only the kernel
//! is left out. A test looks at [`Sim::pending`], picks an operation with [`Sim::take`],
//! and completes it ([`Sim::complete`], or [`Sim::complete_recv`] with the bytes a
//! receive got); the next `submit_and_wait` hands those completions to the worker loop.
//! Cancels act as the kernel's do: every pending operation on the fd completes with
//! `-ECANCELED`, and the cancel with the count (or `-ENOENT`); a cancel of one operation
//! (by its tag) completes that one with `-ECANCELED` and itself with 0 (or `-ENOENT`).
//!
//! Receives that select a provided buffer (`RecvSelect`, the multishot `RecvMulti`) need
//! the ring's provided buffers, which an in-memory ring has only after
//! [`Sim::provide_buffers`]: the sim then keeps its own buffers and hands them out as the
//! kernel does (one per completion, `-ENOBUFS` when none is free, which also ends a
//! multishot receive). A multishot receive stays pending while [`Sim::deliver`] posts
//! completions flagged "more", until it has delivered [`crate::MULTISHOT_LIMIT`] bytes
//! or more (as a kernel that takes the limit does: the completion that reaches it, a
//! whole buffer's worth like any other, ends it); [`Sim::complete`] ends it too.

use crate::token::OpTag;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// An operation as the in-memory ring recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimOp {
    /// A receive of up to `len` bytes.
    Recv {
        fd: RawFd,
        len: usize,
    },
    /// A send of these bytes (copied when it was submitted).
    Send {
        fd: RawFd,
        bytes: Vec<u8>,
    },
    PollIn {
        fd: RawFd,
    },
    PollOut {
        fd: RawFd,
    },
    Connect {
        fd: RawFd,
        addr: SocketAddr,
    },
    ShutdownWrite {
        fd: RawFd,
    },
    CancelFd {
        fd: RawFd,
    },
    /// A receive into a provided buffer the kernel picks.
    RecvSelect {
        fd: RawFd,
    },
    /// A multishot receive into provided buffers: one completion per buffer filled.
    RecvMulti {
        fd: RawFd,
    },
    /// A cancel of this slot's operation with that tag.
    Cancel {
        tag: OpTag,
    },
    Splice {
        fd_in: RawFd,
        fd_out: RawFd,
        len: u32,
    },
}

impl SimOp {
    /// True when the operation acts on `fd`.
    pub fn names(&self, fd: RawFd) -> bool {
        match *self {
            SimOp::Recv { fd: f, .. }
            | SimOp::Send { fd: f, .. }
            | SimOp::PollIn { fd: f }
            | SimOp::PollOut { fd: f }
            | SimOp::Connect { fd: f, .. }
            | SimOp::ShutdownWrite { fd: f }
            | SimOp::CancelFd { fd: f }
            | SimOp::RecvSelect { fd: f }
            | SimOp::RecvMulti { fd: f } => f == fd,
            SimOp::Cancel { .. } => false,
            SimOp::Splice { fd_in, fd_out, .. } => fd_in == fd || fd_out == fd,
        }
    }
}

/// An operation waiting for its completion.
#[derive(Debug)]
pub struct Pending {
    /// The ring it was submitted to: it completes only there (its `user_data` names a
    /// slot of that ring's arena).
    ring: u32,
    user_data: u64,
    pub tag: OpTag,
    pub op: SimOp,
    /// The registered-table slot the operation named instead of its socket's fd, if any.
    pub fixed: Option<u32>,
    /// Where a receive's bytes go: inside a slab parked in the slot's lane.
    recv_into: Option<(*mut u8, u32)>,
    /// A deferred cancel's target (`Sim::defer_cancels`).
    cancel_target: Option<u64>,
    /// Bytes a multishot receive delivered so far (it ends at `MULTISHOT_LIMIT` or more).
    delivered: usize,
}

/// `IORING_CQE_F_BUFFER`, `IORING_CQE_F_MORE` and `IORING_CQE_BUFFER_SHIFT`
/// (linux/io_uring.h): how a completion names its provided buffer and says that more
/// completions follow.
const CQE_F_BUFFER: u32 = 1;
const CQE_F_MORE: u32 = 1 << 1;
const CQE_BUFFER_SHIFT: u32 = 16;

/// The in-memory provided buffers: their bytes and which are free (the kernel's ring).
#[derive(Debug)]
struct Provided {
    size: usize,
    bufs: Vec<Vec<u8>>,
    free: std::collections::VecDeque<u16>,
}

/// Operations recorded and completions injected, in order.
#[derive(Debug, Default)]
pub struct Sim {
    /// The id of the ring this backs (set when the ring is made).
    pub(crate) ring: u32,
    pending: Vec<Pending>,
    /// `(user_data, result, flags)` in completion order.
    completed: Vec<(u64, i32, u32)>,
    provided: Option<Provided>,
    /// Cancels by tag wait as pending operations until the test completes them.
    defer_cancels: bool,
    /// Worker-level operations submitted (accept, tick, wake polls): never completed.
    pub worker_ops: u64,
}

impl Sim {
    /// Gives this ring `count` provided buffers of `size` bytes: receives may then select
    /// them (`Ring::has_buf_ring` is true), as on a kernel ring that registered its
    /// provided-buffer ring.
    pub fn provide_buffers(&mut self, count: u16, size: usize) {
        self.provided = Some(Provided { size, bufs: vec![Vec::new(); count as usize], free: (0..count).collect() });
    }

    /// Provided buffers not handed out (or given back since).
    pub fn free_buffers(&self) -> usize {
        self.provided.as_ref().map_or(0, |p| p.free.len())
    }

    pub(crate) fn has_provided(&self) -> bool {
        self.provided.is_some()
    }

    pub(crate) fn provided_bytes(&self, bid: u16, len: usize) -> &[u8] {
        match self.provided.as_ref().and_then(|p| p.bufs.get(bid as usize)) {
            Some(b) => &b[..len.min(b.len())],
            None => &[],
        }
    }

    pub(crate) fn recycle_provided(&mut self, bid: u16) {
        if let Some(p) = self.provided.as_mut() {
            debug_assert!(!p.free.contains(&bid), "provided buffer {bid} recycled twice");
            p.free.push_back(bid);
        }
    }

    /// Puts up to one buffer's worth of `data` in a free provided buffer: its flags and
    /// how many bytes went in, or None when no buffer is free.
    fn fill_provided(&mut self, data: &[u8]) -> Option<(u32, usize)> {
        let p = self.provided.as_mut()?;
        let bid = p.free.pop_front()?;
        let n = data.len().min(p.size);
        p.bufs[bid as usize] = data[..n].to_vec();
        Some((CQE_F_BUFFER | (bid as u32) << CQE_BUFFER_SHIFT, n))
    }

    pub(crate) fn submitted(
        &mut self,
        user_data: u64,
        tag: OpTag,
        (op, recv_into): (SimOp, Option<(*mut u8, u32)>),
        cancel_target: Option<u64>,
        fixed: Option<u32>,
    ) {
        if let (SimOp::Cancel { .. }, Some(target), false) = (&op, cancel_target, self.defer_cancels) {
            let result = self.cancel_one(target);
            self.completed.push((user_data, result, 0));
            return;
        }
        if let SimOp::CancelFd { fd } = op {
            let mut cancelled = 0;
            let mut i = 0;
            while i < self.pending.len() {
                if self.pending[i].op.names(fd) {
                    let p = self.pending.remove(i);
                    self.completed.push((p.user_data, -libc::ECANCELED, 0));
                    cancelled += 1;
                } else {
                    i += 1;
                }
            }
            self.completed.push((user_data, if cancelled > 0 { cancelled } else { -libc::ENOENT }, 0));
            return;
        }
        self.pending.push(Pending {
            ring: self.ring,
            user_data,
            tag,
            op,
            fixed,
            recv_into,
            cancel_target,
            delivered: 0,
        });
    }

    /// Completes the pending operation `target` with `-ECANCELED`: 0, or `-ENOENT` when
    /// it is not pending.
    fn cancel_one(&mut self, target: u64) -> i32 {
        match self.pending.iter().position(|p| p.user_data == target) {
            Some(i) => {
                let p = self.pending.remove(i);
                self.completed.push((p.user_data, -libc::ECANCELED, 0));
                0
            }
            None => -libc::ENOENT,
        }
    }

    /// From now on a cancel by tag (`Op::Cancel`) is not acted on when it is submitted:
    /// it waits as a pending [`SimOp::Cancel`], and its target completes with
    /// `-ECANCELED` only when the test completes it (with any result: the cancel's own
    /// result is then 0, or `-ENOENT`). Until then the target can still complete, as in
    /// the kernel, where a cancel takes effect only when the ring gets to it.
    pub fn defer_cancels(&mut self) {
        self.defer_cancels = true;
    }

    pub(crate) fn take_completed(&mut self) -> std::vec::Drain<'_, (u64, i32, u32)> {
        self.completed.drain(..)
    }

    /// Operations submitted and not completed yet, oldest first.
    pub fn pending(&self) -> &[Pending] {
        &self.pending
    }

    /// Removes the oldest pending operation that `pick` accepts, to complete it.
    pub fn take(&mut self, pick: impl Fn(OpTag, &SimOp) -> bool) -> Option<Pending> {
        let i = self.pending.iter().position(|p| pick(p.tag, &p.op))?;
        Some(self.pending.remove(i))
    }

    /// Completes an operation with `result` (a count, or a negated errno).
    pub fn complete(&mut self, p: Pending, result: i32) {
        assert_eq!(p.ring, self.ring, "an operation of another ring");
        let result = match p.cancel_target {
            Some(target) => self.cancel_one(target),
            None => result,
        };
        self.completed.push((p.user_data, result, 0));
    }

    /// Completes a `RecvSelect` with `data` in a provided buffer (as much as one holds; the
    /// result is returned): `-ENOBUFS` when none is free, 0 (EOF) for empty `data`.
    pub fn complete_provided(&mut self, p: Pending, data: &[u8]) -> i32 {
        assert_eq!(p.ring, self.ring, "an operation of another ring");
        assert!(matches!(p.op, SimOp::RecvSelect { .. }), "complete_provided on {:?}", p.op);
        let (result, flags) = match data.is_empty() {
            true => (0, 0),
            false => match self.fill_provided(data) {
                Some((flags, n)) => (n as i32, flags),
                None => (-libc::ENOBUFS, 0),
            },
        };
        self.completed.push((p.user_data, result, flags));
        result
    }

    /// The client behind `fd` sends `data` to the pending multishot receive on it: one
    /// completion flagged "more" per provided buffer filled, as the kernel posts them.
    /// When the buffers run out the receive ends with `-ENOBUFS`, and the completion that
    /// reaches `MULTISHOT_LIMIT` bytes has no "more" flag (either way the
    /// bytes not delivered stay "in the socket": the test gives them to the next
    /// receive); empty `data` is the peer's EOF, which ends it with 0. Returns how many
    /// bytes were delivered.
    pub fn deliver(&mut self, fd: RawFd, data: &[u8]) -> usize {
        let i = self
            .pending
            .iter()
            .position(|p| p.op == SimOp::RecvMulti { fd })
            .unwrap_or_else(|| panic!("no multishot receive pending on fd {fd}"));
        let user_data = self.pending[i].user_data;
        if data.is_empty() {
            self.pending.remove(i);
            self.completed.push((user_data, 0, 0));
            return 0;
        }
        let mut sent = 0;
        while sent < data.len() {
            match self.fill_provided(&data[sent..]) {
                Some((flags, n)) => {
                    sent += n;
                    self.pending[i].delivered += n;
                    if self.pending[i].delivered >= crate::MULTISHOT_LIMIT as usize {
                        self.pending.remove(i);
                        self.completed.push((user_data, n as i32, flags));
                        break;
                    }
                    self.completed.push((user_data, n as i32, flags | CQE_F_MORE));
                }
                None => {
                    self.pending.remove(i);
                    self.completed.push((user_data, -libc::ENOBUFS, 0));
                    break;
                }
            }
        }
        sent
    }

    /// Completes a receive with `data` (as much as it asked for; the count is returned).
    /// Empty `data` is the peer's EOF.
    pub fn complete_recv(&mut self, p: Pending, data: &[u8]) -> usize {
        assert_eq!(p.ring, self.ring, "an operation of another ring");
        let (ptr, room) = p.recv_into.expect("complete_recv on an operation that is not a receive");
        let n = data.len().min(room as usize);
        // The operation was submitted to this ring (asserted above), whose arena holds its
        // slot; its slab stays parked in the slot's lane until this completion is decoded
        // (after this call), and the pool leaks rather than frees a slab still lent.
        // SAFETY: `ptr..ptr+room` lies inside that lent slab (`Ring::lend` checked the
        // range), n <= room, and nothing else writes a lent slab.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, n) };
        self.completed.push((p.user_data, n as i32, 0));
        n
    }
}
