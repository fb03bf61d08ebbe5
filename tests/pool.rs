//! The per-worker pool of upstream connections (`[pool]`): on the defaults a burst keeps
//! the connections it needed for the next one (no churn); idle ones capped per host
//! (`max_idle_per_host`) and per worker across hosts (`max_idle_total`, the oldest
//! evicted), closed after `idle_timeout` by the worker's periodic sweep with no request
//! needed; past `max_connections_per_host` requests queue for a connection instead of
//! opening more, and time out with 504; queued requests wait without their buffers and
//! lose no byte. What the pool holds is checked where it shows: the origin's count of
//! connections accepted and still open.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Runs `n` concurrent GET /slow/400 through one proxy worker so it opens `n` upstream
/// connections at once, then returns once all are answered.
fn burst(proxy: &Proxy, origin: &Origin, n: usize) {
    let statuses = concurrent(proxy, origin, n, "/slow/400");
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
}

/// `n` clients send `GET path` at the same moment; their (status, body) once all answered.
fn concurrent(proxy: &Proxy, origin: &Origin, n: usize, path: &str) -> Vec<(u16, String)> {
    concurrent_requests(proxy, n, &format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()))
}

/// `n` clients send `request` at the same moment; their (status, body) once all answered.
fn concurrent_requests(proxy: &Proxy, n: usize, request: &str) -> Vec<(u16, String)> {
    let barrier = Arc::new(Barrier::new(n));
    let addr = proxy.addr();
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let b = barrier.clone();
            let request = request.to_string();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                c.send_str(&request);
                let r = c.response();
                // Bodies of proxy-made errors say why; payloads are not worth printing.
                (r.status, r.text().chars().take(120).filter(|c| !c.is_control()).collect())
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().expect("client thread")).collect()
}

#[test]
fn idle_pool_is_capped_by_max_idle_per_host() {
    let origin = Origin::start();
    let proxy = Proxy::builder("[pool]\nmax_idle_per_host = 2\n").workers(1).start();
    burst(&proxy, &origin, 6);
    assert!(origin.accepts() >= 6, "6 concurrent requests, {} upstream connections", origin.accepts());
    assert!(
        wait_until(Duration::from_secs(3), || origin.open() <= 2),
        "max_idle_per_host = 2 but {} upstream connections stay open",
        origin.open()
    );
    assert!(origin.open() >= 1, "nothing was kept for reuse");
    wait_pool_idle(&proxy, origin.open() as f64, "the pool counts what the origin sees open");
}

#[test]
fn on_the_defaults_a_burst_keeps_its_connections_for_the_next_burst() {
    // 64 concurrent clients to one origin: every origin connection the burst needed is
    // kept (nothing closed because many are idle at once), and a second burst of the same
    // size reuses them all instead of opening new ones (no churn).
    const CLIENTS: usize = 64;
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    burst(&proxy, &origin, CLIENTS);
    let opened = origin.accepts();
    assert!(opened >= CLIENTS, "{CLIENTS} concurrent slow requests, {opened} upstream connections");
    wait_pool_idle(&proxy, opened as f64, "after the first burst");
    assert_eq!(origin.open(), opened, "the proxy closed idle connections the burst needed");
    burst(&proxy, &origin, CLIENTS);
    assert_eq!(origin.accepts(), opened, "the second burst opened new connections instead of reusing the idle ones");
    assert_eq!(proxy.metric("sluice_upstream_pool_evictions_total").unwrap_or(0.0), 0.0, "a default cap bit");
}

/// `sluice_upstream_pool_idle` once it equals `want` (it is published on the worker's
/// 100 ms tick); panics after 5 s.
fn wait_pool_idle(proxy: &Proxy, want: f64, what: &str) {
    if let Err(e) = proxy.wait_metric("sluice_upstream_pool_idle", Duration::from_secs(5), |v| v == want) {
        panic!("{what}: expected {want} idle pooled connections: {e}");
    }
}

#[test]
fn idle_pool_is_capped_across_hosts_by_max_idle_total() {
    let origins: Vec<Origin> = (0..4).map(|_| Origin::start()).collect();
    let proxy = Proxy::builder("[pool]\nmax_idle_total = 2\n").workers(1).start();
    // One client, one host after the other: each response parks its upstream connection
    // before the next request is read, so the pool fills in order a, b, c, d.
    let mut c = proxy.client();
    for o in &origins {
        let r = c.get(&o.host(), "/bytes/10");
        assert_eq!(r.status, 200, "{}", r.describe());
    }
    assert!(origins.iter().all(|o| o.accepts() == 1));
    // Four idle connections, one per host (under the per-host cap of 8), but at most 2
    // per worker: the two oldest (a, b) were closed as c and d were parked.
    let open = || origins.iter().map(Origin::open).collect::<Vec<_>>();
    assert!(
        wait_until(Duration::from_secs(5), || open() == [0, 0, 1, 1]),
        "max_idle_total = 2: expected the oldest two closed and the newest two kept; connections open per \
         origin: {:?}",
        open()
    );
    wait_pool_idle(&proxy, 2.0, "after parking 4 with max_idle_total = 2");
    let evictions = proxy
        .wait_metric("sluice_upstream_pool_evictions_total", Duration::from_secs(5), |v| v >= 2.0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(evictions, 2.0, "sluice_upstream_pool_evictions_total");
    // The kept ones are reused; an evicted host gets a new connection.
    for (i, o) in origins.iter().enumerate().rev() {
        let r = c.get(&o.host(), "/bytes/10");
        assert_eq!(r.status, 200, "{}", r.describe());
        let want = if i >= 2 { 1 } else { 2 };
        assert_eq!(o.accepts(), want, "origin {i}: upstream connections accepted");
    }
}

#[test]
fn idle_connections_are_closed_after_idle_timeout_by_the_sweep() {
    let origin = Origin::start();
    let idle_timeout = Duration::from_secs(2);
    let proxy = Proxy::builder("[pool]\nidle_timeout = 2\n").workers(1).start();
    let t0 = Instant::now();
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bytes/10");
    assert_eq!(r.status, 200, "{}", r.describe());
    drop(c);
    // Parked: the origin's connection stays open and the pool counts it.
    wait_pool_idle(&proxy, 1.0, "after one request");
    assert_eq!(origin.open(), 1, "the upstream connection was not kept for reuse");
    // No request comes: only the sweep on the worker's tick can close it, once it has
    // been idle for idle_timeout (it was parked after t0).
    assert!(
        wait_until(Duration::from_secs(8), || origin.open() == 0),
        "an idle pooled connection is still open {:?} after it was parked (idle_timeout = {idle_timeout:?})",
        t0.elapsed()
    );
    let closed_after = t0.elapsed();
    assert!(closed_after >= idle_timeout, "closed after {closed_after:?}, before idle_timeout = {idle_timeout:?}");
    wait_pool_idle(&proxy, 0.0, "after the sweep");
    assert_eq!(origin.accepts(), 1);
}

#[test]
fn past_max_connections_per_host_requests_wait_for_a_connection_instead_of_opening_more() {
    let origin = Origin::start();
    let proxy = Proxy::builder("[pool]\nmax_connections_per_host = 2\n").workers(1).start();
    let answers = concurrent(&proxy, &origin, 8, "/slow/200");
    assert!(answers.iter().all(|(s, b)| *s == 200 && b == "slow"), "every queued request is served: {answers:?}");
    assert_eq!(origin.accepts(), 2, "the proxy opened more than max_connections_per_host = 2 connections");
    assert_eq!(origin.requests(), 8);
    let queued = proxy.wait_metric("sluice_upstream_queued_total", Duration::from_secs(5), |v| v >= 6.0);
    assert!(queued.is_ok(), "6 of 8 requests must have waited: {queued:?}");
    proxy.wait_metric("sluice_upstream_queue", Duration::from_secs(5), |v| v == 0.0).expect("the queue drains");
}

#[test]
fn a_connection_that_closes_instead_of_coming_back_gives_the_next_waiter_its_turn() {
    // /close answers with a close-delimited body: the connection cannot be pooled, so the
    // waiters are woken by its close (its place in the count released), not by a return.
    let origin = Origin::start();
    let proxy = Proxy::builder("[pool]\nmax_connections_per_host = 1\n").workers(1).start();
    let answers = concurrent(&proxy, &origin, 4, "/close/1000");
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(origin.accepts(), 4, "one connection per request, one at a time");
}

#[test]
fn a_request_that_waits_longer_than_upstream_connect_gets_504() {
    let origin = Origin::start();
    let proxy =
        Proxy::builder("[pool]\nmax_connections_per_host = 1\n[timeouts]\nupstream_connect = 0.5\n").workers(1).start();
    let holder = {
        let addr = proxy.addr();
        let host = origin.host();
        thread::spawn(move || Client::connect(addr).get(&host, "/slow/2000").status)
    };
    assert!(
        wait_until(Duration::from_secs(5), || origin.requests() == 1),
        "the first request never reached the origin"
    );
    let t0 = Instant::now();
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bytes/10");
    assert_eq!(r.status, 504, "{}", r.describe());
    assert!(r.text().contains("max_connections_per_host"), "{}", r.describe());
    assert!(t0.elapsed() >= Duration::from_millis(400), "504 after only {:?}", t0.elapsed());
    assert_eq!(holder.join().expect("holder"), 200);
    assert_eq!(origin.accepts(), 1);
}

#[test]
fn queued_requests_wait_without_their_buffers() {
    // Two connections to the origin and 40 clients: most wait in the queue (for up to
    // 20 rounds of 300 ms). Each gives its 64 KiB request buffer back while it waits (its
    // few hundred bytes wait on the heap), so the worker holds the buffers of the two
    // exchanges in flight, not forty.
    let origin = Origin::start();
    let config = "[pool]\nmax_connections_per_host = 2\n[timeouts]\nupstream_connect = 30\n";
    let proxy = Proxy::builder(config).workers(1).start();
    let statuses = thread::scope(|s| {
        let clients = s.spawn(|| concurrent(&proxy, &origin, 40, "/slow/300"));
        proxy.wait_metric("sluice_upstream_queue", Duration::from_secs(10), |v| v >= 30.0).expect("30 queued");
        let slabs = proxy.metric("sluice_slabs_in_use").expect("slabs in use");
        // Two exchanges (a client and an origin buffer each) and the admin's answer.
        assert!(slabs <= 8.0, "{slabs} buffers held with 30 or more requests queued and 2 in flight");
        clients.join().expect("clients")
    });
    assert!(statuses.iter().all(|(s, b)| *s == 200 && b == "slow"), "{statuses:?}");
    let parked = proxy.metric("sluice_upstream_queued_parked_total").expect("parked");
    assert!(parked >= 38.0, "{parked} queued requests parked");
    assert_eq!(origin.accepts(), 2);
}

/// One connection to the origin allowed, held by a slow request (`hold_ms`), and a client
/// that has had one exchange (its multishot receive armed, which also delivers what it
/// sends while a request waits): whatever the client asks next queues behind the holder.
/// Returns the origin, the proxy, that client, and the holder's status once answered.
fn one_connection_held(hold_ms: u64) -> (Origin, Proxy, Client, thread::JoinHandle<u16>) {
    let origin = Origin::start();
    let proxy = Proxy::builder("[pool]\nmax_connections_per_host = 1\n").workers(1).start();
    let host = origin.host();
    let mut client = proxy.client();
    assert_eq!(client.get(&host, "/bytes/10").status, 200);
    let addr = proxy.addr();
    let holder = thread::spawn(move || Client::connect(addr).get(&host, &format!("/slow/{hold_ms}")).status);
    assert!(wait_until(Duration::from_secs(5), || origin.requests() == 2), "the holder's request never arrived");
    (origin, proxy, client, holder)
}

#[test]
fn a_parked_request_keeps_its_body_and_the_requests_sent_behind_it() {
    let (origin, proxy, mut c, holder) = one_connection_held(1500);
    let host = origin.host();
    // A POST with its body and a GET pipelined behind it, in one write: both park.
    c.send_str(&format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 12\r\n\r\nhello parkedGET /bytes/10 HTTP/1.1\r\nHost: \
         {host}\r\n\r\n"
    ));
    proxy.wait_metric("sluice_upstream_queued_parked_total", Duration::from_secs(5), |v| v >= 1.0).expect("parked");
    // Sent while the request waits without a buffer: these bytes land in a new one and
    // must come after the parked ones.
    c.send_str(&format!("GET /bytes/20 HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    let echo = c.response();
    assert_eq!((echo.status, echo.text()), (200, "hello parked".to_string()), "{}", echo.describe());
    for n in [10, 20] {
        let r = c.response();
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.body, pattern(n), "GET /bytes/{n}");
    }
    assert_eq!(holder.join().expect("holder"), 200);
    assert_eq!(origin.requests(), 5);
}

#[test]
fn a_parked_request_is_sent_again_whole_when_its_reused_connection_fails() {
    let (origin, proxy, mut c, holder) = one_connection_held(1000);
    let host = origin.host();
    // Parked behind the holder, then handed its reused connection, which closes without
    // an answer: the retry on a fresh connection sends the parked bytes again.
    let r = c.get(&host, "/hangup-if-reused");
    assert_eq!((r.status, r.text()), (200, "fresh".to_string()), "{}", r.describe());
    assert_eq!(holder.join().expect("holder"), 200);
    assert!(proxy.metric("sluice_upstream_queued_parked_total").expect("parked") >= 1.0);
    assert_eq!(proxy.metric("sluice_upstream_retries_total").expect("retries"), 1.0);
}

#[test]
fn a_waiter_woken_by_its_own_client_keeps_its_place_in_the_queue() {
    // The second waiter is the client that had an exchange: its receive delivers as it waits.
    let (origin, proxy, mut second, holder) = one_connection_held(1000);
    let host = origin.host();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let queue = |n: f64| proxy.wait_metric("sluice_upstream_queue", Duration::from_secs(5), |v| v == n);
    let mut first = proxy.client();
    first.send_str(&get("/bytes/1?first"));
    queue(1.0).expect("the first waiter queued");
    second.send_str(&get("/bytes/1?second"));
    queue(2.0).expect("the second waiter queued");
    // Bytes from the second waiter's client wake it: it must stay behind the first.
    second.send_str(&get("/bytes/2?pipelined"));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(proxy.metric("sluice_upstream_queue").expect("queue"), 2.0, "a wake queued the waiter twice");
    assert_eq!(first.response().status, 200);
    for _ in 0..2 {
        let r = second.response();
        assert_eq!(r.status, 200, "{}", r.describe());
    }
    assert_eq!(holder.join().expect("holder"), 200);
    let heads = origin.state.heads.lock().unwrap().clone();
    let at = |tag: &str| heads.iter().position(|h| h.contains(tag)).unwrap_or_else(|| panic!("{tag}: {heads:?}"));
    assert!(at("?first") < at("?second"), "the second waiter went first: {heads:?}");
    assert!(at("?second") < at("?pipelined"));
}

#[test]
fn requests_queued_past_the_buffer_budget_do_not_wedge_the_exchanges_in_flight() {
    let origin = Origin::start();
    // A 1 MiB budget (16 slabs) and four connections to the origin, whose answers take
    // 200 ms. Each request carries a 9 KiB header, too large to wait without its buffer:
    // the 56 queued for those four hold their slabs, far past the budget, so the reads of
    // the responses in flight must not wait for it (they are what frees the rest).
    let config = "[limits]\nbuffer_mib_per_worker = 1\n[pool]\nmax_connections_per_host = 4\n";
    let proxy = Proxy::builder(config).workers(1).start();
    let started = Instant::now();
    let big = "x".repeat(9 * 1024);
    let request = format!("GET /slow/200 HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\n\r\n", origin.host());
    let statuses = concurrent_requests(&proxy, 60, &request);
    // Breaks when an origin read waits for the budget: the worker wedges, the queued
    // requests get 504 at the connect deadline (10 s).
    let failed: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{} of 60 failed: {:?}", failed.len(), failed.first());
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert!(origin.accepts() <= 4, "{} origin connections", origin.accepts());
}
