//! Certificate logic: pure functions over bytes and times, no Kubernetes client.
//!
//! - [`request`]: the validated issuance request derived from a `TlsIdentity` spec.
//! - [`ca`]: the cluster CA (signer + trust bundle) and its Secret format.
//! - [`issue`]: signing a leaf certificate.
//! - [`inspect`]: reading back what a Secret holds.
//! - [`renewal`]: when to renew.
//! - [`policy`]: whether to re-issue, and why.

pub mod ca;
pub mod inspect;
pub mod issue;
pub mod keystore;
pub mod policy;
pub mod renewal;
pub mod request;

pub use ca::{Authority, CaError};
pub use inspect::{CertificateInfo, SecretData};
pub use issue::{IssuedCertificate, issue};
pub use policy::{PolicyInput, ReissueReason, should_reissue};
pub use renewal::renewal_time;
pub use request::{InvalidSpec, IssuanceRequest, KeySpec, RenewPolicy};

use sha2::{Digest, Sha256};

/// How far `notBefore` is backdated from the moment of issuance, to tolerate clock skew between
/// the controller and the peers that verify the certificate.
pub const BACKDATE: std::time::Duration = std::time::Duration::from_secs(30);

/// Errors from signing or key generation. These are not the user's fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("key generation failed: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
    #[error("invalid name for the certificate: {0}")]
    Name(String),
    #[error("time out of range: {0}")]
    Time(String),
}

/// Lowercase hex SHA-256 of DER bytes: how certificates are named in status and logs.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// notAfter of a DER certificate, if it parses.
pub fn not_after_of(der: &[u8]) -> Option<jiff::Timestamp> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(from_asn1(cert.validity().not_after))
}

/// The subject of a DER certificate (RFC 4514 string), empty if it does not parse.
pub fn subject_of(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

/// Short digest of a trust bundle's PEM, recorded on each identity Secret
/// (`tlsid.dev/trust-bundle`) so that which Secrets hold the current bundle can be read from
/// their metadata alone.
pub fn bundle_digest(pem: &[u8]) -> String {
    hex::encode(&Sha256::digest(pem)[..16])
}

/// Parse every `CERTIFICATE` block of a PEM bundle into DER. Other block types are ignored.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem_blocks(pem)?;
    Ok(blocks
        .into_iter()
        .filter(|(tag, _)| tag == "CERTIFICATE")
        .map(|(_, der)| der)
        .collect())
}

/// All PEM blocks as (tag, DER) pairs.
pub fn pem_blocks(pem: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let blocks = pem::parse_many(pem).map_err(|e| format!("malformed PEM: {e}"))?;
    Ok(blocks
        .into_iter()
        .map(|b| (b.tag().to_string(), b.into_contents()))
        .collect())
}

/// PEM-encode DER certificates, in order.
pub fn certs_to_pem<'a>(ders: impl IntoIterator<Item = &'a Vec<u8>>) -> String {
    ders.into_iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect::<Vec<_>>()
        .join("")
}

pub(crate) fn to_offset(ts: jiff::Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second())
        .map_err(|e| PkiError::Time(e.to_string()))
}

pub(crate) fn from_asn1(t: x509_parser::time::ASN1Time) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.timestamp()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_skips_unknown_and_keeps_order() {
        let a = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        let b = pem::encode(&pem::Pem::new("SOMETHING ELSE", vec![9]));
        let c = pem::encode(&pem::Pem::new("CERTIFICATE", vec![4, 5]));
        let all = format!("junk before\n{a}{b}{c}trailing");
        let certs = parse_pem_certs(all.as_bytes()).unwrap();
        assert_eq!(certs, vec![vec![1, 2, 3], vec![4, 5]]);
    }

    #[test]
    fn malformed_pem_never_panics() {
        // Truncated input yields no certificate (or an error); never a panic.
        assert!(parse_pem_certs(b"-----BEGIN CERTIFICATE-----\nAAAA").is_ok_and(|c| c.is_empty()));
        assert!(
            parse_pem_certs(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(parse_pem_certs(b"").unwrap().is_empty());
    }
}
