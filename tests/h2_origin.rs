//! HTTP/2 on the origin leg (issue 14, point 2), end to end: intercepted clients (HTTP/2
//! and HTTP/1.1) in front of origins that pick `h2` in ALPN: nghttpd (a real HTTP/2
//! server, which refuses HTTP/1.1 outright, so any answer proves the origin leg spoke h2)
//! and a grpcio server. Bodies are the suite's payload pattern, compared byte for byte.
//!
//! These need the origin leg, which lands after the client leg: until then they fail
//! with a 502 (the upstream handshake offers only http/1.1).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::h2::{have_python_h2, probe, Background, Nghttpd};
use support::*;

const GRPC_PAIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/grpc_pair.py");

fn ready(python_module: Option<&str>) -> bool {
    if !have("nghttpd") || !have("curl") {
        skip("nghttpd or curl is not installed (run .ci/setup)");
        return false;
    }
    if let Some(m) = python_module {
        let ok = Command::new("python3").args(["-c", &format!("import {m}")]).status().is_ok_and(|s| s.success());
        if !ok || !have_python_h2() {
            skip(&format!("python3 cannot import {m} (run .ci/setup)"));
            return false;
        }
    }
    true
}

/// nghttpd for `origin.test` serving `files` (name, size) of payload bytes, and a proxy
/// that resolves `origin.test` to it and trusts its CA.
fn setup(files: &[(&str, u64)], workers: usize) -> (TempDir, Nghttpd, Proxy) {
    let docroot = TempDir::new("h2docroot");
    for (name, size) in files {
        write_pattern_file(&docroot.join(name), *size);
    }
    let ng = Nghttpd::start("origin.test", docroot.path());
    let proxy = Proxy::builder("")
        .workers(workers)
        .resolve("origin.test", &ng.ip)
        .arg("--upstream-ca")
        .arg(ng.ca_pem.as_deref().and_then(|p| p.to_str()).expect("a TLS nghttpd, utf-8 temp path"))
        .start();
    (docroot, ng, proxy)
}

/// curl `--http2` or `--http1.1` to `https://origin.test/path` through interception;
/// returns (exit, http_code, http_version, stderr).
fn curl_tls(
    proxy: &Proxy,
    version: &str,
    extra: &[&str],
    path: &str,
    body: &std::path::Path,
) -> (i32, u16, String, String) {
    let ca = proxy.dir.join("ca").join("ca.pem");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", version, "--cacert"])
        .arg(&ca)
        .arg("--connect-to")
        .arg(format!("origin.test:443:127.0.0.1:{}", proxy.port))
        .arg("-o")
        .arg(body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://origin.test{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = w.split_whitespace();
    let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let v = it.next().unwrap_or("").to_string();
    (out.status.code().unwrap_or(-1), code, v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn curl_http2_through_interception_to_an_h2_origin_both_ways() {
    if !ready(None) {
        return;
    }
    let n = 2_000_000;
    let (_docroot, ng, proxy) = setup(&[("big", n)], 2);
    let dir = TempDir::new("h2o");
    let (exit, code, version, err) = curl_tls(&proxy, "--http2", &[], "/big", &dir.join("body"));
    // Breaks when the upstream handshake does not offer h2 (nghttpd refuses: 502).
    assert_eq!((exit, code, version.as_str()), (0, 200, "2"), "h2 client, h2 origin: {err}");
    check_pattern_file(&dir.join("body"), n).unwrap_or_else(|e| panic!("body from nghttpd: {e}"));
    // An HTTP/1.1 client gets the same origin over h2 too, and a POST is echoed.
    write_pattern_file(&dir.join("payload"), 1 << 20);
    let data = format!("@{}", dir.join("payload").display());
    let (exit, code, version, err) =
        curl_tls(&proxy, "--http1.1", &["--data-binary", &data], "/echo", &dir.join("echo"));
    assert_eq!((exit, code, version.as_str()), (0, 200, "1.1"), "h1 client, h2 origin: {err}");
    check_pattern_file(&dir.join("echo"), 1 << 20).unwrap_or_else(|e| panic!("POST echoed by nghttpd: {e}"));
    assert_eq!(ng.paths(), vec!["/big", "/echo"]);
}

#[test]
fn http11_clients_share_one_h2_session_to_the_origin() {
    if !ready(None) {
        return;
    }
    let (_docroot, ng, proxy) = setup(&[("f", 10_000)], 1);
    let dir = TempDir::new("h2share");
    // Five HTTP/1.1 client connections, one after another: one pooled session serves all.
    for i in 0..5 {
        let body = dir.join(&format!("b{i}"));
        let (exit, code, version, err) = curl_tls(&proxy, "--http1.1", &[], "/f", &body);
        assert_eq!((exit, code, version.as_str()), (0, 200, "1.1"), "request {i}: {err}");
        check_pattern_file(&body, 10_000).unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    // Breaks when each client request opens its own origin connection.
    assert_eq!(ng.sessions(), 1, "nghttpd saw {} sessions for 5 requests", ng.sessions());
    assert_eq!(ng.paths().len(), 5);
}

#[test]
fn te_trailers_and_request_trailers_reach_an_h2_origin() {
    if !ready(Some("h2")) {
        return;
    }
    let (_docroot, ng, proxy) = setup(&[], 1);
    let dir = TempDir::new("h2te");
    let body = dir.write("body", b"hello");
    let ca = proxy.dir.join("ca").join("ca.pem");
    let connect = format!("127.0.0.1:{}", proxy.port);
    // The probe sends `te: trailers` with a body and then trailers (as gRPC clients do).
    let out = probe(&[
        "get",
        "--connect",
        &connect,
        "--tls",
        "origin.test",
        "--cafile",
        ca.to_str().unwrap(),
        "--req",
        "POST",
        "origin.test",
        "/echo",
        "--body-file",
        body.to_str().unwrap(),
        "--trailer",
        "x-req-trailer:one",
        "--print-body",
    ]);
    assert!(out.stdout.contains("done ok=1") && out.stdout.contains("body 0 'hello'"), "{}", out.describe());
    let fields = ng.received_fields();
    assert!(fields.iter().any(|f| f == "x-req-trailer: 1" || f == "x-req-trailer: one"), "trailers lost: {fields:?}");
    // Breaks when TE is stripped as a hop-by-hop field: RFC 9113 §8.2.2 keeps `te: trailers`,
    // and gRPC servers refuse a request without it.
    assert!(fields.iter().any(|f| f == "te: trailers"), "the origin did not get `te: trailers`: {fields:?}");
}

#[test]
fn a_grpc_bidi_stream_crosses_the_proxy_while_open() {
    if !ready(Some("grpc")) {
        return;
    }
    let dir = TempDir::new("grpc");
    let (ca, leaf, key) = make_test_pki(&dir, "grpc.test");
    let ip = format!("127.79.{}.{}", std::process::id() % 250 + 1, 2);
    let mut server =
        Background::start_script(GRPC_PAIR, &["server", &ip, leaf.to_str().unwrap(), key.to_str().unwrap()]);
    server.wait_line("ready", Duration::from_secs(20)).unwrap_or_else(|e| panic!("grpc server: {e}"));
    let proxy = Proxy::builder("").resolve("grpc.test", &ip).arg("--upstream-ca").arg(ca.to_str().unwrap()).start();
    let sluice_ca = proxy.dir.join("ca").join("ca.pem");
    let out = Command::new("python3")
        .args([
            GRPC_PAIR,
            "client",
            &format!("127.0.0.1:{}", proxy.port),
            "grpc.test",
            sluice_ca.to_str().unwrap(),
            "20",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the grpc client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("unary ok"), "unary call: {text}{err}");
    // Breaks when a stream's body is buffered until END_STREAM (reply 0 would never come).
    assert!(text.contains("bidi ok 20"), "bidi stream: {text}{err}");
}

const SCRIPTED_ORIGIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/h2_scripted_origin.py");

/// `h2_scripted_origin.py MODE` for `origin.test` on its own address, and a proxy that
/// resolves `origin.test` to it and trusts its CA.
fn scripted_origin(mode: &str, n: u32) -> (TempDir, Background, Proxy) {
    let dir = TempDir::new("scripted");
    let (ca, leaf, key) = make_test_pki(&dir, "origin.test");
    let ip = format!("127.79.{}.{}", std::process::id() % 250 + 1, n);
    let mut server =
        Background::start_script(SCRIPTED_ORIGIN, &[mode, &ip, leaf.to_str().unwrap(), key.to_str().unwrap()]);
    server.wait_line("ready", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{mode} origin: {e}"));
    let proxy = Proxy::builder("")
        .workers(1)
        .resolve("origin.test", &ip)
        .arg("--upstream-ca")
        .arg(ca.to_str().unwrap())
        .start();
    (dir, server, proxy)
}

#[test]
fn early_hints_from_an_h2_origin_reach_http2_and_http11_clients() {
    if !ready(Some("h2")) {
        return;
    }
    let (dir, _server, proxy) = scripted_origin("hints", 3);
    for version in ["--http2", "--http1.1"] {
        let heads = dir.join("heads");
        let body = dir.join("body");
        let (exit, code, _, err) = curl_tls(&proxy, version, &["-D", heads.to_str().unwrap()], "/", &body);
        assert_eq!((exit, code), (0, 200), "{version}: {err}");
        assert_eq!(std::fs::read(&body).unwrap(), b"hinted\n", "{version}");
        // Breaks when the origin leg drops interim responses (h2's poll_informational unread).
        let heads = std::fs::read_to_string(&heads).unwrap().to_ascii_lowercase();
        let hint = heads.find(" 103").unwrap_or_else(|| panic!("{version}: no 103 before the 200:\n{heads}"));
        assert!(heads[hint..].contains("link: </style.css>; rel=preload"), "{version}: {heads}");
        assert!(hint < heads.find(" 200").unwrap(), "{version}: 103 after 200:\n{heads}");
    }
}

#[test]
fn a_request_above_the_origins_goaway_is_sent_again_whatever_its_method() {
    if !ready(Some("h2")) {
        return;
    }
    let (dir, _server, proxy) = scripted_origin("goaway", 4);
    let body = dir.join("body");
    let (exit, code, _, err) = curl_tls(&proxy, "--http1.1", &[], "/first", &body);
    assert_eq!((exit, code), (0, 200), "first request: {err}");
    // The second stream on that session is above the origin's GOAWAY (last stream 1): the
    // origin never saw it, so even a POST goes out again, on a new session. Then the same
    // from an HTTP/2 client (whose exchange gave its request buffer back while it waited).
    for (n, version) in [(1.0, "--http1.1"), (2.0, "--http2")] {
        let (exit, code, _, err) = curl_tls(&proxy, version, &["-X", "POST"], "/second", &body);
        // Breaks when an unprocessed request is treated as failed (a 502 for a POST), or when
        // a stream's request is not kept for the retry.
        assert_eq!(
            (exit, code),
            (0, 200),
            "{version}: a POST the origin never processed: {err}\n{}",
            proxy.stderr_log()
        );
        assert_eq!(std::fs::read(&body).unwrap(), b"served\n");
        let m = |f: &str| proxy.metric(f).unwrap();
        let seen = (m("sluice_upstream_retries_total"), m("sluice_h2_origin_sessions_total"));
        assert_eq!(seen, (n, n + 1.0), "{version}: (retries, origin sessions)\n{}", proxy.stderr_log());
    }
}

/// An h2 origin may answer before it has read the request body (RFC 9113 §8.1) and never
/// read the rest. The origin stream is then over and the session lets go of its link
/// while the exchange still has body bytes to write into it: those writes must complete
/// (nobody will take them out) so the exchange relays the answer, instead of waiting on
/// a full link until its idle timeout.
#[test]
fn an_early_answer_from_an_h2_origin_to_an_unread_upload_is_relayed_at_once() {
    if !ready(Some("h2")) {
        return;
    }
    let (dir, _server, proxy) = scripted_origin("early", 6);
    let upload = dir.join("upload");
    std::fs::write(&upload, vec![b'u'; 4 << 20]).unwrap();
    let data = format!("@{}", upload.display());
    let body = dir.join("body");
    for version in ["--http1.1", "--http2"] {
        let started = Instant::now();
        let (exit, code, _, err) =
            curl_tls(&proxy, version, &["--max-time", "20", "--data-binary", &data], "/upload", &body);
        // Breaks when a write into a link the session let go of waits for room forever
        // (curl's --max-time, or the proxy's idle timeout, ends it instead).
        assert_eq!((exit, code), (0, 200), "{version}: {err}\n{}", proxy.stderr_log());
        assert_eq!(std::fs::read(&body).unwrap(), b"early\n", "{version}");
        assert!(started.elapsed() < Duration::from_secs(10), "{version}: took {:?}", started.elapsed());
    }
}

#[test]
fn a_request_queued_behind_a_busy_stream_moves_to_a_session_with_room() {
    if !ready(Some("h2")) {
        return;
    }
    let (dir, mut server, proxy) = scripted_origin("hold", 5);
    let ca = proxy.dir.join("ca").join("ca.pem");
    let connect_to = format!("origin.test:443:127.0.0.1:{}", proxy.port);
    // The origin takes one stream per connection and never answers `/hold`: the first
    // session is busy for as long as that client waits.
    let mut held = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--http1.1", "--cacert"])
        .arg(&ca)
        .args(["--connect-to", &connect_to, "-o", "/dev/null", "https://origin.test/hold"])
        .stdin(Stdio::null())
        .spawn()
        .expect("run curl");
    // Once the origin has the request, the session has its SETTINGS (sent first) too.
    server.wait_line("held", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr_log()));
    // Two requests at once: the first to find the session full dials a second session,
    // the other queues on the first meanwhile; once the second session has room, the
    // queued request moves there instead of waiting behind `/hold`.
    let started = Instant::now();
    let urls: Vec<_> = (0..2).map(|i| ("https://origin.test/x".to_string(), dir.join(&format!("r-{i}")))).collect();
    let cacert = ca.to_str().unwrap();
    let (codes, err) = curl_parallel(&["--http1.1", "--cacert", cacert, "--connect-to", &connect_to], &urls);
    let took = started.elapsed();
    let _ = held.kill();
    let _ = held.wait();
    assert_eq!(codes, vec!["200 1.1"; 2], "{err}");
    for (_, body) in &urls {
        assert_eq!(std::fs::read(body).unwrap(), b"served\n");
    }
    // Breaks when a queued request stays with its session (served only when `/hold`'s
    // client gives up, 30 s on).
    assert!(took < Duration::from_secs(10), "the queued request took {took:?}\n{}", proxy.stderr_log());
}

// ---------------------------------------------------------------------------------------
// h2c: cleartext origins listed in `h2.cleartext_origins` (prior knowledge)
// ---------------------------------------------------------------------------------------

/// nghttpd in cleartext (`h2c.test:80`, HTTP/2 with prior knowledge only) serving `f`
/// (`size` bytes), and a proxy with `config` that resolves `h2c.test` to it.
fn setup_h2c(config: &str, size: u64) -> (TempDir, Nghttpd, Proxy) {
    let docroot = TempDir::new("h2cdocroot");
    write_pattern_file(&docroot.join("f"), size);
    let ng = Nghttpd::start_cleartext(docroot.path());
    let proxy = Proxy::builder(config).workers(1).resolve("h2c.test", &ng.ip).start();
    (docroot, ng, proxy)
}

/// One curl run of `urls` (each `(url, output file)`) at once (`--parallel`), with
/// `args`; returns each transfer's `http_code http_version` and curl's stderr.
fn curl_parallel(args: &[&str], urls: &[(String, std::path::PathBuf)]) -> (Vec<String>, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "60",
        "--parallel",
        "--parallel-immediate",
        "-w",
        "%{http_code} %{http_version}\\n",
    ]);
    cmd.args(args);
    for (url, out) in urls {
        cmd.arg("-o").arg(out).arg(url);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run curl");
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_listed_cleartext_origin_gets_every_client_over_one_h2c_session() {
    if !ready(None) {
        return;
    }
    let n = 300_000;
    let (_docroot, ng, proxy) = setup_h2c("[h2]\ncleartext_origins = [\"h2c.test:80\"]\n", n);
    let dir = TempDir::new("h2c-origin");
    // HTTP/1.1 clients through the explicit proxy: five connections at once.
    let h1: Vec<_> = (0..5).map(|i| ("http://h2c.test/f".to_string(), dir.join(&format!("h1-{i}")))).collect();
    let (codes, err) = curl_parallel(&["--http1.1", "-x", &proxy.url()], &h1);
    // Breaks when the listed origin gets HTTP/1.1 (nghttpd reads it as a bad preface: 502).
    assert_eq!(codes, vec!["200 1.1"; 5], "HTTP/1.1 clients: {err}");
    // The five dialled once: the others waited for that connection to become the session
    // (breaks when each dials its own and all but one are thrown away: surplus). From now
    // on the session is known: every request takes a stream on it before the pool.
    let surplus = proxy.metric("sluice_h2_origin_surplus_connections_total").expect("metrics");
    assert_eq!(surplus, 0.0, "connections dialled and thrown away");
    // HTTP/2 clients with prior knowledge: one connection, five streams at once.
    let connect_to = format!("h2c.test:80:127.0.0.1:{}", proxy.port);
    let h2: Vec<_> = (0..5).map(|i| (format!("http://h2c.test/f?s={i}"), dir.join(&format!("h2-{i}")))).collect();
    let (codes, err) = curl_parallel(&["--http2-prior-knowledge", "--connect-to", &connect_to], &h2);
    assert_eq!(codes, vec!["200 2"; 5], "h2c clients: {err}");
    for (_, body) in h1.iter().chain(&h2) {
        check_pattern_file(body, n).unwrap_or_else(|e| panic!("{}: {e}", body.display()));
    }
    // A POST is echoed by the origin.
    write_pattern_file(&dir.join("payload"), 1 << 20);
    let data = format!("@{}", dir.join("payload").display());
    let echo = [("http://h2c.test/echo".to_string(), dir.join("echo"))];
    let (codes, err) = curl_parallel(&["--http1.1", "-x", &proxy.url(), "--data-binary", &data], &echo);
    assert_eq!(codes, vec!["200 1.1"], "POST: {err}");
    check_pattern_file(&dir.join("echo"), 1 << 20).unwrap_or_else(|e| panic!("POST echoed by nghttpd: {e}"));
    assert_eq!(ng.paths().len(), 11, "{:?}", ng.paths());
    // Breaks when a known h2c session is not looked up before dialling.
    assert_eq!(proxy.metric("sluice_h2_origin_surplus_connections_total"), Ok(surplus), "dialled a known h2c origin");
    // Breaks when requests do not share the session (one origin connection each).
    assert_eq!(ng.sessions(), 1, "nghttpd saw {} sessions for 11 requests", ng.sessions());
    assert_eq!(proxy.metric("sluice_h2_origin_sessions_total"), Ok(1.0));
}

#[test]
fn a_full_origin_session_queues_requests_while_one_more_session_is_dialled() {
    if !ready(None) {
        return;
    }
    // An origin that takes two streams per connection, and eight requests at once, long
    // enough that the first session is still full when a new connection is ready.
    let n = 16 << 20;
    let docroot = TempDir::new("h2cdocroot");
    write_pattern_file(&docroot.join("f"), n);
    let ng = Nghttpd::start_cleartext_limited(docroot.path(), 2);
    let config = "[h2]\ncleartext_origins = [\"h2c.test:80\"]\n";
    let proxy = Proxy::builder(config).workers(1).resolve("h2c.test", &ng.ip).start();
    let dir = TempDir::new("h2c-full");
    let connect_to = format!("h2c.test:80:127.0.0.1:{}", proxy.port);
    let args = ["--http2-prior-knowledge", "--connect-to", &connect_to];
    // The first request makes the session and learns the origin's limit.
    let (codes, err) = curl_parallel(&args, &[("http://h2c.test/f".to_string(), dir.join("first"))]);
    assert_eq!(codes, vec!["200 2"], "{err}");
    let burst: Vec<_> = (0..8).map(|i| (format!("http://h2c.test/f?s={i}"), dir.join(&format!("b-{i}")))).collect();
    let (codes, err) = curl_parallel(&args, &burst);
    assert_eq!(codes, vec!["200 2"; 8], "{err}\n{}", proxy.stderr_log());
    for (_, body) in &burst {
        check_pattern_file(body, n).unwrap_or_else(|e| panic!("{}: {e}", body.display()));
    }
    // Two streams go to the session's room; the third request dials one more connection
    // and the next ones queue meanwhile. Breaks when every request that finds
    // the sessions full dials (the connections that complete once a stream has ended
    // are thrown away: surplus handshakes, one per request under load).
    // (Eight client connections: a request that comes after the new session is full may
    // have to dial once more, so up to one session per two requests beyond the first.)
    assert_eq!(proxy.metric("sluice_h2_origin_surplus_connections_total"), Ok(0.0));
    let sessions = proxy.metric("sluice_h2_origin_sessions_total").expect("metrics");
    assert!((2.0..=4.0).contains(&sessions), "{sessions} sessions");
    assert_eq!(ng.sessions() as f64, sessions, "nghttpd's sessions");
}

#[test]
fn cleartext_origins_get_http11_unless_listed() {
    if !ready(None) {
        return;
    }
    // By default, and with a list that names other destinations (another port, other
    // names), the request goes out in HTTP/1.1, which this origin refuses.
    for config in ["", "[h2]\ncleartext_origins = [\"h2c.test:8080\", \"*.h2c.test:80\", \"127.0.0.1:80\"]\n"] {
        let (_docroot, ng, proxy) = setup_h2c(config, 1000);
        let dir = TempDir::new("h2c-off");
        let url = [("http://h2c.test/f".to_string(), dir.join("body"))];
        let (codes, err) = curl_parallel(&["--http1.1", "-x", &proxy.url()], &url);
        // Breaks when h2c is on by default, or an entry matches more than its host and port.
        assert_eq!(codes, vec!["502 1.1"], "config {config:?}: {err}");
        assert_eq!(ng.sessions(), 0, "config {config:?}");
        assert_eq!(proxy.metric("sluice_h2_origin_sessions_total"), Ok(0.0), "config {config:?}");
    }
}
