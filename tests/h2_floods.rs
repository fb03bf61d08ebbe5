//! HTTP/2 abuse on the client leg (issue 14, point 6): a bad preface, a bad first
//! SETTINGS, an oversized frame, a rapid-reset burst, a CONTINUATION flood, a PING flood,
//! a SETTINGS flood and an empty-DATA flood, each from the raw-frame probe
//! (`tests/support/h2probe.py flood`). Each offender gets GOAWAY with the right code and
//! is closed, while a well-behaved h2 client on the same worker (`workers(1)`) keeps
//! being served, one request after another, throughout; the proxy serves afterwards.
//!
//! Error codes (RFC 9113 §7): 1 PROTOCOL_ERROR, 6 FRAME_SIZE_ERROR, 9 COMPRESSION_ERROR,
//! 11 ENHANCE_YOUR_CALM.

mod support;

use std::time::Duration;
use support::h2::{have_python_h2, probe, Background, ProbeOut};
use support::*;

const PROTOCOL_ERROR: u32 = 1;
const FRAME_SIZE_ERROR: u32 = 6;
const COMPRESSION_ERROR: u32 = 9;
const ENHANCE_YOUR_CALM: u32 = 11;

/// The `code` label of `sluice_h2_goaways_total` for each RFC 9113 error code.
const CODE_NAMES: [&str; 15] = sluice::stats::H2_CODES;

/// What an offender may get: a GOAWAY with one of `codes` and then the close; or, where
/// `http1_answer_ok`, an HTTP/1.1 error answer and the close (a mangled preface is not a
/// preface: the proxy may take it for an HTTP/1.1 request line and refuse it).
/// `flood`: the `kind` label of `sluice_h2_flood_closes_total` that must count it, for the
/// floods only Sluice's own watch catches (h2's own limits may catch the others first).
struct Expect {
    codes: &'static [u32],
    http1_answer_ok: bool,
    flood: Option<&'static str>,
}

/// The sum of the samples of `family` whose labels include every one of `labels`.
/// Runs flood `kind` (`count` units) on one connection while a steady h2 client on the
/// same worker requests `/bytes/1000` every 20 ms; returns the flooder's output.
fn flood_while_another_is_served(kind: &str, count: usize, expect: Expect) -> ProbeOut {
    let origin = Origin::start();
    let mut proxy = Proxy::builder("").workers(1).start();
    let connect = format!("127.0.0.1:{}", proxy.port);
    let host = origin.host();
    let mut steady = Background::start(&[
        "steady",
        "--connect",
        &connect,
        "--req",
        "GET",
        &host,
        "/bytes/1000",
        "--expect-bytes",
        "1000",
        "--timeout",
        "5",
    ]);
    steady.wait_line("ready", Duration::from_secs(15)).unwrap_or_else(|e| panic!("the steady client: {e}"));
    let count = count.to_string();
    let out = probe(&[
        "flood",
        "--kind",
        kind,
        "--count",
        &count,
        "--connect",
        &connect,
        "--req",
        "GET",
        &host,
        "/bytes/10",
        "--timeout",
        "15",
    ]);
    let steady = steady.finish(Duration::from_secs(15));
    let served: usize = steady.field("steady", "ok").and_then(|v| v.parse().ok()).unwrap_or(0);
    let failed = steady.field("steady", "failed");
    // Breaks when the flood stalls or kills the worker: the other client misses answers.
    assert!(
        failed.as_deref() == Some("0") && served >= 3,
        "the well-behaved client on the same worker was not served throughout the {kind} flood: {}\nflood: {}",
        steady.describe(),
        out.describe()
    );
    // Breaks when the offender is tolerated (no GOAWAY, or the connection stays open).
    assert_eq!(out.line("closed").map(|l| l.starts_with('1')), Some(true), "{kind}: not closed: {}", out.describe());
    match out.goaway() {
        Some((code, _)) => {
            assert!(expect.codes.contains(&code), "{kind}: GOAWAY code {code}, expected one of {:?}", expect.codes)
        }
        None => {
            let first = out.line("first").unwrap_or("");
            assert!(
                expect.http1_answer_ok && (first.contains("HTTP/1.1 4") || first.contains("HTTP/1.1 5")),
                "{kind}: closed without a GOAWAY: {}",
                out.describe()
            );
        }
    }
    if let Some((code, _)) = out.goaway() {
        // Counted once, under the code the client got.
        let label = format!("code=\"{}\"", CODE_NAMES.get(code as usize).copied().unwrap_or("?"));
        let family = "sluice_h2_goaways_total";
        let mut sent = 0.0;
        wait_until(Duration::from_secs(5), || {
            sent = proxy.metric_labelled(family, &["direction=\"sent\"", &label]);
            sent >= 1.0
        });
        assert_eq!(sent, 1.0, "{kind}: sluice_h2_goaways_total{{direction=\"sent\",{label}}}");
    }
    if let Some(flood) = expect.flood {
        let label = format!("kind=\"{flood}\"");
        // Breaks when the watch does not name the flood it closed the connection for.
        wait_until(Duration::from_secs(5), || proxy.metric_labelled("sluice_h2_flood_closes_total", &[&label]) >= 1.0);
        assert_eq!(proxy.metric_labelled("sluice_h2_flood_closes_total", &[&label]), 1.0, "{kind}: {label}");
        assert_eq!(proxy.metric_labelled("sluice_h2_flood_closes_total", &[]), 1.0, "{kind}: one flood close in all");
    }
    assert!(proxy.alive(), "the proxy died");
    proxy.assert_serves(&origin);
    out
}

fn ready() -> bool {
    if !have_python_h2() {
        skip("python3 cannot import h2 (run .ci/setup)");
        return false;
    }
    true
}

#[test]
fn a_mangled_preface_is_refused_and_closed() {
    if ready() {
        flood_while_another_is_served(
            "bad-preface",
            1,
            Expect { codes: &[PROTOCOL_ERROR], http1_answer_ok: true, flood: None },
        );
    }
}

#[test]
fn a_first_frame_that_is_not_settings_gets_protocol_error() {
    if ready() {
        flood_while_another_is_served(
            "not-settings",
            1,
            Expect { codes: &[PROTOCOL_ERROR], http1_answer_ok: false, flood: None },
        );
    }
}

#[test]
fn a_bad_first_settings_gets_protocol_error() {
    if ready() {
        flood_while_another_is_served(
            "bad-settings",
            1,
            Expect { codes: &[PROTOCOL_ERROR], http1_answer_ok: false, flood: None },
        );
    }
}

#[test]
fn an_oversized_frame_gets_frame_size_error() {
    if ready() {
        flood_while_another_is_served(
            "oversized-frame",
            1,
            Expect { codes: &[FRAME_SIZE_ERROR], http1_answer_ok: false, flood: None },
        );
    }
}

#[test]
fn a_rapid_reset_burst_gets_enhance_your_calm() {
    if ready() {
        // 1000 HEADERS each cancelled at once (CVE-2023-44487).
        flood_while_another_is_served(
            "rapid-reset",
            1000,
            Expect { codes: &[ENHANCE_YOUR_CALM], http1_answer_ok: false, flood: None },
        );
    }
}

#[test]
fn a_continuation_flood_gets_goaway() {
    if ready() {
        // Endless CONTINUATION frames of 1 KB each on one header block (CVE-2024-27316 kind).
        flood_while_another_is_served(
            "continuation",
            10_000,
            Expect { codes: &[ENHANCE_YOUR_CALM, COMPRESSION_ERROR], http1_answer_ok: false, flood: None },
        );
    }
}

#[test]
fn a_ping_flood_gets_enhance_your_calm() {
    if ready() {
        flood_while_another_is_served(
            "ping",
            100_000,
            Expect { codes: &[ENHANCE_YOUR_CALM], http1_answer_ok: false, flood: Some("ping") },
        );
    }
}

#[test]
fn a_settings_flood_gets_enhance_your_calm() {
    if ready() {
        flood_while_another_is_served(
            "settings",
            100_000,
            Expect { codes: &[ENHANCE_YOUR_CALM], http1_answer_ok: false, flood: Some("settings") },
        );
    }
}

#[test]
fn an_empty_data_flood_gets_enhance_your_calm() {
    if ready() {
        flood_while_another_is_served(
            "empty-data",
            100_000,
            Expect { codes: &[ENHANCE_YOUR_CALM], http1_answer_ok: false, flood: Some("empty_data") },
        );
    }
}
