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
}
