//! Request heads: `parse_request` on arbitrary bytes, under the default limits and under
//! small ones. Beyond "no panic":
//! - an error is one of the statuses a client may get for its head (400/431/501/505);
//! - `Ok(None)` only while the input is shorter than the limit;
//! - a parsed head claims at most the bytes it was given (and the limit), depends on
//!   nothing after them, and none of its prefixes is refused (a head arriving in pieces
//!   is never answered 400 early);
//! - the head sent upstream parses back whole, with the same method, target, framing and
//!   destination, names our Via hop, and serialises the same way again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::h1::{parse_request, H1ErrorKind, HeadLimits, RequestHead, RequestTarget};

const VIA: &str = "sluice";

fuzz_target!(|data: &[u8]| {
    check(data, &HeadLimits::default());
    check(data, &HeadLimits { max_bytes: 96, max_headers: 3 });
});

fn check(data: &[u8], limits: &HeadLimits) {
    let (head, n) = match parse_request(data, limits) {
        Err(e) => {
            assert!(
                matches!(
                    e.kind,
                    H1ErrorKind::BadRequest
                        | H1ErrorKind::HeadTooLarge
                        | H1ErrorKind::NotImplemented
                        | H1ErrorKind::BadVersion
                ),
                "unexpected error kind {e:?}"
            );
            return;
        }
        Ok(None) => {
            assert!(data.len() < limits.max_bytes, "incomplete at the limit ({} bytes)", data.len());
            return;
        }
        Ok(Some(parsed)) => parsed,
    };
    assert!(n > 0 && n <= data.len() && n <= limits.max_bytes, "consumed {n} of {}", data.len());
    assert_eq!(parse_request(&data[..n], limits), Ok(Some((head.clone(), n))), "the head depends on bytes after it");
    for k in prefixes(n) {
        assert_eq!(parse_request(&data[..k], limits), Ok(None), "prefix of {k} bytes of a valid head refused");
    }
    round_trip(&head);
}

/// Up to 24 prefix lengths below `n`, always including `n - 1`.
fn prefixes(n: usize) -> impl Iterator<Item = usize> {
    let step = (n / 23).max(1);
    (0..n).step_by(step).chain(std::iter::once(n - 1))
}

fn round_trip(head: &RequestHead<'_>) {
    let Ok(dest) = head.upstream_target() else {
        // An HTTP/1.0 origin-form request without Host: the proxy answers 400 itself.
        return;
    };
    let mut out = Vec::new();
    head.write_upstream(&mut out, &sluice::forwarding::Hop::via_only(VIA));
    let roomy = HeadLimits { max_bytes: out.len() + 1, max_headers: head.headers.len() + 4 };
    let back = match parse_request(&out, &roomy) {
        Ok(Some((back, m))) if m == out.len() => back,
        other => panic!("upstream head {:?} does not parse back: {other:?}", String::from_utf8_lossy(&out)),
    };
    assert_eq!(back.method, head.method);
    assert_eq!(back.method_raw, head.method_raw);
    assert_eq!(back.minor_version, 1);
    assert_eq!(back.framing, head.framing);
    assert!(back.keep_alive, "the upstream head asks to close");
    assert!(!back.expect_continue, "Expect is forwarded");
    assert!(back.loops_through(VIA), "our Via hop is missing");
    let expected_target = match &head.target {
        RequestTarget::Absolute { path, .. } => RequestTarget::Origin { path: path.as_ref() },
        other => other.clone(),
    };
    assert_eq!(back.target, expected_target);
    let back_dest = back.upstream_target().expect("upstream head has a destination");
    match &head.target {
        // https://h/ has port 443 by its scheme, which the origin-form head cannot say.
        RequestTarget::Absolute { https: true, authority, .. } if authority.port.is_none() => {
            assert_eq!(back_dest.0, dest.0)
        }
        _ => assert_eq!(back_dest, dest),
    }
    // Serialising what the origin would parse gives the same head again, but for the
    // one more Via hop.
    let mut again = Vec::new();
    back.write_upstream(&mut again, &sluice::forwarding::Hop::via_only(VIA));
    let again = parse_request(&again, &HeadLimits { max_bytes: again.len() + 1, ..roomy })
        .expect("second upstream head parses")
        .expect("second upstream head is complete")
        .0;
    let not_via = |f: &&sluice::h1::Header<'_>| !f.name.eq_ignore_ascii_case("via");
    assert!(again.headers.iter().filter(not_via).eq(back.headers.iter().filter(not_via)));
    assert_eq!(again.target, back.target);
    assert_eq!(again.framing, back.framing);
}
