//! CONNECT tunnels: raw TCP both ways with half-close, TLS through the tunnel with curl
//! and a per-run test CA, port policy (403), refused targets (502), idle tunnels.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Opens a tunnel to `target` and returns the client with the 200 head consumed.
fn open_tunnel(proxy: &Proxy, target: &str) -> Client {
    let (head, c) = send_connect(proxy, target);
    let status = &head.first_line;
    assert!(
        status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"),
        "CONNECT {target} answered {head:?}"
    );
    c
}

#[test]
fn tunnel_to_echo_4mib_both_ways_with_half_close() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", echo.port()));
    let c = open_tunnel(&proxy, &format!("127.0.0.1:{}", echo.port()));
    assert!(c.conn.buffered().is_empty(), "bytes after the 200 before anything was sent");
    const N: usize = 4 << 20;
    let mut writer = c.stream().try_clone().unwrap();
    let w = thread::spawn(move || {
        let data = pattern(N);
        for part in data.chunks(100_003) {
            writer.write_all(part).expect("write into tunnel");
        }
        // Half-close: we are done sending but still want everything back.
        writer.shutdown(Shutdown::Write).expect("shutdown(Write)");
    });
    let mut reader = c.stream().try_clone().unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::with_capacity(N);
    let t0 = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("tunnel read failed after {} of {N} bytes ({:?}): {e}", got.len(), t0.elapsed()),
        }
    }
    w.join().unwrap();
    assert_bytes_eq(&got, &pattern(N), "4 MiB echoed through the tunnel, then EOF");
    assert!(
        wait_until(Duration::from_secs(5), || echo.finished.load(std::sync::atomic::Ordering::SeqCst) == 1),
        "the echo server never saw the client's EOF"
    );
}

#[test]
fn tunnel_half_close_from_the_server_side() {
    // The server speaks first, sends 1 MiB and shuts down its write side; the client
    // must get all of it plus EOF and still be able to send 1 MiB afterwards.
    const GREETING: u64 = 1 << 20;
    let greet = GreetServer::start(GREETING);
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", greet.port()));
    let mut c = open_tunnel(&proxy, &format!("127.0.0.1:{}", greet.port()));
    let got = c.conn.read_to_end_vec().expect("read greeting");
    assert_bytes_eq(&got, &pattern(GREETING as usize), "greeting then EOF");
    let data = pattern(1 << 20);
    c.send(&data).expect("after the server's EOF the client can still send");
    c.stream().shutdown(Shutdown::Write).unwrap();
    let ok = wait_until(Duration::from_secs(10), || greet.finished.load(std::sync::atomic::Ordering::SeqCst) == 1);
    let received = greet.received.load(std::sync::atomic::Ordering::SeqCst);
    assert!(ok && received == 1 << 20, "server received {received} of {} bytes (EOF seen: {ok})", 1 << 20);
}

#[test]
fn bytes_sent_with_the_connect_head_are_not_lost() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", echo.port()));
    let mut c = proxy.client();
    let target = format!("127.0.0.1:{}", echo.port());
    c.send_str(&format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\nEARLY-BYTES"));
    let head = c.conn.read_head(65536).unwrap().expect("response");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&head));
    c.conn.inner.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let got = c.conn.read_exact_vec(11).expect("bytes pipelined behind the CONNECT head must be tunnelled");
    assert_eq!(got, b"EARLY-BYTES");
}

#[test]
fn tunnel_to_tls_origin_with_curl() {
    let tls = TlsOrigin::start("tls-origin.sluice.test");
    let proxy = Proxy::builder(&format!("connect_ports = [{}]\n", tls.port))
        .resolve("tls-origin.sluice.test", "127.0.0.1")
        .start();
    let url = format!("https://tls-origin.sluice.test:{}/", tls.port);
    let ca = tls.ca_pem.display().to_string();
    let out = curl(Some(&proxy), &["-p", "--cacert", &ca, &url]);
    out.expect_status(200);
    let body = String::from_utf8_lossy(&out.body);
    assert!(body.contains("s_server") && body.contains("Ciphers"), "not the s_server -www page: {}", out.describe());
    // The tunnel is opaque: curl verified s_server's own certificate.
    assert!(out.header_dump.contains("200"), "{}", out.describe());
}

#[test]
fn connect_to_port_not_allowed_is_403() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(""); // default: 443 only
    let target = format!("127.0.0.1:{}", echo.port());
    let r = exchange(
        proxy.addr(),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .expect("a response to a refused CONNECT");
    assert_eq!(r.status, 403, "{}", r.describe());
    // Done with the client means done deciding: a connect would have been made by now.
    proxy.wait_no_clients("after the refused CONNECT");
    assert_eq!(echo.accepts.load(std::sync::atomic::Ordering::SeqCst), 0, "the proxy connected to a port it refused");

    // curl -p sees the refusal too.
    let out = curl(Some(&proxy), &["-p", &format!("http://127.0.0.1:{}/", echo.port())]);
    assert_ne!(out.exit, 0, "{}", out.describe());
    assert!(out.stderr.contains("403") || out.header_dump.contains("403"), "{}", out.describe());
}

#[test]
fn connect_ports_config_allows_only_listed_ports() {
    let echo_a = EchoServer::start();
    let echo_b = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [443, {}]\n", echo_a.port()));
    let mut c = open_tunnel(&proxy, &format!("127.0.0.1:{}", echo_a.port()));
    c.send(b"ping").unwrap();
    assert_eq!(c.conn.read_exact_vec(4).unwrap(), b"ping");
    let target = format!("127.0.0.1:{}", echo_b.port());
    let r = exchange(
        proxy.addr(),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .expect("response");
    assert_eq!(r.status, 403, "{}", r.describe());
}

#[test]
fn connect_to_refused_port_is_502() {
    let port = free_port(); // nobody listens here
    let proxy = Proxy::start(&format!("connect_ports = [{port}]\n"));
    let target = format!("127.0.0.1:{port}");
    let r = exchange(
        proxy.addr(),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .expect("a response to a CONNECT whose target refuses");
    assert_eq!(r.status, 502, "{}", r.describe());
}

#[test]
fn idle_tunnel_is_closed_after_io_idle() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n[timeouts]\nio_idle = 1\n", echo.port()));
    let mut c = open_tunnel(&proxy, &format!("127.0.0.1:{}", echo.port()));
    c.send(b"x").unwrap();
    assert_eq!(c.conn.read_exact_vec(1).unwrap(), b"x");
    let t0 = Instant::now();
    match c.wait_closed(Duration::from_secs(6)) {
        Ok(_) => {}
        Err(e) => panic!("idle tunnel not closed with io_idle = 1: {e}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(700), "closed too early ({:?})", t0.elapsed());
    assert!(
        wait_until(Duration::from_secs(3), || echo.closed.load(std::sync::atomic::Ordering::SeqCst) == 1),
        "upstream side of the idle tunnel not closed"
    );
}

#[test]
fn many_tunnels_at_once() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", echo.port()));
    let addr = proxy.addr();
    let port = echo.port();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let target = format!("127.0.0.1:{port}");
                c.send_str(&format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
                let head = c.conn.read_head(65536).unwrap().expect("CONNECT response");
                assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
                let mut data = pattern(20_000 + i * 1000);
                data.rotate_left(i);
                c.send(&data).unwrap();
                c.stream().shutdown(Shutdown::Write).unwrap();
                let got = c.conn.read_to_end_vec().unwrap();
                assert_bytes_eq(&got, &data, &format!("tunnel {i}"));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("tunnel thread failed");
    }
}

#[test]
fn connect_by_pinned_name_and_to_unknown_name() {
    let echo = EchoServer::start();
    let proxy = Proxy::builder(&format!("connect_ports = [{}]\n", echo.port()))
        .resolve("echo.sluice.test", "127.0.0.1")
        .start();
    let mut c = open_tunnel(&proxy, &format!("echo.sluice.test:{}", echo.port()));
    c.send(b"named").unwrap();
    assert_eq!(c.conn.read_exact_vec(5).unwrap(), b"named");

    let target = format!("nonexistent.invalid:{}", echo.port());
    let r = exchange(
        proxy.addr(),
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        Duration::from_secs(15),
    )
    .expect("a response to a CONNECT to an unknown name");
    assert_eq!(r.status, 502, "{}", r.describe());
}

#[test]
fn malformed_connect_targets_are_400() {
    let origin = Origin::start();
    let mut proxy = Proxy::start("connect_ports = [443]\n");
    for target in ["example.test", "/path", "example.test:notaport", ":443", "example.test:99999"] {
        let r = exchange(
            proxy.addr(),
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("CONNECT {target:?}: no response: {e}"));
        assert!(
            r.status == 400 || r.status == 403,
            "CONNECT {target:?} should be refused as malformed, got {}",
            r.describe()
        );
    }
    proxy.assert_serves(&origin);
}
