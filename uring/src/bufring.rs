//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): small buffers the kernel picks
//! from when a receive completes, so a connection can wait for its next request with a
//! read in flight and no buffer of its own. The proxy copies the bytes out and hands the
//! buffer back at once ([`BufRing::recycle`]).

use io_uring::types::BufRingEntry;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

/// The ring of provided buffers of one worker.
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    count: u16,
    size: u32,
    bgid: u16,
    tail: u16,
}

impl BufRing {
    /// Allocates `count` (a power of two) buffers of `size` bytes; register with
    /// [`crate::Ring::register_buf_ring`].
    pub(crate) fn new(count: u16, size: u32, bgid: u16) -> std::io::Result<BufRing> {
        if !count.is_power_of_two() || size == 0 {
            return Err(std::io::Error::other("buffer ring: count must be a power of two"));
        }
        let entries_layout = Layout::from_size_align(count as usize * std::mem::size_of::<BufRingEntry>(), 4096)
            .map_err(|_| std::io::Error::other("buffer ring too large"))?;
        let bufs_layout = Layout::from_size_align(count as usize * size as usize, 4096)
            .map_err(|_| std::io::Error::other("buffer ring too large"))?;
        // SAFETY: both layouts have a non-zero size and a valid alignment.
        let (entries, bufs) = unsafe { (alloc_zeroed(entries_layout) as *mut BufRingEntry, alloc_zeroed(bufs_layout)) };
        if entries.is_null() || bufs.is_null() {
            return Err(std::io::Error::other("cannot allocate the buffer ring"));
        }
        let mut ring = BufRing { entries, entries_layout, bufs, bufs_layout, count, size, bgid, tail: 0 };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    pub(crate) fn addr(&self) -> u64 {
        self.entries as u64
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    /// The buffer group id to name in receives.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Bytes per buffer.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn push(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: slot < count, inside the entries allocation; the kernel only reads
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(slot) };
        // SAFETY: bid < count, so the buffer lies inside the buffers allocation.
        entry.set_addr(unsafe { self.bufs.add(bid as usize * self.size as usize) } as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the ring's tail lives in the first entry (BufRingEntry::tail gives its
        // address); the kernel reads it concurrently, so it is written atomically.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which a completion just filled.
    pub fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size as usize, "buffer id or length out of range");
        // SAFETY: bid < count and len <= size (asserted): inside the allocation. The kernel
        // handed this buffer to a completion and will not touch it before it is recycled.
        unsafe { std::slice::from_raw_parts(self.bufs.add(bid as usize * self.size as usize), len) }
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
            self.publish();
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The owning Ring unregisters the ring before dropping it (and the kernel drops its
        // reference when the ring fd closes), so nothing reads these pages afterwards.
        // SAFETY: both pointers came from alloc_zeroed with exactly these layouts.
        unsafe {
            dealloc(self.entries as *mut u8, self.entries_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
}
