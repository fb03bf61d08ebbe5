//! Which HTTP version a client connection speaks: the value the metrics' `protocol`
//! label and the access log's protocol field are taken from, set on the connection when
//! the protocol is known (HTTP/1.1 today; `h2` once the preface or ALPN says so, `h3`
//! for QUIC).

/// An HTTP version on the client leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    H2,
    H3,
}

impl Protocol {
    /// Every protocol, in metric order.
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::H2, Protocol::H3];

    /// The `protocol` label of `sluice_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::H3 => "h3",
        }
    }

    /// The access log's protocol field: the version, `+TLS` when the client leg is
    /// intercepted TLS (HTTP/3 always is).
    pub fn log_name(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Protocol::Http1, false) => "HTTP/1.1",
            (Protocol::Http1, true) => "HTTP/1.1+TLS",
            (Protocol::H2, false) => "HTTP/2",
            (Protocol::H2, true) => "HTTP/2+TLS",
            (Protocol::H3, _) => "HTTP/3",
        }
    }

    /// Its place in per-protocol counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_all() {
        for (i, p) in Protocol::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
        assert_eq!(Protocol::H2.log_name(true), "HTTP/2+TLS");
        assert_eq!(Protocol::Http1.label(), "http1");
    }
}
