//! What the origin learns about the client: `Forwarded` and `X-Forwarded-For` carry the
//! client's address by default (appended to what the client sent), only ours when the
//! operator says `replace` (a client's own values cannot be trusted), and the client's
//! untouched when `off`. A `#fragment` never leaves the proxy.

mod support;

use support::*;

/// Sends one request with `extra` header lines through the proxy; returns the head the
/// origin received.
fn origin_head(config: &str, target: impl Fn(&Origin) -> String, extra: &str) -> String {
    let origin = Origin::start();
    let proxy = Proxy::start(config);
    let mut c = proxy.client();
    let host = origin.host();
    c.send_str(&format!("GET {} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n", target(&origin)));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    let heads = origin.state.heads.lock().unwrap();
    assert_eq!(heads.len(), 1, "one request reached the origin");
    heads[0].clone()
}

fn absolute(path: &str) -> impl Fn(&Origin) -> String + '_ {
    move |o: &Origin| o.url(path)
}

fn lines<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
        .collect()
}

const UNTRUSTED: &str = "X-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\n";

#[test]
fn by_default_the_client_address_is_appended() {
    let head = origin_head("", absolute("/status/200"), UNTRUSTED);
    assert_eq!(lines(&head, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"], "{head}");
    assert_eq!(lines(&head, "forwarded"), ["for=203.0.113.9, for=127.0.0.1;proto=http"], "{head}");

    let head = origin_head("", absolute("/status/200"), "");
    assert_eq!(lines(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(lines(&head, "forwarded"), ["for=127.0.0.1;proto=http"], "{head}");
}

#[test]
fn replace_drops_what_the_client_claims() {
    let config = "[forwarding]\nforwarded = \"replace\"\nx_forwarded_for = \"replace\"\n";
    let extra = format!("{UNTRUSTED}X-Forwarded-For: 198.51.100.1\r\n");
    let head = origin_head(config, |_: &Origin| "/status/200".to_string(), &extra);
    assert_eq!(lines(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(lines(&head, "forwarded"), ["for=127.0.0.1;proto=http"], "{head}");
    assert!(!head.contains("203.0.113.9") && !head.contains("198.51.100.1"), "{head}");
}

#[test]
fn off_passes_the_client_fields_untouched() {
    let config = "[forwarding]\nforwarded = \"off\"\nx_forwarded_for = \"off\"\n";
    let head = origin_head(config, absolute("/status/200"), UNTRUSTED);
    assert_eq!(lines(&head, "x-forwarded-for"), ["203.0.113.9"], "{head}");
    assert_eq!(lines(&head, "forwarded"), ["for=203.0.113.9"], "{head}");
    let head = origin_head(config, absolute("/status/200"), "");
    assert!(lines(&head, "x-forwarded-for").is_empty() && lines(&head, "forwarded").is_empty(), "{head}");
}

#[test]
fn a_fragment_is_not_sent_upstream() {
    let head = origin_head("", absolute("/status/200?q=1#secret"), "");
    assert!(head.starts_with("GET /status/200?q=1 HTTP/1.1\r\n"), "{head}");
    let head = origin_head("", |_: &Origin| "/status/200#top".to_string(), "");
    assert!(head.starts_with("GET /status/200 HTTP/1.1\r\n"), "{head}");
}
