//! What the main thread tells the workers: drain now, and the config in force; and what
//! workers tell each other: their live connections, for `/debug/connections`.
//!
//! Workers look at this on their 100 ms tick, never on the hot path: an atomic flag for
//! draining, an atomic generation for the config, and a mutex taken only when the
//! generation moved (once per reload). The connections view is the same shape: an
//! admin connection asks (an atomic ask number), each worker sees the number move on its
//! tick and leaves a snapshot of its connections here, and the asking connection is woken
//! by its own worker's tick once every worker has answered that ask or a later one. No
//! worker ever waits for another; a mutex is taken only while views are asked for.

use crate::accesslog::LogSink;
use crate::config::Config;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uring::ConnId;

/// How long an asking admin connection waits for every worker before it answers with
/// what it has (a worker that stopped, or one too busy to tick).
pub const VIEW_PATIENCE: Duration = Duration::from_secs(1);

/// One worker's answer to a connections ask: one line per client connection.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The ask number it answers (every ask up to this one).
    pub ask: u64,
    /// One line per connection (at most a bounded number: see `total`).
    pub lines: Vec<String>,
    /// Client connections the worker had, listed or not.
    pub total: usize,
}

/// The connections view: each worker's latest snapshot and the admin connections waiting.
#[derive(Default)]
struct Views {
    /// By worker index.
    answers: Vec<Option<Arc<Snapshot>>>,
    waiters: Vec<Waiter>,
}

struct Waiter {
    worker: usize,
    id: ConnId,
    ask: u64,
    since: Instant,
}

impl Views {
    /// Every worker has answered `ask` (or a later one).
    fn complete(&self, ask: u64) -> bool {
        self.answers.iter().all(|a| a.as_ref().is_some_and(|s| s.ask >= ask))
    }
}

/// Shared control block.
pub struct Control {
    draining: AtomicBool,
    generation: AtomicU64,
    config: Mutex<Arc<Config>>,
    access: Mutex<Option<Arc<LogSink>>>,
    /// Workers started, and those done with their drain (or stopped). A drained worker
    /// keeps serving its admin listener until every worker is done: leaving early would
    /// close that listener and reset the scrapes queued on it.
    workers: AtomicUsize,
    finished: AtomicUsize,
    /// The latest connections ask (0: none yet).
    views_asked: AtomicU64,
    /// Admin connections waiting for a view (so idle ticks skip the mutex).
    views_waiting: AtomicUsize,
    views: Mutex<Views>,
    /// What the workers' proxy-authentication gates share (failures per address,
    /// verified credentials).
    auth: Arc<crate::auth::Shared>,
}

impl Control {
    pub fn new(config: Arc<Config>) -> Control {
        Control {
            draining: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            config: Mutex::new(config),
            access: Mutex::new(None),
            workers: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            views_asked: AtomicU64::new(0),
            views_waiting: AtomicUsize::new(0),
            views: Mutex::new(Views::default()),
            auth: Arc::default(),
        }
    }

    /// What the workers' authentication gates share.
    pub fn auth_shared(&self) -> Arc<crate::auth::Shared> {
        self.auth.clone()
    }

    /// How many workers will report `worker_finished`.
    pub fn expect_workers(&self, n: usize) {
        self.workers.store(n, Ordering::SeqCst);
    }

    /// One worker has nothing left to drain (called once per worker).
    pub fn worker_finished(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }

    /// Every worker is done: they may all leave.
    pub fn all_workers_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst) >= self.workers.load(Ordering::SeqCst)
    }

    /// The access log sink in force (None: logging off).
    pub fn access_log(&self) -> Option<Arc<LogSink>> {
        match self.access.lock() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the access log sink (takes effect with the next `publish`).
    pub fn set_access_log(&self, sink: Option<Arc<LogSink>>) {
        match self.access.lock() {
            Ok(mut a) => *a = sink,
            Err(p) => *p.into_inner() = sink,
        }
    }

    /// Asks every worker to stop accepting and finish what is in flight.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Puts a new config in force.
    pub fn publish(&self, config: Arc<Config>) {
        match self.config.lock() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Bumped by every `publish`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The config in force.
    pub fn current(&self) -> Arc<Config> {
        match self.config.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn views(&self) -> MutexGuard<'_, Views> {
        let mut v = self.views.lock().unwrap_or_else(|p| p.into_inner());
        let workers = self.workers.load(Ordering::SeqCst);
        if v.answers.len() < workers {
            v.answers.resize(workers, None);
        }
        v
    }

    /// The latest connections ask; a worker whose last answer is older answers again.
    pub fn connections_asked(&self) -> u64 {
        self.views_asked.load(Ordering::SeqCst)
    }

    /// A worker's snapshot for `snapshot.ask`.
    pub fn answer_connections(&self, worker: usize, snapshot: Snapshot) {
        let mut v = self.views();
        if v.answers.len() <= worker {
            v.answers.resize(worker + 1, None);
        }
        v.answers[worker] = Some(Arc::new(snapshot));
    }

    /// The admin connection `id` of `worker` wants the view. The first call asks (every
    /// worker answers on its next tick) and returns None; later calls return None until
    /// every worker has answered, or until [`VIEW_PATIENCE`] has passed, then each
    /// worker's snapshot (None: it did not answer in time) and forget the connection.
    pub fn poll_connections(&self, worker: usize, id: ConnId, now: Instant) -> Option<Vec<Option<Arc<Snapshot>>>> {
        let mut v = self.views();
        let Some(i) = v.waiters.iter().position(|w| w.worker == worker && w.id == id) else {
            let ask = self.views_asked.fetch_add(1, Ordering::SeqCst) + 1;
            v.waiters.push(Waiter { worker, id, ask, since: now });
            self.views_waiting.fetch_add(1, Ordering::SeqCst);
            return None;
        };
        let (ask, since) = (v.waiters[i].ask, v.waiters[i].since);
        if !v.complete(ask) && now.saturating_duration_since(since) < VIEW_PATIENCE {
            return None;
        }
        v.waiters.swap_remove(i);
        self.views_waiting.fetch_sub(1, Ordering::SeqCst);
        Some(v.answers.iter().map(|a| a.clone().filter(|s| s.ask >= ask)).collect())
    }

    /// The waiting admin connections of `worker` whose view is ready (or whose patience
    /// ran out), to be woken; waiters whose connection is gone (`alive` false) are dropped.
    pub fn views_to_wake(
        &self,
        worker: usize,
        now: Instant,
        mut alive: impl FnMut(ConnId) -> bool,
        out: &mut Vec<ConnId>,
    ) {
        if self.views_waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut v = self.views();
        let before = v.waiters.len();
        v.waiters.retain(|w| w.worker != worker || alive(w.id));
        self.views_waiting.fetch_sub(before - v.waiters.len(), Ordering::SeqCst);
        for w in v.waiters.iter().filter(|w| w.worker == worker) {
            if v.complete(w.ask) || now.saturating_duration_since(w.since) >= VIEW_PATIENCE {
                out.push(w.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bumps_the_generation_and_drain_sticks() {
        let c = Control::new(Arc::new(Config::default()));
        assert_eq!(c.generation(), 0);
        c.publish(Arc::new(Config { connect_ports: vec![8443], ..Config::default() }));
        assert_eq!(c.generation(), 1);
        assert_eq!(c.current().connect_ports, vec![8443]);
        assert!(!c.draining());
        c.start_drain();
        assert!(c.draining());
    }

    #[test]
    fn a_view_waits_for_every_worker_and_overlapping_asks_share_answers() {
        let c = Control::new(Arc::new(Config::default()));
        c.expect_workers(2);
        let mut ids: uring::Conns<()> = uring::Conns::new();
        let (a, b) = (ids.insert(()), ids.insert(()));
        let t0 = Instant::now();
        let snap = |ask, line: &str| Snapshot { ask, lines: vec![line.to_string()], total: 1 };
        // Admin connection `a` on worker 0 asks; `b` on worker 1 asks right after.
        assert!(c.poll_connections(0, a, t0).is_none());
        assert_eq!(c.connections_asked(), 1);
        assert!(c.poll_connections(1, b, t0).is_none());
        assert_eq!(c.connections_asked(), 2);
        // Worker 0 ticks and answers ask 2 (it covers ask 1 too); worker 1 not yet.
        c.answer_connections(0, snap(2, "w0"));
        let mut wake = Vec::new();
        c.views_to_wake(0, t0, |_| true, &mut wake);
        assert!(wake.is_empty(), "woken before every worker answered");
        assert!(c.poll_connections(0, a, t0).is_none());
        // Worker 1 answers: both waiters are ready, whichever ask they made.
        c.answer_connections(1, snap(2, "w1"));
        c.views_to_wake(0, t0, |_| true, &mut wake);
        c.views_to_wake(1, t0, |_| true, &mut wake);
        assert_eq!(wake, vec![a, b]);
        for (worker, id) in [(0, a), (1, b)] {
            let got = c.poll_connections(worker, id, t0).expect("ready");
            let lines: Vec<&str> = got.iter().flatten().flat_map(|s| s.lines.iter().map(|l| l.as_str())).collect();
            assert_eq!(lines, ["w0", "w1"]);
        }
        assert_eq!(c.views_waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_view_answers_without_a_silent_worker_and_forgets_closed_askers() {
        let c = Control::new(Arc::new(Config::default()));
        c.expect_workers(2);
        let mut ids: uring::Conns<()> = uring::Conns::new();
        let (a, gone) = (ids.insert(()), ids.insert(()));
        let t0 = Instant::now();
        assert!(c.poll_connections(0, a, t0).is_none());
        assert!(c.poll_connections(0, gone, t0).is_none());
        c.answer_connections(0, Snapshot { ask: 2, lines: vec!["w0".into()], total: 1 });
        // Worker 1 never answers; the asker that closed is dropped, the other waits its
        // patience out and gets worker 0's lines and a gap for worker 1.
        let mut wake = Vec::new();
        c.views_to_wake(0, t0, |id| id != gone, &mut wake);
        assert!(wake.is_empty());
        let late = t0 + VIEW_PATIENCE;
        c.views_to_wake(0, late, |id| id != gone, &mut wake);
        assert_eq!(wake, vec![a]);
        let got = c.poll_connections(0, a, late).expect("answers after its patience");
        assert!(got[0].is_some() && got[1].is_none(), "{got:?}");
        assert_eq!(c.views_waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn workers_leave_together() {
        let c = Control::new(Arc::new(Config::default()));
        c.expect_workers(2);
        c.worker_finished();
        assert!(!c.all_workers_finished(), "one of two workers done");
        c.worker_finished();
        assert!(c.all_workers_finished());
    }
}
