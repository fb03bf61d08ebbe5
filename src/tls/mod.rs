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
    /// The destination has no room: plaintext may be waiting, take the destination's
    /// bytes first (never to be mistaken for the end of the stream).
    Full,
    /// The session failed.
    Error,
}

impl std::fmt::Debug for TlsLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLeg")
            .field("handshaking", &self.session.is_handshaking())
            .field("raw_in", &self.raw_in.len())
            .field("raw_out", &self.raw_out.len())
            .field("raw_eof", &self.raw_eof)
            .field("failed", &self.failed)
            .finish()
    }
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
    /// Plaintext handed to [`TlsLeg::encrypt`] that rustls could not take yet (its send
    /// buffer was at its limit): it goes in, in order, as [`TlsLeg::fill_out`] drains
    /// ciphertext. Bounded by what the caller writes before waiting for its flush.
    backlog: Vec<u8>,
}

impl TlsLeg {
    pub fn new(session: rustls::Connection) -> TlsLeg {
        TlsLeg {
            session,
            raw_in: Buf::default(),
            raw_out: Buf::default(),
            raw_eof: false,
            failed: None,
            backlog: Vec::new(),
        }
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
        if room.is_empty() {
            // A zero-length read would say Ok(0), which is how rustls reports EOF.
            return Plain::Full;
        }
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

    /// Encrypts plaintext: rustls copies what its send buffer takes, the rest waits in
    /// the leg's backlog (never dropped) until [`TlsLeg::fill_out`] has drained room.
    pub fn encrypt(&mut self, bytes: &[u8]) {
        let taken = if self.backlog.is_empty() { self.write_plain(bytes) } else { 0 };
        self.backlog.extend_from_slice(&bytes[taken..]);
    }

    /// Plaintext waiting for room in rustls (0 once everything was encrypted).
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Hands rustls as much of `bytes` as it takes; returns how much it took.
    fn write_plain(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        while taken < bytes.len() {
            match self.session.writer().write(&bytes[taken..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => taken += n,
            }
        }
        taken
    }

    /// Moves backlogged plaintext into rustls as far as it has room.
    fn feed_backlog(&mut self) {
        if !self.backlog.is_empty() {
            let backlog = std::mem::take(&mut self.backlog);
            let taken = self.write_plain(&backlog);
            self.backlog = backlog;
            self.backlog.drain(..taken);
        }
    }

    /// Moves pending ciphertext into `raw_out`; returns how many bytes are there to send.
    pub fn fill_out(&mut self, pool: &mut SlabPool) -> usize {
        if self.raw_out.is_lent() {
            return 0;
        }
        self.raw_out.clear_or_take(pool);
        self.feed_backlog();
        while self.session.wants_write() || !self.backlog.is_empty() {
            self.feed_backlog();
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

/// A TLS record header: handshake (0x16), major version 3. The first bytes of a
/// connection (or of an intercepted tunnel) decide between TLS and HTTP/1 with this.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x16 && bytes[1] == 0x03
}

/// Why a client's first TLS bytes give no ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// rustls would not buffer the bytes (a record larger than it allows).
    Unreadable,
    /// The bytes are not a ClientHello rustls accepts (the handshake fails).
    Refused,
}

/// Feeds the client's bytes `data[*fed..]` to `acceptor`, advancing `fed`, and returns
/// the ClientHello once it is whole (`Ok(None)`: more bytes are needed). rustls takes at
/// most 4 KiB per `read_tls`, so this reads until the bytes are used up or the
/// ClientHello is complete: a larger ClientHello that arrived at once must not wait for
/// bytes the client will never send.
pub fn read_client_hello(
    acceptor: &mut rustls::server::Acceptor,
    data: &[u8],
    fed: &mut usize,
) -> Result<Option<rustls::server::Accepted>, HelloError> {
    loop {
        if *fed < data.len() {
            let mut rest = &data[*fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => return Err(HelloError::Unreadable),
                Ok(n) => *fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(Some(accepted)),
            // Every read takes at least one byte: this loop ends.
            Ok(None) if *fed < data.len() => {}
            Ok(None) => return Ok(None),
            Err(_) => return Err(HelloError::Refused),
        }
    }
}

/// Whether `name` is on the passthrough list (exact, or `*.suffix`).
pub fn is_passthrough(name: &str, list: &[String]) -> bool {
    list.iter().any(|p| crate::config::name_matches(name, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use std::sync::Arc;

    /// A client leg and a server leg of one in-memory TLS session (a self-signed
    /// certificate for test.local the client trusts), handshake not yet done.
    fn pair() -> (TlsLeg, TlsLeg) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["test.local".into()]).unwrap().self_signed(&key).unwrap();
        let der: CertificateDer<'static> = cert.der().clone();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("test.local").unwrap();
        let c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        (TlsLeg::new(c.into()), TlsLeg::new(s.into()))
    }

    /// Moves the ciphertext `from` has to send onto `wire`, then as much of `wire` as
    /// `to` takes into its input, as the ring would (what it cannot take yet stays on the
    /// wire, like bytes in a socket buffer).
    fn shuttle(from: &mut TlsLeg, wire: &mut Vec<u8>, to: &mut TlsLeg, pool: &mut SlabPool) {
        while from.fill_out(pool) > 0 {
            wire.extend_from_slice(from.raw_out.data(pool));
            from.raw_out.clear();
        }
        while !wire.is_empty() {
            let room = to.raw_in.room_mut(pool).expect("raw_in takes a slab");
            if room.is_empty() {
                break;
            }
            let k = room.len().min(wire.len());
            room[..k].copy_from_slice(&wire[..k]);
            to.raw_in.filled(k);
            wire.drain(..k);
            to.pump(pool);
        }
        to.pump(pool);
    }

    fn handshake(client: &mut TlsLeg, server: &mut TlsLeg, pool: &mut SlabPool) {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            shuttle(client, &mut up, server, pool);
            shuttle(server, &mut down, client, pool);
            if !client.session.is_handshaking() && !server.session.is_handshaking() {
                return;
            }
        }
        panic!("handshake did not finish: {:?} {:?}", client.failed, server.failed);
    }

    /// The first flight of a client offering `alpn`, for `name`.
    fn client_hello(name: &str, alpn: Vec<Vec<u8>>) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        hello
    }

    #[test]
    fn a_client_hello_is_read_whole_however_it_arrives() {
        // Found by fuzz/tls_detect: rustls reads at most 4 KiB per read_tls, and a
        // ClientHello larger than that (here 40 ALPN names of 200 bytes) that arrived at
        // once was read only in part, then waited for bytes the client never sends.
        let alpn: Vec<Vec<u8>> = (0..40u8).map(|i| vec![b'a' + i % 26; 200]).collect();
        for hello in [client_hello("Big.Example", alpn), client_hello("small.example", vec![b"http/1.1".to_vec()])] {
            for piece in [hello.len(), 1000, 1] {
                let mut acceptor = rustls::server::Acceptor::default();
                let mut fed = 0;
                let mut got = None;
                for end in (piece..hello.len()).step_by(piece).chain([hello.len()]) {
                    assert!(got.is_none(), "a ClientHello before its last byte");
                    got = read_client_hello(&mut acceptor, &hello[..end], &mut fed).unwrap();
                }
                let accepted =
                    got.unwrap_or_else(|| panic!("{} bytes in pieces of {piece}: no ClientHello", hello.len()));
                assert_eq!(fed, hello.len());
                let sni = accepted.client_hello().server_name().map(str::to_string);
                assert!(sni.is_some_and(|s| s.eq_ignore_ascii_case("big.example") || s == "small.example"));
            }
        }
        let garbage = [0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00];
        let mut fed = 0;
        let refused = read_client_hello(&mut rustls::server::Acceptor::default(), &garbage, &mut fed);
        assert_eq!(refused.err(), Some(HelloError::Refused));
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn plaintext_past_rustls_send_limit_is_kept_not_dropped() {
        let mut pool = SlabPool::new(8).unwrap();
        let (mut client, mut server) = pair();
        handshake(&mut client, &mut server, &mut pool);
        // rustls takes at most 4 KiB of unsent data at a time: a 200 KiB write is a short
        // write many times over, and every byte must still arrive, in order.
        client.session.set_buffer_limit(Some(4096));
        let sent = payload(200 * 1024);
        client.encrypt(&sent);
        assert!(client.backlog_len() > 0, "the limit did bite");
        let mut got = Vec::new();
        let mut dst = Buf::default();
        let mut wire = Vec::new();
        for _ in 0..10_000 {
            shuttle(&mut client, &mut wire, &mut server, &mut pool);
            loop {
                match server.take_plaintext(&mut dst, &mut pool) {
                    Plain::Got(_) => {}
                    Plain::Full => {}
                    other => {
                        assert!(matches!(other, Plain::Empty), "{other:?} before all bytes arrived");
                        break;
                    }
                }
                got.extend_from_slice(dst.data(&pool));
                dst.clear();
            }
            if got.len() >= sent.len() {
                break;
            }
        }
        assert_eq!(got.len(), sent.len(), "bytes lost past the send limit");
        assert!(got == sent, "bytes reordered or corrupted");
        assert_eq!(client.backlog_len(), 0);
        dst.release(&mut pool);
        client.release(&mut pool);
        server.release(&mut pool);
        assert_eq!(pool.outstanding(), 0);
    }

    #[test]
    fn a_full_destination_is_not_the_end_of_the_stream() {
        let mut pool = SlabPool::new(8).unwrap();
        let (mut client, mut server) = pair();
        handshake(&mut client, &mut server, &mut pool);
        let sent = payload(100 * 1024);
        client.encrypt(&sent);
        let mut wire = Vec::new();
        shuttle(&mut client, &mut wire, &mut server, &mut pool);
        let mut dst = Buf::default();
        let mut got = Vec::new();
        // Fill the destination to the brim without draining it.
        while let Plain::Got(_) = server.take_plaintext(&mut dst, &mut pool) {}
        assert_eq!(server.take_plaintext(&mut dst, &mut pool), Plain::Full, "a full buffer reads as EOF");
        got.extend_from_slice(dst.data(&pool));
        dst.clear();
        // Drained, the rest comes; then nothing more (the peer did not close).
        for _ in 0..1000 {
            shuttle(&mut client, &mut wire, &mut server, &mut pool);
            match server.take_plaintext(&mut dst, &mut pool) {
                Plain::Got(_) | Plain::Full => {
                    got.extend_from_slice(dst.data(&pool));
                    dst.clear();
                }
                Plain::Empty if wire.is_empty() => break,
                Plain::Empty => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(got == sent, "got {} of {} bytes", got.len(), sent.len());
        dst.release(&mut pool);
        client.release(&mut pool);
        server.release(&mut pool);
    }

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
