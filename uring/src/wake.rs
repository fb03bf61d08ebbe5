//! Wake-ups between slots: the worker's ready queue, and a `std::task::Waker` per slot.
//!
//! A handler that changes something another slot waits for (an origin connection came
//! back to the pool, an HTTP/2 session has a frame for one of its streams, a name was
//! resolved) calls [`ReadyQueue::wake`] with that slot's [`ConnId`]. The worker drains the
//! queue after each completion batch and runs each woken slot's state machine once more.
//!
//! Wakes are hints, not messages: a slot woken again before the worker drained the queue is
//! queued once (its one run sees everything that woke it: a session whose hundred streams
//! each got a response runs once, not a hundred times), and an id whose slot was freed or
//! is closing is skipped by `Conns::get_mut`. Handlers must therefore re-check their own
//! state when run; nothing is lost by a spurious wake, and nothing relies on a wake
//! arriving exactly once. A wake after the drain queues the slot again, for the next round.
//!
//! [`ReadyQueue::waker`] makes a `Waker` for futures that want one (the `h2` crate's
//! connection and streams), so they are polled by the worker with no async runtime: its
//! `wake` pushes the slot's id on this queue. Waking does not allocate (the queue's vector
//! keeps its capacity); making a waker allocates once, so a connection keeps its waker.
//! A waker is `Send` like every `Waker`: woken from another thread, the id is queued all
//! the same and the worker runs it after its next completion (at the latest on its tick).
//! Asking whether anything is queued takes no lock (one atomic load per turn).

use crate::conns::ConnId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// A worker's queue of slots to run again. Cloning shares the queue.
#[derive(Clone, Default)]
pub struct ReadyQueue {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    ids: Mutex<Queued>,
    /// Set (under the lock) when an id is queued, cleared when the queue is drained: the
    /// worker asks "anything queued?" on every turn without taking the lock.
    queued: AtomicBool,
}

/// The ids to run, each once.
#[derive(Default)]
struct Queued {
    ids: Vec<ConnId>,
    /// By slot index: the generation of the id queued for it (0: none; an id whose own
    /// generation is 0, once in 2^32 reuses of a slot, is queued every time it is woken).
    generation: Vec<u32>,
}

impl Queued {
    fn push(&mut self, id: ConnId) {
        let (index, gen) = (id.index() as usize, id.generation());
        if index >= self.generation.len() {
            self.generation.resize(index + 1, 0);
        }
        if gen != 0 && self.generation[index] == gen {
            return;
        }
        // Listed before marked: a mark always has its id in the list.
        self.ids.push(id);
        self.generation[index] = gen;
    }

    fn drain_into(&mut self, out: &mut Vec<ConnId>) {
        for id in &self.ids {
            self.generation[id.index() as usize] = 0;
        }
        out.append(&mut self.ids);
    }
}

impl std::fmt::Debug for ReadyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyQueue").field("queued", &self.len()).finish()
    }
}

impl ReadyQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the worker to run slot `id` again after the current batch.
    pub fn wake(&self, id: ConnId) {
        let mut ids = self.lock();
        ids.push(id);
        self.shared.queued.store(true, Ordering::Release);
    }

    /// Slots waiting to run.
    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    /// True when nothing is queued (no lock taken).
    pub fn is_empty(&self) -> bool {
        !self.shared.queued.load(Ordering::Acquire)
    }

    /// Moves the queued ids into `out` (in the order they were woken), leaving the queue
    /// empty; wakes that happen while `out` is processed go to the next drain.
    pub fn drain_into(&self, out: &mut Vec<ConnId>) {
        if self.is_empty() {
            return;
        }
        let mut queued = self.lock();
        queued.drain_into(out);
        // Under the lock: a wake from another thread between the drain and this store
        // would otherwise be left queued with the flag saying there is nothing.
        self.shared.queued.store(false, Ordering::Release);
    }

    /// A `Waker` whose `wake` queues slot `id` here.
    pub fn waker(&self, id: ConnId) -> Waker {
        Waker::from(Arc::new(SlotWaker { queue: self.clone(), id }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // Nothing that can panic runs under the lock between marking an id and listing it
        // (or listing and unmarking), so a poisoned queue is still a consistent one.
        self.shared.ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct SlotWaker {
    queue: ReadyQueue,
    id: ConnId,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.queue.wake(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.wake(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conns;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[test]
    fn wakes_are_drained_in_order_and_the_queue_empties() {
        let mut conns: Conns<u8> = Conns::new();
        let (a, b) = (conns.insert(1), conns.insert(2));
        let q = ReadyQueue::new();
        q.wake(b);
        q.wake(a);
        q.wake(b);
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out, vec![b, a], "a slot woken again before the drain is queued once");
        assert!(q.is_empty());
        out.clear();
        q.drain_into(&mut out);
        assert!(out.is_empty());
        q.wake(a);
        q.drain_into(&mut out);
        assert_eq!(out, vec![a], "after the drain a wake queues the slot again");
        // A newer slot in a freed slot's place has an id of its own: queued beside the
        // stale one (which the worker then skips).
        assert_eq!(conns.close(a), Some(1));
        let newer = conns.insert(3);
        assert_eq!(newer.index(), a.index());
        out.clear();
        q.wake(a);
        q.wake(newer);
        q.wake(newer);
        q.drain_into(&mut out);
        assert_eq!(out, vec![a, newer]);
    }

    /// A future that is pending until its flag is set, like an h2 stream waiting for a
    /// frame: polled with the slot's waker, it puts the slot on the queue when woken.
    struct Flag(Arc<Mutex<(bool, Option<Waker>)>>);

    impl Future for Flag {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut s = self.0.lock().unwrap();
            if s.0 {
                return Poll::Ready(());
            }
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_future_polled_with_a_slot_waker_queues_that_slot_when_woken() {
        let mut conns: Conns<()> = Conns::new();
        let id = conns.insert(());
        let q = ReadyQueue::new();
        let waker = q.waker(id);
        let state = Arc::new(Mutex::new((false, None::<Waker>)));
        let mut fut = Flag(state.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Pending);
        assert!(q.is_empty(), "polling alone wakes nothing");
        // Another party makes progress and wakes the stored waker (a clone of ours).
        let stored = {
            let mut s = state.lock().unwrap();
            s.0 = true;
            s.1.take().unwrap()
        };
        stored.wake();
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out, vec![id]);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_waker_may_wake_from_another_thread() {
        let mut conns: Conns<()> = Conns::new();
        let id = conns.insert(());
        let q = ReadyQueue::new();
        let w = q.waker(id);
        std::thread::spawn(move || w.wake_by_ref()).join().unwrap();
        assert_eq!(q.len(), 1);
    }
}
