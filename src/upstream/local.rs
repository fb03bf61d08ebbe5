//! The box itself as a destination: its loopback and interface addresses, who may reach
//! them through the proxy, and the numeric spellings of an address a request may use.
//!
//! A gateway's clients are every device on the LAN, and the services of the box (the
//! admin endpoint, an SSH or DNS server on loopback) are not theirs to reach. By default
//! (`local_targets = "loopback-clients"`) only a client that is itself on loopback
//! (tests, tools on the box) may have the proxy connect to loopback or to any address of
//! the box's own interfaces; for everyone else such an address is refused like one on
//! `deny_destinations`, with the same 403 and text. The check runs on the resolved
//! addresses, in the protocol-neutral upstream step, so every spelling of a host (a
//! name, `0x7f.1`, `2130706433`, `0177.0.0.1`, `127.1`, `::ffff:127.0.0.1`) and every
//! protocol (HTTP/1, CONNECT, later HTTP/2 streams) meet the same rule.

use crate::config::LocalTargets;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How often the interface addresses are read again (DHCP, hot-plugged interfaces).
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// This machine's own addresses.
#[derive(Debug)]
pub struct LocalAddrs {
    addrs: Vec<IpAddr>,
    read_at: Instant,
}

impl LocalAddrs {
    /// Reads the interfaces now (none when they cannot be read: loopback and the
    /// unspecified addresses are always local).
    pub fn new(now: Instant) -> LocalAddrs {
        LocalAddrs { addrs: read_interfaces(), read_at: now }
    }

    /// Reads the interfaces again if the last reading is old.
    pub fn refresh(&mut self, now: Instant) {
        if now.saturating_duration_since(self.read_at) >= REFRESH_EVERY {
            self.addrs = read_interfaces();
            self.read_at = now;
        }
    }

    /// True when connecting to `ip` would reach this machine: loopback, unspecified
    /// (`0.0.0.0` and `::` connect to the local host), or one of its interfaces' addresses.
    /// IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || ip.is_unspecified() || self.addrs.contains(&ip)
    }
}

fn read_interfaces() -> Vec<IpAddr> {
    if_addrs::get_if_addrs().map(|ifs| ifs.iter().map(|i| i.ip().to_canonical()).collect()).unwrap_or_default()
}

/// True when `client` may have the proxy connect to this machine itself.
pub fn may_reach_local(policy: LocalTargets, client: Option<SocketAddr>) -> bool {
    match policy {
        LocalTargets::Allow => true,
        LocalTargets::Deny => false,
        LocalTargets::LoopbackClients => client.is_some_and(|c| c.ip().to_canonical().is_loopback()),
    }
}

/// A host that is an IP address in any spelling the system resolver would accept:
/// dotted IPv4 with 1 to 4 parts in decimal, octal (`0177`) or hex (`0x7f`), as
/// `inet_aton` reads them (`127.1`, `2130706433`, `0x7f.1`), or an IPv6 address (mapped
/// IPv4 ones become IPv4). None for a name.
pub fn numeric_host(host: &str) -> Option<IpAddr> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    inet_aton(host).map(IpAddr::V4)
}

/// `inet_aton(3)`: `a`, `a.b`, `a.b.c` or `a.b.c.d`, each part decimal, octal (leading
/// 0) or hex (`0x`); the last part fills the remaining bytes.
fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u32> = s.split('.').map(aton_part).collect::<Option<_>>()?;
    let (last, init) = parts.split_last()?;
    if init.len() > 3 || init.iter().any(|&p| p > 0xff) {
        return None;
    }
    let room = 32 - 8 * init.len() as u32;
    if room < 32 && *last >> room != 0 {
        return None;
    }
    let high = init.iter().fold(0u32, |acc, &p| (acc << 8) | p) << (room % 32);
    let high = if init.is_empty() { 0 } else { high };
    Some(Ipv4Addr::from(high | last))
}

fn aton_part(p: &str) -> Option<u32> {
    if p.is_empty() {
        return None;
    }
    let (digits, radix) = match p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if p.len() > 1 && p.starts_with('0') => (&p[1..], 8),
        None => (p, 10),
    };
    if digits.is_empty() && radix == 16 {
        return None;
    }
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Option<IpAddr> {
        Some(IpAddr::V4(s.parse().unwrap()))
    }

    #[test]
    fn every_spelling_of_loopback_is_read_as_its_address() {
        for spelling in [
            "127.0.0.1",
            "0x7f.1",
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "0x7f000001",
            "127.0.1",
            "[::ffff:127.0.0.1]",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(numeric_host(spelling), v4("127.0.0.1"), "{spelling}");
        }
        assert_eq!(numeric_host("0"), v4("0.0.0.0"));
        assert_eq!(numeric_host("10.1.2.3"), v4("10.1.2.3"));
        assert_eq!(numeric_host("[::1]"), Some("::1".parse().unwrap()));
    }

    #[test]
    fn names_and_out_of_range_forms_are_not_addresses() {
        for name in [
            "localhost",
            "example.com",
            "127.0.0.256",
            "1.2.3.4.5",
            "0x",
            "08",
            "1..2",
            "",
            "127.0.0.1a",
            "4294967296",
            "1.16777216",
        ] {
            assert_eq!(numeric_host(name), None, "{name}");
        }
        assert_eq!(numeric_host("1.16777215"), v4("1.255.255.255"));
    }

    #[test]
    fn loopback_unspecified_and_mapped_addresses_are_local() {
        let l = LocalAddrs { addrs: vec!["192.0.2.9".parse().unwrap()], read_at: Instant::now() };
        for ip in
            ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "192.0.2.9", "::ffff:192.0.2.9"]
        {
            assert!(l.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!l.contains("192.0.2.10".parse().unwrap()));
    }

    #[test]
    fn only_loopback_clients_reach_the_box_by_default() {
        let lan: SocketAddr = "192.168.1.20:5000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert!(may_reach_local(LocalTargets::LoopbackClients, Some(lo)));
        assert!(may_reach_local(LocalTargets::LoopbackClients, Some(mapped)));
        assert!(!may_reach_local(LocalTargets::LoopbackClients, Some(lan)));
        assert!(!may_reach_local(LocalTargets::LoopbackClients, None));
        assert!(may_reach_local(LocalTargets::Allow, Some(lan)));
        assert!(!may_reach_local(LocalTargets::Deny, Some(lo)));
    }
}
