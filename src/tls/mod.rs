//! TLS for both legs, sans-I/O: rustls state machines fed from and drained into the
//! connection's slabs by the ring.
//!
//! - [`ca`]: the appliance CA (`sluice ca init`, load or create at start-up).
//! - [`mint`]: forged leaf certificates per server name, one key per worker, and the
//!   per-worker LRU of ready server configs.
//! - [`upstream`]: the verifying client config for origins (system roots + `--upstream-ca`)
//!   and the reason a verification failed.
//! - [`TlsLeg`]: one TLS session on one socket, with its ciphertext buffers.

pub mod ca;
pub mod mint;
pub mod upstream;

use crate::conn::buf::Buf;
use std::io::{ErrorKind, Read, Write};
use uring::SlabPool;

/// The crypto provider used everywhere (ring).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// What pulling plaintext out of a session gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Plain {
    /// Bytes were appended to the destination.
    Got(usize),
    /// Nothing decrypted yet: more ciphertext is needed.
    Empty,
    /// The peer ended the stream (close_notify, or EOF after all records).
    Eof,
    /// The session failed.
    Error,
}

/// One TLS session and its ciphertext buffers.
pub struct TlsLeg {
    pub session: rustls::Connection,
    /// Ciphertext read from the socket, not yet given to rustls.
    pub raw_in: Buf,
    /// Ciphertext produced by rustls, being written to the socket.
    pub raw_out: Buf,
    /// The socket reached EOF.
    pub raw_eof: bool,
    /// The session reported an error (an alert may still need sending).
    pub failed: Option<rustls::Error>,
}

impl TlsLeg {
    pub fn new(session: rustls::Connection) -> TlsLeg {
        TlsLeg { session, raw_in: Buf::default(), raw_out: Buf::default(), raw_eof: false, failed: None }
    }

    /// Gives rustls as much buffered ciphertext as it takes and processes it.
    pub fn pump(&mut self, pool: &mut SlabPool) {
        if self.failed.is_some() {
            return;
        }
        loop {
            let data = self.raw_in.data(pool);
            if data.is_empty() {
                break;
            }
            let mut cursor = data;
            match self.session.read_tls(&mut cursor) {
                Ok(0) => break,
                Ok(n) => self.raw_in.start += n,
                Err(_) => {
                    // rustls' buffers are full until the plaintext is read: stop here.
                    if let Err(e) = self.session.process_new_packets() {
                        self.failed = Some(e);
                    }
                    break;
                }
            }
            if let Err(e) = self.session.process_new_packets() {
                self.failed = Some(e);
                break;
            }
        }
        if self.raw_in.is_empty() && !self.raw_in.is_lent() {
            self.raw_in.release_if_empty(pool);
        }
    }

    /// Moves decrypted bytes into `dst`.
    pub fn take_plaintext(&mut self, dst: &mut Buf, pool: &mut SlabPool) -> Plain {
        self.pump(pool);
        if self.failed.is_some() {
            return Plain::Error;
        }
        let Some(room) = dst.room_mut(pool) else { return Plain::Empty };
        match self.session.reader().read(room) {
            Ok(0) => Plain::Eof,
            Ok(n) => {
                dst.filled(n);
                Plain::Got(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if self.raw_eof && self.raw_in.is_empty() {
                    Plain::Eof
                } else {
                    Plain::Empty
                }
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Plain::Eof,
            Err(_) => Plain::Error,
        }
    }

    /// Encrypts plaintext (rustls copies it).
    pub fn encrypt(&mut self, bytes: &[u8]) {
        let _ = self.session.writer().write_all(bytes);
    }

    /// Moves pending ciphertext into `raw_out`; returns how many bytes are there to send.
    pub fn fill_out(&mut self, pool: &mut SlabPool) -> usize {
        if self.raw_out.is_lent() {
            return 0;
        }
        self.raw_out.clear_or_take(pool);
        while self.session.wants_write() {
            let Some(room) = self.raw_out.room_mut(pool) else { break };
            if room.is_empty() {
                break;
            }
            let mut w: &mut [u8] = room;
            match self.session.write_tls(&mut w) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.raw_out.filled(n),
            }
        }
        let n = self.raw_out.len();
        if n == 0 {
            self.raw_out.release_if_empty(pool);
        }
        n
    }

    /// Returns every slab this leg holds (not those lent to the kernel).
    pub fn release(&mut self, pool: &mut SlabPool) {
        self.raw_in.release(pool);
        self.raw_out.release(pool);
    }
}

/// Whether `name` is on the passthrough list (exact, or `*.suffix`).
pub fn is_passthrough(name: &str, list: &[String]) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    list.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix)
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
            None => name == p,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_matches_exact_and_suffix() {
        let l = vec!["bank.example".to_string(), "*.apple.com".to_string()];
        assert!(is_passthrough("bank.example", &l));
        assert!(is_passthrough("BANK.example.", &l));
        assert!(is_passthrough("x.apple.com", &l));
        assert!(is_passthrough("a.b.apple.com", &l));
        assert!(!is_passthrough("apple.com", &l));
        assert!(!is_passthrough("evilapple.com", &l));
        assert!(!is_passthrough("bank.example.org", &l));
    }
}
