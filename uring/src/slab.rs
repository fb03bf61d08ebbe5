//! The per-worker pool of 64 KiB I/O slabs.
//!
//! `registered` slabs live in one page-aligned allocation registered with the ring
//! (`IORING_REGISTER_BUFFERS`), so socket I/O on them uses the fixed-buffer opcodes.
//! When they run out the pool lends plain heap slabs instead (I/O on them uses the
//! ordinary opcodes), so a burst never stalls a connection. A released heap slab is kept
//! as a spare for the next lend, so a worker running past its registered slabs under
//! sustained load does not allocate and zero 64 KiB per lend; [`SlabPool::trim_spares`]
//! (the worker calls it every second) frees half of the spares that sat unused for the
//! whole period, so the memory goes back once the load is gone.
//!
//! Ownership rule: a [`Slab`] handle is unique (not `Clone`), made only by [`SlabPool::take`].
//! Whoever holds the handle may touch the bytes; while an operation is in flight the
//! handle is parked in the connection's slot (see `conns`), so neither the proxy nor the
//! pool can touch or reuse a buffer the kernel owns.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes in one slab.
pub const SLAB_SIZE: usize = 64 * 1024;

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// A unique handle on one slab of one pool.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a slab must go back to its pool with SlabPool::release"]
pub struct Slab {
    pool: u32,
    index: u32,
}

impl Slab {
    /// The slab's index in its pool (registered buffer index when registered).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// A pool of slabs owned by one worker.
pub struct SlabPool {
    id: u32,
    base: *mut u8,
    layout: Option<Layout>,
    registered: u32,
    free: Vec<u32>,
    overflow: Vec<Option<HeapSlab>>,
    overflow_free: Vec<u32>,
    /// Released heap buffers kept for the next heap lend.
    spare: Vec<HeapSlab>,
    /// The fewest spares there were at once since the last trim: that many sat unused.
    spare_low: usize,
    outstanding: usize,
    /// Heap slabs lent since the pool was made (the registered ones had run out).
    heap_lends: u64,
    /// Slabs currently parked in an in-flight operation (the kernel may write them).
    pub(crate) in_kernel: usize,
    /// The memory budget, in slabs (registered and heap together): past it a connection
    /// holding no slab waits for one, and past twice it every connection does.
    budget: usize,
    /// Connections holding a slab that wait for the budget (at twice it), woken in
    /// arrival order while there is room under twice the budget.
    waiting_holders: std::collections::VecDeque<crate::ConnId>,
    /// The other connections waiting for the budget, woken in arrival order while there
    /// is room under the budget, after the holders.
    waiting: std::collections::VecDeque<crate::ConnId>,
    /// The connections in either queue: one woken by something else while queued (its
    /// own write completing) that must wait again keeps its place instead of queueing
    /// twice, which would count it twice for the stall sweep.
    queued: std::collections::HashSet<crate::ConnId>,
    /// Reads that had to wait for the budget.
    waits: u64,
}

impl SlabPool {
    /// Allocates `count` zeroed slabs in one page-aligned block.
    pub fn new(count: usize) -> std::io::Result<SlabPool> {
        let count = count.min(u16::MAX as usize);
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        if count == 0 {
            return Ok(SlabPool {
                id,
                base: std::ptr::null_mut(),
                layout: None,
                registered: 0,
                free: Vec::new(),
                overflow: Vec::new(),
                overflow_free: Vec::new(),
                spare: Vec::new(),
                spare_low: 0,
                outstanding: 0,
                heap_lends: 0,
                in_kernel: 0,
                budget: usize::MAX,
                waiting_holders: std::collections::VecDeque::new(),
                waiting: std::collections::VecDeque::new(),
                queued: std::collections::HashSet::new(),
                waits: 0,
            });
        }
        let layout = Layout::from_size_align(count * SLAB_SIZE, 4096)
            .map_err(|_| std::io::Error::other("slab pool too large"))?;
        // SAFETY: the layout has a non-zero size (count > 0) and a valid alignment.
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            return Err(std::io::Error::other("cannot allocate the slab pool"));
        }
        Ok(SlabPool {
            id,
            base,
            layout: Some(layout),
            registered: count as u32,
            free: (0..count as u32).rev().collect(),
            overflow: Vec::new(),
            overflow_free: Vec::new(),
            spare: Vec::new(),
            spare_low: 0,
            outstanding: 0,
            heap_lends: 0,
            in_kernel: 0,
            budget: usize::MAX,
            waiting_holders: std::collections::VecDeque::new(),
            waiting: std::collections::VecDeque::new(),
            queued: std::collections::HashSet::new(),
            waits: 0,
        })
    }

    /// Sets the memory budget in slabs (at least one).
    pub fn set_budget(&mut self, slabs: usize) {
        self.budget = slabs.max(1);
    }

    /// The memory budget in slabs.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// True when a connection must wait before it takes a slab: the budget is spent and
    /// it holds none, or twice the budget is spent (a connection already holding a slab
    /// may finish what it started with one more, so holders never wait on each other).
    pub fn must_wait(&self, holds_one: bool) -> bool {
        let limit = if holds_one { self.budget.saturating_mul(2) } else { self.budget };
        self.outstanding >= limit
    }

    /// True when the budget is spent (new connections are refused meanwhile).
    pub fn at_budget(&self) -> bool {
        self.outstanding >= self.budget
    }

    /// Queues connection `id` until slabs come back (a later `wake_waiters`); `holds_one`
    /// as for [`SlabPool::must_wait`], which said it must wait.
    pub fn wait_for_slab(&mut self, id: crate::ConnId, holds_one: bool) {
        self.waits += 1;
        if !self.queued.insert(id) {
            return;
        }
        if holds_one {
            self.waiting_holders.push_back(id);
        } else {
            self.waiting.push_back(id);
        }
    }

    /// Wakes as many waiting connections as their limit has room for, holders first
    /// (each re-checks; one that closed meanwhile is skipped by the worker). A holder
    /// waits only at twice the budget, so waking holders only under the budget itself
    /// would leave them waiting while new reads of other holders took every slab that
    /// came back.
    pub fn wake_waiters(&mut self, wakes: &crate::ReadyQueue) {
        let mut outstanding = self.outstanding;
        for (queue, limit) in
            [(&mut self.waiting_holders, self.budget.saturating_mul(2)), (&mut self.waiting, self.budget)]
        {
            while outstanding < limit {
                let Some(id) = queue.pop_front() else { break };
                self.queued.remove(&id);
                wakes.wake(id);
                outstanding += 1;
            }
        }
    }

    /// Connections waiting for the budget now, and reads that waited since the start.
    pub fn waiters(&self) -> (usize, u64) {
        (self.waiting_holders.len() + self.waiting.len(), self.waits)
    }

    /// The iovecs to register with a ring, one per registered slab.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.registered as usize)
            .map(|i| libc::iovec {
                // SAFETY: i < registered, so the offset stays inside the allocation.
                iov_base: unsafe { self.base.add(i * SLAB_SIZE) }.cast(),
                iov_len: SLAB_SIZE,
            })
            .collect()
    }

    /// Lends a slab: a registered one while any is free, else a heap one.
    pub fn take(&mut self) -> Slab {
        self.outstanding += 1;
        if let Some(index) = self.free.pop() {
            return Slab { pool: self.id, index };
        }
        self.heap_lends += 1;
        let buf = match self.spare.pop() {
            Some(buf) => buf,
            // Out of address space or memory: the lend cannot be refused (the caller has
            // data to place), so this is the one allocation failure that aborts, as a
            // failed Vec allocation would.
            None => HeapSlab::new().unwrap_or_else(|e| panic!("cannot map a 64 KiB heap slab: {e}")),
        };
        self.spare_low = self.spare_low.min(self.spare.len());
        let o = match self.overflow_free.pop() {
            Some(o) => {
                self.overflow[o as usize] = Some(buf);
                o
            }
            None => {
                self.overflow.push(Some(buf));
                (self.overflow.len() - 1) as u32
            }
        };
        Slab { pool: self.id, index: self.registered + o }
    }

    /// Returns a slab to the pool.
    pub fn release(&mut self, slab: Slab) {
        assert_eq!(slab.pool, self.id, "slab released to a foreign pool");
        self.outstanding -= 1;
        if slab.index < self.registered {
            self.free.push(slab.index);
        } else {
            let o = slab.index - self.registered;
            if let Some(buf) = self.overflow[o as usize].take() {
                self.spare.push(buf);
            }
            self.overflow_free.push(o);
        }
    }

    /// True when the slab is one of the registered (fixed) buffers.
    pub fn is_registered(&self, slab: &Slab) -> bool {
        slab.index < self.registered
    }

    /// Slabs lent out now (to connections or the kernel).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Frees half of the spare heap slabs that were not lent at all since the last call
    /// (the worker calls it every second). Returns how many were freed.
    pub fn trim_spares(&mut self) -> usize {
        let unused = self.spare_low.min(self.spare.len());
        let free = unused.div_ceil(2);
        self.spare.truncate(self.spare.len() - free);
        self.spare_low = self.spare.len();
        free
    }

    /// Spare heap slabs kept for reuse now.
    pub fn spares(&self) -> usize {
        self.spare.len()
    }

    /// Heap slabs lent since the pool was made: how often the registered ones ran out.
    pub fn heap_lends(&self) -> u64 {
        self.heap_lends
    }

    /// Registered slabs not lent out.
    pub fn free_registered(&self) -> usize {
        self.free.len()
    }

    /// Registered slabs in all.
    pub fn registered(&self) -> usize {
        self.registered as usize
    }

    /// Which pool this is (rings check that slabs come from the pool they registered).
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn ptr(&self, slab: &Slab) -> *mut u8 {
        assert_eq!(slab.pool, self.id, "slab used with a foreign pool");
        if slab.index < self.registered {
            // SAFETY: index < registered, so the offset stays inside the allocation.
            unsafe { self.base.add(slab.index as usize * SLAB_SIZE) }
        } else {
            match &self.overflow[(slab.index - self.registered) as usize] {
                Some(b) => b.ptr.as_ptr(),
                None => unreachable!("a live Slab handle always names a live buffer"),
            }
        }
    }

    /// The slab's bytes.
    pub fn bytes<'a>(&'a self, slab: &'a Slab) -> &'a [u8] {
        // SAFETY: the handle is unique and held by the caller, so no `&mut` to these bytes
        // exists and the kernel does not own them (in-flight slabs are parked in a slot).
        unsafe { std::slice::from_raw_parts(self.ptr(slab), SLAB_SIZE) }
    }

    /// The slab's bytes, writable.
    pub fn bytes_mut<'a>(&'a self, slab: &'a mut Slab) -> &'a mut [u8] {
        // SAFETY: as in `bytes`, and `&mut Slab` proves this is the only access to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(slab), SLAB_SIZE) }
    }
}

/// A slab past the registered ones: its own anonymous mapping, so the kernel zeroes it
/// lazily (no 64 KiB memset per allocation) and unmapping it gives the memory back to the
/// system at once (a freed heap block would stay in the allocator's arenas).
struct HeapSlab {
    ptr: std::ptr::NonNull<u8>,
}

impl HeapSlab {
    fn new() -> std::io::Result<HeapSlab> {
        // SAFETY: an anonymous private mapping of SLAB_SIZE bytes at an address the kernel
        // chooses; no existing memory is touched. The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SLAB_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        std::ptr::NonNull::new(p.cast())
            .map(|ptr| HeapSlab { ptr })
            .ok_or_else(|| std::io::Error::other("mmap gave null"))
    }
}

impl Drop for HeapSlab {
    fn drop(&mut self) {
        // SAFETY: ptr is the start of a SLAB_SIZE mapping made in `new` and unmapped only
        // here, once. A HeapSlab is dropped only when no Slab handle names it (released
        // to the pool, or the pool dropped with nothing in the kernel: see SlabPool's Drop).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), SLAB_SIZE);
        }
    }
}

impl Drop for SlabPool {
    fn drop(&mut self) {
        if self.in_kernel > 0 {
            // The kernel may still write into these pages: leak them (the registered block
            // and the heap slabs lent out) rather than free memory an operation can
            // complete into.
            std::mem::forget(std::mem::take(&mut self.overflow));
            return;
        }
        if let Some(layout) = self.layout {
            // SAFETY: base was allocated with exactly this layout and no slab is in the kernel.
            unsafe { dealloc(self.base, layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_falls_back_to_heap_slabs_and_reuse_works() {
        let mut pool = SlabPool::new(2).unwrap();
        let a = pool.take();
        let b = pool.take();
        assert!(pool.is_registered(&a) && pool.is_registered(&b));
        assert_eq!(pool.free_registered(), 0);
        let c = pool.take();
        assert!(!pool.is_registered(&c), "third slab comes from the heap");
        assert_eq!(pool.heap_lends(), 1);
        assert_eq!(pool.outstanding(), 3);
        let a_index = a.index();
        pool.release(a);
        let d = pool.take();
        assert_eq!(d.index(), a_index, "a released slab is lent again");
        for s in [b, c, d] {
            pool.release(s);
        }
        assert_eq!(pool.outstanding(), 0);
        assert_eq!(pool.free_registered(), 2);
    }

    #[test]
    fn bytes_are_distinct_per_slab() {
        let mut pool = SlabPool::new(2).unwrap();
        let mut a = pool.take();
        let mut b = pool.take();
        pool.bytes_mut(&mut a)[..3].copy_from_slice(b"abc");
        pool.bytes_mut(&mut b)[..3].copy_from_slice(b"xyz");
        assert_eq!(&pool.bytes(&a)[..3], b"abc");
        assert_eq!(&pool.bytes(&b)[..3], b"xyz");
        assert_eq!(pool.bytes(&a).len(), SLAB_SIZE);
        pool.release(a);
        pool.release(b);
    }

    #[test]
    #[should_panic(expected = "foreign pool")]
    fn a_slab_cannot_cross_pools() {
        let mut p1 = SlabPool::new(1).unwrap();
        let mut p2 = SlabPool::new(1).unwrap();
        let s = p1.take();
        let _keep = p2.take();
        p2.release(s);
    }

    #[test]
    fn released_heap_slabs_are_reused_then_trimmed_by_halves_once_unused() {
        let mut pool = SlabPool::new(0).unwrap();
        let slabs: Vec<Slab> = (0..100).map(|_| pool.take()).collect();
        for s in slabs {
            pool.release(s);
        }
        assert_eq!(pool.spares(), 100, "kept for the next lends");
        // Under load the spares are lent again: nothing is trimmed that was used.
        let again: Vec<Slab> = (0..100).map(|_| pool.take()).collect();
        assert_eq!(pool.spares(), 0);
        assert_eq!(pool.trim_spares(), 0);
        for s in again {
            pool.release(s);
        }
        // The load is gone: the first period after it keeps them (they were used), each
        // later one frees half of those left unused.
        assert_eq!(pool.trim_spares(), 0);
        assert_eq!(pool.trim_spares(), 50);
        assert_eq!(pool.trim_spares(), 25);
        let mut a = pool.take();
        pool.bytes_mut(&mut a)[..4].copy_from_slice(b"used");
        pool.release(a);
        assert_eq!(pool.trim_spares(), 12, "24 of 25 stayed unused");
        assert_eq!(pool.outstanding(), 0);
    }

    #[test]
    fn heap_slab_indices_are_recycled() {
        let mut pool = SlabPool::new(0).unwrap();
        let a = pool.take();
        let i = a.index();
        pool.release(a);
        let b = pool.take();
        assert_eq!(b.index(), i);
        pool.release(b);
    }

    /// Runs `wake_waiters` and returns whom it woke, in order.
    fn woken(pool: &mut SlabPool, wakes: &crate::ReadyQueue) -> Vec<crate::ConnId> {
        pool.wake_waiters(wakes);
        let mut woken = Vec::new();
        wakes.drain_into(&mut woken);
        woken
    }

    #[test]
    fn the_budget_holds_back_new_holders_then_everyone_and_wakes_waiters_as_slabs_return() {
        let mut pool = SlabPool::new(2).unwrap();
        pool.set_budget(2);
        let a = pool.take();
        assert!(!pool.must_wait(false));
        let b = pool.take();
        assert!(pool.at_budget() && pool.must_wait(false) && !pool.must_wait(true));
        let c = pool.take();
        let d = pool.take();
        assert!(pool.must_wait(true), "twice the budget stops everyone");
        let mut conns: crate::Conns<()> = crate::Conns::new();
        let (x, y) = (conns.insert(()), conns.insert(()));
        pool.wait_for_slab(x, false);
        pool.wait_for_slab(y, false);
        let wakes = crate::ReadyQueue::new();
        pool.wake_waiters(&wakes);
        assert!(wakes.is_empty(), "no room yet");
        for s in [d, c, b] {
            pool.release(s);
        }
        assert_eq!(woken(&mut pool, &wakes), vec![x], "room for one under the budget: the first waiter");
        assert_eq!(pool.waiters(), (1, 2));
        pool.release(a);
    }

    #[test]
    fn waiting_holders_are_woken_under_twice_the_budget_first_the_others_under_it() {
        let mut pool = SlabPool::new(2).unwrap();
        pool.set_budget(2);
        let mut held: Vec<Slab> = (0..4).map(|_| pool.take()).collect();
        let mut conns: crate::Conns<()> = crate::Conns::new();
        let (other, first, second) = (conns.insert(()), conns.insert(()), conns.insert(()));
        pool.wait_for_slab(other, false);
        pool.wait_for_slab(first, true);
        pool.wait_for_slab(second, true);
        let wakes = crate::ReadyQueue::new();
        pool.release(held.pop().unwrap());
        assert_eq!(woken(&mut pool, &wakes), vec![first], "room for one under twice the budget: the first holder");
        pool.release(held.pop().unwrap());
        assert_eq!(woken(&mut pool, &wakes), vec![second], "the holders still come first");
        pool.release(held.pop().unwrap());
        assert_eq!(woken(&mut pool, &wakes), vec![other], "under the budget: the others");
        assert_eq!(pool.waiters(), (0, 3));
        pool.release(held.pop().unwrap());
    }

    #[test]
    fn a_connection_that_waits_again_while_queued_keeps_its_one_place() {
        let mut pool = SlabPool::new(1).unwrap();
        pool.set_budget(1);
        let a = pool.take();
        let mut conns: crate::Conns<()> = crate::Conns::new();
        let (x, y) = (conns.insert(()), conns.insert(()));
        pool.wait_for_slab(x, false);
        pool.wait_for_slab(y, false);
        pool.wait_for_slab(x, false);
        assert_eq!(pool.waiters(), (2, 3), "x counted once; every wait counted");
        pool.release(a);
        let wakes = crate::ReadyQueue::new();
        assert_eq!(woken(&mut pool, &wakes), vec![x], "x keeps its first place");
        pool.wait_for_slab(x, false);
        assert_eq!(pool.waiters(), (2, 4), "woken, x may queue again");
    }
}
