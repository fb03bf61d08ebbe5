//! TLS detection and ClientHello sniffing, as `conn::tls::{detect, accept}` do it: the
//! first bytes decide TLS or HTTP/1 (`tls::looks_like_tls`); a TLS client's bytes go to a
//! rustls `Acceptor` as they arrive (`tls::read_client_hello`) until the ClientHello is
//! whole; its server name
//! (lowercased) picks passthrough (`tls::is_passthrough`) or a forged certificate
//! (`Minter::config_for`), which then takes the ClientHello. The first input byte picks
//! how the rest arrives in pieces. Beyond "no panic":
//! - no valid HTTP/1 request head is taken for TLS;
//! - one piece or many, the same outcome (refused, or the same server name and ALPN);
//!   nothing is left unread while more bytes are awaited;
//! - the passthrough match is case-insensitive, ignores a trailing dot, matches a name
//!   under `*.parent`, and never matches a name equal to the wildcard's suffix;
//! - a certificate can be forged for every server name a ClientHello carries, and the
//!   server side accepts the ClientHello or refuses it with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls::server::Acceptor;
use sluice::h1::{parse_request, HeadLimits};
use sluice::tls::mint::Minter;
use sluice::tls::{is_passthrough, looks_like_tls, read_client_hello};
use std::cell::RefCell;

/// What the client's bytes came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The bytes ended before the ClientHello did.
    Incomplete,
    /// The Acceptor refused the bytes (read_tls or accept failed).
    Refused,
    /// A whole ClientHello.
    Hello { sni: Option<String>, alpn: Vec<Vec<u8>> },
}

thread_local! {
    static MINTER: RefCell<Minter> = RefCell::new(minter());
}

fn minter() -> Minter {
    let dir = std::env::temp_dir().join(format!("sluice-fuzz-ca-{}", std::process::id()));
    let (ca, _) = sluice::tls::ca::load_or_create(&dir).expect("a throwaway CA");
    let minter = Minter::new(&ca, 64).expect("a minter");
    let _ = std::fs::remove_dir_all(&dir);
    minter
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if !looks_like_tls(data) {
        return;
    }
    assert!(!matches!(parse_request(data, &HeadLimits::default()), Ok(Some(_))), "an HTTP head taken for TLS");
    let whole = sniff(data, &mut |_| usize::MAX);
    let mut state = u32::from(mode) | 0x100;
    let pieces = sniff(data, &mut |_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state % 300) as usize
    });
    assert_eq!(whole, pieces, "one piece and many disagree");
    if let Outcome::Hello { sni: Some(name), .. } = &whole {
        check_passthrough(name);
    }
});

/// Drives an Acceptor over `data` arriving in pieces of `next_len` bytes with
/// `tls::read_client_hello`, as `conn::tls::accept` does; on a whole ClientHello, forges
/// the certificate for its name and hands the ClientHello to the server side.
fn sniff(data: &[u8], next_len: &mut dyn FnMut(usize) -> usize) -> Outcome {
    let mut acceptor = Acceptor::default();
    let mut arrived = 0;
    let mut fed = 0;
    while arrived < data.len() {
        arrived += next_len(arrived).max(1).min(data.len() - arrived);
        let accepted = match read_client_hello(&mut acceptor, &data[..arrived], &mut fed) {
            Ok(None) => {
                assert_eq!(fed, arrived, "bytes left unread while waiting for more");
                continue;
            }
            Err(_) => return Outcome::Refused,
            Ok(Some(accepted)) => accepted,
        };
        assert!(fed <= arrived);
        let hello = accepted.client_hello();
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        let alpn = hello.alpn().map(|a| a.map(<[u8]>::to_vec).collect()).unwrap_or_default();
        let cert_name = sni.clone().unwrap_or_else(|| "127.0.0.1".to_string());
        let config = MINTER
            .with(|m| m.borrow_mut().config_for(&cert_name))
            .unwrap_or_else(|e| panic!("no certificate for a ClientHello's name {cert_name:?}: {e}"));
        // Ok or a TLS alert: either is fine; the connection code closes on an error.
        let _ = accepted.into_connection(config);
        return Outcome::Hello { sni, alpn };
    }
    Outcome::Incomplete
}

fn check_passthrough(name: &str) {
    assert!(is_passthrough(name, &[name.to_string()]));
    assert!(is_passthrough(&name.to_ascii_uppercase(), &[name.to_string()]));
    assert!(is_passthrough(name, &[name.to_ascii_uppercase()]));
    assert!(is_passthrough(&format!("{name}."), &[name.to_string()]));
    assert!(!is_passthrough(name, &[format!("*.{name}")]));
    assert!(is_passthrough(&format!("www.{name}"), &[format!("*.{}", name.to_ascii_uppercase())]));
    if let Some((_, parent)) = name.split_once('.') {
        if !parent.is_empty() {
            assert!(is_passthrough(name, &[format!("*.{parent}")]), "{name} not under *.{parent}");
            assert!(!is_passthrough(parent, &[format!("*.{parent}")]));
        }
    }
}
