//! The box itself is not a destination for LAN clients (`local_targets`): a client that
//! is not on loopback cannot have the proxy connect to loopback or to the machine's own
//! addresses (where the admin endpoint and other local services listen), whatever
//! spelling of the address it uses; every refusal is the deny list's one 403. A loopback
//! client keeps reaching them; the operator can open or close that for everyone. And a
//! failed connect reads the same whether the port was closed or filtered.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use support::*;

/// Everyone may use the proxy here: only `local_targets` decides.
const OPEN: &str = "allow_clients = [\"0.0.0.0/0\", \"::/0\"]\n";

fn lan_proxy(extra: &str) -> Option<(Proxy, IpAddr)> {
    let Some(ip) = non_loopback_address() else {
        skip("this machine has no non-loopback address to connect from (unit test: upstream::local)");
        return None;
    };
    let any = if ip.is_ipv4() { "0.0.0.0" } else { "::" };
    let proxy =
        Proxy::builder(&format!("{OPEN}{extra}")).listen_ip(any).resolve("inside.sluice.test", "127.0.0.1").start();
    Some((proxy, ip))
}

/// Sends `request` to the proxy from `from` (this machine's LAN address, or loopback).
fn ask(proxy: &Proxy, from: IpAddr, request: &str) -> Response {
    exchange(SocketAddr::new(from, proxy.port), request.as_bytes(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{request:?} from {from}: {e}"))
}

fn assert_denied(r: &Response, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.describe());
    assert!(
        r.text().contains("destination address is on the deny list"),
        "{what}: one text for every refusal: {}",
        r.text()
    );
}

#[test]
fn a_lan_client_cannot_reach_the_box_in_any_spelling() {
    let Some((proxy, ip)) = lan_proxy("") else { return };
    let admin = proxy.admin_port;
    let own = if ip.is_ipv4() { ip.to_string() } else { format!("[{ip}]") };
    let hosts = [
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "0x7f.1".to_string(),
        "2130706433".to_string(),
        "0177.0.0.1".to_string(),
        "127.1".to_string(),
        "[::ffff:127.0.0.1]".to_string(),
        "inside.sluice.test".to_string(),
        own,
    ];
    for host in &hosts {
        let r = ask(&proxy, ip, &format!("GET http://{host}:{admin}/metrics HTTP/1.1\r\nHost: {host}:{admin}\r\n\r\n"));
        assert_denied(&r, &format!("absolute-form to {host}"));
    }
    // Routed by Host alone (origin-form), and a CONNECT.
    let r = ask(&proxy, ip, &format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\n\r\n"));
    assert_denied(&r, "Host-routed to 127.0.0.1");
    let r = ask(&proxy, ip, "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n");
    assert_denied(&r, "CONNECT 127.0.0.1:443");
}

#[test]
fn a_loopback_client_keeps_reaching_the_box_and_the_operator_decides_for_everyone() {
    let Some((proxy, ip)) = lan_proxy("") else { return };
    let lo: IpAddr = [127, 0, 0, 1].into();
    let admin = proxy.admin_port;
    let metrics = format!("GET http://127.0.0.1:{admin}/metrics HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\n\r\n");
    assert_eq!(ask(&proxy, lo, &metrics).status, 200, "a loopback client reaches loopback (tests, local tools)");
    drop(proxy);

    let (open, _) = lan_proxy("local_targets = \"allow\"\n").unwrap();
    let metrics = format!("GET http://127.0.0.1:{}/metrics HTTP/1.1\r\nHost: a\r\n\r\n", open.admin_port);
    let r = ask(&open, ip, &metrics);
    assert_eq!(r.status, 200, "local_targets = allow opens the box to LAN clients: {}", r.describe());
    drop(open);

    let (closed, _) = lan_proxy("local_targets = \"deny\"\n").unwrap();
    let metrics = format!("GET http://127.0.0.1:{}/metrics HTTP/1.1\r\nHost: a\r\n\r\n", closed.admin_port);
    assert_denied(&ask(&closed, lo, &metrics), "local_targets = deny, from loopback");
}

#[test]
fn a_closed_port_reads_like_any_failed_connect() {
    let proxy = Proxy::start("");
    let closed = free_port();
    let r = ask(&proxy, [127, 0, 0, 1].into(), &format!("GET http://127.0.0.1:{closed}/ HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert_eq!(r.status, 502, "{}", r.describe());
    let text = r.text();
    assert!(text.contains("cannot connect to the origin"), "{text}");
    assert!(
        !text.to_lowercase().contains("refused") && !text.contains(&closed.to_string()),
        "no port-scan oracle: {text}"
    );
}

/// With every address open to everyone, the one address a client reached the proxy at
/// (a wildcard listener answers on all of them) is still not a destination: refused at
/// once with the loop's 508, not dialled to arrive back as a second request. Over HTTP/1.1
/// and over each stream of an HTTP/2 connection, whose exchanges learn that address from
/// their session.
#[test]
fn the_address_a_client_reached_the_proxy_at_is_never_dialled_over_http1_or_http2() {
    let Some((proxy, ip)) = lan_proxy("local_targets = \"allow\"\n") else { return };
    let own = SocketAddr::new(ip, proxy.port);
    let authority = own.to_string();
    let r = ask(&proxy, ip, &format!("GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n"));
    assert_eq!(r.status, 508, "HTTP/1.1: {}", r.describe());
    assert!(r.text().contains("the target is this proxy itself"), "HTTP/1.1: {}", r.text());

    let body = proxy.dir.join("h2-body");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .arg(format!("http://{authority}/"))
        .output()
        .expect("run curl");
    let written = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = std::fs::read_to_string(&body).unwrap_or_default();
    assert_eq!(written, "508 2", "HTTP/2: {} {text}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("the target is this proxy itself"), "HTTP/2: {text}");
    // One request reached the proxy: none came back around as a second one.
    let requests = proxy.metric_labelled("sluice_requests_total", &["method=\"GET\""]);
    assert_eq!(requests, 2.0, "one HTTP/1.1 and one HTTP/2 request, no second hop");
}
