//! HTTP/1.1 forwarding basics: explicit proxy (`curl -x`) and Host-header style, HEAD,
//! Via, hop-by-hop stripping, absolute-form rewriting, response framings, keep-alive,
//! pooling and pipelining.

mod support;

use std::time::Duration;
use support::*;

#[test]
fn get_through_explicit_proxy_with_curl() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let out = curl(Some(&proxy), &[&origin.url("/bytes/100000")]);
    out.expect_status(200);
    assert_bytes_eq(&out.body, &pattern(100_000), "GET /bytes/100000 via -x");
    assert_eq!(out.header("content-length"), Some("100000"), "{}", out.describe());
    let heads = origin.heads();
    assert_eq!(heads.len(), 1, "origin heads: {heads:?}");
    assert!(heads[0].starts_with("GET /bytes/100000 HTTP/1.1\r\n"), "origin must get origin-form, got {:?}", heads[0]);
}

#[test]
fn get_by_name_pinned_with_resolve() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").resolve("origin.sluice.test", "127.0.0.1").start();
    let url = format!("http://origin.sluice.test:{}/headers", origin.port());
    let out = curl(Some(&proxy), &[&url]);
    out.expect_status(200);
    let seen = String::from_utf8_lossy(&out.body).to_lowercase();
    assert!(seen.contains(&format!("host: origin.sluice.test:{}", origin.port())), "origin saw headers:\n{seen}");
}

#[test]
fn get_with_host_header_straight_at_listener() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let url = format!("{}/bytes/4321", proxy.url());
    let host = format!("Host: {}", origin.host());
    let out = curl(None, &["-H", &host, &url]);
    out.expect_status(200);
    assert_bytes_eq(&out.body, &pattern(4321), "Host-header GET body");
    let heads = origin.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /bytes/4321 HTTP/1.1\r\n"), "{heads:?}");
}

#[test]
fn head_keeps_content_length_and_sends_no_body() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let out = curl(Some(&proxy), &["-I", &origin.url("/bytes/5000")]);
    out.expect_status(200);
    assert_eq!(out.header("content-length"), Some("5000"), "{}", out.describe());

    // HEAD then GET pipelined: a proxy that waits for 5000 body bytes after the HEAD
    // response (or forwards some) breaks the second response.
    let mut c = proxy.client();
    let h = origin.host();
    c.send_str(&format!("HEAD /bytes/5000 HTTP/1.1\r\nHost: {h}\r\n\r\nGET /bytes/10 HTTP/1.1\r\nHost: {h}\r\n\r\n"));
    let r1 = c.head_response();
    assert_eq!(r1.status, 200, "{}", r1.describe());
    assert_eq!(r1.header("content-length"), Some("5000"), "{}", r1.describe());
    let r2 = c.response();
    assert_eq!(r2.status, 200, "{}", r2.describe());
    assert_bytes_eq(&r2.body, &pattern(10), "GET after HEAD");
}

#[test]
fn via_is_added_to_forwarded_requests() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let out = curl(Some(&proxy), &["-d", "x", &origin.url("/echo")]);
    out.expect_status(200);
    let via = out.header("x-seen-via").unwrap_or("");
    assert!(via.starts_with("1.1 ") && via.len() > 4, "origin must see `Via: 1.1 <pseudonym>`, saw {via:?}");

    // An existing Via is kept and ours appended.
    let out = curl(Some(&proxy), &["-H", "Via: 1.0 upstream-cache", &origin.url("/headers")]);
    out.expect_status(200);
    let seen = String::from_utf8_lossy(&out.body).to_lowercase();
    let vias: Vec<&str> = seen.lines().filter_map(|l| l.strip_prefix("via:")).collect();
    let all = vias.join(",");
    assert!(all.contains("1.0 upstream-cache") && all.matches("1.1 ").count() >= 1, "origin saw Via {vias:?}");
    assert!(all.find("1.0 upstream-cache") < all.find("1.1 "), "our Via must come after the existing one: {vias:?}");
}

#[test]
fn hop_by_hop_request_headers_are_stripped() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    c.send_str(&format!(
        "GET /headers HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, X-Drop-Me\r\n\
         X-Drop-Me: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Keep: yes\r\n\r\n",
        origin.host()
    ));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = r.text().to_lowercase();
    for bad in ["x-drop-me", "keep-alive:", "proxy-connection", "proxy-authorization"] {
        assert!(!seen.contains(bad), "origin received hop-by-hop `{bad}`:\n{seen}");
    }
    for line in seen.lines().filter(|l| l.starts_with("connection:")) {
        assert!(!line.contains("x-drop-me"), "Connection still names X-Drop-Me: {line}");
    }
    assert!(seen.contains("x-keep: yes"), "end-to-end header lost:\n{seen}");
}

#[test]
fn hop_by_hop_response_headers_are_stripped() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/hop-response");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, b"hop");
    for bad in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(r.header(bad).is_none(), "client received hop-by-hop `{bad}`: {}", r.describe());
    }
    for v in r.head.get_all("connection") {
        assert!(!v.to_lowercase().contains("x-secret"), "{}", r.describe());
    }
    assert_eq!(r.header("x-public"), Some("1"), "{}", r.describe());
    // And the connection is still usable.
    let r = c.get(&origin.host(), "/bytes/3");
    assert_bytes_eq(&r.body, &pattern(3), "second request");
}

#[test]
fn absolute_form_reaches_origin_in_origin_form() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    // curl -x sends absolute-form.
    for p in ["/bytes/10", "/headers?a=1&b=two", "/status/404"] {
        let out = curl(Some(&proxy), &[&origin.url(p)]);
        assert!(out.exit == 0 && out.status != 0, "{}", out.describe());
    }
    // Raw: absolute-form wins over a Host header that disagrees (RFC 9112 §3.2.2).
    let mut c = proxy.client();
    c.send_str(&format!("GET {} HTTP/1.1\r\nHost: wrong.invalid\r\n\r\n", origin.url("/headers?q=1")));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = r.text().to_lowercase();
    assert!(
        seen.contains(&format!("host: {}", origin.host())),
        "Host must be replaced by the absolute-form authority; origin saw:\n{seen}"
    );
    let heads = origin.heads();
    assert_eq!(heads.len(), 4, "{heads:?}");
    for h in &heads {
        let target = h.split(' ').nth(1).unwrap_or("");
        assert!(target.starts_with('/'), "origin received a non-origin-form target: {:?}", h.lines().next());
    }
    assert!(heads[1].starts_with("GET /headers?a=1&b=two HTTP/1.1\r\n"), "{heads:?}");
    assert!(heads[3].starts_with("GET /headers?q=1 HTTP/1.1\r\n"), "{heads:?}");
}

#[test]
fn chunked_response_with_trailer_is_relayed() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let out = curl(Some(&proxy), &[&origin.url("/chunked/100000")]);
    out.expect_status(200);
    assert_bytes_eq(&out.body, &pattern(100_000), "chunked body via curl");

    let mut c = proxy.client();
    for n in [0usize, 1, 100_000, 700_001] {
        let r = c.get(&origin.host(), &format!("/chunked/{n}"));
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_bytes_eq(&r.body, &pattern(n), &format!("/chunked/{n}"));
        assert_eq!(r.framing, Framing::Chunked, "a streamed chunked body should stay chunked: {}", r.describe());
        assert!(
            r.trailers.iter().any(|(k, v)| k.eq_ignore_ascii_case("x-trailer") && v == "done"),
            "trailer `x-trailer: done` lost for /chunked/{n}; trailers {:?}",
            r.trailers
        );
    }
}

#[test]
fn close_delimited_response_is_relayed_whole() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let out = curl(Some(&proxy), &[&origin.url("/close/300000")]);
    out.expect_status(200);
    assert_bytes_eq(&out.body, &pattern(300_000), "close-delimited via curl");

    // On a keep-alive client connection the proxy must either re-frame (chunked) or
    // close after the body; either way the body is exact.
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/close/200000");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &pattern(200_000), "close-delimited raw");
    if r.framing != Framing::Close {
        let r2 = c.get(&origin.host(), "/bytes/33");
        assert_bytes_eq(&r2.body, &pattern(33), "request after a re-framed response");
    }
}

#[test]
fn bodyless_and_interim_statuses_keep_framing() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    c.send_str(&format!(
        "GET /status/204 HTTP/1.1\r\nHost: {h}\r\n\r\n\
         GET /status/304 HTTP/1.1\r\nHost: {h}\r\n\r\n\
         GET /early-hints HTTP/1.1\r\nHost: {h}\r\n\r\n\
         GET /bytes/77 HTTP/1.1\r\nHost: {h}\r\n\r\n"
    ));
    let r = c.response();
    assert_eq!(r.status, 204, "{}", r.describe());
    let r = c.response();
    assert_eq!(r.status, 304, "{}", r.describe());
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, b"hinted", "{}", r.describe());
    assert_eq!(r.interim, vec![103], "the origin's 103 Early Hints is relayed: {}", r.describe());
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &pattern(77), "GET after 204/304/103");
}

#[test]
fn origin_error_statuses_pass_through() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    for code in [404u16, 500, 503, 400] {
        let r = c.get(&origin.host(), &format!("/status/{code}"));
        assert_eq!(r.status, code, "{}", r.describe());
        assert_eq!(r.text(), format!("status {code}\n"));
    }
}

#[test]
fn keep_alive_100_sequential_requests_use_one_upstream_connection() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    for i in 0..100usize {
        let n = (i * 997) % 20_000;
        let r = c.get(&origin.host(), &format!("/bytes/{n}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern(n), &format!("request {i}"));
    }
    assert_eq!(origin.requests(), 100);
    assert_eq!(
        origin.accepts(),
        1,
        "100 sequential requests on one client connection must reuse one upstream connection"
    );
}

#[test]
fn pooled_upstream_connection_is_reused_across_clients() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    for i in 0..5 {
        let mut c = proxy.client();
        let r = c.get(&origin.host(), "/bytes/100");
        assert_eq!(r.status, 200, "client {i}: {}", r.describe());
        drop(c);
        // The next client comes once the origin connection is parked for reuse.
        if let Err(e) = proxy.wait_metric("sluice_upstream_pool_idle", Duration::from_secs(5), |v| v == 1.0) {
            panic!("after client {i}: the origin connection was not pooled: {e}");
        }
    }
    assert_eq!(
        origin.accepts(),
        1,
        "one worker, five sequential clients: the pooled upstream connection should be reused"
    );
}

#[test]
fn origin_closing_pooled_connections_never_fails_a_request() {
    // The origin drops idle keep-alive connections after 100 ms, and /abrupt closes
    // right after answering: the proxy must never hand a request to a dead connection
    // (or must retry it once on a fresh one).
    let origin = Origin::start_with_idle_close(Duration::from_millis(100));
    let proxy = Proxy::builder("").workers(1).start();
    let mut c = proxy.client();
    for i in 0..6 {
        let r = c.get(&origin.host(), "/bytes/1000");
        assert_eq!(r.status, 200, "request {i} after the origin closed idle: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern(1000), "body");
        // The origin closes the now idle connection (after 100 ms): the next request
        // must not be handed to the dead pooled connection.
        origin.wait_all_closed(&format!("after request {i}"));
    }
    for i in 0..30 {
        let r = c.get(&origin.host(), "/abrupt/500");
        assert_eq!(r.status, 200, "abrupt request {i}: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern(500), "abrupt body");
    }
    assert!(origin.accepts() >= 36, "accepts {}", origin.accepts());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    let sizes = [100usize, 70_000, 0, 1_500_000, 3];
    let mut batch = String::new();
    for (i, n) in sizes.iter().enumerate() {
        if i == 2 {
            batch.push_str(&format!("GET /chunked/5000 HTTP/1.1\r\nHost: {h}\r\n\r\n"));
        } else {
            batch.push_str(&format!("GET /bytes/{n} HTTP/1.1\r\nHost: {h}\r\n\r\n"));
        }
    }
    batch.push_str(&format!("POST /echo HTTP/1.1\r\nHost: {h}\r\nContent-Length: 11\r\n\r\nhello world"));
    batch.push_str(&format!("HEAD /bytes/999 HTTP/1.1\r\nHost: {h}\r\n\r\n"));
    batch.push_str(&format!("GET /bytes/12 HTTP/1.1\r\nHost: {h}\r\n\r\n"));
    c.send_str(&batch); // one write
    for (i, n) in sizes.iter().enumerate() {
        let r = c.response();
        assert_eq!(r.status, 200, "response {i}: {}", r.describe());
        let want = if i == 2 { pattern(5000) } else { pattern(*n) };
        assert_bytes_eq(&r.body, &want, &format!("pipelined response {i}"));
    }
    let r = c.response();
    assert_eq!(r.body, b"hello world", "echo: {}", r.describe());
    let r = c.head_response();
    assert_eq!(r.header("content-length"), Some("999"), "{}", r.describe());
    let r = c.response();
    assert_bytes_eq(&r.body, &pattern(12), "last pipelined response");
}

#[test]
fn request_to_own_listener_is_refused_not_looped() {
    let origin = Origin::start();
    let mut proxy = Proxy::start("");
    let own = format!("Host: 127.0.0.1:{}", proxy.port);
    let url = format!("{}/bytes/10", proxy.url());
    let out = curl(None, &["--max-time", "10", "-H", &own, &url]);
    assert!(
        out.exit == 0 && (400..600).contains(&out.status),
        "a request addressed to the proxy itself must be refused promptly: {}",
        out.describe()
    );
    assert!(proxy.alive(), "proxy died");
    proxy.assert_serves(&origin);
}

#[test]
fn http10_client_never_gets_chunked() {
    // RFC 9112 §6.1: no Transfer-Encoding in a response to an HTTP/1.0 request.
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    c.send_str(&format!("GET {} HTTP/1.0\r\n\r\n", origin.url("/chunked/5000")));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_ne!(r.framing, Framing::Chunked, "chunked sent to an HTTP/1.0 client: {}", r.describe());
    assert_bytes_eq(&r.body, &pattern(5000), "HTTP/1.0 body");
    c.wait_closed(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("HTTP/1.0 without keep-alive must be closed after the response: {e}"));
}

#[test]
fn head_of_a_chunked_resource_then_more_requests() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    c.send_str(&format!(
        "HEAD /chunked/9000 HTTP/1.1\r\nHost: {h}\r\n\r\nHEAD /close/9000 HTTP/1.1\r\nHost: {h}\r\n\r\n"
    ));
    let r = c.head_response();
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = c.head_response();
    assert_eq!(r.status, 200, "{}", r.describe());
    if !r.head.has_token("connection", "close") {
        let r = c.get(&h, "/bytes/21");
        assert_bytes_eq(&r.body, &pattern(21), "GET after HEADs");
    }
}

#[test]
fn pipelined_requests_to_different_origins_go_each_to_its_own() {
    let a = Origin::start();
    let b = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let (ha, hb) = (a.host(), b.host());
    // Host-header style and absolute-form mixed, alternating origins, one write.
    c.send_str(&format!(
        "GET /headers HTTP/1.1\r\nHost: {ha}\r\n\r\n\
         GET /headers HTTP/1.1\r\nHost: {hb}\r\n\r\n\
         GET http://{ha}/headers HTTP/1.1\r\nHost: {ha}\r\n\r\n\
         GET http://{hb}/headers HTTP/1.1\r\nHost: {hb}\r\n\r\n\
         GET /headers HTTP/1.1\r\nHost: {ha}\r\n\r\n"
    ));
    for (i, want) in [&ha, &hb, &ha, &hb, &ha].iter().enumerate() {
        let r = c.response();
        assert_eq!(r.status, 200, "response {i}: {}", r.describe());
        let seen = r.text().to_lowercase();
        assert!(seen.contains(&format!("host: {want}")), "response {i} came from the wrong origin:\n{seen}");
    }
    assert_eq!((a.requests(), b.requests()), (3, 2));
}

#[test]
fn two_hundred_pipelined_requests_in_one_write() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    let batch: String = (0..200).map(|i| format!("GET /bytes/{i} HTTP/1.1\r\nHost: {h}\r\nX-N: {i}\r\n\r\n")).collect();
    c.send_str(&batch);
    for i in 0..200usize {
        let r = c.response();
        assert_eq!(r.status, 200, "response {i}: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern(i), &format!("pipelined response {i}"));
    }
    assert_eq!(origin.requests(), 200);
}

#[test]
fn pipelined_large_responses_with_a_client_that_reads_late() {
    // 20 x 1 MiB asked for at once; the client reads nothing until all are sent, so the
    // proxy must hold back (backpressure) without losing or reordering anything.
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    let batch: String =
        (0..20).map(|i| format!("GET /bytes/{} HTTP/1.1\r\nHost: {h}\r\n\r\n", (1 << 20) + i)).collect();
    c.send_str(&batch);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..20usize {
        let r = c.response();
        assert_eq!(r.status, 200, "response {i}: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern((1 << 20) + i), &format!("large pipelined response {i}"));
    }
}

#[test]
fn header_names_and_coding_values_are_case_insensitive() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    c.send_str(&format!("POST /echo HTTP/1.1\r\nHOST: {h}\r\nTRANSFER-ENCODING: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "abc"), "{}", r.describe());
    c.send_str(&format!("POST /echo HTTP/1.1\r\nhost: {h}\r\ncontent-LENGTH: 4\r\n\r\nwxyz"));
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "wxyz"), "{}", r.describe());
    let r = c.get(&h, "/bytes/8");
    assert_bytes_eq(&r.body, &pattern(8), "after mixed-case requests");
}

#[test]
fn not_modified_with_content_length_has_no_body() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    c.send_str(&format!(
        "GET /not-modified-with-length HTTP/1.1\r\nHost: {h}\r\n\r\nGET /bytes/50 HTTP/1.1\r\nHost: {h}\r\n\r\n"
    ));
    let r = c.response();
    assert_eq!(r.status, 304, "{}", r.describe());
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &pattern(50), "GET after a 304 with Content-Length");
}

#[test]
fn client_connection_close_is_honoured() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    c.send_str(&format!("GET /bytes/10 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", origin.host()));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &pattern(10), "body");
    assert!(r.head.has_token("connection", "close"), "no Connection: close in {}", r.describe());
    c.wait_closed(Duration::from_secs(5)).unwrap_or_else(|e| panic!("not closed after Connection: close: {e}"));
}

#[test]
fn client_half_close_after_the_request_still_gets_the_response() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    c.send_str(&format!("GET /slow/200 HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()));
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let r = c.try_response(false).unwrap_or_else(|e| panic!("no response after the client's half-close: {e}"));
    assert_eq!((r.status, r.text().as_str()), (200, "slow"), "{}", r.describe());
}

#[test]
fn long_target_and_many_headers_under_the_limits() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let long = format!("/headers?q={}", "x".repeat(8000));
    let many: String = (0..80).map(|i| format!("X-H{i}: value-{i}\r\n")).collect();
    c.send_str(&format!("GET {long} HTTP/1.1\r\nHost: {}\r\n{many}\r\n", origin.host()));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = r.text().to_lowercase();
    assert!(seen.contains("x-h0: value-0") && seen.contains("x-h79: value-79"), "{seen}");
    assert!(origin.heads()[0].starts_with(&format!("GET {long} HTTP/1.1\r\n")));
}
