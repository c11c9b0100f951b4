//! The cluster CA: the signer that issues leaves and the trust bundle peers verify against.
//!
//! Stored in a `kubernetes.io/tls` Secret in the controller's namespace:
//! - `tls.crt`: the signing CA certificate, followed by any intermediates up to (not including) a root;
//! - `tls.key`: the signer's private key (PKCS#8, SEC1 or PKCS#1 PEM);
//! - `ca.crt`: the trust bundle, every active root. Several roots may be listed, so a CA rollover can
//!   publish the next root before it signs anything and keep the previous one until its leaves expire,
//!   without changing the format. Optional when `tls.crt` ends in a self-signed root.
//!
//! A user may supply this Secret themselves, with a root or an intermediate as the signer.

use super::{PkiError, certs_to_pem, fingerprint, from_asn1, parse_pem_certs, to_offset};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use x509_parser::prelude::*;

/// Lifetime of a root tlsid creates for itself.
pub const ROOT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a CA Secret cannot be used. Messages name the key and the problem, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("CA Secret has no {0}")]
    Missing(&'static str),
    #[error("CA Secret {key} is not valid PEM: {reason}")]
    Malformed { key: &'static str, reason: String },
    #[error("CA certificate is not a CA (basicConstraints cA is not true)")]
    NotACa,
    #[error("CA private key does not match the CA certificate in tls.crt")]
    KeyMismatch,
    #[error("CA certificate chain does not lead to a root in the trust bundle: {0}")]
    Untrusted(String),
    #[error("CA certificate expired at {0}")]
    Expired(jiff::Timestamp),
    #[error("ca.crt is required when tls.crt does not end in a self-signed root")]
    NoRoots,
    #[error("could not create CA: {0}")]
    Generate(String),
}

/// A loaded, checked CA. Cheap to share behind an `Arc`; the key never leaves this struct except
/// through [`Authority::to_secret_data`] (for the CA Secret itself).
pub struct Authority {
    signer: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    roots: Vec<Vec<u8>>,
    key: KeyPair,
    key_pem: String,
    fingerprint: String,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
    /// The roots in the bundle that anchor the signer's chain.
    anchors: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("fingerprint", &self.fingerprint)
            .field("not_after", &self.not_after)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed root: ECDSA P-256, valid for [`ROOT_LIFETIME`].
    pub fn generate_root(now: jiff::Timestamp) -> Result<Self, CaError> {
        Self::generate_root_for(now, ROOT_LIFETIME)
    }

    /// A new self-signed root valid for `lifetime` from `now` (backdated an hour, or a tenth of
    /// the lifetime when that is shorter, for clock skew).
    pub fn generate_root_for(
        now: jiff::Timestamp,
        lifetime: std::time::Duration,
    ) -> Result<Self, CaError> {
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tlsid");
        // Unique per key: two roots made in the same second must not share a subject, or a peer
        // holding the other one reports BadSignature instead of UnknownIssuer.
        let key_id = Sha256::digest(key.public_key_raw());
        dn.push(
            DnType::CommonName,
            format!(
                "tlsid cluster CA {} {}",
                now.as_second(),
                hex::encode(&key_id[..4])
            ),
        );
        params.distinguished_name = dn;
        // No path length limit: OpenSSL and Go enforce a root's pathLen, and a user may later put an
        // intermediate under this root.
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let backdate = std::time::Duration::from_secs(3600).min(lifetime / 10);
        let start = now - jiff::SignedDuration::try_from(backdate).unwrap_or_default();
        params.not_before = to_offset(start).map_err(|e| CaError::Generate(e.to_string()))?;
        params.not_after =
            to_offset(now + lifetime).map_err(|e| CaError::Generate(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let pem = cert.pem();
        let key_pem = key.serialize_pem();
        Self::from_pem(
            pem.as_bytes(),
            key_pem.as_bytes(),
            Some(pem.as_bytes()),
            now,
        )
    }

    /// A new intermediate CA named `common_name` under `root` (ECDSA P-256, pathLen 0), valid
    /// from a minute before `now` for `lifetime`: what a user brings when their PKI signs tlsid's
    /// CA. Its bundle is `root`'s.
    pub fn generate_intermediate(
        root: &Authority,
        common_name: &str,
        now: jiff::Timestamp,
        lifetime: std::time::Duration,
    ) -> Result<Self, CaError> {
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = to_offset(now - jiff::SignedDuration::from_secs(60))
            .map_err(|e| CaError::Generate(e.to_string()))?;
        params.not_after =
            to_offset(now + lifetime).map_err(|e| CaError::Generate(e.to_string()))?;
        let issuer = root
            .issuer()
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        Self::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            Some(root.bundle_pem().as_bytes()),
            now,
        )
    }

    /// Load and check a CA from the three Secret keys.
    pub fn from_pem(
        tls_crt: &[u8],
        tls_key: &[u8],
        ca_crt: Option<&[u8]>,
        now: jiff::Timestamp,
    ) -> Result<Self, CaError> {
        let chain = parse_pem_certs(tls_crt).map_err(|reason| CaError::Malformed {
            key: "tls.crt",
            reason,
        })?;
        let Some(signer) = chain.first().cloned() else {
            return Err(CaError::Missing("certificate in tls.crt"));
        };
        let key_pem = std::str::from_utf8(tls_key).map_err(|_| CaError::Malformed {
            key: "tls.key",
            reason: "not UTF-8".into(),
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Malformed {
            key: "tls.key",
            reason: e.to_string(),
        })?;

        let parsed: Vec<X509Certificate<'_>> = chain
            .iter()
            .map(|der| parse_x509_certificate(der).map(|(_, c)| c))
            .collect::<Result<_, _>>()
            .map_err(|e| CaError::Malformed {
                key: "tls.crt",
                reason: e.to_string(),
            })?;
        let signer_cert = &parsed[0];
        if !signer_cert.is_ca() {
            return Err(CaError::NotACa);
        }
        if signer_cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        let not_after = from_asn1(signer_cert.validity().not_after);
        let not_before = from_asn1(signer_cert.validity().not_before);
        if not_after <= now {
            return Err(CaError::Expired(not_after));
        }

        let mut roots = match ca_crt {
            Some(b) if !b.iter().all(u8::is_ascii_whitespace) => {
                parse_pem_certs(b).map_err(|reason| CaError::Malformed {
                    key: "ca.crt",
                    reason,
                })?
            }
            _ => Vec::new(),
        };
        // The chain in tls.crt may end in the root itself; it is not repeated in leaves' tls.crt.
        let mut intermediates: Vec<Vec<u8>> = chain[1..].to_vec();
        if let Some(last) = parsed.last().filter(|c| is_self_signed(c)) {
            let root_der = chain[parsed.len() - 1].clone();
            let _ = last;
            if !roots.contains(&root_der) {
                roots.push(root_der.clone());
            }
            intermediates.retain(|c| *c != root_der);
        }
        if roots.is_empty() {
            return Err(CaError::NoRoots);
        }

        // Each certificate in tls.crt must be signed by the next; the last by a root in the bundle.
        for pair in parsed.windows(2) {
            pair[0]
                .verify_signature(Some(pair[1].public_key()))
                .map_err(|_| {
                    CaError::Untrusted(format!(
                        "{} is not signed by {}",
                        pair[0].subject(),
                        pair[1].subject()
                    ))
                })?;
        }
        let top = parsed.last().expect("chain is not empty");
        let parsed_roots: Vec<X509Certificate<'_>> = roots
            .iter()
            .map(|der| parse_x509_certificate(der).map(|(_, c)| c))
            .collect::<Result<_, _>>()
            .map_err(|e| CaError::Malformed {
                key: "ca.crt",
                reason: e.to_string(),
            })?;
        let anchors: Vec<Vec<u8>> = parsed_roots
            .iter()
            .zip(&roots)
            .filter(|(root, _)| {
                root.subject() == top.issuer()
                    && top.verify_signature(Some(root.public_key())).is_ok()
            })
            .map(|(_, der)| der.clone())
            .collect();
        if anchors.is_empty() {
            return Err(CaError::Untrusted(format!(
                "no root in ca.crt signed {}",
                top.subject()
            )));
        }

        Ok(Self {
            fingerprint: fingerprint(&signer),
            signer,
            intermediates,
            roots,
            key,
            key_pem: key_pem.to_string(),
            not_before,
            not_after,
            anchors,
        })
    }

    /// The Secret data that stores this CA (includes the private key: only for the CA Secret).
    pub fn to_secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut chain = vec![self.signer.clone()];
        chain.extend(self.intermediates.iter().cloned());
        BTreeMap::from([
            ("tls.crt".to_string(), certs_to_pem(&chain).into_bytes()),
            ("tls.key".to_string(), self.key_pem.clone().into_bytes()),
            ("ca.crt".to_string(), self.bundle_pem().into_bytes()),
        ])
    }

    /// The trust bundle (`ca.crt` of every issued Secret): all active roots, PEM.
    pub fn bundle_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }

    /// What follows a leaf in its `tls.crt`: the signer unless it is itself a root, then intermediates.
    pub fn chain_for_leaf(&self) -> Vec<&Vec<u8>> {
        let mut out = Vec::new();
        if !self.roots.contains(&self.signer) {
            out.push(&self.signer);
        }
        out.extend(
            self.intermediates
                .iter()
                .filter(|c| !self.roots.contains(c)),
        );
        out
    }

    /// Certificates that may have signed a leaf we issued and that chain to the bundle.
    pub fn trusted_issuers(&self) -> impl Iterator<Item = &Vec<u8>> {
        std::iter::once(&self.signer)
            .chain(self.intermediates.iter())
            .chain(self.roots.iter())
    }

    pub fn signer_der(&self) -> &[u8] {
        &self.signer
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// SHA-256 fingerprint of the signing certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn not_after(&self) -> jiff::Timestamp {
        self.not_after
    }

    pub fn not_before(&self) -> jiff::Timestamp {
        self.not_before
    }

    /// The roots of the bundle that the signer's chain leads to.
    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }

    /// The signer's certificate chain in `tls.crt` order (signer, then intermediates).
    pub fn chain_pem(&self) -> String {
        let mut chain = vec![self.signer.clone()];
        chain.extend(self.intermediates.iter().cloned());
        certs_to_pem(&chain)
    }

    /// The signer's private key, PEM (only for the CA Secret itself).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// This CA with another trust bundle (which must still anchor its chain).
    pub fn with_roots(&self, roots: &[Vec<u8>], now: jiff::Timestamp) -> Result<Self, CaError> {
        Self::from_pem(
            self.chain_pem().as_bytes(),
            self.key_pem.as_bytes(),
            Some(certs_to_pem(roots).as_bytes()),
            now,
        )
    }

    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    /// An rcgen issuer for signing leaves.
    pub fn issuer(&self) -> Result<rcgen::Issuer<'_, &KeyPair>, PkiError> {
        rcgen::Issuer::from_ca_cert_der(&self.signer.clone().into(), &self.key)
            .map_err(PkiError::Signing)
    }
}

fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok()
}

/// 128 random bits, positive and without a leading zero byte (RFC 5280 allows up to 20 octets).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_made_in_the_same_second_have_distinct_subjects() {
        let now = now();
        let subject = |a: &Authority| {
            let der = &parse_pem_certs(a.bundle_pem().as_bytes()).unwrap()[0];
            let (_, cert) = parse_x509_certificate(der).unwrap();
            cert.subject().to_string()
        };
        let (a, b) = (
            Authority::generate_root(now).unwrap(),
            Authority::generate_root(now).unwrap(),
        );
        let (sa, sb) = (subject(&a), subject(&b));
        assert_ne!(sa, sb);
        assert!(sa.contains("tlsid cluster CA"), "{sa}");
    }

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn generated_root_round_trips_through_its_secret() {
        let ca = Authority::generate_root(now()).unwrap();
        let data = ca.to_secret_data();
        let back = Authority::from_pem(
            &data["tls.crt"],
            &data["tls.key"],
            Some(&data["ca.crt"]),
            now(),
        )
        .unwrap();
        assert_eq!(back.fingerprint(), ca.fingerprint());
        assert_eq!(back.roots().len(), 1);
        assert!(
            back.chain_for_leaf().is_empty(),
            "a root signer is not repeated in tls.crt"
        );
        // ca.crt is optional when tls.crt is a self-signed root.
        let again = Authority::from_pem(&data["tls.crt"], &data["tls.key"], None, now()).unwrap();
        assert_eq!(again.bundle_pem(), ca.bundle_pem());
    }

    #[test]
    fn debug_never_prints_the_key() {
        let ca = Authority::generate_root(now()).unwrap();
        let dbg = format!("{ca:?}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
    }

    #[test]
    fn rejects_broken_ca_secrets_with_clear_errors() {
        let a = Authority::generate_root(now()).unwrap().to_secret_data();
        let b = Authority::generate_root(now()).unwrap().to_secret_data();
        let err = |crt: &[u8], key: &[u8], ca: Option<&[u8]>| {
            Authority::from_pem(crt, key, ca, now()).unwrap_err()
        };
        assert_eq!(
            err(b"", &a["tls.key"], None),
            CaError::Missing("certificate in tls.crt")
        );
        assert!(matches!(
            err(&a["tls.crt"], b"garbage", None),
            CaError::Malformed { key: "tls.key", .. }
        ));
        assert_eq!(
            err(&a["tls.crt"], &b["tls.key"], None),
            CaError::KeyMismatch
        );
        // A self-signed signer is always its own anchor: it joins the given bundle.
        let joined =
            Authority::from_pem(&a["tls.crt"], &a["tls.key"], Some(&b["ca.crt"]), now()).unwrap();
        assert_eq!(joined.roots().len(), 2);
        let later = now() + jiff::SignedDuration::from_hours(24 * 365 * 11);
        assert!(matches!(
            Authority::from_pem(&a["tls.crt"], &a["tls.key"], None, later).unwrap_err(),
            CaError::Expired(_)
        ));
    }
}
