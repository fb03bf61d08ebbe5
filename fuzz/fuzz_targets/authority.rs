//! Authorities (`host[:port]` of Host headers, absolute-form and CONNECT targets):
//! `Authority::parse` on arbitrary bytes, then `numeric_host`, the check that decides
//! whether a host is an IP address (and so may be a loopback or local one). Beyond
//! "no panic":
//! - a parsed host is non-empty and lowercase, a port is never 0;
//! - parse -> display -> parse gives the same authority;
//! - `numeric_host` reads a host as an address exactly when the system resolver does
//!   (`getaddrinfo` with `AI_NUMERICHOST`), and as the same address: no spelling of
//!   127.0.0.1 may slip past the loopback check.
#![no_main]

use dns_lookup::{getaddrinfo, AddrInfoHints};
use libfuzzer_sys::fuzz_target;
use sluice::h1::Authority;
use sluice::upstream::local::numeric_host;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let Ok(authority) = Authority::parse(data) else {
        return;
    };
    assert!(!authority.host.is_empty());
    assert!(!authority.host.bytes().any(|b| b.is_ascii_uppercase()), "{authority:?}");
    assert_ne!(authority.port, Some(0));
    let shown = authority.to_string();
    assert_eq!(Authority::parse(shown.as_bytes()), Ok(authority.clone()), "{shown:?} does not parse back");

    let ours = numeric_host(&authority.host);
    let system = system_numeric(&authority.host);
    assert_eq!(ours, system, "numeric_host and getaddrinfo disagree on {:?}", authority.host);
    // The bracketed spelling reads the same.
    assert_eq!(numeric_host(&format!("[{}]", authority.host)), ours);
});

/// The address the C library reads `host` as, without any lookup; mapped IPv6 as IPv4.
fn system_numeric(host: &str) -> Option<IpAddr> {
    let hints = AddrInfoHints { flags: libc::AI_NUMERICHOST, ..AddrInfoHints::default() };
    let mut answers = getaddrinfo(Some(host), None, Some(hints)).ok()?;
    let first = answers.next()?.ok()?;
    Some(first.sockaddr.ip().to_canonical())
}
