//! A connection's view of one slab: which bytes are valid, and whether the slab is lent
//! to the kernel right now. A `Buf` with no slab and no data costs nothing.

use super::leg::Side;
use uring::{Slab, SlabPool, SLAB_SIZE};

/// Room kept in front of the data so a rewritten head can be placed right before the
/// body bytes it precedes and both go out in one write.
pub const HEADROOM: usize = 2048;

/// Which buffer of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufId {
    /// Plaintext read from a leg (`input`).
    In(Side),
    /// A response the proxy makes itself.
    Out,
    /// Ciphertext toward a leg (its TLS session's `raw_out`).
    RawOut(Side),
}

/// Valid bytes are `start..end` of the slab.
#[derive(Debug, Default)]
pub struct Buf {
    slab: Option<Slab>,
    /// True while the slab is in an operation (it comes back through `give_back`).
    lent: bool,
    pub start: usize,
    pub end: usize,
}

impl Buf {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True while the slab is in the kernel.
    pub fn is_lent(&self) -> bool {
        self.lent
    }

    pub fn has_slab(&self) -> bool {
        self.slab.is_some()
    }

    /// True while a slab is this buffer's, in hand or lent to an operation in flight.
    pub fn holds_slab(&self) -> bool {
        self.slab.is_some() || self.lent
    }

    /// Makes room for a read at the end and lends the slab: returns it with the range to read into.
    pub fn prepare_read(&mut self, pool: &mut SlabPool) -> (Slab, usize, usize) {
        if self.slab.is_none() {
            self.slab = Some(pool.take());
            self.start = HEADROOM;
            self.end = HEADROOM;
        }
        if self.start == self.end {
            self.start = HEADROOM;
            self.end = HEADROOM;
        } else if self.end == SLAB_SIZE && self.start > HEADROOM {
            self.compact(pool);
        }
        let slab = self.lend();
        let room = SLAB_SIZE - self.end;
        (slab, self.end, room)
    }

    /// Moves the valid bytes back to `HEADROOM`.
    pub fn compact(&mut self, pool: &mut SlabPool) {
        let (start, end) = (self.start, self.end);
        if let Some(slab) = self.slab.as_mut() {
            pool.bytes_mut(slab).copy_within(start..end, HEADROOM);
            self.start = HEADROOM;
            self.end = HEADROOM + (end - start);
        }
    }

    /// Takes a slab if there is none and makes the room after the data as large as it
    /// can be; returns that room (None while the slab is lent).
    pub fn room_mut<'a>(&'a mut self, pool: &'a mut SlabPool) -> Option<&'a mut [u8]> {
        if self.lent {
            return None;
        }
        if self.slab.is_none() {
            self.slab = Some(pool.take());
            self.start = HEADROOM;
            self.end = HEADROOM;
        } else if self.start == self.end {
            self.start = HEADROOM;
            self.end = HEADROOM;
        } else if self.end == SLAB_SIZE && self.start > HEADROOM {
            self.compact(pool);
        }
        let end = self.end;
        self.slab.as_mut().map(|s| &mut pool.bytes_mut(s)[end..])
    }

    /// Appends `bytes` after the valid ones without moving anything (bytes before `start`
    /// stay where they are: an exchange may send them again), taking a slab when there is
    /// none. Returns how many fit (none while the slab is lent).
    pub fn append(&mut self, pool: &mut SlabPool, bytes: &[u8]) -> usize {
        if self.lent {
            return 0;
        }
        if self.slab.is_none() {
            self.slab = Some(pool.take());
            self.start = HEADROOM;
            self.end = HEADROOM;
        }
        let end = self.end;
        let n = bytes.len().min(SLAB_SIZE - end);
        if let Some(s) = self.slab.as_mut() {
            pool.bytes_mut(s)[end..end + n].copy_from_slice(&bytes[..n]);
        }
        self.end += n;
        n
    }

    /// Makes sure a slab is held and empties it (for output buffers).
    pub fn clear_or_take(&mut self, pool: &mut SlabPool) {
        if self.lent {
            return;
        }
        if self.slab.is_none() {
            self.slab = Some(pool.take());
        }
        self.start = HEADROOM;
        self.end = HEADROOM;
    }

    /// Room left after the data.
    pub fn room(&self) -> usize {
        if self.slab.is_none() {
            SLAB_SIZE - HEADROOM
        } else {
            SLAB_SIZE - self.end
        }
    }

    /// Takes the slab out for an operation.
    pub fn lend(&mut self) -> Slab {
        debug_assert!(!self.lent);
        self.lent = true;
        match self.slab.take() {
            Some(s) => s,
            None => unreachable!("lend() is only called on a buffer holding its slab"),
        }
    }

    /// The slab comes back from the kernel.
    pub fn give_back(&mut self, slab: Slab) {
        debug_assert!(self.lent && self.slab.is_none());
        self.lent = false;
        self.slab = Some(slab);
    }

    /// A read put `n` bytes at the end.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(SLAB_SIZE);
    }

    /// The valid bytes.
    pub fn data<'a>(&'a self, pool: &'a SlabPool) -> &'a [u8] {
        match &self.slab {
            Some(s) => &pool.bytes(s)[self.start..self.end],
            None => &[],
        }
    }

    /// The whole slab, read-only (for bytes before `start` that are still valid).
    pub fn slab_bytes<'a>(&'a self, pool: &'a SlabPool) -> Option<&'a [u8]> {
        self.slab.as_ref().map(|s| pool.bytes(s))
    }

    /// The whole slab, writable (for placing a rewritten head in the headroom).
    pub fn slab_mut<'a>(&'a mut self, pool: &'a SlabPool) -> Option<&'a mut [u8]> {
        self.slab.as_mut().map(|s| pool.bytes_mut(s))
    }

    /// Writes `head` so that it ends at slab offset `end`, right before the body bytes
    /// that follow it (over the original head and into the headroom): head and body then
    /// leave in one write. Returns where it starts; None when it does not fit.
    pub fn place_before(&mut self, pool: &SlabPool, head: &[u8], end: usize) -> Option<usize> {
        let at = end.checked_sub(head.len())?;
        let bytes = self.slab_mut(pool)?;
        bytes[at..end].copy_from_slice(head);
        Some(at)
    }

    /// Replaces the contents with `bytes` (at offset 0); returns how many fit.
    pub fn fill(&mut self, pool: &mut SlabPool, bytes: &[u8]) -> usize {
        if self.slab.is_none() {
            self.slab = Some(pool.take());
        }
        let n = bytes.len().min(SLAB_SIZE);
        if let Some(s) = self.slab.as_mut() {
            pool.bytes_mut(s)[..n].copy_from_slice(&bytes[..n]);
        }
        self.start = 0;
        self.end = n;
        n
    }

    /// Replaces the contents with `bytes` placed at `HEADROOM` (at 0 when they do not fit
    /// there), as a read would have left them; returns where they start.
    pub fn restore(&mut self, pool: &mut SlabPool, bytes: &[u8]) -> usize {
        if self.slab.is_none() {
            self.slab = Some(pool.take());
        }
        let at = if bytes.len() <= SLAB_SIZE - HEADROOM { HEADROOM } else { 0 };
        let n = bytes.len().min(SLAB_SIZE - at);
        if let Some(s) = self.slab.as_mut() {
            pool.bytes_mut(s)[at..at + n].copy_from_slice(&bytes[..n]);
        }
        self.start = at;
        self.end = at + n;
        at
    }

    /// Drops the bytes; keeps the slab.
    pub fn clear(&mut self) {
        self.start = HEADROOM;
        self.end = HEADROOM;
    }

    /// Returns the slab to the pool when it holds no data and is not lent.
    pub fn release_if_empty(&mut self, pool: &mut SlabPool) {
        if self.is_empty() && !self.lent {
            if let Some(s) = self.slab.take() {
                pool.release(s);
            }
            self.start = 0;
            self.end = 0;
        }
    }

    /// Returns the slab to the pool whatever it holds (unless lent: the completion
    /// path of a closing connection returns those).
    pub fn release(&mut self, pool: &mut SlabPool) {
        if let Some(s) = self.slab.take() {
            pool.release(s);
        }
        self.start = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_bytes_sit_after_the_headroom_a_rewritten_head_needs() {
        let mut pool = SlabPool::new(2).unwrap();
        let mut buf = Buf::default();
        assert_eq!(buf.restore(&mut pool, b"GET / HTTP/1.1\r\n\r\n"), HEADROOM);
        assert_eq!((buf.start, buf.data(&pool)), (HEADROOM, &b"GET / HTTP/1.1\r\n\r\n"[..]));
        // Bytes that would not fit after the headroom start at 0, all of them kept.
        let big = vec![7u8; SLAB_SIZE - HEADROOM + 1];
        assert_eq!(buf.restore(&mut pool, &big), 0);
        assert_eq!(buf.data(&pool), &big[..]);
        buf.release(&mut pool);
        assert_eq!(pool.outstanding(), 0);
    }
}
