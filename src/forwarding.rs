//! What the origin learns about the client and this hop: the operator's rules for the
//! `Forwarded` (RFC 7239) and `X-Forwarded-For` fields, and the elements this hop adds.
//!
//! Protocol-neutral: the HTTP/1 head writer (`h1::RequestHead::write_upstream`) asks
//! [`Hop`] which client fields to pass on and what to append; an HTTP/2 stream will ask
//! the same questions for its header list.

use serde::Deserialize;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

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
        // An address fits in 96 bytes with the fixed parts (at most 45 characters), so
        // nothing below runs out of room. IPv4, the usual case on every request, is
        // written digit by digit; IPv6 goes through `fmt` for its `::` compression.
        match (field, client) {
            (Field::XForwardedFor, IpAddr::V4(ip)) => e.push_ipv4(ip),
            (Field::XForwardedFor, IpAddr::V6(ip)) => {
                let _ = write!(e, "{ip}");
            }
            (Field::Forwarded, IpAddr::V4(ip)) => {
                e.push(b"for=");
                e.push_ipv4(ip);
            }
            // RFC 7239 §6: an IPv6 node is a quoted, bracketed string.
            (Field::Forwarded, IpAddr::V6(ip)) => {
                let _ = write!(e, "for=\"[{ip}]\"");
            }
        }
        if field == Field::Forwarded {
            e.push(if self.https { b";proto=https" } else { b";proto=http" });
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

    /// Appends `data`, cut at the buffer's end (never reached: see `Hop::element`).
    fn push(&mut self, data: &[u8]) {
        let room = &mut self.buf[self.len..];
        let n = data.len().min(room.len());
        room[..n].copy_from_slice(&data[..n]);
        self.len += n;
    }

    /// Appends an IPv4 address in dotted decimal, as `Ipv4Addr`'s `Display` writes it.
    fn push_ipv4(&mut self, ip: Ipv4Addr) {
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                text[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                text[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + octet % 10;
            len += 1;
        }
        self.push(&text[..len]);
    }
}

impl Write for Element {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let before = self.len;
        self.push(data);
        Ok(self.len - before)
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
    fn ipv4_elements_are_written_as_display_writes_them() {
        for ip in ["0.0.0.0", "9.10.99.100", "127.0.0.1", "192.0.2.7", "255.255.255.255", "10.200.3.45"] {
            let h = hop(ForwardMode::Append, ip, false);
            assert_eq!(element(&h, Field::XForwardedFor).as_deref(), Some(ip));
            assert_eq!(element(&h, Field::Forwarded), Some(format!("for={ip};proto=http")));
        }
        for octet in 0..=255u8 {
            let ip = Ipv4Addr::new(octet, 255 - octet, octet / 3, 7);
            let h = Hop { client: Some(IpAddr::V4(ip)), ..hop(ForwardMode::Replace, "0.0.0.0", true) };
            assert_eq!(element(&h, Field::XForwardedFor), Some(ip.to_string()));
            assert_eq!(element(&h, Field::Forwarded), Some(format!("for={ip};proto=https")));
        }
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
