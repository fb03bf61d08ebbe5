//! Failed attempts per client address, shared by every worker (a client's connections
//! land on any worker, and the limit is per address, not per worker).
//!
//! The rule: `max_failures` failed attempts from one address within `lockout` lock that
//! address for `lockout`; while it is locked, credentials that are not already known to be
//! good are refused (429) without being checked. IPv6 clients count by their /64 (a host
//! has a whole /64 to pick addresses from), IPv4-mapped ones as IPv4. At most
//! [`MAX_ADDRESSES`] addresses are remembered; past that the one that failed least
//! recently is forgotten.
//!
//! The mutex is taken only on the slow path: a failed attempt, or credentials about to be
//! checked with the slow hash. A request whose credentials are in the worker's cache never
//! touches it.

use lru::LruCache;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most (about 100 bytes each, allocated as they come: an idle
/// table costs nothing).
pub const MAX_ADDRESSES: NonZeroUsize = NonZeroUsize::new(65_536).unwrap();

#[derive(Debug, Clone, Copy)]
struct Record {
    /// The first failure of the current window.
    since: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// The failure table.
pub struct Failures {
    table: Mutex<LruCache<IpAddr, Record>>,
}

impl Default for Failures {
    fn default() -> Self {
        Failures::with_capacity(MAX_ADDRESSES)
    }
}

impl std::fmt::Debug for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failures").field("addresses", &self.len()).finish()
    }
}

/// The address failures are counted under.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Failures {
    pub fn with_capacity(capacity: NonZeroUsize) -> Failures {
        Failures { table: Mutex::new(LruCache::sparse(capacity)) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, LruCache<IpAddr, Record>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` stays locked, if it is.
    pub fn locked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = counted_as(ip);
        let mut table = self.table();
        let until = table.peek(&key)?.locked_until?;
        if until > now {
            return Some(until - now);
        }
        // The lock is over: the address starts afresh.
        table.pop(&key);
        None
    }

    /// Counts one failed attempt from `ip`; true when it locks the address.
    pub fn record(&self, ip: IpAddr, now: Instant, max_failures: u32, lockout: Duration) -> bool {
        let key = counted_as(ip);
        let mut table = self.table();
        let fresh = Record { since: now, failures: 0, locked_until: None };
        let r = table.get_or_insert_mut(key, || fresh);
        // A new window once the lock is over, or (unlocked) once the window has passed.
        let over = match r.locked_until {
            Some(until) => until <= now,
            None => now.saturating_duration_since(r.since) >= lockout,
        };
        if over {
            *r = fresh;
        }
        r.failures = r.failures.saturating_add(1);
        if r.failures >= max_failures && r.locked_until.is_none() {
            r.locked_until = Some(now + lockout);
            return true;
        }
        false
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_nth_failure_in_the_window_locks_for_the_lockout() {
        let f = Failures::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        for i in 0..4 {
            assert!(!f.record(a, t0 + Duration::from_secs(i), 5, MINUTE));
            assert_eq!(f.locked_for(a, t0 + Duration::from_secs(i)), None);
        }
        assert!(f.record(a, t0 + Duration::from_secs(10), 5, MINUTE), "the 5th failure locks");
        assert_eq!(f.locked_for(a, t0 + Duration::from_secs(10)), Some(MINUTE));
        assert_eq!(f.locked_for(a, t0 + Duration::from_secs(40)), Some(Duration::from_secs(30)));
        assert_eq!(f.locked_for(ip("192.0.2.8"), t0), None, "another address is not locked");
        // The lock ends; the address starts afresh.
        let later = t0 + Duration::from_secs(70);
        assert_eq!(f.locked_for(a, later), None);
        assert!(!f.record(a, later, 5, MINUTE), "a new window: one failure");
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock() {
        let f = Failures::default();
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        for i in 0..20 {
            assert!(!f.record(a, t0 + MINUTE * i / 3, 5, MINUTE), "failure {i}");
        }
        assert_eq!(f.locked_for(a, t0 + MINUTE * 7), None);
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_as_ipv4() {
        let f = Failures::default();
        let t0 = Instant::now();
        assert!(!f.record(ip("2001:db8:1:2::1"), t0, 2, MINUTE));
        assert!(f.record(ip("2001:db8:1:2:ffff::9"), t0, 2, MINUTE), "same /64");
        assert!(f.locked_for(ip("2001:db8:1:2::77"), t0).is_some());
        assert!(f.locked_for(ip("2001:db8:1:3::1"), t0).is_none(), "another /64");
        assert!(!f.record(ip("::ffff:192.0.2.9"), t0, 2, MINUTE));
        assert!(f.record(ip("192.0.2.9"), t0, 2, MINUTE), "mapped and plain are one address");
    }

    #[test]
    fn memory_is_bounded_and_the_least_recent_goes() {
        let f = Failures::with_capacity(NonZeroUsize::new(3).unwrap());
        let t0 = Instant::now();
        for last in 1..=5u8 {
            f.record(IpAddr::from([10, 0, 0, last]), t0, 1, MINUTE);
        }
        assert_eq!(f.len(), 3);
        assert!(f.locked_for(ip("10.0.0.1"), t0).is_none(), "forgotten");
        assert!(f.locked_for(ip("10.0.0.5"), t0).is_some());
    }
}
