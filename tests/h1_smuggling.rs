//! Request-smuggling and malformed-head defences: each bad request gets a 400 (431 for
//! oversized heads) and the origin never sees it — nor the request hidden behind it.
//! Where the framing is in doubt, the bad request carries a second, "smuggled" request
//! to /smuggled behind it; the origin must never receive a head naming it.

mod support;

use std::time::Duration;
use support::*;

/// What the origin may have seen of a refused request.
#[derive(Clone, Copy, PartialEq)]
enum Seen {
    /// Nothing at all: the head itself is bad and must be refused before forwarding.
    Nothing,
    /// The head may have been forwarded (the body is bad), but never a whole request.
    NoCompleteRequest,
}

/// Sends `req` (with `{HOST}` replaced by the origin's host:port) to a fresh proxy and
/// checks the status is one of `want`, then that the origin saw nothing (or no complete
/// request) and that the proxy still serves.
fn refused_with(req: &str, want: &[u16], seen: Seen, config: &str) {
    let origin = Origin::start();
    let mut proxy = Proxy::start(config);
    let req = req.replace("{HOST}", &origin.host());
    let resp = exchange(proxy.addr(), req.as_bytes(), Duration::from_secs(10));
    let status = match &resp {
        Ok(r) => r.status,
        Err(e) => panic!("expected {want:?} for {:?}, got no response: {e}", excerpt(req.as_bytes())),
    };
    assert!(
        want.contains(&status),
        "expected {want:?} for {:?}, got {}",
        excerpt(req.as_bytes()),
        resp.as_ref().unwrap().describe()
    );
    // The proxy is done with the client once its slot is freed, and the origin with every
    // connection it accepted once none is open: whatever was forwarded has been seen.
    proxy.wait_no_clients("after the refusal");
    origin.wait_all_closed("after the refusal");
    let heads = origin.heads();
    assert!(!heads.iter().any(|h| h.contains("smuggled")), "the origin received the smuggled request: {heads:?}");
    match seen {
        Seen::Nothing => {
            assert!(heads.is_empty(), "the origin must not see a refused request; it saw {heads:?}");
            let asked = proxy.metric("sluice_upstream_pool_misses_total").unwrap_or(0.0)
                + proxy.metric("sluice_upstream_pool_hits_total").unwrap_or(0.0);
            assert_eq!(asked, 0.0, "the proxy looked for an upstream connection for a refused head");
        }
        Seen::NoCompleteRequest => {
            assert_eq!(origin.complete(), 0, "the origin received a complete request from a refused one: {heads:?}")
        }
    }
    assert!(proxy.alive(), "proxy exited: {}", proxy.stderr_log());
    proxy.assert_serves(&origin);
}

fn refused(req: &str) {
    refused_with(req, &[400], Seen::Nothing, "");
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n";

#[test]
fn content_length_with_transfer_encoding() {
    refused(&format!(
        "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Length: 45\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    ));
}

#[test]
fn transfer_encoding_with_content_length() {
    refused(&format!(
        "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
    ));
}

#[test]
fn differing_duplicate_content_length() {
    refused(&format!(
        "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Length: 5\r\n\
         Content-Length: 44\r\n\r\nhello{SMUGGLED}"
    ));
}

#[test]
fn differing_content_length_list() {
    refused(&format!("POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Length: 5, 44\r\n\r\nhello{SMUGGLED}"));
}

#[test]
fn signed_content_length() {
    // `"+5".parse::<u64>()` is Ok(5) in Rust: the grammar is 1*DIGIT.
    refused(&format!("POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Length: +5\r\n\r\nhello{SMUGGLED}"));
}

#[test]
fn bad_chunk_size_zz() {
    refused_with(
        &format!(
            "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nTransfer-Encoding: chunked\r\n\r\n\
             zz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        ),
        &[400],
        Seen::NoCompleteRequest,
        "",
    );
}

#[test]
fn bad_chunk_size_hex_prefix() {
    refused_with(
        &format!(
            "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nTransfer-Encoding: chunked\r\n\r\n\
             0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        ),
        &[400],
        Seen::NoCompleteRequest,
        "",
    );
}

#[test]
fn bad_chunk_size_overflow() {
    // 2^64 + 5: a parser that wraps reads a 5-byte chunk.
    refused_with(
        &format!(
            "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nTransfer-Encoding: chunked\r\n\r\n\
             10000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        ),
        &[400],
        Seen::NoCompleteRequest,
        "",
    );
}

#[test]
fn transfer_encoding_not_ending_in_chunked() {
    refused_with(
        &format!(
            "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nTransfer-Encoding: gzip\r\n\r\n\
             0\r\n\r\n{SMUGGLED}"
        ),
        &[400, 501],
        Seen::Nothing,
        "",
    );
}

#[test]
fn transfer_encoding_xchunked() {
    refused_with(
        &format!(
            "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nTransfer-Encoding: xchunked\r\n\r\n\
             0\r\n\r\n{SMUGGLED}"
        ),
        &[400, 501],
        Seen::Nothing,
        "",
    );
}

#[test]
fn obs_fold() {
    refused(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nX-Folded: a\r\n  b\r\n\r\n{SMUGGLED}"));
}

#[test]
fn obs_fold_of_transfer_encoding() {
    refused(&format!(
        "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n \
         chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    ));
}

#[test]
fn bare_lf_line_endings() {
    refused(&format!("GET /headers HTTP/1.1\nHost: {{HOST}}\nX-A: b\n\n{SMUGGLED}"));
}

#[test]
fn bare_lf_in_one_header_line() {
    refused(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nX-A: b\nX-B: c\r\n\r\n{SMUGGLED}"));
}

#[test]
fn bare_cr_in_header_value() {
    refused(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nX-A: b\rX-B: c\r\n\r\n{SMUGGLED}"));
}

#[test]
fn invalid_header_name_with_space() {
    refused(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nBad Header: x\r\n\r\n{SMUGGLED}"));
}

#[test]
fn whitespace_before_colon() {
    // RFC 9112 §5.1: MUST be rejected with 400.
    refused(&format!(
        "POST /echo HTTP/1.1\r\nHost: {{HOST}}\r\nTransfer-Encoding : chunked\r\n\
         Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
    ));
}

#[test]
fn control_byte_in_header_name() {
    refused(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nX-A\x01: b\r\n\r\n{SMUGGLED}"));
}

#[test]
fn nul_in_header_value() {
    refused(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nX-A: b\0c\r\n\r\n{SMUGGLED}"));
}

#[test]
fn http11_without_host() {
    // The framing is unambiguous here, so a request pipelined behind may be served;
    // only the Host-less one must never reach the origin.
    refused("GET /headers HTTP/1.1\r\nX-A: b\r\n\r\n");
}

#[test]
fn http11_absolute_form_without_host() {
    refused("GET http://{HOST}/headers HTTP/1.1\r\nX-A: b\r\n\r\n");
}

#[test]
fn two_different_host_headers() {
    refused("GET /headers HTTP/1.1\r\nHost: {HOST}\r\nHost: other.invalid\r\n\r\n");
}

#[test]
fn header_of_100k_gets_431() {
    let big = "a".repeat(100 * 1024);
    refused_with(
        &format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nX-Big: {big}\r\n\r\n"),
        &[431],
        Seen::Nothing,
        "",
    );
}

#[test]
fn too_many_headers_gets_431() {
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    refused_with(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\n{many}\r\n"), &[431], Seen::Nothing, "");
}

#[test]
fn configured_header_limits_apply() {
    let config = "[limits]\nmax_header_bytes = 2048\nmax_headers = 20\n";
    // Under the limits: served.
    let origin = Origin::start();
    let proxy = Proxy::start(config);
    let mut c = proxy.client();
    c.send_str(&format!("GET /headers HTTP/1.1\r\nHost: {}\r\nX-Mid: {}\r\n\r\n", origin.host(), "m".repeat(1000)));
    let r = c.response();
    assert_eq!(r.status, 200, "a 1 KiB head is under a 2 KiB limit: {}", r.describe());
    drop((c, proxy, origin));
    // Over the byte limit.
    let big = "b".repeat(4096);
    refused_with(
        &format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\nX-Big: {big}\r\n\r\n"),
        &[431],
        Seen::Nothing,
        config,
    );
    // Over the count limit.
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    refused_with(&format!("GET /headers HTTP/1.1\r\nHost: {{HOST}}\r\n{many}\r\n"), &[431], Seen::Nothing, config);
}

#[test]
fn bad_request_after_a_good_one_on_the_same_connection() {
    // The first request is fine and must be answered; the second is CL+TE and must be
    // refused without reaching the origin.
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let mut c = proxy.client();
    let h = origin.host();
    c.send_str(&format!(
        "GET /bytes/10 HTTP/1.1\r\nHost: {h}\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: {h}\r\nContent-Length: 45\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"
    ));
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_bytes_eq(&r.body, &pattern(10), "first response");
    let r = c.response();
    assert_eq!(r.status, 400, "{}", r.describe());
    // After a framing error the connection must be closed, not read further.
    if let Err(e) = c.wait_closed(Duration::from_secs(5)) {
        panic!("connection kept open after a 400 for CL+TE: {e}");
    }
    drop(c);
    proxy.wait_no_clients("after the 400");
    // The first request's origin connection stays pooled; the origin has read every head
    // the proxy wrote on it once the pooled connection is closed.
    drop(proxy);
    origin.wait_all_closed("after the proxy exited");
    let heads = origin.heads();
    assert_eq!(heads.len(), 1, "origin saw {heads:?}");
}
