//! The `[resolver]` table: where names are looked up and how patiently. Every key
//! defaults to what the machine's own resolver does (`/etc/resolv.conf`, `/etc/hosts`).

use super::{ConfigError, Seconds, Taker};
use serde::{de, Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// The name resolver's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Nameservers asked, in order; empty = the `nameserver` lines of `resolv_conf`.
    pub nameservers: Vec<SocketAddr>,
    /// The stub resolver file read for nameservers, `search`/`domain` and `options`
    /// (`ndots`, `timeout`, `attempts`, `rotate`, `edns0`, `no-aaaa`); read again when
    /// it changes.
    pub resolv_conf: PathBuf,
    /// The hosts file, asked before DNS; read again when it changes.
    pub hosts_file: PathBuf,
    /// The longest one lookup may take, retries across nameservers included.
    pub timeout: Duration,
    /// Most names one worker resolves at once; past it a new name fails at once.
    pub max_pending: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts_file: PathBuf::from("/etc/hosts"),
            timeout: Duration::from_secs(5),
            max_pending: 1024,
        }
    }
}

/// Bounds of `resolver.timeout`.
const MIN_LOOKUP_TIMEOUT: Duration = Duration::from_millis(10);
const MAX_LOOKUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Most names one worker may resolve at once.
const MAX_PENDING: usize = 65536;

impl ResolverConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for ns in &self.nameservers {
            check_nameserver(*ns).map_err(|e| ConfigError::invalid("resolver.nameservers", e))?;
        }
        if let Some(dup) = super::first_duplicate(&self.nameservers) {
            return Err(ConfigError::invalid("resolver.nameservers", format!("{dup} is listed twice")));
        }
        if self.resolv_conf.as_os_str().is_empty() {
            return Err(ConfigError::invalid("resolver.resolv_conf", "must not be empty"));
        }
        if self.hosts_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid("resolver.hosts_file", "must not be empty"));
        }
        if self.timeout < MIN_LOOKUP_TIMEOUT || self.timeout > MAX_LOOKUP_TIMEOUT {
            return Err(ConfigError::invalid(
                "resolver.timeout",
                format!(
                    "must be between {} and {} seconds, got {}",
                    MIN_LOOKUP_TIMEOUT.as_secs_f64(),
                    MAX_LOOKUP_TIMEOUT.as_secs(),
                    self.timeout.as_secs_f64()
                ),
            ));
        }
        super::in_range("resolver.max_pending", self.max_pending, 1, MAX_PENDING)
    }
}

/// Parses a nameserver: `IP` (port 53) or `IP:PORT` (`[v6]:PORT` for IPv6).
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let addr = match (s.parse::<IpAddr>(), s.parse::<SocketAddr>()) {
        (Ok(ip), _) => SocketAddr::new(ip, 53),
        (_, Ok(addr)) => addr,
        _ => return Err("expected IP or IP:PORT, e.g. 192.0.2.53 or 127.0.0.1:5353 or [::1]:53".to_string()),
    };
    check_nameserver(addr)?;
    Ok(addr)
}

fn check_nameserver(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Err(format!("{addr}: port 0 is not a port"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!("{addr}: not an address a nameserver can have"));
    }
    Ok(())
}

/// The `[resolver]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct ResolverFile {
    nameservers: Option<Spanned<Vec<NameserverValue>>>,
    resolv_conf: Option<Spanned<PathBuf>>,
    hosts_file: Option<Spanned<PathBuf>>,
    timeout: Option<Spanned<Seconds>>,
    max_pending: Option<Spanned<usize>>,
}

impl ResolverFile {
    pub(super) fn apply(self, t: &mut Taker<'_>, c: &mut ResolverConfig) {
        t.set_list("resolver.nameservers", self.nameservers, &mut c.nameservers, |n| n.0);
        t.set("resolver.resolv_conf", self.resolv_conf, &mut c.resolv_conf);
        t.set("resolver.hosts_file", self.hosts_file, &mut c.hosts_file);
        t.set_secs("resolver.timeout", self.timeout, &mut c.timeout);
        t.set("resolver.max_pending", self.max_pending, &mut c.max_pending);
    }
}

#[derive(Debug)]
struct NameserverValue(SocketAddr);

impl<'de> Deserialize<'de> for NameserverValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_nameserver(&s).map(NameserverValue).map_err(|e| de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn every_resolver_key_is_parsed() {
        let c = parse_str(
            "[resolver]\nnameservers = [\"192.0.2.53\", \"127.0.0.1:5353\", \"[::1]:54\"]\n\
             resolv_conf = \"/run/resolv.conf\"\nhosts_file = \"/etc/sluice/hosts\"\ntimeout = 1.5\nmax_pending = 64\n",
        )
        .unwrap();
        let expected = ResolverConfig {
            nameservers: vec![
                "192.0.2.53:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:54".parse().unwrap(),
            ],
            resolv_conf: PathBuf::from("/run/resolv.conf"),
            hosts_file: PathBuf::from("/etc/sluice/hosts"),
            timeout: Duration::from_millis(1500),
            max_pending: 64,
        };
        assert_eq!(c.resolver, expected);
        assert_eq!(parse_str("[resolver]\n").unwrap().resolver, ResolverConfig::default());
    }

    #[test]
    fn bad_resolver_values_are_one_line_naming_the_key() {
        assert_eq!(
            err("[resolver]\nnameservers = [\"dns.example\"]"),
            "config: resolver.nameservers: \"dns.example\": expected IP or IP:PORT, e.g. 192.0.2.53 or \
             127.0.0.1:5353 or [::1]:53 (line 2)"
        );
        assert!(err("[resolver]\nnameservers = [\"127.0.0.1:0\"]").contains("port 0 is not a port"));
        assert!(err("[resolver]\nnameservers = [\"0.0.0.0\"]").contains("not an address a nameserver can have"));
        assert_eq!(
            err("[resolver]\nnameservers = [\"127.0.0.1\", \"127.0.0.1:53\"]"),
            "config: resolver.nameservers: 127.0.0.1:53 is listed twice (line 2)"
        );
        assert_eq!(
            err("[resolver]\ntimeout = 0"),
            "config: resolver.timeout: must be between 0.01 and 300 seconds, got 0 (line 2)"
        );
        assert!(err("[resolver]\ntimeout = 301").starts_with("config: resolver.timeout: must be between"));
        assert_eq!(
            err("[resolver]\nmax_pending = 0"),
            "config: resolver.max_pending: must be at least 1, got 0 (line 2)"
        );
        assert!(err("[resolver]\nhosts_file = \"\"").contains("resolver.hosts_file: must not be empty"));
        assert!(err("[resolver]\nresolv_conf = \"\"").contains("resolver.resolv_conf: must not be empty"));
        assert_eq!(err("[resolver]\nnameserver = []"), "config: unknown key \"resolver.nameserver\" (line 2)");
    }
}
