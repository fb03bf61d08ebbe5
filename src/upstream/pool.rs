//! The per-worker pool of upstream connections, keyed by (host, port, TLS): idle ones
//! parked for reuse, a count of every open one, and a queue of requests waiting for one.
//!
//! How it behaves (and why): a connection that finished a response cleanly is parked,
//! and the next request for the same origin takes the most recently parked one (LIFO),
//! so under load the same few connections are reused and the rest age at the back.
//! Nothing is closed merely because many are idle at once: a burst of clients leaves
//! as many idle connections as it needed, and the next burst finds them. Connections
//! that stay *unused* are purged gradually, as HAProxy's `pool-purge-delay` and nginx's
//! keepalive cache do: every [`PURGE_EVERY`] the pool looks, per origin, at how many of
//! its idle connections were never taken during the whole period (the low-water mark of
//! the idle list) and closes half of those, oldest first. A connection idle for longer
//! than `idle_timeout` is closed on the worker's sweep whatever the demand.
//!
//! Every open connection to an origin (connecting, in use or parked) holds a [`Lease`]
//! on that origin's count, released when the connection is dropped, so the count cannot
//! drift. Past `max_connections_per_host` a request does not open another connection: it
//! waits in the origin's queue (as behind HAProxy's `maxconn`), and the worker wakes
//! waiters when connections come back or close ([`UpstreamPool::wake_queued`]).
//!
//! An origin that may answer in HTTP/2 (a TLS origin offered `h2`, or a cleartext one
//! listed in `h2.cleartext_origins`) is dialled once at a time while its protocol is
//! being learnt ([`OriginProtocol`]): requests that find no session and no parked
//! connection wait for that one connection's ALPN answer instead of each dialling their
//! own (a burst of 1,000 streams to a new origin would otherwise cost 1,000 handshakes,
//! all but one thrown away once the first became a session). An `h2` answer lets them
//! join the session; `http/1.1` lets them all dial, and is remembered while the origin
//! has connections; a failed dial lets the next one try. Browsers do the same.
//!
//! The idle caps are bounds on descriptors and memory, not a tuning knob: at most
//! `max_idle_per_host` per origin (the oldest evicted past it) and `max_idle_total` per
//! worker. A connection is peeked before reuse: one the origin closed (or that has stray
//! bytes waiting) is dropped, never handed to a request.

use crate::config::PoolConfig;
use crate::sys::{peek, Peek};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};
use uring::ConnId;

/// How often unused idle connections are purged (half of the unused ones each time).
pub const PURGE_EVERY: Duration = Duration::from_secs(5);

/// Which origin a pooled connection talks to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The exchange's host, shared with it (a key costs no allocation per request).
    pub host: Rc<str>,
    pub port: u16,
    pub tls: bool,
}

/// One open connection's place in its origin's count: held by the connection (or the
/// exchange dialling it) and released when dropped.
#[derive(Debug)]
pub struct Lease {
    open: Rc<Cell<usize>>,
    /// Set on the dial that is learning the origin's protocol, until it says.
    learning: Option<Rc<Cell<OriginProtocol>>>,
}

impl Lease {
    /// The connection's handshake is done: the origin picked `h2` (or is a listed
    /// cleartext HTTP/2 origin), or not. Requests waiting for the answer get their turn.
    pub fn learned(&mut self, h2: bool) {
        if let Some(protocol) = self.learning.take() {
            protocol.set(if h2 { OriginProtocol::Http2 } else { OriginProtocol::Http1 });
        }
    }

    /// The dial was given up (it failed or timed out) before its handshake said: the
    /// requests waiting for the answer get their turn now, not when the connection is
    /// finally dropped.
    pub fn give_up_learning(&mut self) {
        if let Some(protocol) = self.learning.take() {
            protocol.set(OriginProtocol::Unknown);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.open.set(self.open.get().saturating_sub(1));
        // The dial failed before its handshake said: the next request tries.
        self.give_up_learning();
    }
}

/// What the pool knows of the protocol of an origin that may answer in HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OriginProtocol {
    /// Not known, or the last dial failed: the next request dials and learns.
    #[default]
    Unknown,
    /// One dial is on its way to learning it: requests that may share wait for it.
    Learning,
    /// It picked `h2`: requests join its sessions; when those are full, one request at a
    /// time dials one more (learning again, in case the origin changed).
    Http2,
    /// It picked `http/1.1`: every request dials its own connection.
    Http1,
}

struct Idle {
    conn: Pooled,
    since: Instant,
}

/// What the pool knows of one origin.
#[derive(Default)]
struct OriginState {
    /// Idle connections, oldest first.
    list: VecDeque<Idle>,
    /// The fewest connections that sat idle at once since the last purge: that many were
    /// not needed by anyone during the whole period.
    low_water: usize,
    /// Open connections (idle ones included): the number of live leases.
    open: Rc<Cell<usize>>,
    /// Requests waiting for a connection, first come first served.
    waiting: VecDeque<ConnId>,
    /// Its protocol, for requests that may share an HTTP/2 session.
    protocol: Rc<Cell<OriginProtocol>>,
    /// Requests waiting for the protocol's answer (all get their turn with it).
    learners: VecDeque<ConnId>,
}

/// A parked origin connection: the socket, its lease and, for TLS origins, its session
/// (whose buffers hold no slab while parked).
pub struct Pooled {
    pub sock: TcpStream,
    pub tls: Option<Box<crate::tls::TlsLeg>>,
    pub lease: Lease,
    /// The socket's slot in the worker ring's registered file table, kept while parked so
    /// that reusing it costs no table update (dropped with the socket: the slot goes back).
    pub fixed: Option<uring::FixedFile>,
}

/// What a request gets from the pool.
pub enum Acquired {
    /// A parked connection to reuse.
    Pooled(Pooled),
    /// Room for a new connection: dial one and keep the lease with it.
    Connect(Lease),
    /// The request is queued and will be woken by [`UpstreamPool::wake_queued`].
    Queued { waits_for: QueuedFor },
}

/// What a queued request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedFor {
    /// The origin is at `max_connections_per_host`: a connection to come back or close.
    Room,
    /// (A request that may share an HTTP/2 session) the answer of the dial that is
    /// learning the origin's protocol.
    Protocol,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    /// Closed by a cap (per host or in total).
    pub evictions: u64,
    /// Closed because they stayed unused (the gradual purge) or idle past `idle_timeout`.
    pub purged: u64,
    /// Found closed by the origin (or with stray bytes) when taken or swept.
    pub stale_dropped: u64,
    /// Requests that had to wait for a connection (`max_connections_per_host`).
    pub queued: u64,
}

/// A worker's upstream connections.
pub struct UpstreamPool {
    origins: HashMap<PoolKey, OriginState>,
    /// Idle connections in all.
    total: usize,
    /// Origins with requests waiting, and how many wait in all.
    queued_origins: Vec<PoolKey>,
    waiting: usize,
    cfg: PoolConfig,
    last_purge: Option<Instant>,
    pub stats: PoolStats,
}

impl UpstreamPool {
    pub fn new(cfg: PoolConfig) -> Self {
        UpstreamPool {
            origins: HashMap::new(),
            total: 0,
            queued_origins: Vec::new(),
            waiting: 0,
            cfg,
            last_purge: None,
            stats: PoolStats::default(),
        }
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

    /// Requests waiting for a connection now (stale entries of clients that left
    /// included until they are reached).
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// A connection for a request to `key` by `who`: the most recently parked live one
    /// (unless `fresh_only`: a retry), else room for a new one, else a place in the
    /// origin's queue (at the front when `again`: a woken waiter that lost the race).
    ///
    /// A connection parked for more than a moment, or wanted for a request that cannot be
    /// retried, is peeked first (one syscall) so one the origin closed is never used; a
    /// request that can be retried skips that on a connection parked just now (the retry
    /// covers the race).
    pub fn acquire(&mut self, key: &PoolKey, now: Instant, how: Want, who: ConnId) -> Acquired {
        let cap = self.cfg.max_connections_per_host;
        // Look the origin up before inserting: the key (its host) is cloned only the
        // first time an origin is seen, not on every request.
        if !self.origins.contains_key(key) {
            self.origins.insert(key.clone(), OriginState::default());
        }
        let Some(origin) = self.origins.get_mut(key) else { unreachable!("inserted above") };
        if !how.fresh_only {
            if let Some(conn) = Self::take_idle(origin, &mut self.total, &mut self.stats, &self.cfg, now, how.retryable)
            {
                return Acquired::Pooled(conn);
            }
        }
        let mut room = cap == 0 || origin.open.get() < cap;
        if !room && how.fresh_only && !origin.list.is_empty() {
            // A retry may not take a parked connection: one of those makes way for it
            // (else it would wait for turns that parked connections announce and that it
            // can never use).
            evict_front(origin, &mut self.total, &mut self.stats);
            room = origin.open.get() < cap;
        }
        let protocol = origin.protocol.get();
        let learn = how.shares && protocol != OriginProtocol::Http1;
        let another_dial_learns = learn && protocol == OriginProtocol::Learning;
        if room && !another_dial_learns {
            self.stats.misses += 1;
            origin.open.set(origin.open.get() + 1);
            let learning = learn.then(|| {
                origin.protocol.set(OriginProtocol::Learning);
                origin.protocol.clone()
            });
            return Acquired::Connect(Lease { open: origin.open.clone(), learning });
        }
        let was_queued = !origin.waiting.is_empty() || !origin.learners.is_empty();
        let queue = if room { &mut origin.learners } else { &mut origin.waiting };
        if how.again {
            queue.push_front(who);
        } else {
            queue.push_back(who);
            self.stats.queued += 1;
        }
        if !was_queued {
            self.queued_origins.push(key.clone());
        }
        self.waiting += 1;
        Acquired::Queued { waits_for: if room { QueuedFor::Protocol } else { QueuedFor::Room } }
    }

    fn take_idle(
        origin: &mut OriginState,
        total: &mut usize,
        stats: &mut PoolStats,
        cfg: &PoolConfig,
        now: Instant,
        retryable: bool,
    ) -> Option<Pooled> {
        let mut found = None;
        while let Some(idle) = origin.list.pop_back() {
            *total -= 1;
            let age = now.saturating_duration_since(idle.since);
            let fresh = age < cfg.idle_timeout;
            let trust = retryable && age < Duration::from_millis(250);
            if fresh && (trust || peek(idle.conn.sock.as_fd()) == Peek::Quiet) {
                stats.hits += 1;
                found = Some(idle.conn);
                break;
            }
            stats.stale_dropped += 1;
        }
        origin.low_water = origin.low_water.min(origin.list.len());
        found
    }

    /// Parks a connection that just finished a response cleanly.
    pub fn put(&mut self, key: PoolKey, conn: Pooled, now: Instant) {
        if self.cfg.max_idle_per_host == 0 || self.cfg.max_idle_total == 0 {
            return;
        }
        if self.total >= self.cfg.max_idle_total {
            self.evict_oldest();
        }
        let origin = self.origins.entry(key).or_default();
        while origin.list.len() >= self.cfg.max_idle_per_host {
            origin.list.pop_front();
            self.total -= 1;
            self.stats.evictions += 1;
        }
        origin.list.push_back(Idle { conn, since: now });
        self.total += 1;
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .origins
            .iter()
            .filter_map(|(k, o)| o.list.front().map(|i| (i.since, k.clone())))
            .min_by_key(|(since, _)| *since);
        if let Some(origin) = oldest.and_then(|(_, key)| self.origins.get_mut(&key)) {
            evict_front(origin, &mut self.total, &mut self.stats);
        }
    }

    /// Hands out the turns of queued requests that can be served now (an idle connection
    /// to take, or room under the cap; all of those that waited for the origin's protocol
    /// once it is known or its dial failed): their ids go to `out`, first come first served.
    /// `alive` says whether an id still waits (a client that left, or a request that
    /// moved on, is dropped from the queue without using a turn). Cheap when nothing
    /// waits; call it after each batch of completions.
    pub fn wake_queued(&mut self, out: &mut Vec<ConnId>, mut alive: impl FnMut(ConnId) -> bool) {
        if self.waiting == 0 {
            return;
        }
        let cap = self.cfg.max_connections_per_host;
        let mut i = 0;
        while i < self.queued_origins.len() {
            let Some(origin) = self.origins.get_mut(&self.queued_origins[i]) else {
                self.queued_origins.swap_remove(i);
                continue;
            };
            let room = if cap == 0 { usize::MAX } else { cap.saturating_sub(origin.open.get()) };
            let mut turns = origin.list.len().saturating_add(room);
            while turns > 0 {
                let Some(id) = origin.waiting.pop_front() else { break };
                self.waiting -= 1;
                if alive(id) {
                    out.push(id);
                    turns -= 1;
                }
            }
            if origin.protocol.get() != OriginProtocol::Learning {
                self.waiting -= origin.learners.len();
                out.extend(origin.learners.drain(..).filter(|id| alive(*id)));
            }
            if origin.waiting.is_empty() && origin.learners.is_empty() {
                self.queued_origins.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// The worker's periodic upkeep (call it about once a second): closes connections
    /// idle past `idle_timeout` or closed by their origin, and every [`PURGE_EVERY`]
    /// half of those that stayed unused for the whole period.
    pub fn sweep(&mut self, now: Instant) {
        let timeout = self.cfg.idle_timeout;
        let purge = match self.last_purge {
            None => {
                self.last_purge = Some(now);
                false
            }
            Some(at) => now.saturating_duration_since(at) >= PURGE_EVERY,
        };
        if purge {
            self.last_purge = Some(now);
        }
        let (mut stale, mut purged) = (0, 0);
        self.origins.retain(|_, origin| {
            let before = origin.list.len();
            origin.list.retain(|i| now.saturating_duration_since(i.since) < timeout);
            let expired = before - origin.list.len();
            let before = origin.list.len();
            origin.list.retain(|i| peek(i.conn.sock.as_fd()) == Peek::Quiet);
            let closed = before - origin.list.len();
            (purged, stale) = (purged + expired, stale + closed);
            // Those were among the unused ones: what is left of the low-water mark is
            // still the count of unused connections at the front.
            origin.low_water = origin.low_water.saturating_sub(expired + closed);
            if purge {
                // The oldest are at the front: the ones LIFO reuse left alone.
                let unused = origin.low_water.min(origin.list.len());
                let close = unused.div_ceil(2);
                origin.list.drain(..close);
                purged += close;
                origin.low_water = origin.list.len();
            } else {
                origin.low_water = origin.low_water.min(origin.list.len());
            }
            // An origin is forgotten only when nothing refers to its count any more.
            !origin.list.is_empty()
                || origin.open.get() > 0
                || !origin.waiting.is_empty()
                || !origin.learners.is_empty()
        });
        self.total -= stale + purged;
        self.stats.stale_dropped += stale as u64;
        self.stats.purged += purged as u64;
    }
}

/// Closes the origin's oldest parked connection (its lease goes with it), by a cap.
fn evict_front(origin: &mut OriginState, total: &mut usize, stats: &mut PoolStats) {
    origin.list.pop_front();
    origin.low_water = origin.low_water.min(origin.list.len());
    *total -= 1;
    stats.evictions += 1;
}

/// How a request wants its connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// The request can be retried on a fresh connection if a reused one fails.
    pub retryable: bool,
    /// Never a parked connection (a retry after a reused one failed).
    pub fresh_only: bool,
    /// A woken waiter trying again (keeps its place at the front if it must wait again).
    pub again: bool,
    /// The request may share an HTTP/2 session to the origin (its dial offers `h2`, or
    /// the origin is a listed cleartext HTTP/2 one): it waits while another dial learns
    /// the origin's protocol.
    pub shares: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    fn cfg(per_host: usize, total: usize) -> PoolConfig {
        PoolConfig {
            max_idle_per_host: per_host,
            max_idle_total: total,
            max_connections_per_host: 0,
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn key(host: &str) -> PoolKey {
        PoolKey { host: host.into(), port: 80, tls: false }
    }

    /// A request id (the pool only stores and hands back ids).
    fn someone() -> ConnId {
        uring::Conns::<()>::new().insert(())
    }

    /// A parked connection for `host`, its lease taken as a new connection would.
    fn plain(pool: &mut UpstreamPool, host: &str, sock: TcpStream) -> Pooled {
        let want = Want { fresh_only: true, ..Want::default() };
        match pool.acquire(&key(host), Instant::now(), want, someone()) {
            Acquired::Connect(lease) => Pooled { sock, tls: None, lease, fixed: None },
            _ => panic!("no room for a new connection to {host}"),
        }
    }

    /// A parked connection to reuse, if any.
    fn take(pool: &mut UpstreamPool, host: &str, now: Instant, retryable: bool) -> Option<Pooled> {
        match pool.acquire(&key(host), now, Want { retryable, ..Want::default() }, someone()) {
            Acquired::Pooled(p) => Some(p),
            _ => None,
        }
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
        let p = plain(&mut pool, "a", c1);
        pool.put(key("a"), p, now);
        let p = plain(&mut pool, "a", c2);
        pool.put(key("a"), p, now);
        drop(s2); // the origin closes the newest one
        std::thread::sleep(Duration::from_millis(50));
        let got = take(&mut pool, "a", now, false).expect("the live one is handed out");
        assert_eq!(got.sock.peer_addr().unwrap(), s1.local_addr().unwrap());
        assert_eq!(pool.stats.stale_dropped, 1);
        assert!(take(&mut pool, "a", now, false).is_none());
        assert!(take(&mut pool, "b", now, false).is_none());
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
            let p = plain(&mut pool, host, c);
            pool.put(key(host), p, now);
        }
        assert_eq!(pool.len(), 3);
        assert!(pool.stats.evictions >= 2);
    }

    #[test]
    fn a_burst_keeps_what_it_needed_and_unused_connections_are_purged_by_halves() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(cfg(1024, 4096));
        let t0 = Instant::now();
        let mut servers = Vec::new();
        // 64 clients' responses come back at once: all 64 origin connections are kept.
        for _ in 0..64 {
            let (c, s) = pair(&l);
            servers.push(s);
            let p = plain(&mut pool, "a", c);
            pool.put(key("a"), p, t0);
        }
        assert_eq!(pool.len(), 64);
        pool.sweep(t0);
        // Then a steady load of 8 concurrent requests, one sweep a second: 56 are never
        // taken. The period of the burst itself purges nothing (they were all needed);
        // each later period closes half of the unused ones; those in use are never closed.
        let mut at_purge = Vec::new();
        for step in 1..=60u64 {
            let t = t0 + Duration::from_secs(step);
            let taken: Vec<Pooled> = (0..8).filter_map(|_| take(&mut pool, "a", t, true)).collect();
            assert_eq!(taken.len(), 8, "a connection in use was closed by {step} s");
            for c in taken {
                pool.put(key("a"), c, t);
            }
            pool.sweep(t);
            if step % PURGE_EVERY.as_secs() == 0 {
                at_purge.push(pool.len());
            }
        }
        assert_eq!(&at_purge[..4], &[64, 36, 22, 15], "purged by halves of the unused");
        assert_eq!(pool.len(), 8, "what the load needs stays");
        assert_eq!(pool.stats.evictions, 0, "the caps never bit");
        assert_eq!(pool.stats.purged, 56);
    }

    #[test]
    fn past_the_cap_requests_queue_and_are_woken_when_a_connection_comes_back_or_closes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(PoolConfig { max_connections_per_host: 2, ..cfg(8, 100) });
        let now = Instant::now();
        let mut conns = uring::Conns::<()>::new();
        let (w1, w2, gone) = (conns.insert(()), conns.insert(()), conns.insert(()));
        let ((c1, _s1), (c2, _s2)) = (pair(&l), pair(&l));
        let first = plain(&mut pool, "a", c1);
        let second = plain(&mut pool, "a", c2);
        assert!(matches!(pool.acquire(&key("a"), now, Want::default(), gone), Acquired::Queued { .. }));
        assert!(matches!(pool.acquire(&key("a"), now, Want::default(), w1), Acquired::Queued { .. }));
        assert!(matches!(pool.acquire(&key("a"), now, Want::default(), w2), Acquired::Queued { .. }));
        assert!(matches!(pool.acquire(&key("b"), now, Want::default(), w1), Acquired::Connect(_)), "per origin");
        assert_eq!((pool.waiting(), pool.stats.queued), (3, 3));
        let mut woken = Vec::new();
        pool.wake_queued(&mut woken, |_| true);
        assert!(woken.is_empty(), "both connections are in use");
        // One comes back: the first live waiter (not the one that left) gets its turn, and
        // takes the parked connection.
        pool.put(key("a"), first, now);
        pool.wake_queued(&mut woken, |id| id != gone);
        assert_eq!(woken, vec![w1]);
        let again = Want { again: true, ..Want::default() };
        let Acquired::Pooled(reused) = pool.acquire(&key("a"), now, again, w1) else { panic!("the woken waiter") };
        // The other one closes (its lease dropped): room for a new connection.
        drop(second);
        woken.clear();
        pool.wake_queued(&mut woken, |_| true);
        assert_eq!(woken, vec![w2]);
        assert!(matches!(pool.acquire(&key("a"), now, again, w2), Acquired::Connect(_)));
        assert_eq!(pool.waiting(), 0);
        drop(reused);
    }

    #[test]
    fn a_woken_waiter_that_loses_the_race_keeps_its_place_at_the_front() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(PoolConfig { max_connections_per_host: 1, ..cfg(8, 100) });
        let now = Instant::now();
        let mut conns = uring::Conns::<()>::new();
        let (w1, w2) = (conns.insert(()), conns.insert(()));
        let (c, _s) = pair(&l);
        let only = plain(&mut pool, "a", c);
        assert!(matches!(pool.acquire(&key("a"), now, Want::default(), w1), Acquired::Queued { .. }));
        assert!(matches!(pool.acquire(&key("a"), now, Want::default(), w2), Acquired::Queued { .. }));
        pool.put(key("a"), only, now);
        let mut woken = Vec::new();
        pool.wake_queued(&mut woken, |_| true);
        assert_eq!(woken, vec![w1]);
        // Someone else took it first: w1 waits again, ahead of w2.
        let Acquired::Pooled(taken) = pool.acquire(&key("a"), now, Want::default(), w2) else { panic!() };
        let again = Want { again: true, ..Want::default() };
        assert!(matches!(pool.acquire(&key("a"), now, again, w1), Acquired::Queued { .. }));
        pool.put(key("a"), taken, now);
        woken.clear();
        pool.wake_queued(&mut woken, |_| true);
        assert_eq!(woken, vec![w1]);
        assert_eq!(pool.stats.queued, 2, "a re-queued waiter is not counted twice");
    }

    /// A dial by `who` for a request that may share an HTTP/2 session.
    fn sharing(pool: &mut UpstreamPool, who: ConnId, again: bool) -> Acquired {
        pool.acquire(&key("a"), Instant::now(), Want { shares: true, again, ..Want::default() }, who)
    }

    #[test]
    fn one_dial_learns_an_origin_s_protocol_while_requests_that_may_share_wait_for_it() {
        let mut pool = UpstreamPool::new(cfg(8, 100));
        let mut conns = uring::Conns::<()>::new();
        let ids: Vec<ConnId> = (0..4).map(|_| conns.insert(())).collect();
        let Acquired::Connect(mut learning) = sharing(&mut pool, ids[0], false) else { panic!("the first dials") };
        for &id in &ids[1..3] {
            assert!(matches!(sharing(&mut pool, id, false), Acquired::Queued { .. }), "the others wait for its answer");
        }
        // A request that cannot share (an Upgrade, a retry) dials at once.
        assert!(matches!(pool.acquire(&key("a"), Instant::now(), Want::default(), ids[3]), Acquired::Connect(_)));
        let mut woken = Vec::new();
        pool.wake_queued(&mut woken, |_| true);
        assert!(woken.is_empty(), "no answer yet");
        // The origin picked h2: every waiter gets its turn (to join the session).
        learning.learned(true);
        pool.wake_queued(&mut woken, |_| true);
        assert_eq!(woken, ids[1..3]);
        assert_eq!(pool.waiting(), 0);
        // Its sessions full, one request dials one more connection, learning again.
        let Acquired::Connect(mut second) = sharing(&mut pool, ids[1], true) else { panic!("one more dial") };
        assert!(matches!(sharing(&mut pool, ids[2], true), Acquired::Queued { .. }));
        // An origin that now answers http/1.1: every request dials from then on.
        second.learned(false);
        woken.clear();
        pool.wake_queued(&mut woken, |_| true);
        assert_eq!(woken, vec![ids[2]]);
        for &id in &ids {
            assert!(matches!(sharing(&mut pool, id, true), Acquired::Connect(_)), "http/1.1 is remembered");
        }
        assert_eq!(pool.waiting(), 0);
    }

    #[test]
    fn a_retry_at_the_cap_makes_a_parked_connection_give_way_instead_of_waiting() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(PoolConfig { max_connections_per_host: 1, ..cfg(8, 100) });
        let (c, _s) = pair(&l);
        let parked = plain(&mut pool, "a", c);
        pool.put(key("a"), parked, Instant::now());
        // A fresh-only request could never take the parked connection, and wake_queued
        // would give it a turn for it on every batch: it dials in its place.
        let retry = Want { fresh_only: true, ..Want::default() };
        assert!(matches!(pool.acquire(&key("a"), Instant::now(), retry, someone()), Acquired::Connect(_)));
        assert_eq!((pool.len(), pool.stats.evictions), (0, 1));
    }

    #[test]
    fn a_learning_dial_given_up_lets_the_waiters_go_before_its_connection_is_dropped() {
        let mut pool = UpstreamPool::new(cfg(8, 100));
        let mut conns = uring::Conns::<()>::new();
        let (first, next) = (conns.insert(()), conns.insert(()));
        let Acquired::Connect(mut learning) = sharing(&mut pool, first, false) else { panic!("the first dials") };
        assert!(matches!(sharing(&mut pool, next, false), Acquired::Queued { waits_for: QueuedFor::Protocol }));
        learning.give_up_learning();
        let mut woken = Vec::new();
        pool.wake_queued(&mut woken, |_| true);
        assert_eq!(woken, vec![next]);
        drop(learning);
    }

    #[test]
    fn a_learning_dial_that_fails_lets_the_next_request_try() {
        let mut pool = UpstreamPool::new(cfg(8, 100));
        let mut conns = uring::Conns::<()>::new();
        let (first, gone, next) = (conns.insert(()), conns.insert(()), conns.insert(()));
        let Acquired::Connect(learning) = sharing(&mut pool, first, false) else { panic!("the first dials") };
        assert!(matches!(sharing(&mut pool, gone, false), Acquired::Queued { .. }));
        assert!(matches!(sharing(&mut pool, next, false), Acquired::Queued { .. }));
        // The dial fails (its lease dropped before any answer): the waiters still there
        // get their turn, and the first of them learns in its place.
        drop(learning);
        let mut woken = Vec::new();
        pool.wake_queued(&mut woken, |id| id != gone);
        assert_eq!(woken, vec![next]);
        let Acquired::Connect(_learning) = sharing(&mut pool, next, true) else { panic!("the next dials") };
        assert!(matches!(sharing(&mut pool, first, false), Acquired::Queued { .. }), "learning again");
        assert_eq!(pool.stats.queued, 3);
    }

    #[test]
    fn sweep_drops_expired() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = UpstreamPool::new(cfg(8, 100));
        let (c, _s) = pair(&l);
        let then = Instant::now();
        let p = plain(&mut pool, "a", c);
        pool.put(key("a"), p, then);
        pool.sweep(then + Duration::from_secs(31));
        assert!(pool.is_empty());
    }
}
