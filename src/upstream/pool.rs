//! The per-worker pool of idle upstream connections, keyed by (host, port, TLS).
//!
//! Per key at most `max_idle_per_host` (the oldest is evicted), per worker at most
//! `max_idle_total`. A connection is peeked before reuse: one the origin closed (or that
//! has stray bytes waiting) is dropped, never handed to a request. Idle ones older than
//! `idle_timeout` are swept on the worker's tick.

use crate::config::PoolConfig;
use std::collections::{HashMap, VecDeque};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Instant;
use uring::sys::{peek, Peek};

/// Which origin a pooled connection talks to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

struct Idle {
    conn: Pooled,
    since: Instant,
}

/// A parked origin connection: the socket and, for TLS origins, its session (whose
/// buffers hold no slab while parked).
pub struct Pooled {
    pub sock: TcpStream,
    pub tls: Option<Box<crate::tls::TlsLeg>>,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub stale_dropped: u64,
}

/// A worker's idle upstream connections.
pub struct UpstreamPool {
    idle: HashMap<PoolKey, VecDeque<Idle>>,
    total: usize,
    cfg: PoolConfig,
    pub stats: PoolStats,
}

impl UpstreamPool {
    pub fn new(cfg: PoolConfig) -> Self {
        UpstreamPool { idle: HashMap::new(), total: 0, cfg, stats: PoolStats::default() }
    }

    /// Applies reloaded caps (existing idle connections are trimmed lazily).
    pub fn set_config(&mut self, cfg: PoolConfig) {
        self.cfg = cfg;
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The most recently parked live connection for `key`, if any. A connection parked
    /// for more than a moment, or wanted for a request that cannot be retried, is peeked
    /// first (one syscall) so one the origin closed is never used; a request that can be
    /// retried skips that on a connection parked just now (the retry covers the race).
    pub fn take(&mut self, key: &PoolKey, now: Instant, retryable: bool) -> Option<Pooled> {
        let list = self.idle.get_mut(key)?;
        while let Some(idle) = list.pop_back() {
            self.total -= 1;
            let age = now.saturating_duration_since(idle.since);
            let fresh = age < self.cfg.idle_timeout;
            let trust = retryable && age < std::time::Duration::from_millis(250);
            if fresh && (trust || peek(idle.conn.sock.as_fd()) == Peek::Quiet) {
                self.stats.hits += 1;
                return Some(idle.conn);
            }
            self.stats.stale_dropped += 1;
        }
        None
    }

    /// Records a miss (a request that found nothing to reuse).
    pub fn note_miss(&mut self) {
        self.stats.misses += 1;
    }

    /// Parks a connection that just finished a response cleanly.
    pub fn put(&mut self, key: PoolKey, conn: Pooled, now: Instant) {
        if self.cfg.max_idle_per_host == 0 || self.cfg.max_idle_total == 0 {
            return;
        }
        if self.total >= self.cfg.max_idle_total {
            self.evict_oldest();
        }
        let list = self.idle.entry(key).or_default();
        if list.len() >= self.cfg.max_idle_per_host {
            list.pop_front();
            self.total -= 1;
            self.stats.evictions += 1;
        }
        list.push_back(Idle { conn, since: now });
        self.total += 1;
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .idle
            .iter()
            .filter_map(|(k, l)| l.front().map(|i| (i.since, k.clone())))
            .min_by_key(|(since, _)| *since);
        if let Some((_, key)) = oldest {
            if let Some(list) = self.idle.get_mut(&key) {
                list.pop_front();
                self.total -= 1;
                self.stats.evictions += 1;
            }
        }
    }

    /// Drops idle connections past the idle timeout or closed by their origin.
    pub fn sweep(&mut self, now: Instant) {
        let timeout = self.cfg.idle_timeout;
        let mut dropped = 0;
        self.idle.retain(|_, list| {
            let before = list.len();
            list.retain(|i| {
                now.saturating_duration_since(i.since) < timeout && peek(i.conn.sock.as_fd()) == Peek::Quiet
            });
            dropped += before - list.len();
            !list.is_empty()
        });
        self.total -= dropped;
        self.stats.stale_dropped += dropped as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    fn cfg(per_host: usize, total: usize) -> PoolConfig {
        PoolConfig { max_idle_per_host: per_host, max_idle_total: total, idle_timeout: Duration::from_secs(30) }
    }

    fn key(host: &str) -> PoolKey {
        PoolKey { host: host.into(), port: 80, tls: false }
    }

    fn plain(sock: TcpStream) -> Pooled {
        Pooled { sock, tls: None }
    }

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn reuses_a_live_connection_and_drops_one_the_origin_closed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(cfg(8, 100));
        let now = Instant::now();
        let (c1, s1) = pair(&l);
        let (c2, s2) = pair(&l);
        pool.put(key("a"), plain(c1), now);
        pool.put(key("a"), plain(c2), now);
        drop(s2); // the origin closes the newest one
        std::thread::sleep(Duration::from_millis(50));
        let got = pool.take(&key("a"), now, false).expect("the live one is handed out");
        assert_eq!(got.sock.peer_addr().unwrap(), s1.local_addr().unwrap());
        assert_eq!(pool.stats.stale_dropped, 1);
        assert!(pool.take(&key("a"), now, false).is_none());
        assert!(pool.take(&key("b"), now, false).is_none());
    }

    #[test]
    fn caps_per_host_and_in_total_evicting_the_oldest() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(cfg(2, 3));
        let now = Instant::now();
        let mut servers = Vec::new();
        for host in ["a", "a", "a", "b", "b"] {
            let (c, s) = pair(&l);
            servers.push(s);
            pool.put(key(host), plain(c), now);
        }
        assert_eq!(pool.len(), 3);
        assert!(pool.stats.evictions >= 2);
    }

    #[test]
    fn sweep_drops_expired() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(cfg(8, 100));
        let (c, _s) = pair(&l);
        let then = Instant::now();
        pool.put(key("a"), plain(c), then);
        pool.sweep(then + Duration::from_secs(31));
        assert!(pool.is_empty());
    }
}
