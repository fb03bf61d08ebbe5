//! Response heads: `parse_response` on arbitrary bytes, for a GET, a HEAD and a CONNECT.
//! Beyond "no panic":
//! - an error is a 502 (bad response) or a head over the limits;
//! - `Ok(None)` only while the input is shorter than the limit;
//! - a parsed head claims at most the bytes it was given, depends on nothing after them,
//!   and none of its prefixes is refused;
//! - the head written to the client parses again with the same status, reason and body
//!   framing, carries at most one framing field (never Content-Length on 1xx/204), and
//!   says `Connection: close` when closing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::h1::{parse_response, H1ErrorKind, HeadLimits, Method, ResponseHead};

const VIA: &str = "sluice";

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    for method in [Method::Get, Method::Head, Method::Connect] {
        check(data, &limits, method);
    }
    check(data, &HeadLimits { max_bytes: 96, max_headers: 3 }, Method::Get);
});

fn check(data: &[u8], limits: &HeadLimits, method: Method) {
    let (head, n) = match parse_response(data, limits, method) {
        Err(e) => {
            assert!(matches!(e.kind, H1ErrorKind::BadResponse | H1ErrorKind::HeadTooLarge), "{e:?}");
            return;
        }
        Ok(None) => {
            assert!(data.len() < limits.max_bytes, "incomplete at the limit ({} bytes)", data.len());
            return;
        }
        Ok(Some(parsed)) => parsed,
    };
    assert!(n > 0 && n <= data.len() && n <= limits.max_bytes, "consumed {n} of {}", data.len());
    assert!((100..=599).contains(&head.status));
    assert_eq!(parse_response(&data[..n], limits, method), Ok(Some((head.clone(), n))));
    let step = (n / 23).max(1);
    for k in (0..n).step_by(step).chain(std::iter::once(n - 1)) {
        assert_eq!(parse_response(&data[..k], limits, method), Ok(None), "prefix of {k} bytes refused");
    }
    for (close, client_minor) in [(false, 1), (true, 1), (false, 0)] {
        round_trip(&head, method, close, client_minor);
    }
}

fn round_trip(head: &ResponseHead<'_>, method: Method, close: bool, client_minor: u8) {
    let mut out = Vec::new();
    head.write_client(&mut out, VIA, close, client_minor);
    let roomy = HeadLimits { max_bytes: out.len() + 1, max_headers: head.headers.len() + 4 };
    let back = match parse_response(&out, &roomy, method) {
        Ok(Some((back, m))) if m == out.len() => back,
        other => panic!("client head {:?} does not parse back: {other:?}", String::from_utf8_lossy(&out)),
    };
    let text = String::from_utf8_lossy(&out);
    assert_eq!(back.status, head.status, "{text:?}");
    assert_eq!(back.reason, head.reason, "{text:?}");
    assert_eq!(back.minor_version, 1);
    assert_eq!(back.framing, head.framing, "{text:?}");
    let count = |name: &str| back.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    let (cl, te) = (count("content-length"), count("transfer-encoding"));
    assert!(cl + te <= 1, "more than one framing field: {text:?}");
    if (100..200).contains(&head.status) || head.status == 204 {
        assert_eq!(cl, 0, "Content-Length on a {}: {text:?}", head.status);
    }
    if close && head.status >= 200 {
        assert!(!back.keep_alive, "closing without saying so: {text:?}");
    }
}
