//! Concurrency: 1,000 concurrent wrk clients with no errors, and ~200 concurrent Rust
//! clients checking every body byte for byte. After each crowd leaves, every client is
//! released for real: all client slots freed and the proxy's descriptors back to what it
//! held before, plus idle pooled origin connections ([`Proxy::assert_released`]).

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
use support::*;

#[test]
fn wrk_1000_concurrent_clients_without_errors() {
    if !have("wrk") {
        return skip("wrk is not installed (.ci/setup installs it)");
    }
    let origin = Origin::start();
    let mut proxy = Proxy::start("");
    let base = proxy.baseline();
    let host = format!("Host: {}", origin.host());
    let url = format!("{}/bytes/1024", proxy.url());
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c1000", "-d3s", "--timeout", "5s", "-H", &host, &url])
        .output()
        .expect("run wrk");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "wrk failed:\n{text}");
    assert!(!text.contains("Socket errors"), "wrk saw socket errors through the proxy:\n{text}");
    assert!(!text.contains("Non-2xx"), "wrk saw non-2xx responses through the proxy:\n{text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(requests >= 1000, "only {requests} requests completed:\n{text}");
    eprintln!("wrk through sluice: {requests} requests in 3 s, 1000 connections");
    assert!(proxy.alive(), "proxy died under load: {}", proxy.stderr_log());
    proxy.assert_serves(&origin);
    // Every one of the 1000 client connections is released: closed, and then freed
    // (slot and descriptors) once the kernel completed its last operation.
    if let Err(e) = proxy.wait_metric("sluice_connections_active", Duration::from_secs(10), |v| v == 0.0) {
        let view = proxy.connections_view();
        let shown: Vec<&str> = view.lines().take(40).collect();
        panic!(
            "after wrk closed its 1000 connections: {e}\n/debug/connections ({} lines with its header, the first 40):\n{}\n{}",
            view.lines().count(),
            shown.join("\n"),
            proxy.metrics().unwrap_or_default()
        );
    }
    proxy.assert_released(&base, "wrk's 1000 connections");
}

#[test]
fn two_hundred_concurrent_clients_get_exact_bodies() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let base = proxy.baseline();
    const CLIENTS: usize = 200;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let addr = proxy.addr();
    let host = origin.host();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            let host = host.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut c = Client::connect(addr);
                    barrier.wait();
                    for j in 0..5usize {
                        let n = (i * 7919 + j * 104_729) % 60_000;
                        let r = match j {
                            2 => c.get(&host, &format!("/chunked/{n}")),
                            4 => {
                                let body = pattern(n);
                                c.send_str(&format!(
                                    "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\n\r\n"
                                ));
                                c.send(&body).unwrap();
                                c.response()
                            }
                            _ => c.get(&host, &format!("/bytes/{n}")),
                        };
                        assert_eq!(r.status, 200, "client {i} request {j}: {}", r.describe());
                        assert_bytes_eq(&r.body, &pattern(n), &format!("client {i} request {j}"));
                    }
                })
                .unwrap()
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        if h.join().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "{failed} of {CLIENTS} clients failed (see panics above)");
    assert_eq!(origin.complete(), CLIENTS * 5);
    proxy.assert_released(&base, "200 clients that closed after 5 exchanges each");
}
