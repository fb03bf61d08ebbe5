//! HTTP/2 on the client leg, end to end (issue 14): curl `--http2` through interception
//! and `--http2-prior-knowledge` in cleartext, 100 concurrent streams to two origins on
//! one connection, a few MiB echoed, trailers both ways, CONNECT over h2 with half-close,
//! h2load, the access log and metrics per stream, and a slow h2 reader that must not
//! make the proxy buffer a 50 MiB body. The floods are in `h2_floods.rs`.
//!
//! Every stream goes to a real HTTP/1.1 origin the test starts (`Origin`, behind a
//! python TLS terminator for interception: `support::h2::TlsFront`); the misbehaving or
//! finicky client is `tests/support/h2probe.py` (python `h2`), real clients are curl and
//! h2load. Bodies are the suite's payload pattern, compared byte for byte.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::h2::{probe, ready, TlsFront};
use support::*;

/// curl with `ARGS`, the body to `body`; returns (exit, http_code, http_version, stderr).
fn curl_h2(args: &[&str], body: &std::path::Path) -> (i32, u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = w.split_whitespace();
    let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let version = it.next().unwrap_or("").to_string();
    (out.status.code().unwrap_or(-1), code, version, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `curl --http2-prior-knowledge` to `http://ORIGIN/path`, connected to the proxy's
/// listener (so `:authority` is the origin: Host-routed).
fn curl_h2c(
    proxy: &Proxy,
    origin: &Origin,
    path: &str,
    extra: &[&str],
    body: &std::path::Path,
) -> (i32, u16, String, String) {
    let connect_to = format!("{}:127.0.0.1:{}", origin.host(), proxy.port);
    let url = origin.url(path);
    let mut args = vec!["--http2-prior-knowledge", "--connect-to", &connect_to];
    args.extend_from_slice(extra);
    args.push(&url);
    curl_h2(&args, body)
}

/// An intercepting proxy in front of a TLS `origin.test` (a [`TlsFront`] before `origin`).
fn intercepting(origin: &Origin, config: &str, workers: usize) -> (TlsFront, Proxy) {
    let front = TlsFront::start("origin.test", origin.addr);
    let proxy = Proxy::builder(config)
        .workers(workers)
        .resolve("origin.test", &front.ip)
        .arg("--upstream-ca")
        .arg(front.ca_pem.to_str().expect("utf-8 temp path"))
        .start();
    (front, proxy)
}

/// `curl --http2` to `https://origin.test/path` through interception, trusting only the
/// run's Sluice CA.
fn curl_h2_tls(proxy: &Proxy, path: &str, body: &std::path::Path) -> (i32, u16, String, String) {
    let ca = proxy.dir.join("ca").join("ca.pem");
    let connect_to = format!("origin.test:443:127.0.0.1:{}", proxy.port);
    let url = format!("https://origin.test{path}");
    curl_h2(&["--http2", "--cacert", ca.to_str().unwrap(), "--connect-to", &connect_to, &url], body)
}

#[test]
fn curl_http2_through_interception_gets_the_body_byte_for_byte() {
    if !ready(&["curl"]) {
        return;
    }
    let origin = Origin::start();
    let (_front, proxy) = intercepting(&origin, "", 2);
    let dir = TempDir::new("h2tls");
    let n = 300_000;
    let (exit, code, version, err) = curl_h2_tls(&proxy, &format!("/bytes/{n}"), &dir.join("body"));
    // Breaks when ALPN offers only http/1.1 (version 1.1) or the stream is not proxied.
    assert_eq!((exit, code, version.as_str()), (0, 200, "2"), "curl --http2 through interception: {err}");
    check_pattern_file(&dir.join("body"), n).unwrap_or_else(|e| panic!("body through h2+TLS: {e}"));
    assert_eq!(origin.requests(), 1, "the origin saw {:?}", origin.heads());
}

#[test]
fn curl_http2_prior_knowledge_in_cleartext_is_routed_by_authority() {
    if !ready(&["curl"]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("h2c");
    let n = 123_457;
    let (exit, code, version, err) = curl_h2c(&proxy, &origin, &format!("/bytes/{n}"), &[], &dir.join("body"));
    // Breaks when the preface is not detected (curl: HTTP/1.1 400 or an HTTP/2 framing error).
    assert_eq!((exit, code, version.as_str()), (0, 200, "2"), "curl --http2-prior-knowledge: {err}");
    check_pattern_file(&dir.join("body"), n).unwrap_or_else(|e| panic!("body through h2c: {e}"));
    let heads = origin.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    // The origin gets HTTP/1.1 with the authority as Host.
    let head = parse_head(heads[0].as_bytes()).unwrap();
    assert_eq!(head.first_line, format!("GET /bytes/{n} HTTP/1.1"), "{heads:?}");
    assert_eq!(head.get("host"), Some(origin.host().as_str()), "{heads:?}");
}

#[test]
fn a_hundred_concurrent_streams_to_two_origins_on_one_connection() {
    if !ready(&[]) {
        return;
    }
    let a = Origin::start();
    let b = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let dir = TempDir::new("h2many");
    let connect = format!("127.0.0.1:{}", proxy.port);
    let mut args: Vec<String> =
        vec!["get".into(), "--connect".into(), connect, "--out".into(), dir.path().display().to_string()];
    // Distinct sizes, so a body given to the wrong stream shows; even streams to A, odd
    // to B, so a stream sent to the wrong authority shows in the origins' counts. Ten of
    // B's answer after a second: served one after another they would take ten.
    let size = |i: usize| 1000 + i * 997;
    for i in 0..100 {
        let (host, path) = match i % 2 {
            0 => (a.host(), format!("/bytes/{}", size(i))),
            _ if i % 10 == 1 => (b.host(), "/slow/1000".to_string()),
            _ => (b.host(), format!("/bytes/{}", size(i))),
        };
        args.extend(["--req".into(), "GET".into(), host, path]);
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let t0 = Instant::now();
    let out = probe(&refs);
    let took = t0.elapsed();
    // Breaks with max_concurrent_streams below 100 (the probe opens only that many).
    assert_eq!(out.line("open_max"), Some("100"), "not 100 streams open at once: {}", out.describe());
    let streams = out.streams();
    assert_eq!(streams.len(), 100, "{}", out.describe());
    for s in &streams {
        assert!(s.ended && s.reset.is_none() && s.status == 200, "stream {}: {s:?}\n{}", s.idx, out.describe());
        let file = dir.join(&s.idx.to_string());
        if s.idx % 10 == 1 {
            assert_eq!(fs::read(&file).unwrap(), b"slow", "stream {}", s.idx);
        } else {
            check_pattern_file(&file, size(s.idx) as u64).unwrap_or_else(|e| panic!("stream {}: {e}", s.idx));
        }
    }
    assert_eq!((a.requests(), b.requests()), (50, 50), "A saw {:?}\nB saw {:?}", a.heads(), b.heads());
    // Ten one-second answers served concurrently: about one second, not ten.
    assert!(took < Duration::from_secs(6), "100 streams took {took:?}: were they served one at a time?");
}

/// An upstream failure is the stream's own: it is answered in HTTP/2 (`:status 502`, a
/// complete response, not a reset), and the connection's other streams are served.
#[test]
fn an_origin_that_refuses_gets_its_stream_a_502_and_the_others_are_served() {
    if !ready(&[]) {
        return;
    }
    let live = Origin::start();
    // A port bound and never listened on: connections to it are refused, and no other
    // test can take it while this one runs.
    let refuser = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    refuser.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let dead = refuser.local_addr().unwrap().as_socket().unwrap().to_string();
    let proxy = Proxy::builder("").workers(1).start();
    let dir = TempDir::new("h2refused");
    let connect = format!("127.0.0.1:{}", proxy.port);
    let out_dir = dir.path().display().to_string();
    let live_host = live.host();
    let out = probe(&[
        "get",
        "--connect",
        &connect,
        "--out",
        &out_dir,
        "--headers",
        "--req",
        "GET",
        &dead,
        "/x",
        "--req",
        "GET",
        &live_host,
        "/bytes/5000",
    ]);
    let streams = out.streams();
    assert_eq!(streams.len(), 2, "{}", out.describe());
    let refused = &streams[0];
    assert!(refused.ended && refused.reset.is_none() && refused.status == 502, "{refused:?}\n{}", out.describe());
    // The proxy's own error page, translated: its reason and type, without the HTTP/1.1
    // connection field. Breaks when the exchange closes without it (the session's bare
    // 502 fallback) or its connection-specific fields are carried into HTTP/2.
    let page = String::from_utf8_lossy(&fs::read(dir.join("0")).unwrap()).into_owned();
    assert!(page.contains("cannot connect to the origin"), "the 502's body: {page:?}");
    assert_eq!(refused.header("content-type"), Some("text/plain; charset=utf-8"), "{refused:?}");
    assert_eq!(refused.header("connection"), None, "{refused:?}");
    let served = &streams[1];
    assert!(served.ended && served.reset.is_none() && served.status == 200, "{served:?}\n{}", out.describe());
    check_pattern_file(&dir.join("1"), 5000).unwrap_or_else(|e| panic!("the other stream: {e}"));
    assert_eq!(live.requests(), 1, "{:?}", live.heads());
}

/// A response the session cannot translate (more fields than it reads, which the origin
/// may send once the operator raised `limits.max_headers` past them) ends the stream with
/// a 502, and its exchange stops with it: the origin's connection is closed at once, not
/// held until the idle timeout, nor read to the end of its body for nobody.
#[test]
fn an_untranslatable_response_ends_the_stream_and_its_exchange_stops_reading_the_origin() {
    if !ready(&[]) {
        return;
    }
    const BODY: u64 = 1 << 30;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = listener.local_addr().unwrap().to_string();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let Ok((s, _)) = listener.accept() else { return };
        let mut w = s.try_clone().unwrap();
        let mut c = BufConn::new(s);
        let Ok(Some(_)) = c.read_head(1 << 20) else { return };
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..600 {
            head.push_str(&format!("x-field-{i}: {i}\r\n"));
        }
        head.push_str(&format!("Content-Length: {BODY}\r\n\r\n"));
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0u64;
        if std::io::Write::write_all(&mut w, head.as_bytes()).is_ok() {
            while sent < BODY {
                match std::io::Write::write(&mut w, &chunk) {
                    Ok(n) => sent += n as u64,
                    Err(_) => break,
                }
            }
        }
        let _ = sent_tx.send(sent);
    });
    let proxy = Proxy::builder("[limits]\nmax_headers = 1000\n").workers(1).start();
    let connect = format!("127.0.0.1:{}", proxy.port);
    let out = probe(&["get", "--connect", &connect, "--req", "GET", &origin, "/endless"]);
    let streams = out.streams();
    assert!(
        streams.len() == 1 && streams[0].status == 502 && streams[0].ended,
        "the stream: {streams:?}\n{}",
        out.describe()
    );
    // Breaks when the exchange is not told (its writes into the link wait for room until
    // the 300 s idle timeout: no answer here), or drains the origin's whole body.
    let sent = sent_rx.recv_timeout(Duration::from_secs(20)).expect("the proxy still holds the origin's connection");
    assert!(sent < BODY / 4, "the proxy read {} MiB of a body nobody receives", sent >> 20);
}

#[test]
fn a_3mib_post_is_echoed_intact_over_h2() {
    if !ready(&["curl"]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("h2post");
    let n: u64 = 3 << 20;
    write_pattern_file(&dir.join("payload"), n);
    let data = format!("@{}", dir.join("payload").display());
    let extra = ["--data-binary", data.as_str(), "-H", "content-type: application/octet-stream"];
    let (exit, code, version, err) = curl_h2c(&proxy, &origin, "/echo", &extra, &dir.join("body"));
    assert_eq!((exit, code, version.as_str()), (0, 200, "2"), "POST over h2c: {err}");
    // Breaks when a DATA frame is dropped, repeated or reordered on the way to the origin.
    check_pattern_file(&dir.join("body"), n).unwrap_or_else(|e| panic!("3 MiB echoed over h2: {e}"));
    let head = parse_head(origin.heads()[0].as_bytes()).unwrap();
    assert!(head.first_line.starts_with("POST /echo HTTP/1.1"), "{:?}", origin.heads());
}

#[test]
fn request_and_response_trailers_cross_h2() {
    if !ready(&[]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("h2trailers");
    let body = dir.join("req");
    write_pattern_file(&body, 70_000);
    let connect = format!("127.0.0.1:{}", proxy.port);
    let host = origin.host();
    // Request trailers: a body without content-length, then a HEADERS frame with
    // END_STREAM; the HTTP/1.1 origin must get them as chunked trailer fields.
    let out = probe(&[
        "get",
        "--connect",
        &connect,
        "--req",
        "POST",
        &host,
        "/echo",
        "--body-file",
        body.to_str().unwrap(),
        "--trailer",
        "x-req-trailer:one",
        "--trailer",
        "x-checksum:abc123",
        "--headers",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let s = out.streams().into_iter().next().unwrap_or_else(|| panic!("no stream: {}", out.describe()));
    assert!(s.ended && s.status == 200, "{}", out.describe());
    check_pattern_file(&dir.join("0"), 70_000).unwrap_or_else(|e| panic!("echoed body: {e}"));
    assert_eq!(s.header("x-seen-framing"), Some("chunked"), "{}", out.describe());
    // Breaks when the proxy drops request trailers.
    assert_eq!(s.header("x-seen-trailers"), Some("x-req-trailer=one,x-checksum=abc123"), "{}", out.describe());

    // Response trailers: the origin's chunked trailer `x-trailer: done` arrives as a
    // trailing HEADERS frame after the whole body.
    let out = probe(&[
        "get",
        "--connect",
        &connect,
        "--req",
        "GET",
        &host,
        "/chunked/200000",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let s = out.streams().into_iter().next().unwrap_or_else(|| panic!("no stream: {}", out.describe()));
    assert!(s.ended && s.status == 200 && s.reset.is_none(), "{}", out.describe());
    check_pattern_file(&dir.join("0"), 200_000).unwrap_or_else(|e| panic!("chunked body: {e}"));
    // Breaks when the proxy drops response trailers.
    assert_eq!(s.trailers, vec![("x-trailer".to_string(), "done".to_string())], "{}", out.describe());
}

#[test]
fn connect_over_h2_to_an_echo_server_with_half_close() {
    if !ready(&[]) {
        return;
    }
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", echo.port()));
    let connect = format!("127.0.0.1:{}", proxy.port);
    let target = format!("127.0.0.1:{}", echo.port());
    let out = probe(&["connect", "--connect", &connect, "--authority", &target, "--size", "100000"]);
    assert_eq!(out.field("connect", "status").as_deref(), Some("200"), "{}", out.describe());
    // Round 0 crosses while the stream is open both ways...
    assert_eq!(out.field("round 0", "echoed").as_deref(), Some("1"), "{}", out.describe());
    // ...round 1 ends with END_STREAM: the echo server sees EOF only then, echoes the rest
    // and closes, and that close is our END_STREAM (not a reset, not a lost tail).
    assert_eq!(out.field("round 1", "echoed").as_deref(), Some("1"), "{}", out.describe());
    assert_eq!(out.line("extra"), Some("0"), "{}", out.describe());
    // Breaks when END_STREAM is not passed on as a half-close (shutdown of the write side).
    let eof = wait_until(Duration::from_secs(5), || echo.finished.load(Ordering::SeqCst) == 1);
    assert!(eof, "the echo server never saw EOF after END_STREAM: {}", out.describe());
    // Breaks when the origin's close is not passed back as END_STREAM.
    let s = out.streams().into_iter().next().unwrap_or_else(|| panic!("{}", out.describe()));
    assert!(s.ended && s.reset.is_none(), "the tunnel's stream did not end cleanly: {}", out.describe());
    assert_eq!(echo.echoed.load(Ordering::SeqCst), 200_000);
}

#[test]
fn h2load_20000_requests_over_10_clients_all_succeed() {
    if !ready(&["h2load"]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let out = Command::new("h2load")
        .args(["-n", "20000", "-c", "10", "-m", "10", "-t", "1"])
        .arg(format!("--connect-to=127.0.0.1:{}", proxy.port))
        .arg(origin.url("/bytes/1024"))
        .stdin(Stdio::null())
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("requests:")).unwrap_or("");
    assert!(
        line.contains("20000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "h2load: {line:?}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("status codes: 20000 2xx"), "{text}");
    assert_eq!(origin.requests(), 20000);
}

/// The value of string or number `key` in one json access-log line (flat objects).
fn json_field(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[at..];
    if let Some(s) = rest.strip_prefix('"') {
        let end = s.find('"')?;
        Some(s[..end].to_string())
    } else {
        Some(rest.split([',', '}']).next()?.trim().to_string())
    }
}

#[test]
fn one_access_log_line_and_one_count_per_stream_and_no_stream_left_active() {
    if !ready(&["curl"]) {
        return;
    }
    let origin = Origin::start();
    let logs = TempDir::new("h2log");
    let log = logs.join("access.log");
    let config = format!("access_log = \"{}\"\naccess_log_format = \"json\"\n", log.display());
    // One worker: its log buffer is flushed in order, so the anchor's line comes last.
    let (_front, proxy) = intercepting(&origin, &config, 1);
    let connect = format!("127.0.0.1:{}", proxy.port);
    let host = origin.host();
    let out = probe(&[
        "get",
        "--connect",
        &connect,
        "--req",
        "GET",
        &host,
        "/bytes/1000",
        "--req",
        "GET",
        &host,
        "/bytes/20000",
        "--req",
        "GET",
        &host,
        "/status/404",
    ]);
    assert!(out.stdout.contains("done ok=3 of=3"), "{}", out.describe());
    let dir = TempDir::new("h2logbody");
    let (exit, code, version, err) = curl_h2_tls(&proxy, "/bytes/3000", &dir.join("b"));
    assert_eq!((exit, code, version.as_str()), (0, 200, "2"), "{err}");
    // The anchor: one more stream, after every other is over.
    proxy.wait_no_clients("the h2 clients");
    let (exit, code, _, err) = curl_h2_tls(&proxy, "/bytes/7", &dir.join("anchor"));
    assert_eq!((exit, code), (0, 200), "{err}");
    let mut lines = Vec::new();
    let found = wait_until(Duration::from_secs(10), || {
        // Only the h2 streams' lines: Proxy::start's readiness check (a Host-less GET, 400)
        // has its own HTTP/1.1 line.
        lines = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| json_field(l, "protocol").is_some_and(|p| p.starts_with("HTTP/2")))
            .map(String::from)
            .collect();
        lines.iter().any(|l| l.contains("/bytes/7"))
    });
    assert!(found, "the anchor's line never came: {lines:#?}");
    // Breaks when streams share a line (one per connection) or a stream logs twice.
    assert_eq!(lines.len(), 5, "one line per stream: {lines:#?}");
    let want = [
        ("/bytes/1000", "HTTP/2", 200, 1000u64),
        ("/bytes/20000", "HTTP/2", 200, 20000),
        ("/status/404", "HTTP/2", 404, 11),
        ("/bytes/3000", "HTTP/2+TLS", 200, 3000),
        ("/bytes/7", "HTTP/2+TLS", 200, 7),
    ];
    for (path, protocol, status, body) in want {
        let l = lines
            .iter()
            .find(|l| json_field(l, "target").is_some_and(|t| t.ends_with(path)))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"));
        assert_eq!(json_field(l, "protocol").as_deref(), Some(protocol), "{l}");
        assert_eq!(json_field(l, "status").and_then(|s| s.parse().ok()), Some(status), "{l}");
        assert_eq!(json_field(l, "method").as_deref(), Some("GET"), "{l}");
        let out: u64 = json_field(l, "bytes_out").and_then(|s| s.parse().ok()).unwrap_or(0);
        // The body and at most a head's worth of framing on top.
        assert!(out >= body && out <= body + 1024, "bytes_out {out} for a {body}-byte body: {l}");
    }
    let text = proxy.metrics().unwrap();
    let h2: f64 = text
        .lines()
        .filter(|l| l.starts_with("sluice_requests_total{") && l.contains("protocol=\"h2\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(h2, 5.0, "sluice_requests_total{{protocol=\"h2\"}}: {text}");
    proxy
        .wait_metric("sluice_h2_streams_active", Duration::from_secs(10), |v| v == 0.0)
        .unwrap_or_else(|e| panic!("streams left active: {e}"));
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    kb * 1024
}

/// Runs `f` while sampling the proxy's VmRSS every 20 ms; returns (RSS before, peak
/// growth) in bytes.
fn rss_growth_during<T>(proxy: &Proxy, f: impl FnOnce() -> T) -> (u64, u64, T) {
    let base = rss(proxy.pid());
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), proxy.pid());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss(pid), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(20)); // the sampling period
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    (base, peak.load(Ordering::SeqCst).saturating_sub(base), out)
}

const BIG: u64 = 50 << 20;

#[test]
fn a_slow_h2_reader_of_50mib_keeps_the_proxy_rss_bounded() {
    if !ready(&[]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let connect = format!("127.0.0.1:{}", proxy.port);
    let host = origin.host();
    let warm = probe(&["get", "--connect", &connect, "--req", "GET", &host, "/bytes/100000"]);
    assert!(warm.stdout.contains("done ok=1"), "{}", warm.describe());
    let dir = TempDir::new("h2slow");
    // A 64 KiB stream window, and no WINDOW_UPDATE for 3 s once 1 MiB came: a proxy that
    // sends DATA without reserving capacity would read the whole body from the local
    // origin into memory meanwhile.
    let (base, grew, out) = rss_growth_during(&proxy, || {
        probe(&[
            "get",
            "--connect",
            &connect,
            "--req",
            "GET",
            &host,
            &format!("/bytes/{BIG}"),
            "--window",
            "65535",
            "--stall-at",
            "1048576",
            "--stall-secs",
            "3",
            "--out",
            dir.path().to_str().unwrap(),
            "--timeout",
            "120",
        ])
    });
    assert!(out.stdout.contains("stall end"), "{}", out.describe());
    assert!(out.stdout.contains("done ok=1"), "{}", out.describe());
    check_pattern_file(&dir.join("0"), BIG).unwrap_or_else(|e| panic!("50 MiB through a slow h2 reader: {e}"));
    eprintln!("download: RSS {} MiB at the start, grew by {} KiB at the peak", base >> 20, grew >> 10);
    assert!(grew < 32 << 20, "the proxy's RSS grew by {} MiB for one slow 50 MiB stream", grew >> 20);
}

/// A one-shot origin that reads a request head, reads nothing more for `stall`, then
/// reads the body (Content-Length or chunked), checks it against the payload pattern and
/// answers `ok N` or `bad: ...`.
fn stalling_sink(stall: Duration) -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = thread::spawn(move || {
        let Ok((s, _)) = listener.accept() else { return };
        let mut w = s.try_clone().unwrap();
        let mut c = BufConn::new(s);
        let Ok(Some(raw)) = c.read_head(1 << 20) else { return };
        let head = parse_head(&raw).unwrap();
        thread::sleep(stall); // the scenario: an origin that stops reading
        let body = if head.has_token("transfer-encoding", "chunked") {
            c.read_chunked().map(|(b, _)| b)
        } else {
            let n: usize = head.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            c.read_exact_vec(n)
        };
        let verdict = match body {
            Ok(b) if b.len() as u64 == BIG && first_mismatch(&b, &pattern(b.len())).is_none() => {
                format!("ok {}", b.len())
            }
            Ok(b) => format!("bad: {} bytes, first difference at {:?}", b.len(), first_mismatch(&b, &pattern(b.len()))),
            Err(e) => format!("bad: {e}"),
        };
        let _ = std::io::Write::write_all(
            &mut w,
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{verdict}", verdict.len())
                .as_bytes(),
        );
    });
    (addr, h)
}

#[test]
fn a_50mib_upload_to_a_stalled_origin_keeps_the_proxy_rss_bounded() {
    if !ready(&[]) {
        return;
    }
    let (sink, sink_thread) = stalling_sink(Duration::from_secs(3));
    // Small windows: what the client may send before the proxy has passed bytes on.
    let proxy = Proxy::builder("[h2]\ninitial_stream_window = 1048576\ninitial_connection_window = 1048576\n")
        .workers(1)
        .start();
    let dir = TempDir::new("h2up");
    let payload = dir.join("payload");
    write_pattern_file(&payload, BIG);
    let connect = format!("127.0.0.1:{}", proxy.port);
    let host = sink.to_string();
    let (base, grew, out) = rss_growth_during(&proxy, || {
        probe(&[
            "get",
            "--connect",
            &connect,
            "--req",
            "POST",
            &host,
            "/upload",
            "--body-file",
            payload.to_str().unwrap(),
            "--print-body",
            "--timeout",
            "120",
        ])
    });
    sink_thread.join().unwrap();
    assert!(out.stdout.contains("done ok=1"), "{}", out.describe());
    // Breaks when DATA is lost or reordered on the way up.
    assert!(out.stdout.contains(&format!("body 0 'ok {BIG}'")), "{}", out.describe());
    eprintln!("upload: RSS {} MiB at the start, grew by {} KiB at the peak", base >> 20, grew >> 10);
    // Breaks when the proxy grants window for bytes the origin has not taken.
    assert!(grew < 32 << 20, "the proxy's RSS grew by {} MiB for one 50 MiB upload to a stalled origin", grew >> 20);
}

#[test]
fn max_concurrent_streams_is_announced_and_streams_past_it_still_succeed() {
    if !ready(&[]) {
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::start("[h2]\nmax_concurrent_streams = 7\n");
    let connect = format!("127.0.0.1:{}", proxy.port);
    let host = origin.host();
    let mut args = vec!["get".to_string(), "--connect".into(), connect];
    for i in 0..30 {
        args.extend(["--req".into(), "GET".into(), host.clone(), format!("/bytes/{}", 100 + i)]);
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = probe(&refs);
    // Breaks when the key is not applied to SETTINGS_MAX_CONCURRENT_STREAMS.
    assert_eq!(out.line("settings"), Some("max_concurrent=7"), "{}", out.describe());
    assert_eq!(out.line("open_max"), Some("7"), "{}", out.describe());
    assert!(out.stdout.contains("done ok=30 of=30"), "{}", out.describe());
}

#[test]
fn with_h2_disabled_alpn_offers_only_http11_and_the_preface_is_refused() {
    if !ready(&["curl"]) {
        return;
    }
    let origin = Origin::start();
    let (_front, proxy) = intercepting(&origin, "[h2]\nenabled = false\n", 2);
    let dir = TempDir::new("h2off");
    let (exit, code, version, err) = curl_h2_tls(&proxy, "/bytes/5000", &dir.join("body"));
    assert_eq!((exit, code, version.as_str()), (0, 200, "1.1"), "curl --http2 with [h2] enabled = false: {err}");
    check_pattern_file(&dir.join("body"), 5000).unwrap_or_else(|e| panic!("{e}"));
    let (_, code, _, _) = curl_h2c(&proxy, &origin, "/bytes/10", &[], &dir.join("c"));
    assert_ne!(code, 200, "a cleartext preface was served with h2 disabled");
    assert_eq!(origin.requests(), 1, "{:?}", origin.heads());
}
