//! Name resolution that never blocks a ring, and in which one dead name delays no other.
//!
//! Each worker owns a [`Resolver`]: the operator's pins (`--resolve NAME:ADDR`), the
//! hosts file's table (`resolver.hosts_file`, `/etc/hosts`), an LRU cache of DNS answers
//! (kept for their TTL within 5 s to 1 h, failures 5 s; when full, the name used least
//! recently makes room), and a helper thread running a stub resolver (`client`): every
//! lookup in flight at once, A and AAAA over UDP (TCP for a truncated answer), tries
//! going round the nameservers of `/etc/resolv.conf` (or `resolver.nameservers`), and
//! at most `resolver.timeout` per lookup.
//!
//! A miss parks the asking connection (no operation in flight). At most
//! `resolver.max_pending` names are resolved per worker at once: past that a new name
//! fails at once ("resolver busy"). When every connection waiting for a name has gone
//! (timed out or closed: [`Resolver::forget`]) the lookup is cancelled: its sockets
//! close and nothing is retried. Answers come back over a channel with a byte on a pipe
//! the worker's ring polls; the worker then resumes every connection that waited for
//! the name, and they find the answer in the cache.
//!
//! Submodules: `client` (the helper thread), `inflight` (one lookup's queries),
//! `settings` (the `[resolver]` keys over resolv.conf), `files` (watched files, the
//! hosts table), `wire` (DNS messages, host name checks).

mod client;
mod files;
mod inflight;
mod settings;
mod wire;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::stats::WorkerStats;
use client::{Helper, Job, Report};
use files::{HostsTable, Watched};
use inflight::{FailureKind, Outcome};
use lru::LruCache;
use settings::Source;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use uring::ConnId;

/// How long an answer is kept: its TTL, within these bounds.
const MIN_TTL: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(3600);
/// How long a failure is kept (NXDOMAIN, no address, a timeout, a server failure).
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Names kept per worker.
const MAX_CACHE: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

/// What a lookup gave right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Ready(Vec<IpAddr>),
    /// The name is being resolved; the connection is resumed when it is.
    Pending,
    Failed(String),
}

struct Cached {
    answer: Result<Vec<IpAddr>, String>,
    expires: Instant,
}

/// How a lookup ended, as counted in `sluice_dns_lookups_total{result}`
/// (`stats::DNS_RESULTS`, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Ok,
    NotFound,
    Failed,
    Timeout,
    /// Refused at once: `resolver.max_pending` names were pending.
    Busy,
    /// Cancelled: every connection waiting for it had gone.
    Abandoned,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct DnsStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Lookups by [`Ended`].
    pub lookups: [u64; crate::stats::DNS_RESULTS.len()],
}

impl DnsStats {
    fn count(&mut self, ended: Ended) {
        self.lookups[ended as usize] += 1;
    }

    /// Lookups that ended this way.
    pub fn ended(&self, ended: Ended) -> u64 {
        self.lookups[ended as usize]
    }
}

/// A worker's resolver.
pub struct Resolver {
    pins: HashMap<String, Vec<IpAddr>>,
    hosts: HostsTable,
    cache: LruCache<String, Cached>,
    /// Names being resolved, and the connections waiting for each.
    waiting: HashMap<String, Vec<ConnId>>,
    max_pending: usize,
    source: Source,
    helper: Helper,
    pub stats: DnsStats,
}

impl Resolver {
    /// Reads the hosts file and starts the helper thread.
    pub fn new(config: &Config, worker: usize) -> std::io::Result<Resolver> {
        let source = Source::of(&config.resolver);
        let mut hosts_file = Watched::new(source.hosts_file.clone());
        let hosts = HostsTable::parse(&hosts_file.read(Instant::now()));
        let helper = Helper::spawn(source.clone(), hosts_file, worker)?;
        Ok(Resolver {
            pins: pins(config),
            hosts,
            cache: LruCache::new(MAX_CACHE),
            waiting: HashMap::new(),
            max_pending: config.resolver.max_pending,
            source,
            helper,
            stats: DnsStats::default(),
        })
    }

    /// Puts a reloaded config in force: pins, the queue bound, and the helper's settings.
    pub fn set_config(&mut self, config: &Config) {
        self.pins = pins(config);
        self.max_pending = config.resolver.max_pending;
        let source = Source::of(&config.resolver);
        if source != self.source {
            self.source = source.clone();
            self.helper.send(Job::Reconfigure(source));
        }
    }

    /// The fd the ring polls; readable when answers are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.helper.wake_fd()
    }

    /// Names being resolved now.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Resolves `name` (lowercase) for `who`.
    pub fn lookup(&mut self, name: &str, who: ConnId, now: Instant) -> Lookup {
        // Any numeric spelling (`127.1`, `0x7f.1`, `::ffff:10.0.0.1`) is its address,
        // read here as the system resolver would, without a lookup.
        if let Some(ip) = crate::upstream::local::numeric_host(name) {
            return Lookup::Ready(vec![ip]);
        }
        let bare = name.strip_suffix('.').unwrap_or(name);
        if let Some(ips) = self.pins.get(bare).or_else(|| self.hosts.get(bare)) {
            return Lookup::Ready(ips.clone());
        }
        if let Some(answer) = special_use(name, bare) {
            return answer;
        }
        if let Some(c) = self.cache.get(name) {
            if c.expires > now {
                self.stats.cache_hits += 1;
                return match &c.answer {
                    Ok(ips) => Lookup::Ready(ips.clone()),
                    Err(e) => Lookup::Failed(e.clone()),
                };
            }
        }
        if let Err(why) = wire::check_host(name) {
            return Lookup::Failed(format!("cannot resolve {name}: {why}"));
        }
        self.stats.cache_misses += 1;
        if let Some(waiters) = self.waiting.get_mut(name) {
            if !waiters.contains(&who) {
                waiters.push(who);
            }
            return Lookup::Pending;
        }
        if self.waiting.len() >= self.max_pending {
            self.stats.count(Ended::Busy);
            return Lookup::Failed(format!(
                "cannot resolve {name}: resolver busy ({} names being resolved)",
                self.max_pending
            ));
        }
        if !self.helper.send(Job::Resolve(name.to_string())) {
            return Lookup::Failed(format!("cannot resolve {name}: the resolver thread is gone"));
        }
        self.waiting.insert(name.to_string(), vec![who]);
        Lookup::Pending
    }

    /// `who` no longer waits for `name` (it timed out or closed). When nobody does, the
    /// lookup is cancelled: its sockets close and no try follows.
    pub fn forget(&mut self, name: &str, who: ConnId) {
        let Some(waiters) = self.waiting.get_mut(name) else { return };
        waiters.retain(|w| *w != who);
        if waiters.is_empty() {
            self.waiting.remove(name);
            self.stats.count(Ended::Abandoned);
            self.helper.send(Job::Cancel(name.to_string()));
        }
    }

    /// Called when the wake fd polled readable: stores answers and returns the
    /// connections to resume (they call `lookup` again and hit the cache).
    pub fn on_wake(&mut self, now: Instant) -> Vec<ConnId> {
        self.helper.drain_wakes();
        let mut resume = Vec::new();
        while let Ok(report) = self.helper.reports.try_recv() {
            match report {
                Report::Hosts(table) => self.hosts = table,
                Report::Answer { name, outcome } => {
                    // A cancelled lookup may still answer: cached, but counted once only
                    // (as abandoned).
                    if let Some(waiters) = self.waiting.remove(&name) {
                        self.stats.count(ended(&outcome));
                        resume.extend(waiters);
                    }
                    self.store(name, outcome, now);
                }
            }
        }
        resume
    }

    /// Caches an answer; a full cache drops the name used least recently.
    fn store(&mut self, name: String, outcome: Outcome, now: Instant) {
        let (answer, ttl) = match outcome {
            Ok(found) => (Ok(found.ips), found.ttl.clamp(MIN_TTL, MAX_TTL)),
            Err(failure) => (Err(format!("cannot resolve {name}: {}", failure.text)), NEGATIVE_TTL),
        };
        self.cache.put(name, Cached { answer, expires: now + ttl });
    }

    /// Copies the counters into the worker's metrics block (on its tick).
    pub fn publish(&self, w: &WorkerStats) {
        w.dns_cache_hits.store(self.stats.cache_hits, Relaxed);
        w.dns_cache_misses.store(self.stats.cache_misses, Relaxed);
        w.dns_in_flight.store(self.waiting.len() as u64, Relaxed);
        for (slot, n) in w.dns_lookups.iter().zip(self.stats.lookups) {
            slot.store(n, Relaxed);
        }
    }
}

fn pins(config: &Config) -> HashMap<String, Vec<IpAddr>> {
    let mut pins: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for (name, ip) in &config.resolve {
        pins.entry(name.to_ascii_lowercase()).or_default().push(*ip);
    }
    pins
}

fn ended(outcome: &Outcome) -> Ended {
    match outcome {
        Ok(_) => Ended::Ok,
        Err(f) => match f.kind {
            FailureKind::NotFound => Ended::NotFound,
            FailureKind::Timeout => Ended::Timeout,
            FailureKind::ServerFailure => Ended::Failed,
        },
    }
}

/// Special-use names answered without asking anyone (RFC 6761), when the hosts file
/// does not name them: `localhost` is loopback, `.invalid` never exists.
fn special_use(name: &str, bare: &str) -> Option<Lookup> {
    let under = |zone: &str| bare == zone || bare.strip_suffix(zone).is_some_and(|rest| rest.ends_with('.'));
    if under("localhost") {
        return Some(Lookup::Ready(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]));
    }
    if under("invalid") {
        return Some(Lookup::Failed(format!("cannot resolve {name}: no such host")));
    }
    None
}
