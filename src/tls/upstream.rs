//! The verifying client side for origins: the system trust store plus every
//! `--upstream-ca` file, and a readable reason when a chain is refused.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use std::path::PathBuf;
use std::sync::Arc;

/// Builds the upstream client config. A missing or unreadable `--upstream-ca` file is
/// an error; an empty system store is not (the operator may trust only their own CAs).
pub fn client_config(extra: &[PathBuf]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for path in extra {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("--upstream-ca {}: {e}", path.display()))? {
            let cert = cert.map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("--upstream-ca {}: no certificate in it", path.display()));
        }
    }
    let mut cfg = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The same config offering only `http/1.1` (for requests that offer an Upgrade, or when
/// `h2.origins` is off).
pub fn http1_only(cfg: &ClientConfig) -> Arc<ClientConfig> {
    let mut cfg = cfg.clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A short, stable label for a refused upstream chain (metrics) and a sentence for the
/// client's 502.
pub fn failure_reason(e: &rustls::Error) -> (&'static str, String) {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                ("unknown_issuer", "upstream certificate is not signed by a trusted CA".into())
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ("expired", "upstream certificate has expired".into())
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                ("not_yet_valid", "upstream certificate is not valid yet".into())
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ("wrong_name", "upstream certificate is not valid for this name".into())
            }
            CertificateError::Revoked => ("revoked", "upstream certificate is revoked".into()),
            other => ("invalid", format!("upstream certificate rejected: {other:?}")),
        },
        other => ("handshake", format!("upstream TLS handshake failed: {other}")),
    }
}
