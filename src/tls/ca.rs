//! The appliance CA: `ca.pem` (certificate) and `ca.key` (PKCS#8, mode 0600) in one
//! directory. Created by `sluice ca init` or on the first `sluice run` when the
//! directory has neither file. The key is never printed or logged.

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The subject people see when they inspect a forged certificate's issuer.
pub const CA_COMMON_NAME: &str = "Sluice Interception CA";

/// A CA failure an operator can act on.
#[derive(Debug)]
pub struct CaError(pub String);

impl std::fmt::Display for CaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaError {}

/// The CA as loaded: PEM texts (each worker builds its own signer from them).
#[derive(Clone)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// Creates a new CA in `dir`. Refuses to overwrite an existing one.
pub fn init(dir: &Path) -> Result<PathBuf, CaError> {
    let (cert_path, key_path) = paths(dir);
    if cert_path.exists() || key_path.exists() {
        return Err(CaError(format!(
            "{} already holds a CA (ca.pem/ca.key); move it away first to make a new one",
            dir.display()
        )));
    }
    fs::create_dir_all(dir).map_err(|e| CaError(format!("cannot create {}: {e}", dir.display())))?;
    let key = KeyPair::generate().map_err(|e| CaError(format!("cannot generate the CA key: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Sluice");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key).map_err(|e| CaError(format!("cannot sign the CA certificate: {e}")))?;
    // The key first, created 0600 so it is never readable by others, not even briefly.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| CaError(format!("cannot create {}: {e}", key_path.display())))?;
    f.write_all(key.serialize_pem().as_bytes())
        .map_err(|e| CaError(format!("cannot write {}: {e}", key_path.display())))?;
    fs::write(&cert_path, cert.pem()).map_err(|e| CaError(format!("cannot write {}: {e}", cert_path.display())))?;
    Ok(cert_path)
}

/// Loads the CA from `dir`, creating it when the directory has neither file. Returns the
/// material and whether it was just created.
pub fn load_or_create(dir: &Path) -> Result<(CaMaterial, bool), CaError> {
    let (cert_path, key_path) = paths(dir);
    let created = if !cert_path.exists() && !key_path.exists() {
        init(dir)?;
        true
    } else {
        false
    };
    if !cert_path.exists() || !key_path.exists() {
        return Err(CaError(format!(
            "{} has only one of ca.pem and ca.key; restore the other or move both away",
            dir.display()
        )));
    }
    let mode = fs::metadata(&key_path).map(|m| m.permissions().mode() & 0o077).unwrap_or(0);
    if mode != 0 {
        return Err(CaError(format!(
            "{} is readable by group or others; run: chmod 600 {}",
            key_path.display(),
            key_path.display()
        )));
    }
    let cert_pem =
        fs::read_to_string(&cert_path).map_err(|e| CaError(format!("cannot read {}: {e}", cert_path.display())))?;
    let key_pem =
        fs::read_to_string(&key_path).map_err(|e| CaError(format!("cannot read {}: {e}", key_path.display())))?;
    let key =
        KeyPair::from_pem(&key_pem).map_err(|_| CaError(format!("{} is not a PEM private key", key_path.display())))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, &key)
        .map_err(|_| CaError(format!("{} is not a PEM certificate", cert_path.display())))?;
    drop(issuer);
    let not_after =
        ca_not_after(&cert_pem).ok_or_else(|| CaError(format!("{}: cannot read its validity", cert_path.display())))?;
    if not_after <= OffsetDateTime::now_utc() {
        return Err(CaError(format!("{} has expired; make a new CA (see CA/README.md)", cert_path.display())));
    }
    Ok((CaMaterial { cert_pem, key_pem, not_after }, created))
}

fn ca_not_after(pem: &str) -> Option<OffsetDateTime> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-ca-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_writes_a_0600_key_and_a_ca_certificate_then_refuses_to_overwrite() {
        let d = tmp("init");
        init(&d).unwrap();
        let mode = fs::metadata(d.join("ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (m, created) = load_or_create(&d).unwrap();
        assert!(!created);
        assert!(m.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(m.not_after > OffsetDateTime::now_utc() + Duration::days(3000));
        assert!(init(&d).unwrap_err().to_string().contains("already holds a CA"));
        assert!(!format!("{m:?}").contains("PRIVATE"), "Debug never shows the key");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_dir_is_created_half_a_ca_is_refused_and_loose_modes_too() {
        let d = tmp("create");
        let (_, created) = load_or_create(&d).unwrap();
        assert!(created);
        fs::set_permissions(d.join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(&d).unwrap_err().to_string().contains("chmod 600"));
        fs::remove_file(d.join("ca.key")).unwrap();
        assert!(load_or_create(&d).unwrap_err().to_string().contains("only one of"));
        fs::remove_dir_all(&d).unwrap();
    }
}
