//! One waker per stream, so that a session's run pumps only the streams with news
//! instead of all of them (which made every event cost O(streams): with 100 streams per
//! connection, most of a run went into polling streams with nothing to do).
//!
//! A stream has news when `h2` woke the waker it was last polled with (data, window,
//! response, reset for that stream), when its exchange changed their link
//! (`Link::session_news`, set where the exchange wakes the session), or when its last
//! pump moved something (it may have more). The waker marks the stream and wakes the
//! session's slot; spurious news only cost a pump.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Wake, Waker};

struct Flag {
    news: AtomicBool,
    slot: Waker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.news.store(true, Relaxed);
        self.slot.wake_by_ref();
    }
}

/// A stream's waker and its news flag (set to begin with: a new stream is pumped).
pub struct StreamNews {
    flag: Arc<Flag>,
    waker: Waker,
}

impl StreamNews {
    /// For a stream of the session whose slot `slot` wakes.
    pub fn new(slot: &Waker) -> StreamNews {
        let flag = Arc::new(Flag { news: AtomicBool::new(true), slot: slot.clone() });
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

    /// There is news (the stream moved and may move again).
    pub fn mark(&self) {
        self.flag.news.store(true, Relaxed);
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
        let n = StreamNews::new(&slot);
        assert!(n.take(), "a new stream has news");
        assert!(!n.take(), "taken once");
        n.waker().wake_by_ref();
        assert!(slot_woken.load(Relaxed), "the session's slot is woken");
        assert!(n.take());
        n.mark();
        assert!(n.take());
    }
}
