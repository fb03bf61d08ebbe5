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
//! `-ECANCELED`, and the cancel with the count (or `-ENOENT`).

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
            | SimOp::CancelFd { fd: f } => f == fd,
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
}

/// Operations recorded and completions injected, in order.
#[derive(Debug, Default)]
pub struct Sim {
    /// The id of the ring this backs (set when the ring is made).
    pub(crate) ring: u32,
    pending: Vec<Pending>,
    completed: Vec<(u64, i32)>,
    /// Worker-level operations submitted (accept, tick, wake polls): never completed.
    pub worker_ops: u64,
}

impl Sim {
    pub(crate) fn submitted(
        &mut self,
        user_data: u64,
        tag: OpTag,
        (op, recv_into): (SimOp, Option<(*mut u8, u32)>),
        fixed: Option<u32>,
    ) {
        if let SimOp::CancelFd { fd } = op {
            let mut cancelled = 0;
            let mut i = 0;
            while i < self.pending.len() {
                if self.pending[i].op.names(fd) {
                    let p = self.pending.remove(i);
                    self.completed.push((p.user_data, -libc::ECANCELED));
                    cancelled += 1;
                } else {
                    i += 1;
                }
            }
            self.completed.push((user_data, if cancelled > 0 { cancelled } else { -libc::ENOENT }));
            return;
        }
        self.pending.push(Pending { ring: self.ring, user_data, tag, op, fixed, recv_into });
    }

    pub(crate) fn take_completed(&mut self) -> std::vec::Drain<'_, (u64, i32)> {
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
        self.completed.push((p.user_data, result));
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
        self.completed.push((p.user_data, n as i32));
        n
    }
}
