//! The per-worker pool of idle upstream connections (`[pool]`): capped per host
//! (`max_idle_per_host`, default 8) and per worker across hosts (`max_idle_total`, the
//! oldest evicted); idle ones closed after `idle_timeout` by the worker's periodic sweep,
//! with no request needed; `sluice_upstream_pool_idle` follows. What the pool holds is
//! checked where it shows: the origin's count of connections still open.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Runs `n` concurrent GET /slow/400 through one proxy worker so it opens `n` upstream
/// connections at once, then returns once all are answered.
fn burst(proxy: &Proxy, origin: &Origin, n: usize) {
    let barrier = Arc::new(Barrier::new(n));
    let addr = proxy.addr();
    let host = origin.host();
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let b = barrier.clone();
            let host = host.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                let r = c.get(&host, "/slow/400");
                assert_eq!(r.status, 200, "{}", r.describe());
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
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
fn idle_pool_default_cap_is_8() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    burst(&proxy, &origin, 12);
    assert!(
        wait_until(Duration::from_secs(3), || origin.open() <= 8),
        "default cap is 8 idle per host, {} stay open",
        origin.open()
    );
    let before = origin.accepts();
    // The kept ones are reused.
    let mut c = proxy.client();
    for _ in 0..5 {
        assert_eq!(c.get(&origin.host(), "/bytes/10").status, 200);
    }
    assert_eq!(origin.accepts(), before, "pooled connections were not reused");
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
