//! The resolver against nameservers the tests run on 127.0.0.1 (`fake`): real sockets,
//! real DNS messages, the real helper thread.

use super::fake::{Asked, FakeDns, Out, Transport};
use super::wire::build::{a, aaaa, answer, cname, question};
use super::wire::Family;
use super::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use uring::Conns;

/// A directory for one test's files, removed after it.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Files {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-dns-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A resolver asking `servers`, with lookups of at most `timeout_ms`, the given
/// resolv.conf and hosts file texts.
fn resolver(servers: &[SocketAddr], timeout_ms: u64, resolv_conf: &str, hosts: &str) -> (Resolver, Files) {
    let files = Files::new();
    let mut cfg = Config::default();
    cfg.resolver.nameservers = servers.to_vec();
    cfg.resolver.timeout = Duration::from_millis(timeout_ms);
    cfg.resolver.resolv_conf = files.write("resolv.conf", resolv_conf);
    cfg.resolver.hosts_file = files.write("hosts", hosts);
    (Resolver::new(&cfg, 0).unwrap(), files)
}

fn ids(n: usize) -> (Conns<()>, Vec<ConnId>) {
    let mut c = Conns::new();
    let v = (0..n).map(|_| c.insert(())).collect();
    (c, v)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Polls the resolver until it resumes some connections; panics after `within`.
fn resumed(r: &mut Resolver, within: Duration) -> Vec<ConnId> {
    let start = Instant::now();
    while start.elapsed() < within {
        let got = r.on_wake(Instant::now());
        if !got.is_empty() {
            return got;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("no answer from the resolver within {within:?}");
}

/// The answer to `q` with `code` and `records`.
fn reply(q: &Message, code: ResponseCode, records: &[(&str, u32, RData)]) -> Vec<Out> {
    vec![Out::Reply(answer(q, code, records, false))]
}

/// A recursive server that knows `zone` (owner, TTL, record): it answers with the
/// CNAME chain from the name asked and the addresses of its end, says NXDOMAIN for a
/// name it does not know, and never answers the `silent` names.
fn server(zone: Vec<(&'static str, u32, RData)>, silent: &'static [&'static str]) -> FakeDns {
    FakeDns::start(move |q, _| {
        let (name, family) = question(q);
        if silent.contains(&name.as_str()) {
            return vec![];
        }
        let mut target = format!("{name}.");
        if !zone.iter().any(|(owner, _, _)| *owner == target) {
            return reply(q, ResponseCode::NXDomain, &[]);
        }
        let mut records: Vec<(&str, u32, RData)> = Vec::new();
        for _ in 0..8 {
            let owned = zone.iter().filter(|(owner, _, _)| *owner == target);
            if let Some((owner, ttl, data)) = owned.clone().find(|(_, _, d)| matches!(d, RData::CNAME(_))) {
                records.push((owner, *ttl, data.clone()));
                if let RData::CNAME(c) = data {
                    target = c.0.to_ascii();
                }
                continue;
            }
            let wanted = owned.filter(|(_, _, d)| match family {
                Family::V4 => matches!(d, RData::A(_)),
                Family::V6 => matches!(d, RData::AAAA(_)),
            });
            records.extend(wanted.map(|(o, t, d)| (*o, *t, d.clone())));
            break;
        }
        reply(q, ResponseCode::NoError, &records)
    })
}

#[test]
fn a_dead_name_delays_no_other() {
    let dns = server(vec![("live.test.", 60, a("192.0.2.10"))], &["dead.test"]);
    let (mut r, _f) = resolver(&[dns.addr], 3000, "", "");
    let (_c, id) = ids(2);
    let start = Instant::now();
    assert_eq!(r.lookup("dead.test", id[0], start), Lookup::Pending);
    assert_eq!(r.lookup("live.test", id[1], start), Lookup::Pending);
    assert_eq!(r.in_flight(), 2);
    // The live name is answered while the dead one's nameserver stays silent.
    assert_eq!(resumed(&mut r, Duration::from_secs(2)), vec![id[1]]);
    assert!(start.elapsed() < Duration::from_secs(1), "the live name waited {:?}", start.elapsed());
    assert_eq!(r.lookup("live.test", id[1], Instant::now()), Lookup::Ready(vec![ip("192.0.2.10")]));
    assert_eq!(r.in_flight(), 1, "the dead name is still being resolved");
}

#[test]
fn a_lookup_that_times_out_fails_and_the_failure_is_cached() {
    let dns = server(vec![], &["dead.test"]);
    let (mut r, _f) = resolver(&[dns.addr], 400, "", "");
    let (_c, id) = ids(1);
    let start = Instant::now();
    assert_eq!(r.lookup("dead.test", id[0], start), Lookup::Pending);
    assert_eq!(resumed(&mut r, Duration::from_secs(3)), id);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(2), "timed out after {took:?}");
    let failed = r.lookup("dead.test", id[0], Instant::now());
    assert_eq!(failed, Lookup::Failed("cannot resolve dead.test: no answer from the nameservers in time".into()));
    // Two tries (the default two attempts at the one server), A and AAAA each.
    let asked = dns.count("dead.test");
    assert_eq!(asked, 4, "{:?}", dns.asked());
    // Cached: asked again, the failure comes back without a query.
    assert_eq!(r.lookup("dead.test", id[0], Instant::now()), failed);
    assert_eq!(dns.count("dead.test"), asked);
    assert_eq!((r.stats.ended(Ended::Timeout), r.in_flight()), (1, 0));
    // ... for the negative TTL only.
    assert_eq!(r.lookup("dead.test", id[0], Instant::now() + NEGATIVE_TTL), Lookup::Pending);
}

#[test]
fn nxdomain_fails_and_is_cached() {
    let dns = server(vec![], &[]);
    let (mut r, _f) = resolver(&[dns.addr], 3000, "", "");
    let (_c, id) = ids(1);
    assert_eq!(r.lookup("nope.test", id[0], Instant::now()), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    let failed = Lookup::Failed("cannot resolve nope.test: no such host".into());
    assert_eq!(r.lookup("nope.test", id[0], Instant::now()), failed);
    let asked = dns.count("nope.test");
    assert_eq!(r.lookup("nope.test", id[0], Instant::now()), failed);
    assert_eq!(dns.count("nope.test"), asked, "the failure came from the cache");
    assert_eq!(r.stats.ended(Ended::NotFound), 1);
}

#[test]
fn a_cname_chain_is_followed_and_its_ttl_respected() {
    let dns = server(
        vec![
            ("www.test.", 300, cname("edge.cdn.test.")),
            ("edge.cdn.test.", 42, a("192.0.2.7")),
            ("edge.cdn.test.", 42, aaaa("2001:db8::7")),
            ("short.test.", 1, a("192.0.2.8")),
        ],
        &[],
    );
    let (mut r, _f) = resolver(&[dns.addr], 3000, "", "");
    let (_c, id) = ids(1);
    let now = Instant::now();
    assert_eq!(r.lookup("www.test", id[0], now), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    assert_eq!(r.lookup("www.test", id[0], now), Lookup::Ready(vec![ip("192.0.2.7"), ip("2001:db8::7")]));
    let kept = r.cache.peek("www.test").unwrap().expires.saturating_duration_since(now);
    let shortest = Duration::from_secs(42);
    assert!(kept.abs_diff(shortest) < Duration::from_secs(2), "kept {kept:?}, not the chain's shortest TTL");
    // A TTL under the floor is raised to it.
    assert_eq!(r.lookup("short.test", id[0], now), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    let kept = r.cache.peek("short.test").unwrap().expires.saturating_duration_since(now);
    assert!(kept >= MIN_TTL, "kept {kept:?}");
}

#[test]
fn a_truncated_answer_is_asked_again_over_tcp() {
    let dns = FakeDns::start(|q, transport| match (transport, question(q).1) {
        (Transport::Udp, _) => vec![Out::Reply(answer(q, ResponseCode::NoError, &[], true))],
        (Transport::Tcp, Family::V4) => reply(q, ResponseCode::NoError, &[("big.test.", 60, a("192.0.2.33"))]),
        (Transport::Tcp, Family::V6) => reply(q, ResponseCode::NoError, &[]),
    });
    let (mut r, _f) = resolver(&[dns.addr], 3000, "", "");
    let (_c, id) = ids(1);
    assert_eq!(r.lookup("big.test", id[0], Instant::now()), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    assert_eq!(r.lookup("big.test", id[0], Instant::now()), Lookup::Ready(vec![ip("192.0.2.33")]));
    let tcp: Vec<Asked> = dns.asked().into_iter().filter(|a| a.transport == Transport::Tcp).collect();
    assert_eq!(tcp.len(), 2, "A and AAAA asked again over TCP: {:?}", dns.asked());
}

#[test]
fn answers_not_to_the_question_asked_are_ignored() {
    let dns = FakeDns::start(|q, _| {
        let (_, family) = question(q);
        if family == Family::V6 {
            return reply(q, ResponseCode::NoError, &[]);
        }
        let forged = [("real.test.", 60, a("10.6.6.6"))];
        let mut wrong_id = q.clone();
        wrong_id.metadata.id = q.metadata.id.wrapping_add(1);
        let mut other_question = q.clone();
        other_question.queries[0].set_name(hickory_proto::rr::Name::from_ascii("other.test.").unwrap());
        vec![
            // Sent first, each would be taken if the resolver did not check it.
            Out::Reply(answer(&wrong_id, ResponseCode::NoError, &forged, false)),
            Out::Reply(answer(&other_question, ResponseCode::NoError, &[("other.test.", 60, a("10.6.6.6"))], false)),
            Out::FromElsewhere(answer(q, ResponseCode::NoError, &forged, false)),
            Out::Reply(b"\x12\x34 not a DNS message".to_vec()),
            Out::Reply(answer(q, ResponseCode::NoError, &[("real.test.", 60, a("192.0.2.44"))], false)),
        ]
    });
    let (mut r, _f) = resolver(&[dns.addr], 3000, "", "");
    let (_c, id) = ids(1);
    assert_eq!(r.lookup("real.test", id[0], Instant::now()), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    assert_eq!(r.lookup("real.test", id[0], Instant::now()), Lookup::Ready(vec![ip("192.0.2.44")]));
}

#[test]
fn past_max_pending_a_new_name_fails_at_once() {
    let dns = server(vec![], &["a.test", "b.test", "c.test"]);
    let (mut r, _f) = resolver(&[dns.addr], 3000, "", "");
    r.max_pending = 2;
    let (_c, id) = ids(3);
    let now = Instant::now();
    assert_eq!(r.lookup("a.test", id[0], now), Lookup::Pending);
    assert_eq!(r.lookup("b.test", id[1], now), Lookup::Pending);
    assert_eq!(
        r.lookup("c.test", id[2], now),
        Lookup::Failed("cannot resolve c.test: resolver busy (2 names being resolved)".into())
    );
    // A name already being resolved still takes more waiters.
    assert_eq!(r.lookup("a.test", id[2], now), Lookup::Pending);
    assert_eq!((r.stats.ended(Ended::Busy), r.in_flight()), (1, 2));
}

#[test]
fn a_lookup_nobody_waits_for_is_dropped() {
    let dns = server(vec![], &["gone.test", "control.test"]);
    // Two tries: the second 1 s after the first.
    let (mut r, _f) = resolver(&[dns.addr], 2000, "", "");
    let (_c, id) = ids(3);
    let now = Instant::now();
    assert_eq!(r.lookup("gone.test", id[0], now), Lookup::Pending);
    assert_eq!(r.lookup("gone.test", id[1], now), Lookup::Pending);
    assert_eq!(r.lookup("control.test", id[2], now), Lookup::Pending);
    r.forget("gone.test", id[0]);
    assert_eq!(r.in_flight(), 2, "one connection still waits for gone.test");
    r.forget("gone.test", id[1]);
    assert_eq!((r.in_flight(), r.stats.ended(Ended::Abandoned)), (1, 1));
    // Once the control name was asked again (its second try), gone.test would have been too.
    let retried = support_wait(Duration::from_secs(3), || dns.count("control.test") >= 4);
    assert!(retried, "control.test was not retried: {:?}", dns.asked());
    assert_eq!(dns.count("gone.test"), 2, "the abandoned lookup was retried: {:?}", dns.asked());
    // Its answer will never come: nothing resumes the connections that left.
    assert!(r.on_wake(Instant::now()).is_empty());
}

fn support_wait(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn the_hosts_file_is_honoured_and_read_again_when_it_changes() {
    let dns = server(vec![], &[]);
    let (mut r, files) = resolver(&[dns.addr], 3000, "", "192.0.2.50 files.test alias.test\n");
    let (_c, id) = ids(1);
    assert_eq!(r.lookup("files.test", id[0], Instant::now()), Lookup::Ready(vec![ip("192.0.2.50")]));
    assert_eq!(r.lookup("alias.test.", id[0], Instant::now()), Lookup::Ready(vec![ip("192.0.2.50")]));
    files.write("hosts", "192.0.2.51 files.test\n::1 v6.test\n");
    let seen = support_wait(Duration::from_secs(5), || {
        r.on_wake(Instant::now());
        r.lookup("files.test", id[0], Instant::now()) == Lookup::Ready(vec![ip("192.0.2.51")])
    });
    assert!(seen, "the changed hosts file was not read again");
    assert_eq!(r.lookup("v6.test", id[0], Instant::now()), Lookup::Ready(vec![ip("::1")]));
    assert!(dns.asked().is_empty(), "names of the hosts file went to DNS: {:?}", dns.asked());
}

#[test]
fn search_domains_are_tried_as_resolv_conf_says() {
    let dns = server(vec![("intranet.corp.test.", 60, a("192.0.2.60"))], &[]);
    let (mut r, _f) = resolver(&[dns.addr], 3000, "search corp.test\noptions ndots:1 no-aaaa\n", "");
    let (_c, id) = ids(1);
    assert_eq!(r.lookup("intranet", id[0], Instant::now()), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    assert_eq!(r.lookup("intranet", id[0], Instant::now()), Lookup::Ready(vec![ip("192.0.2.60")]));
    // A name with a dot is asked as it is first, then with the suffix.
    assert_eq!(r.lookup("www.nx", id[0], Instant::now()), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    assert_eq!(r.lookup("www.nx", id[0], Instant::now()), Lookup::Failed("cannot resolve www.nx: no such host".into()));
    let names: Vec<String> = dns.asked().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["intranet.corp.test", "www.nx", "www.nx.corp.test"], "no-aaaa: A queries only");
}

#[test]
fn a_failing_nameserver_hands_over_to_the_next_at_once() {
    let failing = FakeDns::start(|q, _| reply(q, ResponseCode::ServFail, &[]));
    let good = server(vec![("ok.test.", 60, a("192.0.2.70"))], &[]);
    // Four tries (two rounds over two servers) in 4 s: 1 s apart unless one fails.
    let (mut r, _f) = resolver(&[failing.addr, good.addr], 4000, "", "");
    let (_c, id) = ids(1);
    let start = Instant::now();
    assert_eq!(r.lookup("ok.test", id[0], start), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_millis(800), "took {:?}", start.elapsed());
    assert_eq!(r.lookup("ok.test", id[0], Instant::now()), Lookup::Ready(vec![ip("192.0.2.70")]));

    // Every server failing: the lookup fails as soon as the last try did.
    let (mut r, _f) = resolver(&[failing.addr], 4000, "", "");
    let start = Instant::now();
    assert_eq!(r.lookup("any.test", id[0], start), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_millis(800), "took {:?}", start.elapsed());
    let failed = Lookup::Failed("cannot resolve any.test: nameserver failure (SERVFAIL)".into());
    assert_eq!(r.lookup("any.test", id[0], Instant::now()), failed);
    assert_eq!(r.stats.ended(Ended::Failed), 1);
}

#[test]
fn a_nameserver_port_with_nothing_behind_it_fails_fast() {
    // A port nothing listens on: the kernel's ICMP "port unreachable" ends each try.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (mut r, _f) = resolver(&[closed], 4000, "", "");
    let (_c, id) = ids(1);
    let start = Instant::now();
    assert_eq!(r.lookup("any.test", id[0], start), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_millis(800), "took {:?}", start.elapsed());
    let failed = Lookup::Failed("cannot resolve any.test: no nameserver could be reached".into());
    assert_eq!(r.lookup("any.test", id[0], Instant::now()), failed);
}

#[test]
fn literals_pins_and_special_names_answer_at_once() {
    let mut cfg = Config::default();
    cfg.resolve.push(("origin.test".into(), "127.0.0.9".parse().unwrap()));
    cfg.resolver.hosts_file = PathBuf::from("/nonexistent/hosts");
    let mut r = Resolver::new(&cfg, 0).unwrap();
    let (_c, id) = ids(1);
    let now = Instant::now();
    assert_eq!(r.lookup("10.1.2.3", id[0], now), Lookup::Ready(vec![ip("10.1.2.3")]));
    assert_eq!(r.lookup("::1", id[0], now), Lookup::Ready(vec![ip("::1")]));
    assert_eq!(r.lookup("origin.test", id[0], now), Lookup::Ready(vec![ip("127.0.0.9")]));
    assert_eq!(r.lookup("origin.test.", id[0], now), Lookup::Ready(vec![ip("127.0.0.9")]));
    let loopback = Lookup::Ready(vec![ip("127.0.0.1"), ip("::1")]);
    assert_eq!(r.lookup("localhost", id[0], now), loopback);
    assert_eq!(r.lookup("app.localhost", id[0], now), loopback);
    assert_eq!(r.lookup("x.invalid", id[0], now), Lookup::Failed("cannot resolve x.invalid: no such host".into()));
    assert!(matches!(r.lookup("a..b", id[0], now), Lookup::Failed(e) if e.contains("1 to 63 characters")));
    assert!(matches!(r.lookup(&"a".repeat(254), id[0], now), Lookup::Failed(e) if e.contains("1 to 253")));
    assert_eq!(r.in_flight(), 0, "nothing was sent");
}

#[test]
fn a_reload_points_the_resolver_elsewhere() {
    let first = server(vec![("moved.test.", 60, a("192.0.2.1"))], &[]);
    let second = server(vec![("moved.test.", 60, a("192.0.2.2"))], &[]);
    let (mut r, files) = resolver(&[first.addr], 3000, "", "");
    let mut cfg = Config::default();
    cfg.resolver.nameservers = vec![second.addr];
    cfg.resolver.resolv_conf = files.dir.join("resolv.conf");
    cfg.resolver.hosts_file = files.dir.join("hosts");
    r.set_config(&cfg);
    let (_c, id) = ids(1);
    assert_eq!(r.lookup("moved.test", id[0], Instant::now()), Lookup::Pending);
    resumed(&mut r, Duration::from_secs(2));
    assert_eq!(r.lookup("moved.test", id[0], Instant::now()), Lookup::Ready(vec![ip("192.0.2.2")]));
    assert_eq!(first.count("moved.test"), 0);
}

#[test]
fn a_full_cache_keeps_its_recent_names() {
    let mut cfg = Config::default();
    cfg.resolver.hosts_file = PathBuf::from("/nonexistent/hosts");
    let mut r = Resolver::new(&cfg, 0).unwrap();
    r.cache = LruCache::new(NonZeroUsize::new(3).unwrap());
    let (_c, id) = ids(1);
    let now = Instant::now();
    let found = |s: &str| -> Outcome { Ok(inflight::Resolved { ips: vec![ip(s)], ttl: Duration::from_secs(60) }) };
    let absent = Err(inflight::Failure { kind: FailureKind::NotFound, text: "no such host".into() });
    r.store("a.test".into(), found("10.0.0.1"), now);
    r.store("b.test".into(), found("10.0.0.2"), now);
    r.store("c.test".into(), absent, now);
    assert_eq!(r.lookup("a.test", id[0], now), Lookup::Ready(vec![ip("10.0.0.1")]), "a is now the most recent");
    r.store("d.test".into(), found("10.0.0.4"), now); // full: b, used least recently, goes
    assert_eq!(r.lookup("a.test", id[0], now), Lookup::Ready(vec![ip("10.0.0.1")]));
    assert_eq!(r.lookup("c.test", id[0], now), Lookup::Failed("cannot resolve c.test: no such host".into()));
    assert_eq!(r.lookup("d.test", id[0], now), Lookup::Ready(vec![ip("10.0.0.4")]));
    assert_eq!(r.stats.cache_hits, 4);
    assert!(!r.cache.contains("b.test"), "the least recently used name was evicted");
    assert_eq!(r.cache.len(), 3);
}
