//! The `[h2]` table: HTTP/2 on the client leg: whether it is offered, its windows and its
//! limits. The defaults let one stream fill a 1 Gbit/s path with 50 ms of round trip
//! (6.25 MB in flight: a 65,535-byte window is what makes HTTP/2 downloads crawl), and
//! cap header lists at 64 KiB instead of the `h2` crate's 16 MiB. It also says which
//! origins get HTTP/2: TLS origins that pick it in ALPN (`origins`), and the cleartext
//! destinations listed in `cleartext_origins` (prior knowledge, RFC 9113 §3.3).

use super::{ConfigError, Seconds, Taker};
use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;
use toml::Spanned;

/// HTTP/2 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Config {
    /// Offer `h2` in ALPN on intercepted TLS and accept the cleartext preface.
    pub enabled: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS a client may open.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: what one stream may send before we read it.
    pub initial_stream_window: u32,
    /// The connection's window: what all streams together may send before we read.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// Offer `h2` to TLS origins too (a session per origin and worker shared by the
    /// requests of every client; one more while every session is full).
    pub origins: bool,
    /// Keep-alive PING to a client connection silent this long (zero: never).
    pub client_ping_interval: Duration,
    /// Keep-alive PING to an origin session silent this long (zero: never).
    pub origin_ping_interval: Duration,
    /// A PING unanswered this long (nothing at all received) ends the connection.
    pub ping_timeout: Duration,
    /// Cleartext destinations spoken to in HTTP/2 with prior knowledge (h2c), shared the
    /// same way; every other cleartext origin gets HTTP/1.1.
    pub cleartext_origins: Vec<CleartextOrigin>,
}

/// One `h2.cleartext_origins` entry: a host (exact name or IP address, or `*.suffix`) and
/// a port, both required to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleartextOrigin {
    /// Lower-cased; an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
}

impl CleartextOrigin {
    /// Parses `host:port`, `*.suffix:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<CleartextOrigin, String> {
        const EXPECTED: &str = "expected HOST:PORT, *.SUFFIX:PORT or [IPv6]:PORT";
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("{EXPECTED} (the port is required)"));
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{EXPECTED}: {port:?} is not a port")),
        };
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => match v6.parse::<std::net::Ipv6Addr>() {
                Ok(addr) => addr.to_string(),
                Err(_) => return Err(format!("{EXPECTED}: {v6:?} is not an IPv6 address")),
            },
            None if host.contains(':') => return Err(format!("{EXPECTED} (an IPv6 address goes in brackets)")),
            None => super::parse_passthrough(host).map_err(|e| format!("{EXPECTED}: {e}"))?,
        };
        Ok(CleartextOrigin { host, port })
    }

    /// Whether a request to `host:port` (host as the request named it) is for this origin.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.port == port && super::name_matches(host, &self.host)
    }
}

impl fmt::Display for CleartextOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl<'de> Deserialize<'de> for CleartextOrigin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CleartextOrigin::parse(&s).map_err(|e| de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            enabled: true,
            max_concurrent_streams: 100,
            initial_stream_window: 8 << 20,
            initial_connection_window: 16 << 20,
            max_header_list_size: 64 << 10,
            max_frame_size: 16 << 10,
            origins: true,
            client_ping_interval: Duration::ZERO,
            origin_ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            cleartext_origins: Vec::new(),
        }
    }
}

/// RFC 9113 §6.5.2 bounds.
const MAX_WINDOW: u32 = (1 << 31) - 1;
const MIN_FRAME: u32 = 1 << 14;
const MAX_FRAME: u32 = (1 << 24) - 1;

impl H2Config {
    /// Whether requests to the cleartext origin `host:port` go over HTTP/2 (h2c).
    pub fn speaks_h2c(&self, host: &str, port: u16) -> bool {
        self.cleartext_origins.iter().any(|o| o.matches(host, port))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &'static str, v: u32, lo: u32, hi: u32| {
            if v < lo || v > hi {
                return Err(ConfigError::invalid(key, format!("must be between {lo} and {hi}, got {v}")));
            }
            Ok(())
        };
        range("h2.max_concurrent_streams", self.max_concurrent_streams, 1, 10_000)?;
        range("h2.initial_stream_window", self.initial_stream_window, 65_535, MAX_WINDOW)?;
        range("h2.initial_connection_window", self.initial_connection_window, 65_535, MAX_WINDOW)?;
        range("h2.max_header_list_size", self.max_header_list_size, 1024, 16 << 20)?;
        range("h2.max_frame_size", self.max_frame_size, MIN_FRAME, MAX_FRAME)?;
        for (key, v, zero_ok) in [
            ("h2.client_ping_interval", self.client_ping_interval, true),
            ("h2.origin_ping_interval", self.origin_ping_interval, true),
            ("h2.ping_timeout", self.ping_timeout, false),
        ] {
            let ok = (zero_ok && v.is_zero()) || (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&v);
            if !ok {
                let zero = if zero_ok { "0 (off) or " } else { "" };
                return Err(ConfigError::invalid(
                    key,
                    format!("must be {zero}between 1 and 86400 seconds, got {}", v.as_secs_f64()),
                ));
            }
        }
        for origin in &self.cleartext_origins {
            // Built by `parse` from the file; checked again for configs built in code.
            CleartextOrigin::parse(&origin.to_string())
                .map_err(|e| ConfigError::invalid("h2.cleartext_origins", format!("{origin}: {e}")))?;
        }
        Ok(())
    }
}

/// The `[h2]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct H2File {
    enabled: Option<Spanned<bool>>,
    max_concurrent_streams: Option<Spanned<u32>>,
    initial_stream_window: Option<Spanned<u32>>,
    initial_connection_window: Option<Spanned<u32>>,
    max_header_list_size: Option<Spanned<u32>>,
    max_frame_size: Option<Spanned<u32>>,
    origins: Option<Spanned<bool>>,
    client_ping_interval: Option<Spanned<Seconds>>,
    origin_ping_interval: Option<Spanned<Seconds>>,
    ping_timeout: Option<Spanned<Seconds>>,
    cleartext_origins: Option<Spanned<Vec<CleartextOrigin>>>,
}

impl H2File {
    pub(super) fn apply(self, t: &mut Taker<'_>, c: &mut H2Config) {
        t.set("h2.enabled", self.enabled, &mut c.enabled);
        t.set("h2.max_concurrent_streams", self.max_concurrent_streams, &mut c.max_concurrent_streams);
        t.set("h2.initial_stream_window", self.initial_stream_window, &mut c.initial_stream_window);
        t.set("h2.initial_connection_window", self.initial_connection_window, &mut c.initial_connection_window);
        t.set("h2.max_header_list_size", self.max_header_list_size, &mut c.max_header_list_size);
        t.set("h2.max_frame_size", self.max_frame_size, &mut c.max_frame_size);
        t.set("h2.origins", self.origins, &mut c.origins);
        t.set_secs("h2.client_ping_interval", self.client_ping_interval, &mut c.client_ping_interval);
        t.set_secs("h2.origin_ping_interval", self.origin_ping_interval, &mut c.origin_ping_interval);
        t.set_secs("h2.ping_timeout", self.ping_timeout, &mut c.ping_timeout);
        t.set("h2.cleartext_origins", self.cleartext_origins, &mut c.cleartext_origins);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn every_h2_key_is_parsed_and_an_empty_table_is_the_default() {
        let c = parse_str(
            "[h2]\nenabled = false\nmax_concurrent_streams = 10\ninitial_stream_window = 65535\n\
             initial_connection_window = 1048576\nmax_header_list_size = 8192\nmax_frame_size = 32768\n\
             origins = false\nclient_ping_interval = 20\norigin_ping_interval = 0\nping_timeout = 5\n\
             cleartext_origins = [\"Api.Test:8080\", \"*.h2c.test:80\", \"[::1]:81\"]\n",
        )
        .unwrap();
        let expected = H2Config {
            enabled: false,
            max_concurrent_streams: 10,
            initial_stream_window: 65535,
            initial_connection_window: 1 << 20,
            max_header_list_size: 8192,
            max_frame_size: 32768,
            origins: false,
            client_ping_interval: Duration::from_secs(20),
            origin_ping_interval: Duration::ZERO,
            ping_timeout: Duration::from_secs(5),
            cleartext_origins: vec![
                CleartextOrigin { host: "api.test".into(), port: 8080 },
                CleartextOrigin { host: "*.h2c.test".into(), port: 80 },
                CleartextOrigin { host: "::1".into(), port: 81 },
            ],
        };
        assert_eq!(c.h2, expected);
        assert_eq!(parse_str("[h2]\n").unwrap().h2, H2Config::default());
    }

    #[test]
    fn out_of_range_values_are_one_line_naming_the_key() {
        let e = parse_str("[h2]\nmax_frame_size = 100\n").unwrap_err().to_string();
        assert!(e.contains("h2.max_frame_size") && e.contains("between 16384"), "{e}");
        let e = parse_str("[h2]\ninitial_stream_window = 4294967295\n").unwrap_err().to_string();
        assert!(e.contains("h2.initial_stream_window"), "{e}");
        assert!(parse_str("[h2]\nwindow = 1\n").is_err(), "unknown keys are refused");
        let e = parse_str("[h2]\nping_timeout = 0\n").unwrap_err().to_string();
        assert!(e.contains("h2.ping_timeout") && e.contains("between 1 and"), "{e}");
        let e = parse_str("[h2]\norigin_ping_interval = 0.5\n").unwrap_err().to_string();
        assert!(e.contains("h2.origin_ping_interval") && e.contains("0 (off) or"), "{e}");
    }

    #[test]
    fn cleartext_origins_match_host_and_port() {
        let c = parse_str(
            "[h2]\ncleartext_origins = [\"api.test:8080\", \"*.h2c.test:80\", \"127.0.0.5:80\", \"[::1]:81\"]\n",
        )
        .unwrap()
        .h2;
        assert!(c.speaks_h2c("api.test", 8080));
        assert!(c.speaks_h2c("API.test.", 8080), "case and a trailing dot do not matter");
        assert!(!c.speaks_h2c("api.test", 80), "the port must match");
        assert!(c.speaks_h2c("a.h2c.test", 80) && c.speaks_h2c("b.a.h2c.test", 80));
        assert!(!c.speaks_h2c("h2c.test", 80) && !c.speaks_h2c("xh2c.test", 80));
        assert!(c.speaks_h2c("127.0.0.5", 80) && !c.speaks_h2c("127.0.0.6", 80));
        assert!(c.speaks_h2c("::1", 81));
        assert!(!H2Config::default().speaks_h2c("api.test", 8080), "off by default");
    }

    #[test]
    fn a_bad_cleartext_origin_is_one_line_naming_the_key_and_the_entry() {
        for (entry, why) in [
            ("api.test", "port is required"),
            ("api.test:0", "not a port"),
            ("api.test:http", "not a port"),
            ("bad name:80", "not allowed"),
            ("::1:80", "brackets"),
            ("[nope]:80", "not an IPv6 address"),
            ("*:80", "expected"),
        ] {
            let e = parse_str(&format!("[h2]\ncleartext_origins = [{entry:?}]\n")).unwrap_err().to_string();
            assert!(e.contains("h2.cleartext_origins") && e.contains(entry) && e.contains(why), "{entry}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
