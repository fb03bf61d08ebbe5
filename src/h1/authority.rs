//! `Authority`: a `host[:port]` as found in a Host header, an absolute-form target or a
//! CONNECT target; parsing (strict: no userinfo, no spaces or CTLs, valid port) and display.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

use super::error::H1Error;

/// A parsed `host[:port]`. The host is lowercased; an IPv6 literal is kept without brackets.
/// The host borrows the parsed bytes when they are already in that form (the usual case),
/// and is owned otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    pub host: Cow<'a, str>,
    pub port: Option<u16>,
}

const ERR_EMPTY: H1Error = H1Error::bad_request("empty host");
const ERR_USERINFO: H1Error = H1Error::bad_request("userinfo in authority");
const ERR_CHAR: H1Error = H1Error::bad_request("invalid character in host");
const ERR_PORT: H1Error = H1Error::bad_request("invalid port");
const ERR_IPV6: H1Error = H1Error::bad_request("invalid IPv6 literal");

impl<'a> Authority<'a> {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port`. Rejects userinfo (`@`), an empty
    /// host, a missing / non-numeric / zero / out-of-range port, spaces, CTLs, non-ASCII
    /// bytes and characters that cannot appear in a DNS name or IP literal.
    pub fn parse(raw: &'a [u8]) -> Result<Authority<'a>, H1Error> {
        if raw.is_empty() {
            return Err(ERR_EMPTY);
        }
        if raw.contains(&b'@') {
            return Err(ERR_USERINFO);
        }
        if let Some(rest) = raw.strip_prefix(b"[") {
            let close = rest.iter().position(|&b| b == b']').ok_or(ERR_IPV6)?;
            let (literal, after) = (&rest[..close], &rest[close + 1..]);
            let text = std::str::from_utf8(literal).map_err(|_| ERR_IPV6)?;
            // Ipv6Addr's parser is strict: hex groups, `::`, embedded IPv4; no zone ids.
            let addr: Ipv6Addr = text.parse().map_err(|_| ERR_IPV6)?;
            let port = match after {
                [] => None,
                [b':', digits @ ..] => Some(parse_port(digits)?),
                _ => return Err(ERR_CHAR),
            };
            // Canonical (lowercase, compressed) form.
            return Ok(Authority { host: Cow::Owned(addr.to_string()), port });
        }
        let (host, port) = match raw.iter().position(|&b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        if host.is_empty() {
            return Err(ERR_EMPTY);
        }
        let port = port.map(parse_port).transpose()?;
        if !host.iter().all(|&b| is_host_byte(b)) {
            return Err(ERR_CHAR);
        }
        // All ASCII now: a str either way.
        let host = match std::str::from_utf8(host) {
            Ok(h) if !h.bytes().any(|b| b.is_ascii_uppercase()) => Cow::Borrowed(h),
            _ => Cow::Owned(String::from_utf8_lossy(host).to_ascii_lowercase()),
        };
        Ok(Authority { host, port })
    }

    /// The explicit port, or `default` when none was given.
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }

    pub(crate) fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

/// unreserved characters of a reg-name (RFC 3986) that make sense in a DNS name or an
/// IPv4 literal: ALPHA DIGIT "-" "." "_" "~".
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// 1 to 5 digits, 1..=65535.
fn parse_port(digits: &[u8]) -> Result<u16, H1Error> {
    if digits.is_empty() || digits.len() > 5 {
        return Err(ERR_PORT);
    }
    let mut port: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(ERR_PORT);
        }
        port = port * 10 + u32::from(d - b'0');
    }
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ERR_PORT),
    }
}

impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl Authority<'_> {
    /// Appends the Display form to `out` without going through `fmt`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        if self.is_ipv6() {
            out.push(b'[');
            out.extend_from_slice(self.host.as_bytes());
            out.push(b']');
        } else {
            out.extend_from_slice(self.host.as_bytes());
        }
        if let Some(port) = self.port {
            out.push(b':');
            super::headers::push_u64(out, u64::from(port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> Authority<'_> {
        Authority::parse(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
    }

    fn err(raw: &[u8]) -> H1Error {
        match Authority::parse(raw) {
            Ok(a) => panic!("{:?} parsed as {a:?}", String::from_utf8_lossy(raw)),
            Err(e) => e,
        }
    }

    #[test]
    fn host_only() {
        let a = ok("Example.COM");
        assert_eq!(a.host, "example.com");
        assert_eq!(a.port, None);
        assert_eq!(a.port_or(80), 80);
        assert_eq!(a.to_string(), "example.com");
    }

    #[test]
    fn a_lowercase_host_is_borrowed() {
        let raw = b"example.com:8080";
        assert!(matches!(Authority::parse(raw).map(|a| a.host), Ok(Cow::Borrowed("example.com"))));
        assert!(matches!(Authority::parse(b"Example.com").map(|a| a.host), Ok(Cow::Owned(h)) if h == "example.com"));
        assert!(matches!(Authority::parse(b"[::1]").map(|a| a.host), Ok(Cow::Owned(h)) if h == "::1"));
    }

    #[test]
    fn host_and_port() {
        let a = ok("example.com:8080");
        assert_eq!(a.host, "example.com");
        assert_eq!(a.port, Some(8080));
        assert_eq!(a.port_or(80), 8080);
        assert_eq!(a.to_string(), "example.com:8080");
    }

    #[test]
    fn ipv4() {
        let a = ok("1.2.3.4:80");
        assert_eq!(a.host, "1.2.3.4");
        assert_eq!(a.port, Some(80));
        assert_eq!(a.to_string(), "1.2.3.4:80");
    }

    #[test]
    fn ipv6() {
        let a = ok("[::1]:8080");
        assert_eq!(a.host, "::1");
        assert_eq!(a.port, Some(8080));
        assert_eq!(a.to_string(), "[::1]:8080");
        let a = ok("[2001:DB8::0:1]");
        assert_eq!(a.host, "2001:db8::1");
        assert_eq!(a.port, None);
        assert_eq!(a.to_string(), "[2001:db8::1]");
        let a = ok("[::ffff:1.2.3.4]:1");
        assert_eq!(a.port, Some(1));
    }

    #[test]
    fn write_to_matches_display() {
        for raw in ["a.b", "a.b:1", "[::1]", "[::1]:65535", "10.0.0.1:443"] {
            let a = ok(raw);
            let mut out = Vec::new();
            a.write_to(&mut out);
            assert_eq!(out, a.to_string().as_bytes());
        }
    }

    #[test]
    fn port_bounds() {
        assert_eq!(ok("h:1").port, Some(1));
        assert_eq!(ok("h:65535").port, Some(65535));
        assert_eq!(ok("h:00080").port, Some(80));
        assert_eq!(err(b"h:65536").detail, "invalid port");
        assert_eq!(err(b"h:0").detail, "invalid port");
        assert_eq!(err(b"h:").detail, "invalid port");
        assert_eq!(err(b"h:000080").detail, "invalid port");
        assert_eq!(err(b"h:99999999999999999999").detail, "invalid port");
        assert_eq!(err(b"h:8a").detail, "invalid port");
        assert_eq!(err(b"h:+80").detail, "invalid port");
        assert_eq!(err(b"h:-1").detail, "invalid port");
        assert_eq!(err(b"h:80:81").detail, "invalid port");
        assert_eq!(err(b"[::1]:").detail, "invalid port");
        assert_eq!(err(b"[::1]:x").detail, "invalid port");
    }

    #[test]
    fn rejections() {
        assert_eq!(err(b"").detail, "empty host");
        assert_eq!(err(b":80").detail, "empty host");
        assert_eq!(err(b"user@host").detail, "userinfo in authority");
        assert_eq!(err(b"user:pw@host:80").detail, "userinfo in authority");
        assert_eq!(err(b"a b").detail, "invalid character in host");
        assert_eq!(err(b" a").detail, "invalid character in host");
        assert_eq!(err(b"a\tb").detail, "invalid character in host");
        assert_eq!(err(b"a\x00b").detail, "invalid character in host");
        assert_eq!(err(b"a\x7fb").detail, "invalid character in host");
        assert_eq!(err(b"a\r\nb").detail, "invalid character in host");
        assert_eq!(err("h\u{e9}.com".as_bytes()).detail, "invalid character in host");
        assert_eq!(err(b"a/b").detail, "invalid character in host");
        assert_eq!(err(b"a,b").detail, "invalid character in host");
        assert_eq!(err(b"[::1]x").detail, "invalid character in host");
        assert_eq!(err(b"[::1").detail, "invalid IPv6 literal");
        assert_eq!(err(b"[]").detail, "invalid IPv6 literal");
        assert_eq!(err(b"[::g]").detail, "invalid IPv6 literal");
        assert_eq!(err(b"[fe80::1%eth0]").detail, "invalid IPv6 literal");
        assert_eq!(err(b"[v1.x]").detail, "invalid IPv6 literal");
        assert_eq!(err(b"[1.2.3.4]").detail, "invalid IPv6 literal");
        // unbracketed IPv6 is ambiguous
        assert_eq!(err(b"::1").detail, "empty host");
        assert_eq!(err(b"fe80::1").detail, "invalid port");
        for e in [err(b""), err(b"a@b"), err(b"h:0"), err(b"[x]")] {
            assert_eq!(e.status(), 400);
        }
    }
}
