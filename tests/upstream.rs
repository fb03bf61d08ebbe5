//! The upstream leg: broken origins (hang-up, garbage, oversized or ambiguous response
//! heads) give a 502; a request that fails on a reused pooled connection is retried once
//! on a fresh one only when replaying it is safe (an idempotent method, no body), and
//! never otherwise (POST and PATCH, with or without a body, `Content-Length: 0`, a GET
//! with a body); names resolve through /etc/hosts and `--resolve` pins. The pool's caps
//! and sweep are in `tests/pool.rs`; the deny list, the DNS cache and the connection
//! cap in `tests/guards.rs`.
//!
//! "Reached the origin exactly once" is checked without waiting: the origin counts a
//! request when it reads its head, before it hangs up, and the proxy answers 502 only
//! after it saw the hang-up, so a retry (sent before any answer) is counted by the
//! time the 502 arrives.

mod support;

use support::*;

#[test]
fn origin_hanging_up_is_502_and_a_post_is_not_retried() {
    let origin = Origin::start();
    let mut proxy = Proxy::start("");
    let out = curl(Some(&proxy), &["-d", "once", &origin.url("/hangup")]);
    out.expect_status(502);
    assert_eq!(origin.requests(), 1, "a POST must never be replayed: {:?}", origin.heads());

    // A fresh connection failing is never retried, not even for a GET.
    let out = curl(Some(&proxy), &[&origin.url("/hangup")]);
    out.expect_status(502);
    assert_eq!(origin.requests(), 2, "a GET that failed on a fresh connection was retried: {:?}", origin.heads());
    assert_eq!(retries(&proxy), 0.0);
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

/// `sluice_upstream_retries_total` now (bumped at the retry itself, not on a tick).
fn retries(proxy: &Proxy) -> f64 {
    proxy.metric("sluice_upstream_retries_total").unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `request` (a `/hangup-if-reused` request) on a pooled upstream connection that
/// goes bad: a first `GET /hangup-if-reused` on the same client connection (one worker)
/// is answered `200 fresh` and leaves its origin connection in the pool; `request`, next
/// on that client connection, takes that pooled connection, and the origin reads it and
/// hangs up without a byte of response. Returns the response to `request`.
fn on_a_pooled_connection_that_hangs_up(proxy: &Proxy, origin: &Origin, request: &str) -> Response {
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/hangup-if-reused");
    assert_eq!((r.status, r.text().as_str()), (200, "fresh"), "first request: {}", r.describe());
    assert_eq!(origin.accepts(), 1, "the first request used more than one upstream connection");
    c.send_str(request);
    c.stream().set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("set_read_timeout");
    c.try_response(false).unwrap_or_else(|e| {
        panic!(
            "no response to the request that met the hang-up ({e}); the origin saw {:?} (a replay without \
             the body would leave it waiting for one)",
            origin.heads()
        )
    })
}

/// A `method` request with `framing` header lines and `body`, failing on a reused pooled
/// connection, gets a 502 and reaches the origin exactly once (the first GET being the
/// other request it saw), on the one connection it ever accepted.
fn assert_not_retried(method: &str, framing: &str, body: &str) {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let what = format!("{method} with {:?} and body {body:?}", framing.trim_end());
    let request = format!("{method} /hangup-if-reused HTTP/1.1\r\nHost: {}\r\n{framing}\r\n{body}", origin.host());
    let r = on_a_pooled_connection_that_hangs_up(&proxy, &origin, &request);
    assert_eq!(
        r.status,
        502,
        "{what} that failed on a reused connection must not be replayed (replayed, it got the origin's \
         answer): {}; the origin saw {:?}",
        r.describe(),
        origin.heads()
    );
    let heads = origin.heads();
    assert_eq!(heads.len(), 2, "{what} reached the origin more than once: {heads:?}");
    assert!(heads[1].starts_with(&format!("{method} /hangup-if-reused ")), "{heads:?}");
    assert_eq!(origin.accepts(), 1, "{what} was retried on a fresh connection: {heads:?}");
    assert_eq!(retries(&proxy), 0.0, "{what}: a retry was counted");
}

#[test]
fn bodiless_post_failing_on_a_reused_connection_is_not_retried() {
    assert_not_retried("POST", "", "");
}

#[test]
fn bodiless_patch_failing_on_a_reused_connection_is_not_retried() {
    assert_not_retried("PATCH", "", "");
}

#[test]
fn post_with_content_length_0_failing_on_a_reused_connection_is_not_retried() {
    assert_not_retried("POST", "Content-Length: 0\r\n", "");
}

#[test]
fn post_with_a_body_failing_on_a_reused_connection_is_not_retried() {
    assert_not_retried("POST", "Content-Length: 4\r\n", "once");
}

#[test]
fn get_with_a_body_failing_on_a_reused_connection_is_not_retried() {
    // Idempotent, but its body has been consumed: it cannot be replayed as it was sent.
    assert_not_retried("GET", "Content-Length: 4\r\n", "once");
}

#[test]
fn idempotent_request_failing_on_a_reused_connection_is_retried_once() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    // The pooled connection hangs up before any response byte: the proxy must retry the
    // GET on a fresh connection (which the origin answers `fresh`) instead of failing it.
    let request = format!("GET /hangup-if-reused HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host());
    let r = on_a_pooled_connection_that_hangs_up(&proxy, &origin, &request);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "fresh"),
        "a GET that failed on a reused connection was not retried: {}",
        r.describe()
    );
    // Counted before the answer: the retry's connection and head reached the origin
    // before it answered `fresh`, and the retry counter moves when the retry starts.
    let heads = origin.heads();
    assert_eq!(origin.accepts(), 2, "the retry did not use one fresh connection: {heads:?}");
    assert_eq!(heads.len(), 3, "first request, the failed one, one retry: {heads:?}");
    assert!(heads.iter().all(|h| h.starts_with("GET /hangup-if-reused ")), "{heads:?}");
    assert_eq!(retries(&proxy), 1.0, "sluice_upstream_retries_total");
}
