//! HTTP Upgrade (RFC 9110 §7.8), sans-I/O: which protocols a request offers and which of
//! them the operator allows ([`offer`]), the fields that carry them on the rewritten
//! head ([`push_upgrade_fields`]), and whether a `101 Switching Protocols` switched to one
//! of them ([`switched_to`]).
//!
//! `Upgrade` and `Connection` are hop-by-hop: the head writers drop them, and the
//! exchange adds them back for the protocols it forwards. A protocol the operator does
//! not allow is stripped, not refused: RFC 9110 §7.8 lets any recipient ignore an
//! Upgrade, so the request goes on as a plain HTTP/1.1 request (an `h2c` offer is
//! optional by design, and its client carries on in HTTP/1.1). HTTP/2 over cleartext
//! (`h2c`) is never forwarded as an upgrade, whatever the list says.

use super::headers::{classify, is_token, list_elements, FieldKind};
use super::request::RequestHead;
use super::response::ResponseHead;

/// HTTP/2 over cleartext TCP: the one protocol never forwarded as an upgrade (the proxy
/// would have to speak it to relay it, and an origin switching to it behind the proxy's
/// back would take the connection out of HTTP/1.1 framing).
pub const H2C: &str = "h2c";

/// What the Upgrade of a request amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeOffer {
    /// No Upgrade field.
    None,
    /// An Upgrade that is not forwarded: none of its protocols is allowed (or it offers
    /// only `h2c`), it came on HTTP/1.0 (which must ignore it, §7.8), or without the
    /// `upgrade` connection option. The request goes on without it.
    Stripped,
    /// The allowed protocols offered, in the client's order, as the Upgrade value to
    /// forward (`websocket`, `websocket, foo/2`).
    Forward(String),
}

/// A protocol's name: `name` of `name/version`.
fn protocol_name(protocol: &[u8]) -> &[u8] {
    protocol.split(|&b| b == b'/').next().unwrap_or_default()
}

/// `protocol-name ["/" protocol-version]`, both tokens.
fn is_protocol(element: &[u8]) -> bool {
    let mut parts = element.splitn(2, |&b| b == b'/');
    let name = parts.next().unwrap_or_default();
    is_token(name) && parts.next().is_none_or(is_token)
}

/// The Upgrade fields' protocols, as offered (empty elements and malformed ones left out).
fn protocols<'a>(headers: &'a [super::Header<'a>]) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .flat_map(|h| list_elements(h.value))
        .filter(|p| is_protocol(p))
}

/// Whether a protocol may be forwarded: on the operator's list (by name, any version),
/// and never `h2c`.
fn allowed_protocol(protocol: &[u8], allowed: &[String]) -> bool {
    let name = protocol_name(protocol);
    !name.eq_ignore_ascii_case(H2C.as_bytes()) && allowed.iter().any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
}

/// What to do with the request's Upgrade, given the protocols the operator allows
/// (`upgrade_protocols`, lower-case names).
pub fn offer(head: &RequestHead, allowed: &[String]) -> UpgradeOffer {
    if !head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade")) {
        return UpgradeOffer::None;
    }
    let option_named = head
        .headers
        .iter()
        .filter(|h| classify(h.name) == FieldKind::Connection)
        .flat_map(|h| list_elements(h.value))
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    if head.minor_version != 1 || !option_named {
        return UpgradeOffer::Stripped;
    }
    let mut forward = Vec::new();
    for p in protocols(&head.headers).filter(|p| allowed_protocol(p, allowed)) {
        if !forward.is_empty() {
            forward.extend_from_slice(b", ");
        }
        forward.extend_from_slice(p);
    }
    match String::from_utf8(forward) {
        Ok(f) if !f.is_empty() => UpgradeOffer::Forward(f),
        _ => UpgradeOffer::Stripped,
    }
}

/// Adds `Connection: upgrade` and `Upgrade: <protocols>` to a serialised head (which
/// ends with its blank line), right before that blank line.
pub fn push_upgrade_fields(head: &mut Vec<u8>, protocols: &str) {
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
    }
    head.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
    head.extend_from_slice(protocols.as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
}

/// Checks a 101 against what was offered (`offered`, an Upgrade value from
/// [`UpgradeOffer::Forward`]) and returns the protocol(s) it switched to, as the
/// Upgrade value for the client. A server must name the protocol it switches to and
/// must not switch to one the client did not offer (RFC 9110 §7.8, §15.2.2).
pub fn switched_to(resp: &ResponseHead, offered: &str) -> Result<String, &'static str> {
    if resp.minor_version != 1 {
        return Err("the origin switched protocols on HTTP/1.0");
    }
    let offered: Vec<&[u8]> = list_elements(offered.as_bytes()).map(protocol_name).collect();
    let mut chosen = Vec::new();
    for p in resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("upgrade")).flat_map(|h| list_elements(h.value))
    {
        if p.is_empty() {
            continue;
        }
        if !is_protocol(p) || !offered.iter().any(|o| o.eq_ignore_ascii_case(protocol_name(p))) {
            return Err("the origin switched to a protocol that was not offered");
        }
        if !chosen.is_empty() {
            chosen.extend_from_slice(b", ");
        }
        chosen.extend_from_slice(p);
    }
    match String::from_utf8(chosen) {
        Ok(c) if !c.is_empty() => Ok(c),
        _ => Err("the origin's 101 names no protocol"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::{parse_request, parse_response, HeadLimits, Method};

    fn req(raw: &str) -> RequestHead<'_> {
        parse_request(raw.as_bytes(), &HeadLimits::default()).unwrap().unwrap().0
    }

    fn resp(raw: &str) -> ResponseHead<'_> {
        parse_response(raw.as_bytes(), &HeadLimits::default(), Method::Get).unwrap().unwrap().0
    }

    fn ws() -> Vec<String> {
        vec!["websocket".to_string()]
    }

    fn fwd(s: &str) -> UpgradeOffer {
        UpgradeOffer::Forward(s.to_string())
    }

    #[test]
    fn an_allowed_protocol_is_forwarded() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(offer(&h, &ws()), fwd("websocket"));
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nconnection: keep-alive, UPGRADE\r\nupgrade: WebSocket\r\n\r\n");
        assert_eq!(offer(&h, &ws()), fwd("WebSocket"), "names match case-insensitively");
        let h =
            req("GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nConnection: upgrade\r\nUpgrade: websocket/13\r\n\r\n");
        assert_eq!(offer(&h, &ws()), fwd("websocket/13"), "any version of an allowed name");
    }

    #[test]
    fn only_the_allowed_protocols_of_a_list_go() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo/1, websocket,, bar\r\n\r\n");
        assert_eq!(offer(&h, &ws()), fwd("websocket"));
        let both = vec!["websocket".to_string(), "bar".to_string()];
        assert_eq!(offer(&h, &both), fwd("websocket, bar"), "in the client's order");
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(offer(&h, &ws()), fwd("websocket"), "across fields");
    }

    #[test]
    fn what_is_not_allowed_is_stripped() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n");
        assert_eq!(offer(&h, &ws()), UpgradeOffer::Stripped);
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(offer(&h, &[]), UpgradeOffer::Stripped, "an empty list allows nothing");
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(offer(&h, &ws()), UpgradeOffer::Stripped, "no upgrade connection option");
        let h = req("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(offer(&h, &ws()), UpgradeOffer::Stripped, "HTTP/1.0 must ignore Upgrade");
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: web socket, /1, a/\r\n\r\n");
        assert_eq!(offer(&h, &ws()), UpgradeOffer::Stripped, "malformed protocols");
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n");
        assert_eq!(offer(&h, &ws()), UpgradeOffer::None);
    }

    #[test]
    fn h2c_is_never_forwarded() {
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                     HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
        let anything = vec!["h2c".to_string(), "websocket".to_string()];
        assert_eq!(offer(&h, &anything), UpgradeOffer::Stripped, "even when listed");
        let h = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: H2C, websocket\r\n\r\n");
        assert_eq!(offer(&h, &anything), fwd("websocket"));
    }

    #[test]
    fn upgrade_fields_go_before_the_blank_line() {
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 s\r\n\r\n".to_vec();
        push_upgrade_fields(&mut head, "websocket");
        assert_eq!(
            head,
            b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 s\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
        assert!(parse_request(&head, &HeadLimits::default()).unwrap().is_some());
    }

    #[test]
    fn a_101_must_name_an_offered_protocol() {
        let ok = resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(switched_to(&ok, "websocket"), Ok("websocket".to_string()));
        assert_eq!(switched_to(&ok, "foo, WebSocket/13"), Ok("websocket".to_string()));
        let other = resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(switched_to(&other, "websocket"), Err("the origin switched to a protocol that was not offered"));
        let none = resp("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(switched_to(&none, "websocket"), Err("the origin's 101 names no protocol"));
        let old = resp("HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(switched_to(&old, "websocket"), Err("the origin switched protocols on HTTP/1.0"));
    }
}
