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

use crate::files::{FileUse, Returns, FILES_PER_IO};
use crate::ring::{Completion, ProvidedBuf, Ring, SockAddrRaw};
use crate::slab::{Slab, SlabPool};
use crate::token::{decode, Decoded, OpTag, WorkerToken, ACCEPT_KIND, FILES_KIND};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A checked reference to a slot, for worker-level bookkeeping (timers, DNS replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    gen: u32,
}

impl ConnId {
    /// The slot's index in its arena (reused by later slots).
    pub(crate) fn index(self) -> u32 {
        self.index
    }
    /// Which use of that index this id names.
    pub(crate) fn generation(self) -> u32 {
        self.gen
    }
}

/// `index.generation`, e.g. `7.3`: how log lines and `/debug/connections` name a slot.
///
/// ```
/// let mut conns: uring::Conns<()> = uring::Conns::new();
/// assert_eq!(conns.insert(()).to_string(), "0.1");
/// ```
impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.gen)
    }
}

/// The kernel-facing half of a slot: in-flight accounting and parked buffers.
#[derive(Debug)]
pub struct Io {
    id: ConnId,
    /// The ring of the arena this slot belongs to (0: an arena bound to no ring).
    ring: u32,
    inflight: u32,
    closing: bool,
    pub(crate) lanes: [Option<Slab>; OpTag::SLAB_LANES as usize],
    pub(crate) connect_addr: Option<(OpTag, Box<SockAddrRaw>)>,
    /// Registered-table slots of this connection's sockets (`files`), given back when the
    /// slot is freed.
    pub(crate) files: [FileUse; FILES_PER_IO],
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
    /// True while operations on `fd` name its registered-table slot
    /// ([`Ring::attach_file`]).
    pub fn uses_fixed(&self, fd: RawFd) -> bool {
        fd >= 0 && self.files.iter().any(|f| !f.is_empty() && f.fd == fd)
    }
    pub(crate) fn addr(&self) -> u64 {
        self as *const Io as u64
    }
    pub(crate) fn gen(&self) -> u32 {
        self.id.gen
    }
    pub(crate) fn ring(&self) -> u32 {
        self.ring
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
        /// The provided buffer a `RecvSelect` or `RecvMulti` filled (recycle it when its
        /// bytes are taken).
        provided: Option<ProvidedBuf>,
    },
    /// Multishot accept produced a socket (or an error in `result`).
    Accepted { listener: u32, fd: Option<OwnedFd>, result: i32, more: bool },
    /// A worker-level operation completed.
    Worker { token: WorkerToken, result: i32, more: bool },
    /// A closing connection finished its last operation and was freed: here is its value
    /// (dropping it closes what it owns). A provided buffer its last receive took has
    /// already gone back to the kernel.
    Freed { id: ConnId, value: T },
    /// A closing connection's operation finished; others are still in flight.
    Draining,
}

struct Entry<T> {
    ptr: *mut Slot<T>,
    gen: u32,
}

/// The per-worker arena of connections.
///
/// ```compile_fail,E0061
/// // A completion cannot be made up from a number: only the ring hands them out.
/// let mut conns: uring::Conns<()> = uring::Conns::new();
/// let mut pool = uring::SlabPool::new(0).unwrap();
/// conns.complete(0x10, 5, 0, &mut pool);
/// ```
pub struct Conns<T> {
    /// The ring whose completions this arena decodes (0: none; bookkeeping only).
    ring: u32,
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    live: usize,
    freed_total: u64,
    /// Where a freed slot's table slots go back to its ring (`files`).
    returns: Returns,
}

impl<T> Default for Conns<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Conns<T> {
    /// An arena bound to no ring: ids for bookkeeping and tests; its slots cannot be
    /// submitted to any ring.
    pub fn new() -> Self {
        Conns { ring: 0, entries: Vec::new(), free: Vec::new(), live: 0, freed_total: 0, returns: Returns::default() }
    }

    /// The arena of `ring`: the only one whose slots the ring accepts operations for and
    /// whose completions it decodes. A ring takes one arena in its life (completions of
    /// an arena dropped with operations in flight may still arrive).
    pub fn bound_to(ring: &mut Ring) -> Self {
        assert!(!ring.arena_bound, "this ring already has its arena");
        ring.arena_bound = true;
        let mut conns = Conns::new();
        conns.ring = ring.id();
        conns.returns = ring.returns.clone();
        conns
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
            io: Io {
                id,
                ring: self.ring,
                inflight: 0,
                closing: false,
                lanes: Default::default(),
                connect_addr: None,
                files: Default::default(),
            },
            value,
        });
        entry.ptr = Box::into_raw(slot);
        self.live += 1;
        id
    }

    /// The slot with this id, if it still exists and is not closing: a closing slot only
    /// waits for the kernel, and nothing may act on it again (close it twice, submit).
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Slot<T>> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.ptr.is_null() || entry.gen != id.gen {
            return None;
        }
        // SAFETY: a non-null registry pointer came from Box::into_raw in `insert` and is
        // nulled in `free` before the box is dropped, so it points to a live slot; the
        // `&mut self` borrow makes this the only reference handed out.
        let slot = unsafe { &mut *entry.ptr };
        (!slot.io.closing).then_some(slot)
    }

    /// Ids of every slot that is not closing, for shutdown sweeps.
    pub fn ids(&mut self) -> Vec<ConnId> {
        let ids: Vec<ConnId> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.ptr.is_null())
            .map(|(i, e)| ConnId { index: i as u32, gen: e.gen })
            .collect();
        ids.into_iter().filter(|id| self.get_mut(*id).is_some()).collect()
    }

    /// Marks the slot closing; frees it now when nothing is in flight. The owner must have
    /// submitted cancels for every fd with operations in flight, and released the slabs it
    /// holds itself. Returns the value when the slot was freed by this call (otherwise it
    /// comes back later in [`Event::Freed`]).
    pub fn close(&mut self, id: ConnId) -> Option<T> {
        let slot = self.get_mut(id)?; // None when already closing: closed once
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
        // Nothing is in flight, so no operation names its table slots any more: they go
        // back to the ring (emptied at its next submission; the sockets close when the
        // owner drops the value).
        for f in slot.io.files.iter().filter(|f| !f.is_empty()) {
            debug_assert_eq!(f.ops, 0, "a table slot with an operation in flight");
            self.returns.borrow_mut().push(f.index as u32);
        }
        self.free.push(index);
        self.live -= 1;
        self.freed_total += 1;
        Some(slot.value)
    }

    /// Turns one completion of this arena's ring back into its meaning. Slabs and provided
    /// buffers of closing connections go back to the pool and the ring here.
    pub fn complete(&mut self, c: &Completion, ring: &mut Ring, pool: &mut SlabPool) -> Event<'_, T> {
        assert!(self.ring != 0 && c.ring() == self.ring, "a completion of a ring this arena is not bound to");
        let (result, flags) = (c.result(), c.flags());
        let more = io_uring::cqueue::more(flags);
        match decode(c.user_data()) {
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
            Decoded::Worker(token) => {
                if token.kind == FILES_KIND {
                    // A table update failed (successes post nothing).
                    ring.table_update_failed();
                }
                Event::Worker { token, result, more }
            }
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
                    if slot.io.files.iter().any(|f| f.ops != 0) {
                        ring.op_done(&mut slot.io, tag);
                    }
                }
                let provided = ring.provided_of(c);
                if slot.io.closing {
                    if let Some(s) = slab {
                        pool.release(s);
                    }
                    if let Some(p) = provided {
                        ring.recycle_provided(p);
                    }
                    if slot.io.inflight == 0 {
                        let id = slot.io.id;
                        if let Some(value) = self.free(id.index) {
                            return Event::Freed { id, value };
                        }
                    }
                    return Event::Draining;
                }
                Event::Conn { slot, tag, result, more, slab, provided }
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
