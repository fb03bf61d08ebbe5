//! Links: the in-memory pipes between an HTTP/2 session and the exchanges of its streams.
//!
//! Every stream a client opens is proxied by an exchange of its own: a slot in the
//! worker's arena running the HTTP/1.1 state machine (`conn::stream`), whose client leg
//! is not a socket but one [`Link`] of this table. The session writes the stream's
//! request into the link as HTTP/1.1 bytes (`to_exchange`) and reads the exchange's
//! HTTP/1.1 response back (`to_session`), translating both ways; each side wakes the other
//! through the worker's ready queue when it put something in or took something out.
//!
//! Both directions are bounded ([`LINK_BYTES`]): the session pulls DATA from the client
//! (and releases flow-control window) only while `to_exchange` has room, and the exchange's
//! write of the response completes only once `to_session` has room again. A slow reader
//! on either side therefore slows the other instead of growing a buffer.
//!
//! A link is named by a [`LinkId`] (index and generation), so a stale id of a freed link
//! finds nothing instead of another stream's pipe. The table belongs to the worker; every
//! handler reaches it through `Ctx`.

use uring::ConnId;

/// Most bytes waiting in one direction of a link before its writer waits.
pub const LINK_BYTES: usize = 64 * 1024;

/// Names one link (index and generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkId {
    index: u32,
    generation: u32,
}

/// One stream's pipe.
#[derive(Debug, Default)]
pub struct Link {
    /// The session's slot.
    pub session: Option<ConnId>,
    /// The exchange's slot, once the worker inserted it.
    pub exchange: Option<ConnId>,
    /// HTTP/1.1 request bytes (head, then body) for the exchange.
    pub to_exchange: Vec<u8>,
    /// Bytes of `to_exchange` already taken.
    taken: usize,
    /// The request is complete: no byte will follow `to_exchange`.
    pub to_exchange_end: bool,
    /// HTTP/1.1 response bytes from the exchange, not translated yet.
    pub to_session: Vec<u8>,
    /// The exchange half-closed its side (a tunnel's origin finished).
    pub to_session_end: bool,
    /// The exchange's slot is gone (it closed): nothing more will come.
    pub exchange_gone: bool,
    /// The session stopped putting bytes into `to_exchange` for want of room: the exchange
    /// wakes it once it took some (and only then: a wake is a stream pump).
    pub session_waits_for_room: bool,
    /// The exchange's write into `to_session` waits for room: the session wakes it once it
    /// took some (and only then: a wake is a run of the exchange).
    pub exchange_waits_for_room: bool,
    /// The stream was reset or its session went away: the exchange stops.
    pub cancelled: bool,
    /// The session let go of the link ([`Link::let_go`]): nothing reads `to_session` any
    /// more.
    released: bool,
    /// Wakes the session for this link's stream once it has one (see `super::news`): what
    /// the exchange calls when it changed the link.
    pub stream_waker: Option<std::task::Waker>,
    /// With `cancelled`: the origin never processed the request (it was never sent, the
    /// origin refused the stream, or its GOAWAY's last stream is below it: RFC 9113
    /// §8.7), so it may be sent again whatever its method.
    pub unprocessed: bool,
    /// With `unprocessed`: the session handed the request back unsent because another
    /// session to the origin has room (see `OriginSession::hand_back_waiting`): sent again
    /// there, not counted as a retry.
    pub moved: bool,
    generation: u32,
    live: bool,
}

impl Link {
    /// Request bytes not taken yet.
    pub fn pending_for_exchange(&self) -> &[u8] {
        &self.to_exchange[self.taken..]
    }

    /// Room left for request bytes.
    pub fn room_for_exchange(&self) -> usize {
        LINK_BYTES.saturating_sub(self.to_exchange.len() - self.taken)
    }

    /// After a session's pump of this link: wakes the exchange when it has something new
    /// to read (`news`: bytes, an end, a cancel), or when bytes were taken out of
    /// `to_session` (`drained`) and its write waited for that room.
    pub fn wake_exchange(&mut self, news: bool, drained: bool, wake: &dyn Fn(ConnId)) {
        let writer_waited = drained && std::mem::take(&mut self.exchange_waits_for_room);
        if news || writer_waited {
            if let Some(x) = self.exchange {
                wake(x);
            }
        }
    }

    /// Marks `n` request bytes taken by the exchange; the vector is compacted once empty.
    pub fn taken_by_exchange(&mut self, n: usize) {
        self.taken = (self.taken + n).min(self.to_exchange.len());
        if self.taken == self.to_exchange.len() {
            self.to_exchange.clear();
            self.taken = 0;
        }
    }

    /// The exchange changed the link: wakes its stream (listed for the session's next
    /// run), or the session itself while it has not taken the link yet.
    pub fn wake_session(&self, wakes: &uring::ReadyQueue) {
        match (&self.stream_waker, self.session) {
            (Some(w), _) => w.wake_by_ref(),
            (None, Some(s)) => wakes.wake(s),
            (None, None) => {}
        }
    }

    /// Room left for response bytes.
    pub fn room_for_session(&self) -> usize {
        LINK_BYTES.saturating_sub(self.to_session.len())
    }

    /// The session lets go of the link (its stream is over, or it is going away): it
    /// neither reads nor wakes through it any more.
    pub fn let_go(&mut self) {
        self.session = None;
        self.stream_waker = None;
        self.released = true;
    }

    /// Whether the exchange's write into `to_session` completes now: there is room, or
    /// nobody reads the link any more (its bytes are dropped, so a stream the session gave
    /// up on does not hold its exchange until the idle timeout). Otherwise the exchange
    /// waits, and the session wakes it once it took bytes out.
    pub fn exchange_write_completes(&mut self) -> bool {
        if self.released {
            self.to_session.clear();
            self.exchange_waits_for_room = false;
            return true;
        }
        let room = self.room_for_session() > 0;
        self.exchange_waits_for_room = !room;
        room
    }
}

/// Buffers of freed links kept for the next ones: at most this many bytes of capacity
/// in all (a burst's buffers go back to the allocator past it) ...
const SPARE_BYTES: usize = 1 << 20;
/// ... each of at most this capacity (a head and a small body; larger ones are freed).
const SPARE_CAPACITY: usize = 16 * 1024;

/// A worker's links.
#[derive(Debug, Default)]
pub struct Links {
    slots: Vec<Link>,
    free: Vec<u32>,
    live: usize,
    /// Emptied buffers of freed links, handed to new ones: a stream's response head and a
    /// small body take a kilobyte or more, past the allocator's per-thread cache, so
    /// reusing them saves two of the costlier allocations per stream.
    spares: Vec<Vec<u8>>,
    /// Their capacity in all.
    spare_bytes: usize,
}

impl Links {
    /// A new link whose session is `session`.
    pub fn open(&mut self, session: ConnId) -> LinkId {
        self.open_with(Some(session))
    }

    fn open_with(&mut self, session: Option<ConnId>) -> LinkId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Link::default());
                (self.slots.len() - 1) as u32
            }
        };
        let (to_exchange, to_session) = (self.spare(), self.spare());
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation.wrapping_add(1);
        *slot = Link { session, generation, live: true, to_exchange, to_session, ..Link::default() };
        self.live += 1;
        LinkId { index, generation }
    }

    /// A new link whose session slot does not exist yet (it is set when the worker puts
    /// the session in its slot).
    pub fn open_unowned(&mut self) -> LinkId {
        self.open_with(None)
    }

    /// The link `id` names, unless it was freed.
    pub fn get(&mut self, id: LinkId) -> Option<&mut Link> {
        self.slots.get_mut(id.index as usize).filter(|l| l.live && l.generation == id.generation)
    }

    /// Frees the link (both sides are done with it); its buffers are kept as spares (a
    /// few, small ones) or go with it.
    pub fn free(&mut self, id: LinkId) {
        let Some(l) = self.get(id) else { return };
        let generation = l.generation;
        let old = std::mem::replace(l, Link { generation, ..Link::default() });
        self.free.push(id.index);
        self.live -= 1;
        for mut buf in [old.to_exchange, old.to_session] {
            let size = buf.capacity();
            if size > 0 && size <= SPARE_CAPACITY && self.spare_bytes + size <= SPARE_BYTES {
                buf.clear();
                self.spare_bytes += size;
                self.spares.push(buf);
            }
        }
    }

    /// A spare buffer for a new link, or an empty one.
    fn spare(&mut self) -> Vec<u8> {
        let buf = self.spares.pop().unwrap_or_default();
        self.spare_bytes -= buf.capacity();
        buf
    }

    /// Links open now.
    pub fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (ConnId, ConnId) {
        let mut conns: uring::Conns<()> = uring::Conns::new();
        (conns.insert(()), conns.insert(()))
    }

    #[test]
    fn a_full_link_holds_the_exchange_s_write_until_the_session_takes_bytes_or_lets_go() {
        let (session, _) = ids();
        let mut links = Links::default();
        let id = links.open(session);
        let l = links.get(id).unwrap();
        l.to_session.resize(LINK_BYTES, b'x');
        assert!(!l.exchange_write_completes(), "a full link read by its session waits");
        assert!(l.exchange_waits_for_room, "and the session is asked to wake the exchange");
        l.to_session.truncate(LINK_BYTES - 1);
        assert!(l.exchange_write_completes(), "one byte taken out is room");
        l.to_session.resize(LINK_BYTES, b'x');
        l.let_go();
        assert!(l.exchange_write_completes(), "nobody reads it any more: the write completes");
        assert!(l.to_session.is_empty(), "and its bytes are dropped, not kept");
        assert_eq!((l.session, l.stream_waker.is_none()), (None, true));
    }

    #[test]
    fn a_freed_link_is_not_found_by_its_old_id_even_when_its_index_is_reused() {
        let (one, two) = ids();
        let mut links = Links::default();
        let a = links.open(one);
        links.get(a).unwrap().to_exchange.extend_from_slice(b"GET / HTTP/1.1\r\n");
        links.free(a);
        assert!(links.get(a).is_none());
        let b = links.open(two);
        assert!(links.get(a).is_none(), "the stale id must not reach the new link");
        let l = links.get(b).unwrap();
        assert!(l.to_exchange.is_empty(), "a reused link starts empty");
        assert_eq!(l.session, Some(two));
        assert_eq!(links.live(), 1);
    }

    #[test]
    fn a_freed_link_s_small_buffers_serve_the_next_links_empty_and_big_ones_are_freed() {
        let (one, two) = ids();
        let mut links = Links::default();
        let a = links.open(one);
        let l = links.get(a).unwrap();
        l.to_exchange.extend_from_slice(&[b'q'; 700]);
        l.to_session.resize(SPARE_CAPACITY + 1, b'r');
        let kept = l.to_exchange.as_ptr();
        links.free(a);
        let b = links.open(two);
        let l = links.get(b).unwrap();
        // Breaks when a freed link's buffers are dropped (one allocation more per stream)
        // or handed on with their old bytes.
        assert_eq!(l.to_exchange.as_ptr(), kept, "the small buffer is reused");
        assert!(l.to_exchange.is_empty() && l.to_exchange.capacity() >= 700);
        assert_eq!(l.to_session.capacity(), 0, "a buffer past the spare size is not kept");
        // A burst's buffers: as many as fit the spares' budget are kept.
        let burst: Vec<LinkId> = (0..2 * SPARE_BYTES / SPARE_CAPACITY).map(|_| links.open(one)).collect();
        for &id in &burst {
            links.get(id).unwrap().to_session.reserve_exact(SPARE_CAPACITY);
        }
        for id in burst {
            links.free(id);
        }
        let kept: usize = links.spares.iter().map(Vec::capacity).sum();
        assert_eq!(kept, links.spare_bytes);
        assert!(kept <= SPARE_BYTES && kept > SPARE_BYTES - SPARE_CAPACITY, "{kept} bytes kept");
    }

    #[test]
    fn request_bytes_are_taken_in_order_and_room_comes_back() {
        let mut links = Links::default();
        let a = links.open(ids().0);
        let l = links.get(a).unwrap();
        l.to_exchange.extend_from_slice(b"abcdef");
        assert_eq!(l.room_for_exchange(), LINK_BYTES - 6);
        l.taken_by_exchange(2);
        assert_eq!(l.pending_for_exchange(), b"cdef");
        l.taken_by_exchange(4);
        assert!(l.pending_for_exchange().is_empty());
        assert_eq!(l.room_for_exchange(), LINK_BYTES);
    }
}
