//! Name resolution end to end: `sluice` pointed at a nameserver this test runs on
//! 127.0.0.1 (`resolver.nameservers`), real DNS messages over UDP, curl as the client.
//!
//! - A name whose nameserver never answers delays no other client's name, and the
//!   lookups in flight show in `sluice_dns_lookups_in_flight`; it fails when
//!   `resolver.timeout` runs out, counted as a timeout.
//! - A lookup whose clients all gave up (504 at `timeouts.upstream_connect`) is
//!   dropped (`abandoned`), and past `resolver.max_pending` names a new one fails at
//!   once ("resolver busy").
//! - Answers are cached for their TTL, failures (NXDOMAIN) for 5 s.
//! - Names of the hosts file (`resolver.hosts_file`) need no DNS, and a change to the
//!   file is seen without a restart.
//!
//! No query leaves the machine: every name here is answered by the test's nameserver,
//! the hosts file, or locally (`.invalid`, `localhost`).

mod support;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// What the test nameserver does for a name (any other name: NXDOMAIN).
#[derive(Clone, Copy, Debug)]
enum Entry {
    /// An A record with this TTL (and no AAAA).
    Addr(Ipv4Addr, u32),
    /// Never answers.
    Silent,
}

/// A nameserver on 127.0.0.1 whose zone the test changes as it goes; it counts the
/// queries it got per name.
struct Nameserver {
    addr: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Entry>>>,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Nameserver {
    fn start(zone: &[(&str, Entry)]) -> Nameserver {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone.iter().map(|(n, e)| (n.to_string(), *e)).collect()));
        let queries = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, q, s) = (zone.clone(), queries.clone(), stop.clone());
        let thread = thread::spawn(move || serve(sock, &z, &q, &s));
        Nameserver { addr, zone, queries, stop, thread: Some(thread) }
    }

    fn set(&self, name: &str, entry: Entry) {
        self.zone.lock().unwrap().insert(name.to_string(), entry);
    }

    fn queries(&self, name: &str) -> usize {
        self.queries.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    fn total_queries(&self) -> usize {
        self.queries.lock().unwrap().values().sum()
    }
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    sock: UdpSocket,
    zone: &Mutex<HashMap<String, Entry>>,
    queries: &Mutex<HashMap<String, usize>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
        let Some(q) = query.queries.first() else { continue };
        let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        *queries.lock().unwrap().entry(name.clone()).or_default() += 1;
        let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata.recursion_desired = true;
        reply.metadata.recursion_available = true;
        reply.add_queries(query.queries.iter().cloned());
        let entry = zone.lock().unwrap().get(&name).copied();
        match entry {
            Some(Entry::Silent) => continue,
            None => reply.metadata.response_code = ResponseCode::NXDomain,
            Some(Entry::Addr(ip, ttl)) => {
                if q.query_type() == RecordType::A {
                    reply.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::A(A(ip))));
                }
            }
        }
        let _ = sock.send_to(&reply.to_vec().unwrap(), from);
    }
}

/// A proxy with one worker (the cache and the queue are per worker) resolving through
/// `dns`, pooling nothing (a pooled connection is reused without a lookup), with `extra`
/// config lines appended to its `[resolver]` table.
fn proxy(dns: &Nameserver, extra: &str, upstream_connect_secs: u32) -> Proxy {
    let config = format!(
        "[pool]\nmax_idle_per_host = 0\n[timeouts]\nupstream_connect = {upstream_connect_secs}\n\
         [resolver]\nnameservers = [\"{}\"]\n{extra}",
        dns.addr
    );
    Proxy::builder(&config).workers(1).start()
}

fn get(proxy: &Proxy, url: &str) -> CurlOut {
    curl(Some(proxy), &[url])
}

/// One sample of `family{label="value"}` in the proxy's /metrics.
fn labelled(proxy: &Proxy, family: &str, label: &str, value: &str) -> f64 {
    let text = proxy.metrics().unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("{family}{{{label}=\"{value}\"}} ");
    let line = text.lines().find(|l| l.starts_with(&prefix));
    line.and_then(|l| l[prefix.len()..].trim().parse().ok()).unwrap_or(0.0)
}

/// Waits for `family{label="value"}` to reach `want`.
fn wait_labelled(proxy: &Proxy, family: &str, label: &str, value: &str, want: f64) {
    let ok = wait_until(Duration::from_secs(10), || labelled(proxy, family, label, value) == want);
    let now = labelled(proxy, family, label, value);
    assert!(ok, "{family}{{{label}=\"{value}\"}} is {now}, expected {want}");
}

#[test]
fn a_dead_name_does_not_delay_a_live_one() {
    let origin = Origin::start();
    let dns = Nameserver::start(&[
        ("dead.sluice.test", Entry::Silent),
        ("live.sluice.test", Entry::Addr(Ipv4Addr::LOCALHOST, 60)),
    ]);
    // The dead name fails after resolver.timeout (3 s), before the connect deadline.
    let proxy = proxy(&dns, "timeout = 3\n", 8);
    let dead_url = format!("http://dead.sluice.test:{}/bytes/3", origin.port());
    let dead = {
        let proxy_url = proxy.url();
        thread::spawn(move || curl_opts(None, &["-x", &proxy_url, &dead_url], None))
    };
    // The dead name is being resolved: the gauge shows it.
    proxy
        .wait_metric("sluice_dns_lookups_in_flight", Duration::from_secs(5), |v| v == 1.0)
        .unwrap_or_else(|e| panic!("the dead name's lookup is not in flight: {e}"));
    let t0 = Instant::now();
    get(&proxy, &format!("http://live.sluice.test:{}/bytes/3", origin.port())).expect_status(200);
    let live_took = t0.elapsed();
    assert!(live_took < Duration::from_secs(1), "the live name waited {live_took:?} behind the dead one");
    let dead = dead.join().unwrap();
    assert_eq!(dead.status, 502, "{}", dead.describe());
    let body = String::from_utf8_lossy(&dead.body);
    assert!(body.contains("cannot resolve dead.sluice.test: no answer from the nameservers in time"), "{body}");
    assert!(dead.elapsed >= Duration::from_secs(3), "{}", dead.describe());
    wait_labelled(&proxy, "sluice_dns_lookups_total", "result", "timeout", 1.0);
    assert_eq!(labelled(&proxy, "sluice_dns_lookups_total", "result", "ok"), 1.0);
    proxy
        .wait_metric("sluice_dns_lookups_in_flight", Duration::from_secs(5), |v| v == 0.0)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_lookup_its_clients_gave_up_on_is_dropped_and_the_queue_is_bounded() {
    let dns = Nameserver::start(&[("dead.sluice.test", Entry::Silent), ("other.sluice.test", Entry::Silent)]);
    // The client gives up (504) after 1 s, long before the lookup's own 30 s; one name
    // at a time.
    let proxy = proxy(&dns, "timeout = 30\nmax_pending = 1\n", 1);
    let dead = {
        let proxy_url = proxy.url();
        thread::spawn(move || curl_opts(None, &["-x", &proxy_url, "http://dead.sluice.test/"], None))
    };
    proxy
        .wait_metric("sluice_dns_lookups_in_flight", Duration::from_secs(5), |v| v == 1.0)
        .unwrap_or_else(|e| panic!("{e}"));
    // The queue is full: another name fails at once.
    let busy = get(&proxy, "http://other.sluice.test/");
    assert_eq!(busy.status, 502, "{}", busy.describe());
    assert!(String::from_utf8_lossy(&busy.body).contains("resolver busy"), "{}", busy.describe());
    assert!(busy.elapsed < Duration::from_millis(900), "{}", busy.describe());
    assert_eq!(dns.queries("other.sluice.test"), 0);
    // The dead name's client times out; nobody waits for the name any more.
    let dead = dead.join().unwrap();
    assert_eq!(dead.status, 504, "{}", dead.describe());
    wait_labelled(&proxy, "sluice_dns_lookups_total", "result", "abandoned", 1.0);
    assert_eq!(labelled(&proxy, "sluice_dns_lookups_total", "result", "busy"), 1.0);
    proxy
        .wait_metric("sluice_dns_lookups_in_flight", Duration::from_secs(5), |v| v == 0.0)
        .unwrap_or_else(|e| panic!("the abandoned lookup is still in flight: {e}"));
    // Room again: the next name is asked.
    let next = get(&proxy, "http://other.sluice.test/");
    assert_eq!(next.status, 504, "{}", next.describe());
    assert!(dns.queries("other.sluice.test") > 0);
}

#[test]
fn answers_are_cached_for_their_ttl_and_failures_for_five_seconds() {
    let (second, first) = origins_on_one_port();
    let port = first.port();
    let dns = Nameserver::start(&[("cached.sluice.test", Entry::Addr(Ipv4Addr::LOCALHOST, 60))]);
    let proxy = proxy(&dns, "", 3);

    // Positive: resolved once, then served from the cache after the name moved.
    let cached = format!("http://cached.sluice.test:{port}/bytes/3");
    get(&proxy, &cached).expect_status(200);
    dns.set("cached.sluice.test", Entry::Addr(Ipv4Addr::new(127, 0, 0, 2), 60));
    get(&proxy, &cached).expect_status(200);
    assert_eq!((first.accepts(), second.accepts()), (2, 0), "the second request saw the name's new address");
    assert_eq!(dns.queries("cached.sluice.test"), 2, "one lookup: A and AAAA");
    // The parked request took the answer from the cache, then the repeat did (counters
    // are published on the worker's 100 ms tick).
    proxy
        .wait_metric("sluice_dns_cache_hits_total", Duration::from_secs(5), |v| v == 2.0)
        .unwrap_or_else(|e| panic!("{e}"));

    // Negative: NXDOMAIN; once the name exists, it still fails from the cache for 5 s.
    let late = format!("http://late.sluice.test:{port}/bytes/3");
    let failed_at = Instant::now();
    let out = get(&proxy, &late);
    assert_eq!(out.status, 502, "{}", out.describe());
    assert!(String::from_utf8_lossy(&out.body).contains("cannot resolve late.sluice.test: no such host"));
    dns.set("late.sluice.test", Entry::Addr(Ipv4Addr::LOCALHOST, 60));
    let out = get(&proxy, &late);
    assert_eq!(out.status, 502, "a failure was not cached: {}", out.describe());
    assert_eq!(proxy.metric("sluice_dns_failures_total").unwrap(), 2.0);
    let resolved = wait_until(Duration::from_secs(10), || {
        thread::sleep(Duration::from_millis(200));
        get(&proxy, &late).status == 200
    });
    assert!(resolved, "late.sluice.test still fails {:?} after its failed lookup", failed_at.elapsed());
    assert!(failed_at.elapsed() >= Duration::from_secs(5), "a failure was cached for only {:?}", failed_at.elapsed());
    assert_eq!(second.accepts(), 0);
}

#[test]
fn names_of_the_hosts_file_need_no_dns_and_its_changes_are_seen() {
    let (second, first) = origins_on_one_port();
    let port = first.port();
    let dns = Nameserver::start(&[]);
    let dir = TempDir::new("hosts");
    let hosts = dir.write("hosts", "127.0.0.1 files.sluice.test\n");
    let proxy = proxy(&dns, &format!("hosts_file = \"{}\"\n", hosts.display()), 3);
    let url = format!("http://files.sluice.test:{port}/bytes/3");
    get(&proxy, &url).expect_status(200);
    // `localhost` is not in this hosts file: it is loopback all the same.
    get(&proxy, &format!("http://localhost:{port}/bytes/3")).expect_status(200);
    assert_eq!(first.accepts(), 2);
    // The file changes: the new address is used without a restart or a reload.
    dir.write("hosts", "127.0.0.2 files.sluice.test # moved\n");
    let moved = wait_until(Duration::from_secs(5), || {
        get(&proxy, &url).expect_status(200);
        second.accepts() == 1
    });
    assert!(moved, "the changed hosts file was not read again");
    assert_eq!(dns.total_queries(), 0, "a name of the hosts file was asked of DNS");
    assert_eq!(proxy.metric("sluice_dns_cache_misses_total").unwrap(), 0.0);
}

#[test]
fn a_name_that_cannot_exist_is_502_at_once_and_counted_as_a_dns_failure() {
    let dns = Nameserver::start(&[]);
    let proxy = proxy(&dns, "", 3);
    // `.invalid` never exists (RFC 6761): answered without asking anyone.
    let url = "http://no-such-host.invalid:8080/";
    let out = get(&proxy, url);
    assert_eq!(out.status, 502, "{}", out.describe());
    let body = String::from_utf8_lossy(&out.body);
    assert!(body.contains("cannot resolve no-such-host.invalid: no such host"), "{}", out.describe());
    // Counted when the lookup failed, before the 502 was written; the counter counts
    // requests that failed to resolve.
    assert_eq!(proxy.metric("sluice_dns_failures_total").unwrap(), 1.0, "after one failed lookup");
    get(&proxy, url).expect_status(502);
    assert_eq!(proxy.metric("sluice_dns_failures_total").unwrap(), 2.0, "after a second failed lookup");
    assert_eq!(dns.total_queries(), 0);
}

/// Origins on 127.0.0.2 and 127.0.0.1 on one port, so where a name points shows in
/// which one is connected to.
fn origins_on_one_port() -> (Origin, Origin) {
    for _ in 0..20 {
        let second = Origin::start_on(([127, 0, 0, 2], 0).into());
        let port = second.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return (second, Origin::start_on(([127, 0, 0, 1], port).into()));
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}
