//! What the origin learns about the client and this hop: the operator's rules for the
//! `Forwarded` (RFC 7239) and `X-Forwarded-For` fields, and the elements this hop adds.
//!
//! Protocol-neutral: the HTTP/1 head writer (`h1::RequestHead::write_upstream`) asks
//! [`Hop`] which client fields to pass on and what to append; an HTTP/2 stream will ask
//! the same questions for its header list.

use serde::Deserialize;
use std::io::Write;
use std::net::IpAddr;

/// What to do with one forwarding field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardMode {
    /// Pass the client's fields on untouched and add nothing.
    Off,
    /// Keep the client's fields and append this hop's element (the client address as
    /// this proxy saw it).
    #[default]
    Append,
    /// Drop whatever the client sent (it cannot be trusted) and send only this hop's element.
    Replace,
}

/// The operator's rules (`[forwarding]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Forwarding {
    /// `Forwarded: for=…;proto=…`.
    pub forwarded: ForwardMode,
    /// `X-Forwarded-For: <client address>`.
    pub x_forwarded_for: ForwardMode,
}

/// Which forwarding field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Forwarded,
    XForwardedFor,
}

/// This hop, as one request crosses it.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// Our Via pseudonym.
    pub via: &'a str,
    pub rules: Forwarding,
    /// The client's address (None when the socket could not say).
    pub client: Option<IpAddr>,
    /// The client spoke TLS to us (intercepted), so the request's scheme is https.
    pub https: bool,
}

impl<'a> Hop<'a> {
    /// A hop that only adds Via (tests, and where no client address applies).
    pub fn via_only(via: &'a str) -> Hop<'a> {
        Hop {
            via,
            rules: Forwarding { forwarded: ForwardMode::Off, x_forwarded_for: ForwardMode::Off },
            client: None,
            https: false,
        }
    }

    fn mode(&self, field: Field) -> ForwardMode {
        match field {
            Field::Forwarded => self.rules.forwarded,
            Field::XForwardedFor => self.rules.x_forwarded_for,
        }
    }

    /// True when the client's own fields of this kind are passed on.
    pub fn keeps_client_field(&self, field: Field) -> bool {
        self.mode(field) != ForwardMode::Replace
    }

    /// The element this hop adds to the field, or None when it adds nothing (mode off, or
    /// no client address to tell).
    pub fn element(&self, field: Field) -> Option<Element> {
        if self.mode(field) == ForwardMode::Off {
            return None;
        }
        let client = self.client.map(canonical)?;
        let mut e = Element::default();
        // Formatting an address into 96 bytes cannot run out of room (at most 45 characters
        // plus the fixed parts): the writes below never fail.
        let _ = match (field, client) {
            (Field::XForwardedFor, ip) => write!(e, "{ip}"),
            (Field::Forwarded, IpAddr::V4(ip)) => write!(e, "for={ip}"),
            // RFC 7239 §6: an IPv6 node is a quoted, bracketed string.
            (Field::Forwarded, IpAddr::V6(ip)) => write!(e, "for=\"[{ip}]\""),
        };
        if field == Field::Forwarded {
            let _ = write!(e, ";proto={}", if self.https { "https" } else { "http" });
        }
        Some(e)
    }
}

/// An IPv4 client seen through a dual-stack socket is reported as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One field element, formatted without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Element {
    buf: [u8; 96],
    len: usize,
}

impl Default for Element {
    fn default() -> Self {
        Element { buf: [0; 96], len: 0 }
    }
}

impl Element {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Element {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = &mut self.buf[self.len..];
        let n = data.len().min(room.len());
        room[..n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(mode: ForwardMode, client: &str, https: bool) -> Hop<'static> {
        Hop {
            via: "sluice",
            rules: Forwarding { forwarded: mode, x_forwarded_for: mode },
            client: Some(client.parse().unwrap()),
            https,
        }
    }

    fn element(h: &Hop<'_>, f: Field) -> Option<String> {
        h.element(f).map(|e| String::from_utf8(e.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn elements_name_the_client_and_the_scheme() {
        let h = hop(ForwardMode::Append, "192.0.2.7", false);
        assert_eq!(element(&h, Field::XForwardedFor).as_deref(), Some("192.0.2.7"));
        assert_eq!(element(&h, Field::Forwarded).as_deref(), Some("for=192.0.2.7;proto=http"));
        let h = hop(ForwardMode::Replace, "2001:db8::1", true);
        assert_eq!(element(&h, Field::XForwardedFor).as_deref(), Some("2001:db8::1"));
        assert_eq!(element(&h, Field::Forwarded).as_deref(), Some("for=\"[2001:db8::1]\";proto=https"));
    }

    #[test]
    fn a_mapped_client_is_reported_as_ipv4() {
        let h = hop(ForwardMode::Append, "::ffff:10.1.2.3", false);
        assert_eq!(element(&h, Field::XForwardedFor).as_deref(), Some("10.1.2.3"));
    }

    #[test]
    fn the_longest_address_fits() {
        let h = hop(ForwardMode::Append, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", true);
        assert_eq!(
            element(&h, Field::Forwarded).as_deref(),
            Some("for=\"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]\";proto=https")
        );
    }

    #[test]
    fn modes_decide_what_is_kept_and_added() {
        let off = hop(ForwardMode::Off, "192.0.2.7", false);
        assert!(off.keeps_client_field(Field::Forwarded) && off.element(Field::Forwarded).is_none());
        let append = hop(ForwardMode::Append, "192.0.2.7", false);
        assert!(append.keeps_client_field(Field::XForwardedFor) && append.element(Field::XForwardedFor).is_some());
        let replace = hop(ForwardMode::Replace, "192.0.2.7", false);
        assert!(!replace.keeps_client_field(Field::XForwardedFor));
        assert!(replace.element(Field::XForwardedFor).is_some());
        let unknown = Hop { client: None, ..append };
        assert!(unknown.element(Field::Forwarded).is_none());
    }
}
