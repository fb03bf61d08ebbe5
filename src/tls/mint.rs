//! Forged leaf certificates, one per server name, signed by the appliance CA.
//!
//! Each worker has its own [`Minter`]: the CA signer, one P-256 leaf key reused for every
//! leaf (a new name costs one signature, not a key generation), and an LRU of ready
//! `ServerConfig`s keyed by name, so a repeat name costs a lookup. Leaves carry the name
//! as SAN (DNS, or IP for address targets), a random serial, and a short validity that
//! ends no later than the CA's.

use super::ca::{CaError, CaMaterial};
use lru::LruCache;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;
use time::{Duration, OffsetDateTime};

const LEAF_VALIDITY_DAYS: i64 = 30;

/// A resolver that always answers with one certificate (the one minted for this name).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Minting counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct MintStats {
    pub minted: u64,
    pub cache_hits: u64,
    pub mint_nanos: u64,
}

/// A worker's certificate forge.
pub struct Minter {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    ca_not_after: OffsetDateTime,
    provider: Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
    cache: LruCache<String, Arc<ServerConfig>>,
    pub stats: MintStats,
}

impl Minter {
    /// Builds a worker's minter from the CA and a fresh leaf key.
    pub fn new(ca: &CaMaterial, capacity: usize) -> Result<Minter, CaError> {
        use rustls::pki_types::pem::PemObject;
        let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| CaError(format!("CA key: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| CaError(format!("CA certificate: {e}")))?;
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
            .map_err(|e| CaError(format!("CA certificate: {e}")))?;
        let leaf_key = KeyPair::generate().map_err(|e| CaError(format!("leaf key: {e}")))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = super::provider();
        let signing_key = provider.key_provider.load_private_key(der).map_err(|e| CaError(format!("leaf key: {e}")))?;
        Ok(Minter {
            issuer,
            ca_der,
            leaf_key,
            signing_key,
            ca_not_after: ca.not_after,
            provider,
            alpn: vec![b"http/1.1".to_vec()],
            cache: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            stats: MintStats::default(),
        })
    }

    /// Offers `h2` before `http/1.1` in ALPN when `on` (`h2.enabled`); configs cached
    /// with the other offer are dropped.
    pub fn offer_h2(&mut self, on: bool) {
        let alpn = if on { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        if alpn != self.alpn {
            self.alpn = alpn;
            self.cache.clear();
        }
    }

    /// Names cached now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The server config presenting a certificate for `name` (a DNS name or an IP address).
    pub fn config_for(&mut self, name: &str) -> Result<Arc<ServerConfig>, String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(cfg) = self.cache.get(&name) {
            self.stats.cache_hits += 1;
            return Ok(cfg.clone());
        }
        let started = Instant::now();
        let chain = vec![self.mint(&name)?, self.ca_der.clone()];
        let key = Arc::new(CertifiedKey::new(chain, self.signing_key.clone()));
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        cfg.alpn_protocols = self.alpn.clone();
        let cfg = Arc::new(cfg);
        // A full cache drops the name used least recently.
        self.cache.put(name, cfg.clone());
        self.stats.minted += 1;
        self.stats.mint_nanos += started.elapsed().as_nanos() as u64;
        Ok(cfg)
    }

    fn mint(&self, name: &str) -> Result<CertificateDer<'static>, String> {
        let mut params = CertificateParams::new(vec![name.to_string()])
            .map_err(|e| format!("cannot forge a certificate for {name:?}: {e}"))?;
        let mut dn = DistinguishedName::new();
        let cn: String = name.chars().take(64).collect();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = (now + Duration::days(LEAF_VALIDITY_DAYS)).min(self.ca_not_after);
        let mut serial = [0u8; 16];
        self.provider.secure_random.fill(&mut serial).map_err(|_| "no randomness for a serial".to_string())?;
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| format!("cannot sign a certificate for {name}: {e}"))?;
        Ok(cert.der().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CaMaterial {
        let d =
            std::env::temp_dir().join(format!("sluice-mint-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&d);
        let (m, _) = super::super::ca::load_or_create(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        m
    }

    #[test]
    fn repeat_names_hit_the_cache_and_the_cache_is_bounded() {
        let mut m = Minter::new(&ca(), 3).unwrap();
        let a = m.config_for("a.test").unwrap();
        let a2 = m.config_for("A.test.").unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert_eq!((m.stats.minted, m.stats.cache_hits), (1, 1));
        for n in ["b.test", "c.test", "d.test", "e.test"] {
            m.config_for(n).unwrap();
        }
        assert_eq!(m.cached(), 3);
        assert_eq!(m.stats.minted, 5);
    }

    #[test]
    fn a_full_cache_evicts_the_name_used_least_recently() {
        let mut m = Minter::new(&ca(), 2).unwrap();
        let a = m.config_for("a.test").unwrap();
        m.config_for("b.test").unwrap();
        m.config_for("a.test").unwrap(); // a is now more recent than b
        m.config_for("c.test").unwrap(); // evicts b
        assert_eq!((m.stats.minted, m.stats.cache_hits), (3, 1));
        assert!(Arc::ptr_eq(&a, &m.config_for("a.test").unwrap()), "a was kept");
        assert_eq!((m.stats.minted, m.stats.cache_hits), (3, 2));
        m.config_for("b.test").unwrap();
        assert_eq!(m.stats.minted, 4, "b was evicted and minted again");
        assert_eq!(m.cached(), 2);
    }

    #[test]
    fn ip_targets_and_bad_names() {
        let mut m = Minter::new(&ca(), 8).unwrap();
        m.config_for("127.0.0.1").unwrap();
        m.config_for("::1").unwrap();
        assert!(m.config_for("bad name with spaces").is_err() || m.stats.minted == 3);
    }
}
