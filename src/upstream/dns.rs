//! Name resolution that never blocks a ring.
//!
//! Each worker owns a [`Resolver`]: an LRU cache (positive answers kept a minute, failures
//! a few seconds; when full, the name used least recently makes room), the operator's pins (`--resolve NAME:ADDR`), and one helper thread that
//! runs the system resolver (`getaddrinfo`, so `/etc/hosts` and nsswitch are honoured).
//! A miss parks the asking connection (no operation in flight); the thread answers over
//! a channel and writes a byte to a pipe the worker's ring polls, and the worker resumes
//! every connection that waited for that name.

use crate::config::Config;
use lru::LruCache;
use std::collections::HashMap;
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use uring::ConnId;

const POSITIVE_TTL: Duration = Duration::from_secs(60);
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

struct Answer {
    name: String,
    result: Result<Vec<IpAddr>, String>,
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct DnsStats {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub failures: u64,
}

/// A worker's resolver.
pub struct Resolver {
    pins: HashMap<String, Vec<IpAddr>>,
    cache: LruCache<String, Cached>,
    waiting: HashMap<String, Vec<ConnId>>,
    jobs: mpsc::Sender<String>,
    answers: mpsc::Receiver<Answer>,
    wake: PipeReader,
    pub stats: DnsStats,
}

impl Resolver {
    /// Starts the helper thread.
    pub fn new(config: &Config, worker: usize) -> std::io::Result<Resolver> {
        let mut pins: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in &config.resolve {
            pins.entry(name.to_ascii_lowercase()).or_default().push(*ip);
        }
        let (jobs, job_rx) = mpsc::channel::<String>();
        let (answer_tx, answers) = mpsc::channel::<Answer>();
        let (wake, wake_tx) = std::io::pipe()?;
        std::thread::Builder::new()
            .name(format!("sluice-dns-{worker}"))
            .spawn(move || resolve_loop(job_rx, answer_tx, wake_tx))?;
        Ok(Resolver {
            pins,
            cache: LruCache::new(MAX_CACHE),
            waiting: HashMap::new(),
            jobs,
            answers,
            wake,
            stats: DnsStats::default(),
        })
    }

    /// Replaces the operator's pins (reload).
    pub fn set_pins(&mut self, config: &Config) {
        self.pins.clear();
        for (name, ip) in &config.resolve {
            self.pins.entry(name.to_ascii_lowercase()).or_default().push(*ip);
        }
    }

    /// The fd the ring polls; readable when answers are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Resolves `name` (lowercase) for `who`.
    pub fn lookup(&mut self, name: &str, who: ConnId, now: Instant) -> Lookup {
        // Any numeric spelling (`127.1`, `0x7f.1`, `::ffff:10.0.0.1`) is its address,
        // read here as the system resolver would, without a lookup.
        if let Some(ip) = crate::upstream::local::numeric_host(name) {
            return Lookup::Ready(vec![ip]);
        }
        if let Some(ips) = self.pins.get(name) {
            return Lookup::Ready(ips.clone());
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
        self.stats.cache_misses += 1;
        let waiters = self.waiting.entry(name.to_string()).or_default();
        let first = waiters.is_empty();
        waiters.push(who);
        if first && self.jobs.send(name.to_string()).is_err() {
            self.waiting.remove(name);
            return Lookup::Failed("resolver thread is gone".into());
        }
        Lookup::Pending
    }

    /// Called when the wake fd polled readable: stores answers and returns the
    /// connections to resume (they call `lookup` again and hit the cache).
    pub fn on_wake(&mut self, now: Instant) -> Vec<ConnId> {
        let mut sink = [0u8; 256];
        let _ = self.wake.read(&mut sink);
        let mut resume = Vec::new();
        while let Ok(answer) = self.answers.try_recv() {
            if answer.result.is_err() {
                self.stats.failures += 1;
            }
            if let Some(w) = self.waiting.remove(&answer.name) {
                resume.extend(w);
            }
            self.store(answer.name, answer.result, now);
        }
        resume
    }

    /// Caches an answer; a full cache drops the name used least recently.
    fn store(&mut self, name: String, answer: Result<Vec<IpAddr>, String>, now: Instant) {
        let ttl = if answer.is_ok() { POSITIVE_TTL } else { NEGATIVE_TTL };
        self.cache.put(name, Cached { answer, expires: now + ttl });
    }
}

fn resolve_loop(jobs: mpsc::Receiver<String>, answers: mpsc::Sender<Answer>, mut wake: PipeWriter) {
    while let Ok(name) = jobs.recv() {
        let result = match (name.as_str(), 0u16).to_socket_addrs() {
            Ok(addrs) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for a in addrs {
                    if !ips.contains(&a.ip()) {
                        ips.push(a.ip());
                    }
                }
                // Prefer IPv4 first: loopback test hosts and most gateways route it best.
                ips.sort_by_key(|ip| ip.is_ipv6());
                if ips.is_empty() {
                    Err(format!("{name}: no addresses"))
                } else {
                    Ok(ips)
                }
            }
            Err(e) => Err(format!("cannot resolve {name}: {e}")),
        };
        if answers.send(Answer { name, result }).is_err() {
            return;
        }
        if wake.write_all(&[1]).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uring::Conns;

    fn ids(n: usize) -> (Conns<()>, Vec<ConnId>) {
        let mut c = Conns::new();
        let v = (0..n).map(|_| c.insert(())).collect();
        (c, v)
    }

    fn wait_answers(r: &mut Resolver) -> Vec<ConnId> {
        for _ in 0..500 {
            let got = r.on_wake(Instant::now());
            if !got.is_empty() {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no answer from the resolver thread");
    }

    #[test]
    fn literals_and_pins_answer_at_once() {
        let mut cfg = Config::default();
        cfg.resolve.push(("origin.test".into(), "127.0.0.9".parse().unwrap()));
        let mut r = Resolver::new(&cfg, 0).unwrap();
        let (_c, id) = ids(1);
        assert_eq!(r.lookup("10.1.2.3", id[0], Instant::now()), Lookup::Ready(vec!["10.1.2.3".parse().unwrap()]));
        assert_eq!(r.lookup("::1", id[0], Instant::now()), Lookup::Ready(vec!["::1".parse().unwrap()]));
        assert_eq!(r.lookup("origin.test", id[0], Instant::now()), Lookup::Ready(vec!["127.0.0.9".parse().unwrap()]));
    }

    #[test]
    fn etc_hosts_name_resolves_off_thread_then_hits_the_cache() {
        let mut r = Resolver::new(&Config::default(), 0).unwrap();
        let (_c, id) = ids(2);
        let now = Instant::now();
        assert_eq!(r.lookup("localhost", id[0], now), Lookup::Pending);
        assert_eq!(r.lookup("localhost", id[1], now), Lookup::Pending, "second asker waits on the same job");
        let resumed = wait_answers(&mut r);
        assert_eq!(resumed, id);
        match r.lookup("localhost", id[0], Instant::now()) {
            Lookup::Ready(ips) => assert!(ips.iter().all(|ip| ip.is_loopback())),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.stats.cache_hits, 1);
    }

    #[test]
    fn unknown_name_fails_and_is_cached_negatively() {
        let mut r = Resolver::new(&Config::default(), 0).unwrap();
        let (_c, id) = ids(1);
        assert_eq!(r.lookup("no-such-host.invalid", id[0], Instant::now()), Lookup::Pending);
        wait_answers(&mut r);
        assert!(matches!(r.lookup("no-such-host.invalid", id[0], Instant::now()), Lookup::Failed(_)));
        assert_eq!(r.stats.failures, 1);
    }

    #[test]
    fn a_full_cache_keeps_its_recent_names() {
        let mut r = Resolver::new(&Config::default(), 0).unwrap();
        r.cache = LruCache::new(NonZeroUsize::new(3).unwrap());
        let (_c, id) = ids(1);
        let now = Instant::now();
        let ip = |s: &str| -> Vec<IpAddr> { vec![s.parse().unwrap()] };
        r.store("a.test".into(), Ok(ip("10.0.0.1")), now);
        r.store("b.test".into(), Ok(ip("10.0.0.2")), now);
        r.store("c.test".into(), Err("c.test: no addresses".into()), now);
        assert_eq!(r.lookup("a.test", id[0], now), Lookup::Ready(ip("10.0.0.1")), "a is now the most recent");
        r.store("d.test".into(), Ok(ip("10.0.0.4")), now); // full: b, used least recently, goes
        assert_eq!(r.lookup("a.test", id[0], now), Lookup::Ready(ip("10.0.0.1")));
        assert!(matches!(r.lookup("c.test", id[0], now), Lookup::Failed(_)));
        assert_eq!(r.lookup("d.test", id[0], now), Lookup::Ready(ip("10.0.0.4")));
        assert_eq!(r.stats.cache_hits, 4);
        assert!(!r.cache.contains("b.test"), "the least recently used name was evicted");
        assert_eq!(r.cache.len(), 3);
    }
}
