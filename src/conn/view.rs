//! How a connection is shown to an operator.

use std::fmt;
use std::net::SocketAddr;

/// An address that may be unknown, as a log field or a column: `-` when unknown.
pub(crate) struct Addr(pub Option<SocketAddr>);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_address_is_a_dash() {
        assert_eq!(Addr(None).to_string(), "-");
        assert_eq!(Addr(Some("[::1]:80".parse().unwrap())).to_string(), "[::1]:80");
    }
}
