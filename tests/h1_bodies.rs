//! Request bodies: Content-Length and chunked uploads echoed back byte for byte (1 KiB,
//! 5 MiB, 100 MiB), Expect: 100-continue, trailers, odd chunking and split writes.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};
use support::*;

/// POSTs `size` payload bytes to /echo through the proxy with curl and checks the echo.
fn post_echo(size: u64, chunked: bool) {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("post");
    let input = dir.join("in.bin");
    let output = dir.join("out.bin");
    write_pattern_file(&input, size);
    let data = format!("@{}", input.display());
    let mut args = vec!["--max-time", "120", "--data-binary", &data];
    args.extend(["-H", "Content-Type: application/octet-stream"]);
    if chunked {
        args.extend(["-H", "Transfer-Encoding: chunked"]);
    }
    // No Expect: 100-continue here (that has its own tests).
    args.extend(["-H", "Expect:"]);
    let url = origin.url("/echo");
    args.push(&url);
    let out = curl_opts(Some(&proxy), &args, Some(&output));
    out.expect_status(200);
    if let Err(e) = check_pattern_file(&output, size) {
        panic!("echo of {size} bytes (chunked={chunked}): {e}");
    }
    if !chunked {
        assert_eq!(
            out.header("x-seen-content-length"),
            Some(size.to_string().as_str()),
            "origin saw {}",
            out.describe()
        );
    }
    assert_eq!(origin.complete(), 1);
}

#[test]
fn post_content_length_1k() {
    post_echo(1024, false);
}

#[test]
fn post_content_length_5mib() {
    post_echo(5 << 20, false);
}

#[test]
fn post_content_length_100mib() {
    post_echo(100 << 20, false);
}

#[test]
fn post_chunked_1k() {
    post_echo(1024, true);
}

#[test]
fn post_chunked_5mib() {
    post_echo(5 << 20, true);
}

#[test]
fn download_100mib_streams_through() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("dl");
    let output = dir.join("out.bin");
    let url = origin.url(&format!("/bytes/{}", 100u64 << 20));
    let out = curl_opts(Some(&proxy), &["--max-time", "120", &url], Some(&output));
    out.expect_status(200);
    check_pattern_file(&output, 100 << 20).unwrap();
}

#[test]
fn expect_100_continue_is_honoured() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let body = pattern(50_000);
    c.send_str(&format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        origin.host(),
        body.len()
    ));
    // The body is withheld until the client hears 100 Continue.
    c.conn.inner.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let line = c
        .conn
        .read_line(4096)
        .unwrap_or_else(|e| panic!("no `100 Continue` within 5 s while the client withholds its body: {e}"));
    let line = String::from_utf8_lossy(&line).into_owned();
    assert!(line.starts_with("HTTP/1.1 100"), "expected 100 Continue first, got {line:?}");
    let rest = c.conn.read_line(4096).unwrap();
    let mut rest = rest;
    while !rest.is_empty() {
        rest = c.conn.read_line(4096).unwrap();
    }
    c.send(&body).unwrap();
    c.conn.inner.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &body, "100-continue echo");
    // The connection stays usable.
    let r = c.get(&origin.host(), "/bytes/5");
    assert_bytes_eq(&r.body, &pattern(5), "after 100-continue");
}

#[test]
fn expect_100_continue_with_curl_does_not_stall() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("expect");
    let input = dir.join("in.bin");
    write_pattern_file(&input, 200_000);
    let data = format!("@{}", input.display());
    let url = origin.url("/echo");
    // curl waits up to 20 s for the 100 before sending anyway; a proxy that swallows
    // the Expect without answering shows up as a long stall.
    let out =
        curl(Some(&proxy), &["--expect100-timeout", "20", "-H", "Expect: 100-continue", "--data-binary", &data, &url]);
    out.expect_status(200);
    assert_bytes_eq(&out.body, &pattern(200_000), "curl 100-continue echo");
    assert!(out.elapsed < Duration::from_secs(10), "Expect: 100-continue stalled for {:?}", out.elapsed);
}

#[test]
fn request_bodies_on_one_keep_alive_connection() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();

    // Content-Length.
    let body = pattern(1000);
    c.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {h}\r\nContent-Length: 1000\r\n\r\n"));
    c.send(&body).unwrap();
    let r = c.response();
    assert_bytes_eq(&r.body, &body, "CL echo");

    // Chunked with extensions, uppercase hex and a trailer.
    c.send_str(&format!(
        "POST /echo HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;name=value\r\nhello\r\nA\r\n0123456789\r\n1\r\n!\r\n0\r\nX-Req-Trailer: yes\r\n\r\n"
    ));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "hello0123456789!", "{}", r.describe());
    assert!(
        r.header("x-seen-trailers").unwrap_or("").to_lowercase().contains("x-req-trailer=yes"),
        "request trailer not forwarded: {}",
        r.describe()
    );

    // Empty bodies both ways.
    c.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\n\r\n"));
    let r = c.response();
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.describe());
    c.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
    let r = c.response();
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.describe());

    // And a plain GET after all of it.
    let r = c.get(&h, "/bytes/64");
    assert_bytes_eq(&r.body, &pattern(64), "GET after bodies");
    assert_eq!(origin.accepts(), 1, "all on one upstream connection");
}

#[test]
fn head_and_body_split_across_many_writes() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let body = pattern(3000);
    let mut msg =
        format!("POST /echo HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n", origin.host()).into_bytes();
    for part in body.chunks(700) {
        msg.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        msg.extend_from_slice(part);
        msg.extend_from_slice(b"\r\n");
    }
    msg.extend_from_slice(b"0\r\n\r\n");
    // Dribble it out in 7-byte pieces (splitting CRLFs, sizes and data).
    let t0 = Instant::now();
    for piece in msg.chunks(7) {
        c.conn.inner.write_all(piece).unwrap();
        c.conn.inner.flush().unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &body, "dribbled chunked echo");
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[test]
fn concurrent_uploads_and_downloads_are_not_mixed_up() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let addr = proxy.addr();
    let host = origin.host();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let host = host.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for j in 0..4usize {
                    let n = 10_000 + i * 31_000 + j * 7;
                    let mut body = pattern(n + i);
                    body.drain(..i);
                    c.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\n\r\n"));
                    c.send(&body).unwrap();
                    let r = c.response();
                    assert_eq!(r.status, 200, "{}", r.describe());
                    assert_bytes_eq(&r.body, &body, &format!("client {i} upload {j}"));
                    let r = c.get(&host, &format!("/bytes/{}", n / 3));
                    assert_bytes_eq(&r.body, &pattern(n / 3), &format!("client {i} get {j}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread failed");
    }
}

#[test]
fn early_final_response_is_relayed_before_the_body_is_complete() {
    // The origin answers 401 on the head alone. A client that has sent 64 KiB of a
    // 10 MiB body and then waits must see that 401, not hang until it sends it all.
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    c.send_str(&format!(
        "POST /reject-early HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        origin.host(),
        10 << 20
    ));
    c.send(&pattern(64 * 1024)).unwrap();
    c.conn.inner.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = c.try_response(false).unwrap_or_else(|e| panic!("the origin's early 401 was not relayed within 5 s: {e}"));
    assert_eq!((r.status, r.text().as_str()), (401, "denied\n"), "{}", r.describe());
}

#[test]
fn expect_100_with_an_origin_that_refuses_gives_its_status() {
    // curl asks with Expect: 100-continue; the origin refuses with 401 on the head. The
    // client must end up with that 401 (never a 502), whatever the proxy does with the
    // expectation.
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let dir = TempDir::new("expect");
    let input = dir.join("in.bin");
    write_pattern_file(&input, 5 << 20);
    let data = format!("@{}", input.display());
    let url = origin.url("/reject-early");
    let out = curl(Some(&proxy), &["-H", "Expect: 100-continue", "--data-binary", &data, &url]);
    assert!(out.status == 401, "expected the origin's 401: {}", out.describe());
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.describe());
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_reader_does_not_make_the_proxy_buffer_the_body() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    // Warm up both legs first so one-time allocations are not counted.
    let mut c = proxy.client();
    let r = c.get(&origin.host(), "/bytes/1000000");
    assert_eq!(r.status, 200);
    let before = rss_kib(proxy.pid());
    c.send_str(&format!("GET /bytes/{} HTTP/1.1\r\nHost: {}\r\n\r\n", 300u64 << 20, origin.host()));
    let head = c.conn.read_head(65536).unwrap().expect("response head");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    let first = c.conn.read_exact_vec(1 << 20).unwrap();
    assert_bytes_eq(&first, &pattern(1 << 20), "first MiB");
    // Stop reading; the origin can send as fast as it likes.
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_kib(proxy.pid());
    let grown = during.saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "proxy RSS grew by {} MiB while a client stalled on a 300 MiB download ({} -> {} KiB)",
        grown / 1024,
        before,
        during
    );
}

#[test]
fn small_body_split_from_its_head_is_joined_once_then_dripped() {
    // The proxy waits for one more read when a small body is missing from the first
    // upstream read (so head and body leave together), but only once: a body dripping
    // a byte every 600 ms gets its head to the client with the first byte, long before
    // the last, and every byte arrives.
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let t0 = Instant::now();
    c.send_str(&format!("GET /drip/3/600 HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()));
    let head = c.conn.read_head(65536).unwrap().expect("response head");
    let head_after = t0.elapsed();
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    assert!(head_after < Duration::from_millis(1500), "the head was held back {head_after:?} (body done at 1.8 s)");
    let body = c.conn.read_exact_vec(3).expect("the dripped body");
    assert_bytes_eq(&body, &pattern(3), "dripped body");
    // The connection stays usable.
    let r = c.get(&origin.host(), "/bytes/10");
    assert_bytes_eq(&r.body, &pattern(10), "request after the dripped one");
}
