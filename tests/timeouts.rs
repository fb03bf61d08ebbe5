//! Upstream failures and deadlines: refused (502), unknown name (502), silent origin
//! (504 after upstream_response), connect timeout (504), slowloris clients cut off by
//! request_head while others are served, idle keep-alive clients closed.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

fn assert_error_response(out: &CurlOut, status: u16) {
    out.expect_status(status);
    assert!(!out.body.is_empty(), "an error response should carry a short reason: {}", out.describe());
}

#[test]
fn upstream_refused_is_502() {
    let port = free_port(); // nobody listens here
    let proxy = Proxy::start("");
    let url = format!("http://127.0.0.1:{port}/bytes/10");
    let out = curl(Some(&proxy), &[&url]);
    assert_error_response(&out, 502);
    // Host-header style too, and the connection stays usable afterwards.
    let origin = Origin::start();
    let mut c = proxy.client();
    let r = c.get(&format!("127.0.0.1:{port}"), "/bytes/10");
    assert_eq!(r.status, 502, "{}", r.describe());
    if r.header("connection").is_none_or(|v| !v.eq_ignore_ascii_case("close")) {
        let r = c.get(&origin.host(), "/bytes/10");
        assert_bytes_eq(&r.body, &pattern(10), "request after a 502");
    }
}

#[test]
fn unknown_name_is_502() {
    let proxy = Proxy::start("");
    let out = curl(Some(&proxy), &["--max-time", "20", "http://nonexistent.invalid/"]);
    assert_error_response(&out, 502);
    assert!(out.elapsed < Duration::from_secs(15), "{}", out.describe());
}

#[test]
fn silent_upstream_is_504_after_upstream_response_timeout() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nupstream_response = 1\n");
    let out = curl(Some(&proxy), &[&origin.url("/silent")]);
    assert_error_response(&out, 504);
    assert!(
        out.elapsed >= Duration::from_millis(900) && out.elapsed < Duration::from_secs(5),
        "504 should come about 1 s after the request, came after {:?}",
        out.elapsed
    );
    assert_eq!(origin.requests(), 1, "the request did reach the origin");
}

#[test]
fn fractional_upstream_response_timeout() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nupstream_response = 0.5\n");
    let out = curl(Some(&proxy), &[&origin.url("/silent")]);
    assert_error_response(&out, 504);
    assert!(
        out.elapsed >= Duration::from_millis(400) && out.elapsed < Duration::from_millis(2500),
        "504 after {:?} with upstream_response = 0.5",
        out.elapsed
    );
}

#[test]
fn slow_upstream_within_timeout_is_served() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nupstream_response = 3\n");
    let out = curl(Some(&proxy), &[&origin.url("/slow/1200")]);
    out.expect_status(200);
    assert_eq!(out.body, b"slow");
}

/// A loopback listener whose accept queue is full, so further SYNs go unanswered and
/// connects hang. None if the network stack here does not behave that way.
fn blackhole() -> Option<(TcpListener, Vec<TcpStream>, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").ok()?;
    let addr = l.local_addr().ok()?;
    let mut held = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => return Some((l, held, addr)),
        }
    }
    None
}

#[test]
fn upstream_connect_timeout_is_504() {
    let Some((_l, _held, addr)) = blackhole() else {
        return skip("cannot make a loopback blackhole here (a full accept queue still answers SYNs)");
    };
    let proxy = Proxy::start("[timeouts]\nupstream_connect = 1\n");
    let url = format!("http://{addr}/bytes/10");
    let out = curl(Some(&proxy), &[&url]);
    assert_error_response(&out, 504);
    assert!(
        out.elapsed >= Duration::from_millis(900) && out.elapsed < Duration::from_secs(5),
        "504 after {:?} with upstream_connect = 1",
        out.elapsed
    );
}

#[test]
fn slowloris_half_head_is_cut_off_while_others_are_served() {
    // request_head = 2 (not 1) leaves room on a loaded 2-core box to tell "served
    // meanwhile" (each request well under 2 s) from "served only after the cut-off".
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nrequest_head = 2\n");
    let mut slow = proxy.client();
    slow.send_str(&format!("GET /bytes/10 HTTP/1.1\r\nHost: {}\r\nX-Slow: ", origin.host()));
    let t0 = Instant::now();
    // Other clients are served meanwhile, promptly.
    for i in 0..5 {
        let out = curl(Some(&proxy), &[&origin.url(&format!("/bytes/{}", 1000 + i))]);
        out.expect_status(200);
        assert_bytes_eq(&out.body, &pattern(1000 + i), "body while a slowloris waits");
        assert!(out.elapsed < Duration::from_millis(1500), "{}", out.describe());
    }
    let got = slow
        .wait_closed(Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("slowloris client not cut off with request_head = 2: {e}"));
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(1800) && waited < Duration::from_millis(5000), "cut off after {waited:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "expected a 408 or a plain close, got {text:?}");
    assert_eq!(origin.requests(), 5, "the half head must never reach the origin");
}

#[test]
fn slowloris_trickle_is_cut_off() {
    // One byte every 150 ms keeps the connection busy forever unless the deadline
    // covers the whole head.
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nrequest_head = 1\n");
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    let head = format!("GET /bytes/10 HTTP/1.1\r\nHost: {}\r\nX-Slow: {}", origin.host(), "z".repeat(200));
    let t0 = Instant::now();
    let mut cut = None;
    for b in head.bytes() {
        if s.write_all(&[b]).is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(150));
        if t0.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    if cut.is_none() {
        // Writes can succeed into a half-closed socket; check for the close.
        let mut c = Client { conn: BufConn::new(s) };
        if c.wait_closed(Duration::from_millis(100)).is_ok() {
            cut = Some(t0.elapsed());
        }
    }
    let cut = cut.expect("a trickling client was not cut off within 6 s (request_head = 1)");
    assert!(cut < Duration::from_millis(4500), "cut off only after {cut:?}");
    assert_eq!(origin.requests(), 0);
}

#[test]
fn many_slowloris_clients_do_not_starve_others() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nrequest_head = 2\n");
    let mut slow: Vec<Client> = (0..200)
        .map(|_| {
            let mut c = proxy.client();
            c.send_str("GET /bytes/10 HTTP/1.1\r\nHost: x");
            c
        })
        .collect();
    let t0 = Instant::now();
    for i in 0..10 {
        let out = curl(Some(&proxy), &[&origin.url(&format!("/bytes/{}", 10 + i))]);
        out.expect_status(200);
        assert!(out.elapsed < Duration::from_millis(1500), "{}", out.describe());
    }
    for (i, c) in slow.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(t0.elapsed());
        if let Err(e) = c.wait_closed(left.max(Duration::from_millis(50))) {
            panic!("slowloris client {i} still open 6 s after request_head = 2: {e}");
        }
    }
}

#[test]
fn idle_keep_alive_client_is_closed_after_client_idle() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nclient_idle = 1\nrequest_head = 30\n");
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bytes/10");
    assert_eq!(r.status, 200, "{}", r.describe());
    let t0 = Instant::now();
    c.wait_closed(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("idle keep-alive client not closed with client_idle = 1: {e}"));
    assert!(t0.elapsed() >= Duration::from_millis(700), "closed after only {:?}", t0.elapsed());
    // A busy client is not cut: requests 400 ms apart for 2.5 s.
    let mut c = proxy.client();
    for _ in 0..6 {
        let r = c.get(&origin.host(), "/bytes/10");
        assert_eq!(r.status, 200, "{}", r.describe());
        thread::sleep(Duration::from_millis(400));
    }
}

#[test]
fn idle_deadline_later_than_the_head_deadline_is_kept_then_fires() {
    // Deadlines are lazy: after a request, the timer entry armed for the 1 s head
    // deadline fires first and must re-arm for the 3 s idle deadline, neither closing
    // the client early nor forgetting it.
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nrequest_head = 1\nclient_idle = 3\n");
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bytes/10");
    assert_eq!(r.status, 200, "{}", r.describe());
    let t0 = Instant::now();
    thread::sleep(Duration::from_millis(1800));
    let r = c.get(&origin.host(), "/bytes/10");
    assert_eq!(r.status, 200, "closed by the stale head deadline? {}", r.describe());
    let t1 = Instant::now();
    c.wait_closed(Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("idle client not closed with client_idle = 3 (first idle {:?}): {e}", t1 - t0));
    assert!(t1.elapsed() >= Duration::from_millis(2500), "closed after only {:?} of client_idle = 3", t1.elapsed());
}

#[test]
fn stalled_response_body_is_cut_by_io_idle() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nio_idle = 1\n");
    let mut c = proxy.client();
    c.send_str(&format!("GET /stall/100000 HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()));
    let head = c.conn.read_head(65536).unwrap().expect("response head");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    let t0 = Instant::now();
    let rest = c
        .wait_closed(Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("a body stalled mid-way is not cut off with io_idle = 1: {e}"));
    assert!(rest.len() < 200_000, "got the whole body of a stalled response?");
    assert!(t0.elapsed() < Duration::from_secs(4), "cut off after {:?}", t0.elapsed());
    assert!(wait_until(Duration::from_secs(3), || origin.open() == 0), "the stalled upstream connection stays open");
}

#[test]
fn upstream_response_timeout_does_not_cut_a_slow_body() {
    // The deadline covers the response head only; a body dripping in over 2.5 s with
    // upstream_response = 1 must arrive whole.
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nupstream_response = 1\n");
    let out = curl(Some(&proxy), &[&origin.url("/drip/25/100")]);
    out.expect_status(200);
    assert_bytes_eq(&out.body, &pattern(25), "dripped body");
}

#[test]
fn request_head_timeout_does_not_cut_a_slow_upload() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nrequest_head = 1\n");
    let mut c = proxy.client();
    c.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 20\r\n\r\n", origin.host()));
    let body = pattern(20);
    for b in &body {
        thread::sleep(Duration::from_millis(100));
        c.send(&[*b]).expect("upload cut off by the head timeout");
    }
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &body, "slow upload echo");
}
