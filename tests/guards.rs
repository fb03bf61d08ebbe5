//! Guards on where the proxy connects and how much it takes on:
//!
//! - `deny_destinations` (the SSRF guard) is checked on the resolved address: a literal
//!   address in a denied range, a name pinned or listed in /etc/hosts that resolves into
//!   one, and a CONNECT to one are refused with 403 before anything is dialled; a name
//!   with both denied and allowed addresses dials only the allowed ones.
//! - `limits.max_connections_per_worker`: past the cap a new client is closed without a
//!   response and counted in `sluice_connections_rejected_total`; the held ones keep
//!   working, and a freed slot admits a new client.
//!
//! The resolver (its cache, timeouts, hosts file) is tested in `dns.rs`.
//!
//! Everything stays on loopback: origins on 127.0.0.1 and 127.0.0.2.

mod support;

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

/// The address the denied origins listen on (denied as `127.0.0.2/32`).
const DENIED_IP: [u8; 4] = [127, 0, 0, 2];

/// An origin on 127.0.0.2 and one on 127.0.0.1 listening on the same port, so a name
/// resolving to both addresses reaches either one with one URL. Returns (on 127.0.0.2,
/// on 127.0.0.1).
fn origins_on_one_port() -> (Origin, Origin) {
    for _ in 0..20 {
        let second = Origin::start_on((DENIED_IP, 0).into());
        let port = second.port();
        // The port is free on 127.0.0.2; on 127.0.0.1 it may be taken: try another.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return (second, Origin::start_on(([127, 0, 0, 1], port).into()));
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// `GET url` through the proxy with curl.
fn get(proxy: &Proxy, url: &str) -> CurlOut {
    curl(Some(proxy), &[url])
}

/// Panics unless `out` is the proxy's deny-list refusal.
fn assert_denied(out: &CurlOut, what: &str) {
    assert_eq!(out.status, 403, "{what}: expected the deny list's 403: {}", out.describe());
    let body = String::from_utf8_lossy(&out.body);
    assert!(body.contains("deny list"), "{what}: a 403 for another reason: {}", out.describe());
}

// ---------------------------------------------------------------------------------------
// deny_destinations
// ---------------------------------------------------------------------------------------

#[test]
fn literal_address_in_a_denied_range_is_refused_without_dialling_it() {
    let denied = Origin::start_on((DENIED_IP, 0).into());
    let allowed = Origin::start();
    let proxy = Proxy::start("deny_destinations = [\"127.0.0.2/32\"]\n");
    let out = get(&proxy, &denied.url("/bytes/3"));
    assert_denied(&out, "GET to 127.0.0.2");
    // The proxy answers after it dialled or not at all: an accept would be counted now.
    assert_eq!(denied.accepts(), 0, "the denied origin was contacted");
    // Outside the range, the same proxy still connects.
    get(&proxy, &allowed.url("/bytes/3")).expect_status(200);
    assert_eq!(allowed.requests(), 1);
}

#[test]
fn name_resolving_into_a_denied_range_is_refused() {
    // A pinned name (`--resolve`) whose only address is denied.
    let denied = Origin::start_on((DENIED_IP, 0).into());
    let proxy =
        Proxy::builder("deny_destinations = [\"127.0.0.2/32\"]\n").resolve("internal.sluice.test", "127.0.0.2").start();
    let out = get(&proxy, &format!("http://internal.sluice.test:{}/bytes/3", denied.port()));
    assert_denied(&out, "GET to a name pinned to 127.0.0.2");
    assert_eq!(denied.accepts(), 0, "the denied origin was contacted through a name");

    // A name from /etc/hosts (`localhost`) with every loopback address denied.
    let origin = Origin::start();
    let proxy = Proxy::start("deny_destinations = [\"127.0.0.0/8\", \"::1/128\"]\n");
    let out = get(&proxy, &format!("http://localhost:{}/bytes/3", origin.port()));
    assert_denied(&out, "GET to localhost with loopback denied");
    // The literal form of the same destination is refused as well.
    assert_denied(&get(&proxy, &origin.url("/bytes/3")), "GET to 127.0.0.1 with loopback denied");
    assert_eq!(origin.accepts(), 0, "the origin was contacted although loopback is denied");
}

#[test]
fn name_with_denied_and_allowed_addresses_dials_only_the_allowed_ones() {
    let (denied, allowed) = origins_on_one_port();
    // The denied address comes first: without the filter it would be dialled first.
    let proxy = Proxy::builder("deny_destinations = [\"127.0.0.2/32\"]\n")
        .resolve("mixed.sluice.test", "127.0.0.2")
        .resolve("mixed.sluice.test", "127.0.0.1")
        .start();
    for _ in 0..2 {
        get(&proxy, &format!("http://mixed.sluice.test:{}/bytes/3", allowed.port())).expect_status(200);
    }
    assert_eq!(denied.accepts(), 0, "the denied address of the name was dialled");
    assert_eq!(allowed.requests(), 2);
}

#[test]
fn connect_to_a_denied_address_is_refused() {
    let denied = Origin::start_on((DENIED_IP, 0).into());
    let allowed = Origin::start();
    // Both ports are CONNECT ports: a 403 can only come from the deny list.
    let proxy = Proxy::builder(&format!(
        "deny_destinations = [\"127.0.0.2/32\"]\nconnect_ports = [{}, {}]\n",
        denied.port(),
        allowed.port()
    ))
    .resolve("internal.sluice.test", "127.0.0.2")
    .start();
    for target in [denied.host(), format!("internal.sluice.test:{}", denied.port())] {
        let (head, mut c) = send_connect(&proxy, &target);
        assert!(head.first_line.starts_with("HTTP/1.1 403 "), "CONNECT {target}: {head:?}");
        let body = c.wait_closed(Duration::from_secs(5)).unwrap_or_else(|e| panic!("CONNECT {target}: {e}"));
        assert!(String::from_utf8_lossy(&body).contains("deny list"), "CONNECT {target}: {body:?}");
    }
    assert_eq!(denied.accepts(), 0, "a CONNECT dialled a denied address");
    // An allowed CONNECT port and address: the tunnel opens and carries a request.
    let (head, mut c) = send_connect(&proxy, &allowed.host());
    assert!(head.first_line.starts_with("HTTP/1.1 200"), "CONNECT {}: {head:?}", allowed.host());
    let r = c.get(&allowed.host(), "/bytes/5");
    assert_eq!(r.status, 200, "through the tunnel: {}", r.describe());
    assert_eq!(allowed.accepts(), 1);
}

// ---------------------------------------------------------------------------------------
// limits.max_connections_per_worker
// ---------------------------------------------------------------------------------------

/// What became of a client that connected and sent a GET.
enum Admission {
    /// Answered: the proxy holds the connection (kept alive).
    Served(Client, Response),
    /// Closed (or reset) without a byte of response.
    Refused,
}

/// Connects to the proxy and sends `GET /bytes/5` for `origin` (keep-alive).
fn try_client(proxy: &Proxy, origin: &Origin) -> Admission {
    let s = TcpStream::connect_timeout(&proxy.addr(), Duration::from_secs(5)).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("set_read_timeout");
    let mut c = Client { conn: BufConn::new(s) };
    // A refused connection may be reset before the request is written: that is a refusal.
    let _ = c.send(format!("GET /bytes/5 HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()).as_bytes());
    match c.try_response(false) {
        Ok(r) => Admission::Served(c, r),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            panic!("the proxy neither answered nor closed a new client within 10 s")
        }
        Err(e) => {
            assert!(c.conn.buffered().is_empty(), "a partial response ({e}): {:?}", excerpt(c.conn.buffered()));
            Admission::Refused
        }
    }
}

/// A client the proxy admitted and answered. A connection slot the proxy has not freed
/// yet (the start-up probe's, one just closed) still counts against the cap, so a
/// refusal is retried for up to 5 s; each is added to `refusals`.
fn admitted_client(proxy: &Proxy, origin: &Origin, refusals: &mut usize) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_client(proxy, origin) {
            Admission::Served(c, r) => {
                assert_eq!(r.status, 200, "{}", r.describe());
                return c;
            }
            Admission::Refused => *refusals += 1,
        }
        assert!(Instant::now() < deadline, "no client admitted for 5 s ({refusals} refused)");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_past_max_connections_per_worker_are_refused() {
    const CAP: usize = 3;
    let origin = Origin::start();
    let proxy = Proxy::builder(&format!("[limits]\nmax_connections_per_worker = {CAP}\n")).workers(1).start();
    let mut refusals = 0;
    proxy.wait_no_clients("after start-up (the readiness probe)");
    // Admin connections (a scraper keeping its connection open) are not clients: they
    // take none of the client slots.
    let admin: Vec<std::net::TcpStream> = (0..CAP)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", proxy.admin_port)).expect("connect to the admin port"))
        .collect();
    let mut held: Vec<Client> = (0..CAP).map(|_| admitted_client(&proxy, &origin, &mut refusals)).collect();
    assert_eq!(refusals, 0, "open admin connections took client slots");
    // The cap is reached (the held clients were answered, so their slots are live).
    match try_client(&proxy, &origin) {
        Admission::Served(_, r) => {
            panic!("client {} of a worker capped at {CAP} was served: {}", CAP + 1, r.describe())
        }
        Admission::Refused => refusals += 1,
    }
    // The held clients are unaffected.
    for (i, c) in held.iter_mut().enumerate() {
        let r = c.get(&origin.host(), "/bytes/7");
        assert_eq!(r.status, 200, "held client {i}: {}", r.describe());
    }
    // One leaves: once the proxy has freed its slot, a new client is admitted.
    drop(held.remove(0));
    let mut newcomer = admitted_client(&proxy, &origin, &mut refusals);
    assert_eq!(newcomer.get(&origin.host(), "/bytes/9").status, 200);
    // Every refusal the clients saw was counted, and nothing else.
    let rejected = proxy.metric("sluice_connections_rejected_total").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rejected, refusals as f64, "sluice_connections_rejected_total");
    drop(admin);
}
