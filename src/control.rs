//! What the main thread tells the workers: drain now, and the config in force.
//!
//! Workers look at this on their 100 ms tick, never on the hot path: an atomic flag for
//! draining, an atomic generation for the config, and a mutex taken only when the
//! generation moved (once per reload).

use crate::accesslog::LogSink;
use crate::config::Config;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
        }
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
    fn workers_leave_together() {
        let c = Control::new(Arc::new(Config::default()));
        c.expect_workers(2);
        c.worker_finished();
        assert!(!c.all_workers_finished(), "one of two workers done");
        c.worker_finished();
        assert!(c.all_workers_finished());
    }
}
