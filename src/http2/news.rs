//! One waker per stream, and a list of the streams with news, so that a session's run
//! pumps only those streams instead of all of them (with 100 streams per client connection
//! and hundreds per origin session, looking at every stream on every run made each event
//! cost O(streams)).
//!
//! A stream has news when `h2` woke the waker it was last polled with (data, window,
//! response, reset for that stream), when its exchange changed their link (the exchange
//! wakes the link's `stream_waker`, which is this waker), or when its last pump moved
//! something (it may have more). The waker marks the stream, puts its key on the
//! session's [`ReadyStreams`] (once until the session takes it) and wakes the session's
//! slot; spurious news (a key reused by a newer stream) only cost a pump.
//!
//! [`StreamTable`] keeps a session's streams with their news, for both kinds of session
//! (a client's, `super::session`, and an origin's, `super::origin`).

use super::links::{LinkId, Links};
use slab::Slab;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

/// The keys of a session's streams with news, in the order the news came.
#[derive(Debug, Clone, Default)]
pub struct ReadyStreams(Arc<Mutex<Vec<usize>>>);

impl ReadyStreams {
    fn push(&self, key: usize) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(key);
    }

    /// Moves the keys with news into `into` (empty), leaving the list empty.
    pub fn take(&self, into: &mut Vec<usize>) {
        std::mem::swap(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner), into);
    }
}

struct Flag {
    news: AtomicBool,
    key: usize,
    ready: ReadyStreams,
    slot: Waker,
}

impl Flag {
    fn mark(&self) {
        if !self.news.swap(true, Relaxed) {
            self.ready.push(self.key);
        }
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark();
        self.slot.wake_by_ref();
    }
}

/// A stream's waker and its news flag (set to begin with: a new stream is pumped).
pub struct StreamNews {
    flag: Arc<Flag>,
    waker: Waker,
}

impl StreamNews {
    /// For the stream `key` of the session whose slot `slot` wakes and whose streams
    /// with news are listed in `ready` (where the new stream's key goes at once).
    pub fn new(slot: &Waker, ready: &ReadyStreams, key: usize) -> StreamNews {
        let flag = Arc::new(Flag { news: AtomicBool::new(true), key, ready: ready.clone(), slot: slot.clone() });
        ready.push(key);
        StreamNews { waker: Waker::from(flag.clone()), flag }
    }

    /// The waker to poll the stream's `h2` handles with.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// True (once) when there is news.
    pub fn take(&self) -> bool {
        self.flag.news.swap(false, Relaxed)
    }

    /// There is news (the stream moved and may move again): listed for the next round.
    pub fn mark(&self) {
        self.flag.mark();
    }
}

/// A session's streams `S`, by key, each with its [`StreamNews`], and the keys of those
/// with news.
pub struct StreamTable<S> {
    streams: Slab<(StreamNews, S)>,
    ready: ReadyStreams,
}

impl<S> Default for StreamTable<S> {
    fn default() -> Self {
        StreamTable { streams: Slab::new(), ready: ReadyStreams::default() }
    }
}

impl<S> StreamTable<S> {
    /// Streams in the table.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Adds `stream`, proxied through `link`, with news (it is pumped on the next round);
    /// its waker wakes `slot` (the session's), and the link's exchange wakes it too.
    pub fn insert(&mut self, slot: &Waker, links: &mut Links, link: LinkId, stream: S) -> usize {
        let entry = self.streams.vacant_entry();
        let key = entry.key();
        let news = StreamNews::new(slot, &self.ready, key);
        if let Some(l) = links.get(link) {
            l.stream_waker = Some(news.waker().clone());
        }
        entry.insert((news, stream));
        key
    }

    pub fn get(&self, key: usize) -> Option<&S> {
        self.streams.get(key).map(|(_, s)| s)
    }

    /// The stream `key` and its news.
    pub fn get_mut(&mut self, key: usize) -> Option<(&StreamNews, &mut S)> {
        self.streams.get_mut(key).map(|(news, s)| (&*news, s))
    }

    /// Takes the stream `key` out (it must be in the table).
    pub fn remove(&mut self, key: usize) -> S {
        self.streams.remove(key).1
    }

    /// Takes every stream out.
    pub fn drain(&mut self) -> impl Iterator<Item = S> + '_ {
        self.streams.drain().map(|(_, s)| s)
    }

    /// The keys listed with news since the last call, into `into` (empty). A key may name
    /// a stream gone since (or a newer one in its place): [`StreamNews::take`] tells.
    pub fn take_ready(&self, into: &mut Vec<usize>) {
        self.ready.take(into);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_marks_the_stream_once_and_wakes_the_slot() {
        let slot_woken = Arc::new(AtomicBool::new(false));
        struct Slot(Arc<AtomicBool>);
        impl Wake for Slot {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Relaxed);
            }
        }
        let slot = Waker::from(Arc::new(Slot(slot_woken.clone())));
        let ready = ReadyStreams::default();
        let mut keys = Vec::new();
        let n = StreamNews::new(&slot, &ready, 7);
        ready.take(&mut keys);
        assert_eq!(keys, [7], "a new stream is listed");
        assert!(n.take(), "a new stream has news");
        assert!(!n.take(), "taken once");
        n.waker().wake_by_ref();
        n.waker().wake_by_ref();
        assert!(slot_woken.load(Relaxed), "the session's slot is woken");
        keys.clear();
        ready.take(&mut keys);
        assert_eq!(keys, [7], "listed once until taken");
        assert!(n.take());
        n.mark();
        assert!(n.take());
    }

    #[test]
    fn a_stream_in_the_table_is_listed_and_its_link_wakes_it() {
        let slot = Waker::noop().clone();
        let mut links = Links::default();
        let link = links.open_unowned();
        let mut table = StreamTable::default();
        let key = table.insert(&slot, &mut links, link, "stream");
        let mut keys = Vec::new();
        table.take_ready(&mut keys);
        assert_eq!(keys, [key], "a new stream is listed");
        let (news, _) = table.get_mut(key).unwrap();
        assert!(news.take());
        links.get(link).unwrap().stream_waker.as_ref().expect("the link wakes its stream").wake_by_ref();
        keys.clear();
        table.take_ready(&mut keys);
        assert_eq!(keys, [key], "listed again by the link's wake");
        assert_eq!(table.remove(key), "stream");
        assert!(table.is_empty());
    }
}
