//! The connection arena: raw `*mut Slot<T>` in `user_data`, freed exactly once.
//!
//! Lifecycle of a slot:
//! 1. [`Conns::insert`] boxes the value and `Box::into_raw`s it; the registry keeps the
//!    pointer and a generation so worker-level references ([`ConnId`]: timers, DNS
//!    answers) can be checked for staleness.
//! 2. Every submission goes through `Ring::submit` with the slot's [`Io`]: in-flight
//!    count + 1, and any slab it uses parks in the slot's lane for that tag.
//! 3. [`Conns::complete`] decodes `user_data` back into `&mut Slot<T>`; a final
//!    completion (no `MORE` flag) decrements the in-flight count and hands the parked
//!    slab back.
//! 4. [`Conns::close`] marks the slot closing. The owner has already submitted cancels
//!    for its fds; completions that arrive for a closing slot (usually `-ECANCELED`)
//!    only return their slabs to the pool. When the in-flight count reaches zero the slot
//!    is `Box::from_raw`'d, once, and its value handed back to the owner ([`Event::Freed`]
//!    or the return of `close`), who drops it: its fds close in `T`'s destructor.

use crate::ring::SockAddrRaw;
use crate::slab::{Slab, SlabPool};
use crate::token::{decode, Decoded, OpTag, WorkerToken, ACCEPT_KIND};
use std::os::fd::{FromRawFd, OwnedFd};

/// A checked reference to a slot, for worker-level bookkeeping (timers, DNS replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    gen: u32,
}

/// The kernel-facing half of a slot: in-flight accounting and parked buffers.
#[derive(Debug)]
pub struct Io {
    id: ConnId,
    inflight: u32,
    closing: bool,
    pub(crate) lanes: [Option<Slab>; OpTag::SLAB_LANES as usize],
    pub(crate) connect_addr: Option<(OpTag, Box<SockAddrRaw>)>,
}

impl Io {
    /// The checked id of this slot.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// Operations submitted and not finally completed.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }
    /// True once [`Conns::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }
    /// True while an operation with this slab-carrying tag is in flight.
    pub fn lane_busy(&self, tag: OpTag) -> bool {
        self.lanes.get(tag.0 as usize).is_some_and(|l| l.is_some())
    }
    pub(crate) fn addr(&self) -> u64 {
        self as *const Io as u64
    }
    pub(crate) fn gen(&self) -> u32 {
        self.id.gen
    }
    pub(crate) fn started(&mut self) {
        self.inflight += 1;
    }
}

/// One connection: the kernel-facing [`Io`] first (its address is the slot's address),
/// then the owner's value.
#[repr(C, align(16))]
pub struct Slot<T> {
    io: Io,
    /// The owner's state.
    pub value: T,
}

impl<T> Slot<T> {
    /// Both halves at once, so the owner can change its state and submit in one breath.
    pub fn split(&mut self) -> (&mut T, &mut Io) {
        (&mut self.value, &mut self.io)
    }
    /// The kernel-facing half.
    pub fn io(&self) -> &Io {
        &self.io
    }
}

/// What one completion means.
pub enum Event<'a, T> {
    /// An operation of a live connection completed.
    Conn {
        slot: &'a mut Slot<T>,
        tag: OpTag,
        result: i32,
        /// More completions will follow for this (multishot) submission.
        more: bool,
        /// The slab the operation used, handed back.
        slab: Option<Slab>,
    },
    /// Multishot accept produced a socket (or an error in `result`).
    Accepted { listener: u32, fd: Option<OwnedFd>, result: i32, more: bool },
    /// A worker-level operation completed.
    Worker { token: WorkerToken, result: i32, more: bool },
    /// A closing connection finished its last operation and was freed: here is its value
    /// (dropping it closes what it owns).
    Freed { id: ConnId, value: T },
    /// A closing connection's operation finished; others are still in flight.
    Draining,
}

struct Entry<T> {
    ptr: *mut Slot<T>,
    gen: u32,
}

/// The per-worker arena of connections.
pub struct Conns<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    live: usize,
    freed_total: u64,
}

impl<T> Default for Conns<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Conns<T> {
    pub fn new() -> Self {
        Conns { entries: Vec::new(), free: Vec::new(), live: 0, freed_total: 0 }
    }

    /// Connections not yet freed (closing ones included).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Slots freed since the arena was made (a test hook for exactly-once freeing).
    pub fn freed_total(&self) -> u64 {
        self.freed_total
    }

    /// Boxes the value and gives it a checked id.
    pub fn insert(&mut self, value: T) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry { ptr: std::ptr::null_mut(), gen: 0 });
                (self.entries.len() - 1) as u32
            }
        };
        let entry = &mut self.entries[index as usize];
        entry.gen = entry.gen.wrapping_add(1);
        let id = ConnId { index, gen: entry.gen };
        let slot = Box::new(Slot {
            io: Io { id, inflight: 0, closing: false, lanes: Default::default(), connect_addr: None },
            value,
        });
        entry.ptr = Box::into_raw(slot);
        self.live += 1;
        id
    }

    /// The live slot with this id, if it still exists.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Slot<T>> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.ptr.is_null() || entry.gen != id.gen {
            return None;
        }
        // SAFETY: a non-null registry pointer came from Box::into_raw in `insert` and is
        // nulled in `free` before the box is dropped, so it points to a live slot; the
        // `&mut self` borrow makes this the only reference handed out.
        Some(unsafe { &mut *entry.ptr })
    }

    /// Ids of every slot, for shutdown sweeps.
    pub fn ids(&self) -> Vec<ConnId> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.ptr.is_null())
            .map(|(i, e)| ConnId { index: i as u32, gen: e.gen })
            .collect()
    }

    /// Marks the slot closing; frees it now when nothing is in flight. The owner must have
    /// submitted cancels for every fd with operations in flight, and released the slabs it
    /// holds itself. Returns the value when the slot was freed by this call (otherwise it
    /// comes back later in [`Event::Freed`]).
    pub fn close(&mut self, id: ConnId) -> Option<T> {
        let slot = self.get_mut(id)?;
        slot.io.closing = true;
        if slot.io.inflight == 0 {
            self.free(id.index)
        } else {
            None
        }
    }

    fn free(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        let ptr = std::mem::replace(&mut entry.ptr, std::ptr::null_mut());
        debug_assert!(!ptr.is_null(), "double free of a connection slot");
        if ptr.is_null() {
            return None;
        }
        // SAFETY: ptr came from Box::into_raw in `insert`; it was just removed from the
        // registry, and no operation is in flight (inflight == 0), so the kernel holds no
        // user_data naming it: this is the one and only place it is turned back into a Box.
        let slot = unsafe { Box::from_raw(ptr) };
        debug_assert!(slot.io.lanes.iter().all(|l| l.is_none()));
        self.free.push(index);
        self.live -= 1;
        self.freed_total += 1;
        Some(slot.value)
    }

    /// Turns one completion back into its meaning. Slabs of closing connections go back
    /// to the pool here.
    pub fn complete(&mut self, user_data: u64, result: i32, flags: u32, pool: &mut SlabPool) -> Event<'_, T> {
        let more = io_uring::cqueue::more(flags);
        match decode(user_data) {
            Decoded::Worker(token) if token.kind == ACCEPT_KIND => {
                let fd = if result >= 0 {
                    // SAFETY: a non-negative accept result is a new descriptor the kernel
                    // just installed for us; nothing else knows it, so we take ownership once.
                    Some(unsafe { OwnedFd::from_raw_fd(result) })
                } else {
                    None
                };
                Event::Accepted { listener: token.index, fd, result, more }
            }
            Decoded::Worker(token) => Event::Worker { token, result, more },
            Decoded::Conn { addr, gen16, tag } => {
                let ptr = addr as *mut Slot<T>;
                // The slot is freed only when its in-flight count (incremented by the
                // submission that built this user_data) is zero, i.e. after this completion.
                // SAFETY: so `ptr` (from `Ring::submit`, a live slot's address) is live, and
                // `&mut self` makes the reference unique.
                let slot = unsafe { &mut *ptr };
                debug_assert_eq!(slot.io.gen() as u16, gen16, "completion for a recycled slot");
                let mut slab = None;
                if !more {
                    debug_assert!(slot.io.inflight > 0, "completion without a submission");
                    slot.io.inflight = slot.io.inflight.saturating_sub(1);
                    if let Some(lane) = slot.io.lanes.get_mut(tag.0 as usize) {
                        slab = lane.take();
                        if slab.is_some() {
                            pool.in_kernel -= 1;
                        }
                    }
                    if slot.io.connect_addr.as_ref().is_some_and(|(t, _)| *t == tag) {
                        slot.io.connect_addr = None;
                    }
                }
                if slot.io.closing {
                    if let Some(s) = slab {
                        pool.release(s);
                    }
                    if slot.io.inflight == 0 {
                        let id = slot.io.id;
                        if let Some(value) = self.free(id.index) {
                            return Event::Freed { id, value };
                        }
                    }
                    return Event::Draining;
                }
                Event::Conn { slot, tag, result, more, slab }
            }
        }
    }
}

impl<T> Drop for Conns<T> {
    fn drop(&mut self) {
        // Slots with operations in flight are leaked on purpose: the kernel may still
        // complete into them. Idle ones are freed.
        for i in 0..self.entries.len() {
            let ptr = self.entries[i].ptr;
            if ptr.is_null() {
                continue;
            }
            // SAFETY: non-null registry pointers are live slots (see `get_mut`).
            let idle = unsafe { (*ptr).io.inflight == 0 };
            if idle {
                drop(self.free(i as u32));
            }
        }
    }
}
