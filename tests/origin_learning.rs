//! A burst of requests to a TLS origin not known yet: one dial learns whether it speaks
//! HTTP/2 while the others wait for its ALPN answer (`upstream::pool::OriginProtocol`).
//! Real clients (h2load, many streams on one connection, all sent at once) through
//! interception, in front of a real HTTP/2 origin (nghttpd), an HTTP/1.1 TLS origin, and
//! a port that refuses connections.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::h2::{ready, Nghttpd, TlsFront};
use support::*;

/// `h2load` with `streams` requests at once on one connection to `url`, through the
/// proxy's intercepting listener: its summary (the `requests:` and `status codes:` lines).
fn burst(proxy: &Proxy, streams: usize, url: &str) -> String {
    let n = streams.to_string();
    let out = Command::new("h2load")
        .args(["-n", &n, "-c", "1", "-m", &n, "-t", "1"])
        .arg(format!("--connect-to=127.0.0.1:{}", proxy.port))
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().filter(|l| l.starts_with("requests:") || l.starts_with("status codes:")).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_burst_to_an_h2_origin_not_known_yet_dials_it_once() {
    if !ready(&["h2load", "nghttpd"]) {
        return;
    }
    let docroot = TempDir::new("learn-h2");
    write_pattern_file(&docroot.join("f"), 2000);
    let ng = Nghttpd::start("origin.test", docroot.path());
    let proxy = Proxy::builder("")
        .workers(1)
        .resolve("origin.test", &ng.ip)
        .arg("--upstream-ca")
        .arg(ng.ca_pem.as_deref().and_then(|p| p.to_str()).expect("a TLS nghttpd, utf-8 temp path"))
        .start();
    let summary = burst(&proxy, 40, "https://origin.test/f");
    assert!(summary.contains("40 succeeded") && summary.contains("40 2xx"), "{summary}\n{}", proxy.stderr_log());
    // Breaks when every stream of the burst dials its own connection (39 handshakes
    // thrown away once the first became a session: surplus).
    assert_eq!(ng.sessions(), 1, "nghttpd saw {} connections for one burst", ng.sessions());
    assert_eq!(proxy.metric("sluice_h2_origin_surplus_connections_total"), Ok(0.0));
    assert_eq!(proxy.metric("sluice_h2_origin_sessions_total"), Ok(1.0));
}

#[test]
fn a_burst_to_an_http11_origin_waits_for_one_answer_then_dials_per_request() {
    if !ready(&["h2load"]) {
        return;
    }
    let origin = Origin::start();
    let front = TlsFront::start("origin.test", origin.addr);
    let proxy = Proxy::builder("")
        .workers(1)
        .resolve("origin.test", &front.ip)
        .arg("--upstream-ca")
        .arg(front.ca_pem.to_str().expect("utf-8 temp path"))
        .start();
    let started = Instant::now();
    let summary = burst(&proxy, 20, "https://origin.test/bytes/1000");
    // Breaks when the requests that waited for the answer are not woken by it (they
    // would fail at the connect deadline, 10 s).
    assert!(summary.contains("20 succeeded") && summary.contains("20 2xx"), "{summary}\n{}", proxy.stderr_log());
    assert!(started.elapsed() < Duration::from_secs(8), "the burst took {:?}", started.elapsed());
    assert_eq!(origin.requests(), 20);
    // They did wait: all but the first stream, queued behind the dial that learnt (the
    // gauge is published on the worker's 100 ms tick).
    let queued = || proxy.metric("sluice_upstream_queued_total");
    wait_until(Duration::from_secs(3), || queued() == Ok(19.0));
    assert_eq!(queued(), Ok(19.0));
    // Once learnt, http/1.1 is remembered: the next burst dials at once.
    let summary = burst(&proxy, 20, "https://origin.test/bytes/1000?again");
    assert!(summary.contains("20 2xx"), "{summary}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(queued(), Ok(19.0), "waited for a known protocol");
}

#[test]
fn a_burst_to_a_refusing_tls_origin_fails_fast_dial_after_dial() {
    if !ready(&["h2load"]) {
        return;
    }
    // A port bound and never listened on: connections to it are refused.
    let refuser = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    refuser.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let port = refuser.local_addr().unwrap().as_socket().unwrap().port();
    let proxy = Proxy::builder("").workers(1).resolve("refused.test", "127.0.0.1").start();
    let started = Instant::now();
    let summary = burst(&proxy, 10, &format!("https://refused.test:{port}/"));
    assert!(summary.contains("10 5xx"), "{summary}\n{}", proxy.stderr_log());
    // Breaks when a failed learning dial does not hand the turn on: the waiters would
    // answer at the connect deadline (10 s), not as their own dials are refused.
    assert!(started.elapsed() < Duration::from_secs(5), "the burst took {:?}", started.elapsed());
}

#[test]
fn requests_that_waited_for_a_dial_that_timed_out_are_told_the_origin_cannot_be_reached() {
    if !have("curl") {
        skip("curl is not installed (run .ci/setup)");
        return;
    }
    // An origin that accepts TCP connections and never answers the TLS handshake.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stall.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in stall.incoming().flatten() {
            held.push(s);
        }
    });
    let proxy =
        Proxy::builder("[timeouts]\nupstream_connect = 1\n").workers(1).resolve("stall.test", "127.0.0.1").start();
    let dir = TempDir::new("learn-stall");
    let ca = proxy.dir.join("ca").join("ca.pem");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http1.1", "--max-time", "20", "--parallel", "--parallel-immediate", "--cacert"])
        .arg(&ca)
        .arg("--connect-to")
        .arg(format!("stall.test:{port}:127.0.0.1:{}", proxy.port))
        .args(["-w", "%{http_code}\\n"]);
    for i in 0..3 {
        cmd.arg("-o").arg(dir.join(&format!("{i}"))).arg(format!("https://stall.test:{port}/{i}"));
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run curl");
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(codes.lines().collect::<Vec<_>>(), vec!["504"; 3], "{}", String::from_utf8_lossy(&out.stderr));
    // Those that waited for the first dial's answer are told what that dial met, not that
    // the pool's per-origin cap was reached (breaks with the text of a capped queue).
    for i in 0..3 {
        let page = std::fs::read_to_string(dir.join(&format!("{i}"))).unwrap_or_default();
        assert!(page.contains("cannot connect to the origin"), "request {i}: {page:?}");
    }
}
