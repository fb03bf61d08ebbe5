//! HTTP/2 conformance (issue 14), judged by a suite we did not write: `httpwg` (the
//! `httpwg-cli` crate, an h2spec port: 107 cases of RFC 9113, installed by `.ci/setup`)
//! against the cleartext listener (prior knowledge) and, through a TLS bridge that offers
//! ALPN `h2`, against the intercepting TLS listener. Every case must pass on both.
//!
//! The suite asks for `http://localhost/` whatever address it connects to; the proxy pins
//! `localhost` to a loopback address where a real HTTP/1.1 origin listens on port 80
//! (cleartext), and a TLS front for it on 443 (interception).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use support::h2::{TlsBridge, TlsFront};
use support::*;

/// What one run of the suite said.
struct Outcome {
    passed: Vec<String>,
    /// Cases that ran and did not pass.
    failed: Vec<String>,
    output: String,
}

/// Runs every case against `addr`, one at a time.
fn run_httpwg(addr: SocketAddr) -> Outcome {
    let out = Command::new("httpwg")
        .args(["-v", "-a", &addr.to_string(), "--frame-timeout", "1000", "--connect-timeout", "2000"])
        .env("SEQUENTIAL", "1")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run httpwg");
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stdout));
    let output = strip_ansi(&output);
    let case = |line: &str, marker: &str| line.split_once(marker).map(|(_, name)| name.trim().to_string());
    let ran: Vec<String> = output.lines().filter_map(|l| case(l, "Running test:")).collect();
    let passed: Vec<String> = output.lines().filter_map(|l| case(l, "Test passed:")).collect();
    let failed = ran.iter().filter(|c| !passed.contains(c)).cloned().collect();
    Outcome { passed, failed, output }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Panics with the suite's output unless every case passed.
fn assert_all_pass(outcome: &Outcome, listener: &str, proxy: &Proxy) {
    assert!(
        outcome.passed.len() >= 100,
        "{listener}: the suite ran {} cases:\n{}",
        outcome.passed.len(),
        outcome.output
    );
    assert!(
        outcome.failed.is_empty(),
        "{listener}: {} of {} conformance cases failed: {:#?}\n--- httpwg output ---\n{}\n--- sluice ---\n{}",
        outcome.failed.len(),
        outcome.passed.len() + outcome.failed.len(),
        outcome.failed,
        outcome.output,
        proxy.stderr_log()
    );
}

fn ready() -> bool {
    if !have("httpwg") {
        skip("httpwg is not installed (run .ci/setup: cargo install httpwg-cli)");
        return false;
    }
    if !have("python3") {
        skip("python3 is not installed (run .ci/setup)");
        return false;
    }
    true
}

/// An HTTP/1.1 origin behind a TLS front for `localhost`, and a proxy that pins
/// `localhost` to the front's address and trusts its CA.
fn origin_and_proxy() -> (Origin, TlsFront, Proxy) {
    let backend = Origin::start();
    let front = TlsFront::start("localhost", backend.addr);
    let proxy = Proxy::builder("")
        .workers(1)
        .resolve("localhost", &front.ip)
        .arg("--upstream-ca")
        .arg(front.ca_pem.to_str().expect("utf-8 temp path"))
        .start();
    (backend, front, proxy)
}

#[test]
fn the_cleartext_listener_passes_the_http2_conformance_suite() {
    if !ready() {
        return;
    }
    let (_backend, front, mut proxy) = origin_and_proxy();
    // `http://localhost/`: the origin listens on port 80 of the pinned address.
    let origin = Origin::start_on(format!("{}:80", front.ip).parse().unwrap());
    let outcome = run_httpwg(proxy.addr());
    assert_all_pass(&outcome, "h2c listener", &proxy);
    // The suite resets streams (with codes of its own numbering) and sends malformed ones
    // we reset (PROTOCOL_ERROR): breaks when RST_STREAM frames are not counted each way.
    let resets = |labels: &[&str]| proxy.metric_labelled("sluice_h2_resets_total", labels);
    let received = resets(&["leg=\"client\"", "direction=\"received\""]);
    assert!(received >= 5.0, "client resets not counted ({received}):\n{:?}", proxy.metrics());
    let sent = resets(&["leg=\"client\"", "direction=\"sent\"", "code=\"PROTOCOL_ERROR\""]);
    assert!(sent >= 5.0, "our resets not counted ({sent}):\n{:?}", proxy.metrics());
    assert!(origin.requests() > 0, "no case reached the origin: the suite did not test proxying");
    proxy.assert_serves(&origin);
}

#[test]
fn the_intercepting_tls_listener_passes_the_http2_conformance_suite() {
    if !ready() {
        return;
    }
    let (backend, _front, mut proxy) = origin_and_proxy();
    let bridge = TlsBridge::start("localhost", &proxy.dir.join("ca").join("ca.pem"), proxy.addr());
    let outcome = run_httpwg(format!("{}:443", bridge.ip).parse().unwrap());
    assert_all_pass(&outcome, "intercepting TLS listener", &proxy);
    assert!(backend.requests() > 0, "no case reached the origin: the suite did not test proxying");
    proxy.assert_serves(&backend);
}
