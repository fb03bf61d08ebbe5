//! The `[h2]` table: HTTP/2 on the client leg: whether it is offered, its windows and its
//! limits. The defaults let one stream fill a 1 Gbit/s path with 50 ms of round trip
//! (6.25 MB in flight: a 65,535-byte window is what makes HTTP/2 downloads crawl), and
//! cap header lists at 64 KiB instead of the `h2` crate's 16 MiB.

use super::{ConfigError, Seconds, Taker};
use serde::Deserialize;
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
    /// Offer `h2` to TLS origins too (one session per origin and worker, shared by the
    /// requests of every client).
    pub origins: bool,
    /// Keep-alive PING to a client connection silent this long (zero: never).
    pub client_ping_interval: Duration,
    /// Keep-alive PING to an origin session silent this long (zero: never).
    pub origin_ping_interval: Duration,
    /// A PING unanswered this long (nothing at all received) ends the connection.
    pub ping_timeout: Duration,
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
        }
    }
}

/// RFC 9113 §6.5.2 bounds.
const MAX_WINDOW: u32 = (1 << 31) - 1;
const MIN_FRAME: u32 = 1 << 14;
const MAX_FRAME: u32 = (1 << 24) - 1;

impl H2Config {
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
             origins = false\nclient_ping_interval = 20\norigin_ping_interval = 0\nping_timeout = 5\n",
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
}
