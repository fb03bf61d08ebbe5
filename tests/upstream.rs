//! The upstream leg: broken origins (hang-up, garbage, oversized or ambiguous response
//! heads) give a 502 and are never retried for a non-idempotent request; the per-host
//! idle pool is capped (`[pool] max_idle_per_host`); names resolve through /etc/hosts.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
use support::*;

#[test]
fn origin_hanging_up_is_502_and_a_post_is_not_retried() {
    let origin = Origin::start();
    let mut proxy = Proxy::start("");
    let out = curl(Some(&proxy), &["-d", "once", &origin.url("/hangup")]);
    out.expect_status(502);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(origin.requests(), 1, "a POST must never be replayed: {:?}", origin.heads());

    let out = curl(Some(&proxy), &[&origin.url("/hangup")]);
    out.expect_status(502);
    assert!(proxy.alive());
    proxy.assert_serves(&origin);
}

#[test]
fn garbage_from_origin_is_502() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/garbage");
    assert_eq!(r.status, 502, "{}", r.describe());
    assert!(!r.text().contains("SSH-2.0"), "origin bytes leaked to the client: {}", r.describe());
}

#[test]
fn oversized_response_head_is_502() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    // Under the default 64 KiB: relayed.
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bigheader/8000");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("x-big").map(str::len), Some(8000));
    // Over it: a 502, not a hang or a truncated head.
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bigheader/200000");
    assert_eq!(r.status, 502, "{}", r.describe());
}

#[test]
fn ambiguous_response_framing_is_not_relayed() {
    // Content-Length and Transfer-Encoding together from the origin (response
    // smuggling): the proxy must not pass both on. Either it refuses (502) or it
    // relays a body framed one single way, decoded as chunked (RFC 9112 §6.3).
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bad-framing");
    if r.status == 200 {
        assert!(
            !(r.header("content-length").is_some() && r.header("transfer-encoding").is_some()),
            "both framings relayed: {}",
            r.describe()
        );
        assert_eq!(r.body, b"hello", "{}", r.describe());
    } else {
        assert_eq!(r.status, 502, "{}", r.describe());
    }
}

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

#[test]
fn names_resolve_through_etc_hosts() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let url = format!("http://localhost:{}/headers", origin.port());
    let out = curl(Some(&proxy), &[&url]);
    out.expect_status(200);
    let seen = String::from_utf8_lossy(&out.body).to_lowercase();
    assert!(seen.contains(&format!("host: localhost:{}", origin.port())), "{seen}");
}

#[test]
fn resolve_pins_several_names() {
    let a = Origin::start();
    let b = Origin::start();
    let proxy = Proxy::builder("").resolve("a.sluice.test", "127.0.0.1").resolve("b.sluice.test", "127.0.0.1").start();
    let out = curl(Some(&proxy), &[&format!("http://a.sluice.test:{}/bytes/3", a.port())]);
    out.expect_status(200);
    let out = curl(Some(&proxy), &[&format!("http://b.sluice.test:{}/bytes/4", b.port())]);
    out.expect_status(200);
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[test]
fn idempotent_request_failing_on_a_reused_connection_is_retried_once() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/hangup-if-reused");
    assert_eq!((r.status, r.text().as_str()), (200, "fresh"), "{}", r.describe());
    // Goes to the pooled connection, which hangs up before any response byte: the
    // proxy must retry it on a fresh connection instead of failing it.
    let r = c.get(&origin.host(), "/hangup-if-reused");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "fresh"),
        "a GET that failed on a reused connection was not retried: {}",
        r.describe()
    );
    assert_eq!(origin.accepts(), 2, "{:?}", origin.heads());
    assert_eq!(origin.requests(), 3, "retried more than once: {:?}", origin.heads());
}

#[test]
fn post_failing_on_a_reused_connection_is_not_retried() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/hangup-if-reused");
    assert_eq!(r.status, 200, "{}", r.describe());
    c.send_str(&format!("POST /hangup-if-reused HTTP/1.1\r\nHost: {}\r\nContent-Length: 4\r\n\r\nonce", origin.host()));
    let r = c.response();
    assert_eq!(r.status, 502, "{}", r.describe());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(origin.requests(), 2, "a POST must never be replayed: {:?}", origin.heads());
}
