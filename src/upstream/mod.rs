//! The upstream leg shared by every protocol: name resolution, the per-worker pool of
//! idle origin connections, and the rules for which addresses may be dialled.

pub mod dns;
pub mod local;
pub mod pool;

use std::net::{IpAddr, SocketAddr};

/// True when dialling `addr` would connect the proxy to one of its own listeners
/// (a forwarding loop): same port, and the listener's address is that address, or the
/// listener is bound to the unspecified address and `addr` is local.
pub fn is_own_listener(addr: SocketAddr, listeners: &[SocketAddr]) -> bool {
    listeners.iter().any(|l| {
        l.port() == addr.port()
            && (l.ip() == addr.ip()
                || (l.ip().is_unspecified() && (addr.ip().is_loopback() || is_local_unspecified_match(addr.ip()))))
    })
}

fn is_local_unspecified_match(ip: IpAddr) -> bool {
    ip.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listener_is_recognised() {
        let l: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap(), "0.0.0.0:3128".parse().unwrap()];
        assert!(is_own_listener("127.0.0.1:8080".parse().unwrap(), &l));
        assert!(!is_own_listener("127.0.0.2:8080".parse().unwrap(), &l));
        assert!(!is_own_listener("127.0.0.1:8081".parse().unwrap(), &l));
        assert!(is_own_listener("127.0.0.9:3128".parse().unwrap(), &l));
    }
}
