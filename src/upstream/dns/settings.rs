//! Where the resolver sends its queries and how patiently: the operator's `[resolver]`
//! keys over the stub resolver file (`/etc/resolv.conf`), read as glibc reads it:
//! `nameserver` (at most 3; 127.0.0.1 when there is none), `search`/`domain` (the last
//! one wins, at most 6 suffixes), and `options ndots: timeout: attempts: rotate edns0
//! no-aaaa`.
//!
//! One lookup lasts at most `resolver.timeout`. Within it, tries go round the
//! nameservers (`attempts` rounds); a try that has no answer after `options timeout`
//! (or its share of `resolver.timeout`, if shorter) is followed by one to the next
//! nameserver, and an answer to an earlier try still counts.

use super::wire;
use crate::config::ResolverConfig;
use hickory_proto::rr::Name;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// glibc's limits (resolv.h: MAXNS, MAXDNSRCH, RES_MAXNDOTS, RES_MAXRETRANS, RES_MAXRETRY).
const MAX_SERVERS: usize = 3;
const MAX_SEARCH: usize = 6;
const MAX_NDOTS: u32 = 15;
const MAX_TRY_SECS: u32 = 30;
const MAX_ATTEMPTS: u32 = 5;
/// The shortest wait before the next try.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// What the settings are made from: the config's keys (the file is read by the helper).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Source {
    pub resolv_conf: PathBuf,
    pub hosts_file: PathBuf,
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl Source {
    pub(crate) fn of(cfg: &ResolverConfig) -> Source {
        Source {
            resolv_conf: cfg.resolv_conf.clone(),
            hosts_file: cfg.hosts_file.clone(),
            nameservers: cfg.nameservers.clone(),
            timeout: cfg.timeout,
        }
    }
}

/// The settings a lookup runs with.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Settings {
    pub servers: Vec<SocketAddr>,
    /// Suffixes tried for a name with fewer than `ndots` dots (before the name itself),
    /// or after the name itself when it has more.
    pub search: Vec<String>,
    pub ndots: usize,
    /// The longest one lookup lasts.
    pub timeout: Duration,
    /// How long a try waits alone before the next one starts.
    pub retry_after: Duration,
    /// Tries per name: `attempts` rounds over the nameservers.
    pub tries: usize,
    /// Start each lookup at the next nameserver (`options rotate`).
    pub rotate: bool,
    pub edns: bool,
    /// Ask for IPv6 addresses too (no `options no-aaaa`).
    pub aaaa: bool,
}

impl Settings {
    /// The settings from `source` and the stub resolver file's text (empty: missing).
    pub(super) fn new(source: &Source, resolv_conf: &str) -> Settings {
        let (mut conf, errors) = resolv_conf::Config::parse_with_errors(resolv_conf.as_bytes());
        if let Some(e) = errors.first() {
            tracing::warn!(file = %source.resolv_conf.display(), error = %e, "resolver: a line was skipped");
        }
        conf.glibc_normalize();
        let servers = if source.nameservers.is_empty() {
            let from_file: Vec<SocketAddr> = conf
                .nameservers
                .iter()
                .map(|ns| SocketAddr::new(IpAddr::from(ns), 53))
                .filter(|a| !a.ip().is_unspecified())
                .take(MAX_SERVERS)
                .collect();
            if from_file.is_empty() {
                vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)]
            } else {
                from_file
            }
        } else {
            source.nameservers.clone()
        };
        let search: Vec<String> = conf
            .get_last_search_or_domain()
            .map(|d| d.trim_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty() && wire::check_host(d).is_ok())
            .take(MAX_SEARCH)
            .collect();
        let tries = (conf.attempts.clamp(1, MAX_ATTEMPTS) as usize) * servers.len();
        let per_try = Duration::from_secs(conf.timeout.clamp(1, MAX_TRY_SECS).into());
        let share = source.timeout / tries as u32;
        Settings {
            servers,
            search,
            ndots: conf.ndots.min(MAX_NDOTS) as usize,
            timeout: source.timeout,
            retry_after: per_try.min(share).max(MIN_RETRY),
            tries,
            rotate: conf.rotate,
            edns: conf.edns0,
            aaaa: !conf.no_aaaa,
        }
    }

    /// The absolute names to ask for `host`, in order (glibc's `res_search`): a name
    /// with a trailing dot alone; else the name itself first when it has at least
    /// `ndots` dots, the search suffixes, then the name itself when it has fewer.
    pub(super) fn names(&self, host: &str) -> Vec<Name> {
        if host.ends_with('.') {
            return wire::absolute(host, None).into_iter().collect();
        }
        let as_is = host.matches('.').count() >= self.ndots;
        let suffixed = self.search.iter().filter_map(|s| wire::absolute(host, Some(s)));
        let mut names: Vec<Name> = Vec::new();
        let itself = wire::absolute(host, None);
        if as_is {
            names.extend(itself.clone());
        }
        names.extend(suffixed);
        if !as_is {
            names.extend(itself);
        }
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(nameservers: &[&str], timeout_ms: u64) -> Source {
        Source {
            resolv_conf: PathBuf::from("/nonexistent/resolv.conf"),
            hosts_file: PathBuf::from("/nonexistent/hosts"),
            nameservers: nameservers.iter().map(|s| s.parse().unwrap()).collect(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn names(s: &Settings, host: &str) -> Vec<String> {
        s.names(host).iter().map(|n| n.to_ascii()).collect()
    }

    #[test]
    fn glibc_defaults_without_a_file() {
        let s = Settings::new(&source(&[], 5000), "");
        assert_eq!(s.servers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!((s.ndots, s.tries, s.rotate, s.edns, s.aaaa), (1, 2, false, false, true));
        assert_eq!(s.retry_after, Duration::from_millis(2500), "two tries share the 5 s lookup");
        assert!(s.search.is_empty());
    }

    #[test]
    fn resolv_conf_is_honoured() {
        let text = "# comment\nnameserver 192.0.2.1\nnameserver 2001:db8::53\nnameserver 192.0.2.2\n\
                    nameserver 192.0.2.3\ndomain old.test\nsearch corp.test lab.corp.test\n\
                    options ndots:2 timeout:1 attempts:3 rotate edns0 no-aaaa\n";
        let s = Settings::new(&source(&[], 10_000), text);
        let addrs: Vec<SocketAddr> =
            ["192.0.2.1:53", "[2001:db8::53]:53", "192.0.2.2:53"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(s.servers, addrs, "at most three, port 53");
        assert_eq!(s.search, vec!["corp.test".to_string(), "lab.corp.test".to_string()], "the last of search/domain");
        assert_eq!((s.ndots, s.tries, s.rotate, s.edns, s.aaaa), (2, 9, true, true, false));
        assert_eq!(s.retry_after, Duration::from_millis(1000 * 10 / 9).min(Duration::from_secs(1)));
        // The operator's nameservers win over the file's; its options still count.
        let s = Settings::new(&source(&["127.0.0.1:5353"], 10_000), text);
        assert_eq!(s.servers, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!((s.tries, s.retry_after), (3, Duration::from_secs(1)));
    }

    #[test]
    fn search_order_follows_ndots() {
        let s = Settings::new(&source(&[], 5000), "search corp.test\noptions ndots:2\n");
        assert_eq!(names(&s, "intranet"), ["intranet.corp.test.", "intranet."]);
        assert_eq!(names(&s, "a.b"), ["a.b.corp.test.", "a.b."]);
        assert_eq!(names(&s, "www.example.com"), ["www.example.com.", "www.example.com.corp.test."]);
        assert_eq!(names(&s, "rooted.test."), ["rooted.test."]);
        let plain = Settings::new(&source(&[], 5000), "");
        assert_eq!(names(&plain, "intranet"), ["intranet."]);
    }
}
