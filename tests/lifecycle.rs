//! Connection lifecycle seen through the admin endpoint: `/metrics` counts, and clients
//! that vanish mid-body, mid-download or mid-tunnel are released for real, upstream side
//! too. "Released" is checked on the real event, not only on `sluice_connections_active`
//! (which drops when closing *starts*): the client slots are freed
//! (`sluice_connection_slots`, which drops only once the kernel has completed the
//! connection's last operation and its descriptors are closed) and the proxy holds no more
//! descriptors than before the clients came, plus its idle pooled origin connections
//! ([`Proxy::baseline`], [`Proxy::assert_released`]).

mod support;

use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

const ACTIVE: &str = "sluice_connections_active";
const SLOTS: &str = "sluice_connection_slots";
const REQUESTS: &str = "sluice_requests_total";

fn wait_active(proxy: &Proxy, what: &str, pred: impl Fn(f64) -> bool, within: Duration) -> f64 {
    proxy.wait_metric(ACTIVE, within, pred).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Waits until the count of client slots not yet freed satisfies `pred`.
fn wait_slots(proxy: &Proxy, what: &str, pred: impl Fn(f64) -> bool) -> f64 {
    proxy.wait_metric(SLOTS, Duration::from_secs(10), pred).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn metrics_count_connections_and_requests() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    wait_active(&proxy, "at start", |v| v == 0.0, Duration::from_secs(5));
    let base = proxy.baseline();
    let before = proxy.metric(REQUESTS).unwrap_or(0.0);
    let mut a = proxy.client();
    let mut b = proxy.client();
    for _ in 0..3 {
        assert_eq!(a.get(&origin.host(), "/bytes/10").status, 200);
        assert_eq!(b.get(&origin.host(), "/bytes/10").status, 200);
    }
    wait_active(&proxy, "two open clients", |v| v == 2.0, Duration::from_secs(5));
    assert_eq!(proxy.slots(), 2.0, "two open clients hold two slots");
    let after = proxy
        .wait_metric(REQUESTS, Duration::from_secs(5), |v| v >= before + 6.0)
        .unwrap_or_else(|e| panic!("after 6 requests: {e}"));
    assert!(after >= before + 6.0);
    drop(a);
    wait_active(&proxy, "one client left", |v| v == 1.0, Duration::from_secs(5));
    wait_slots(&proxy, "the closed client's slot must be freed, the open one's kept", |v| v == 1.0);
    drop(b);
    wait_active(&proxy, "all clients gone", |v| v == 0.0, Duration::from_secs(5));
    proxy.assert_released(&base, "two keep-alive clients that closed");
}

#[test]
fn client_disconnecting_mid_body_frees_its_connection() {
    let origin = Origin::start();
    let mut proxy = Proxy::start("");
    let base = proxy.baseline();
    let mut c = proxy.client();
    c.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n", origin.host(), 10 << 20));
    c.send(&pattern(1 << 20)).unwrap();
    wait_active(&proxy, "while uploading", |v| v >= 1.0, Duration::from_secs(5));
    let _ = c.conn.inner.flush();
    drop(c);
    wait_active(&proxy, "a client that vanished mid-body must be released", |v| v == 0.0, Duration::from_secs(5));
    proxy.assert_released(&base, "a client that vanished mid-body");
    assert!(
        wait_until(Duration::from_secs(5), || origin.open() == 0),
        "the upstream connection of a half-sent body must be closed, {} still open",
        origin.open()
    );
    assert_eq!(origin.complete(), 0, "the origin must never get a complete request");
    assert!(proxy.alive());
    proxy.assert_serves(&origin);
}

#[test]
fn client_disconnecting_mid_response_frees_its_connection() {
    let origin = Origin::start();
    let mut proxy = Proxy::start("");
    let base = proxy.baseline();
    let mut c = proxy.client();
    c.send_str(&format!("GET /bytes/{} HTTP/1.1\r\nHost: {}\r\n\r\n", 200u64 << 20, origin.host()));
    let head = c.conn.read_head(65536).unwrap().expect("response head");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    let mut got = 0usize;
    while got < 1 << 20 {
        got += c.conn.read_some(65536).unwrap().len();
    }
    wait_active(&proxy, "while downloading", |v| v >= 1.0, Duration::from_secs(5));
    drop(c);
    wait_active(&proxy, "a client that vanished mid-download must be released", |v| v == 0.0, Duration::from_secs(5));
    proxy.assert_released(&base, "a client that vanished mid-download");
    assert!(
        wait_until(Duration::from_secs(5), || origin.open() == 0),
        "the upstream connection of an abandoned download must be closed, {} still open",
        origin.open()
    );
    proxy.assert_serves(&origin);
}

#[test]
fn client_disconnecting_mid_tunnel_frees_both_sides() {
    let greet = GreetServer::start(200 << 20);
    let mut proxy = Proxy::start(&format!("connect_ports = [{}]\n", greet.port()));
    let base = proxy.baseline();
    let mut c = proxy.client();
    let target = format!("127.0.0.1:{}", greet.port());
    c.send_str(&format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    let head = c.conn.read_head(65536).unwrap().expect("CONNECT response");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    let mut got = 0usize;
    while got < 1 << 20 {
        got += c.conn.read_some(65536).unwrap().len();
    }
    drop(c);
    wait_active(&proxy, "a tunnel client that vanished must be released", |v| v == 0.0, Duration::from_secs(5));
    proxy.assert_released(&base, "a tunnel client that vanished mid-stream");
    assert!(
        wait_until(Duration::from_secs(5), || greet.closed.load(Ordering::SeqCst) == 1),
        "the tunnel's upstream side was not closed"
    );
    assert!(proxy.alive());
}

#[test]
fn many_clients_come_and_go() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let base = proxy.baseline();
    let addr = proxy.addr();
    let host = origin.host();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let host = host.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    let mut c = Client::connect(addr);
                    let r = c.get(&host, &format!("/bytes/{}", i * 10 + j));
                    assert_eq!(r.status, 200);
                    match j % 3 {
                        0 => drop(c),
                        1 => {
                            let _ = c.stream().shutdown(Shutdown::Write);
                            let _ = c.wait_closed(Duration::from_secs(5));
                        }
                        _ => {
                            // Half a second request, then gone.
                            let _ = c.send(b"GET /bytes/1 HTTP/1.1\r\nHo");
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    wait_active(&proxy, "after 200 short-lived clients", |v| v == 0.0, Duration::from_secs(5));
    proxy.assert_released(&base, "200 short-lived clients");
}

/// `sluice_client_multishot_total{event="armed"}` now.
fn multishot_armed(proxy: &Proxy) -> f64 {
    let text = proxy.metrics().unwrap_or_else(|e| panic!("{e}"));
    let prefix = "sluice_client_multishot_total{event=\"armed\"} ";
    text.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
fn keep_alive_clients_closed_with_their_multishot_receive_armed_are_released() {
    let origin = Origin::start();
    let proxy = Proxy::start("[timeouts]\nclient_idle = 1\n");
    let base = proxy.baseline();
    let armed = multishot_armed(&proxy);
    // Keep-alive clients between requests: each waits with its multishot receive armed.
    let mut clients: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = proxy.client();
            for j in 0..2 {
                assert_eq!(c.get(&origin.host(), &format!("/bytes/{}", i * 2 + j)).status, 200);
            }
            c
        })
        .collect();
    let ok = wait_until(Duration::from_secs(10), || multishot_armed(&proxy) >= armed + 20.0);
    assert!(ok, "20 keep-alive clients armed {} multishot receives", multishot_armed(&proxy) - armed);
    // Half leave (their EOF ends the receive); the proxy closes the others at client_idle,
    // cancelling their receives; one asks to be closed after its next response.
    let staying = clients.split_off(10);
    drop(clients);
    let mut staying = staying;
    let mut last = staying.pop().unwrap();
    last.send_str(&format!("GET /bytes/3 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", origin.host()));
    assert_eq!(last.response().body, pattern(3));
    last.wait_closed(Duration::from_secs(5)).expect("closed after its Connection: close response");
    for c in &mut staying {
        c.wait_closed(Duration::from_secs(5)).expect("closed at client_idle");
    }
    drop(staying);
    proxy.assert_released(&base, "keep-alive clients closed with their multishot receive armed");
}
