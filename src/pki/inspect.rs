//! Reading back what a Secret holds: never trusts its content, never panics on it.

use super::{Authority, KeySpec, fingerprint, from_asn1, parse_pem_certs};
use crate::api::Usage;
use std::{collections::BTreeSet, net::IpAddr};
use x509_parser::{
    extensions::GeneralName,
    oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519},
    prelude::*,
    public_key::PublicKey,
};

/// The three keys of a `kubernetes.io/tls` Secret as tlsid writes it.
#[derive(Clone, Copy, Default)]
pub struct SecretData<'a> {
    pub tls_crt: Option<&'a [u8]>,
    pub tls_key: Option<&'a [u8]>,
    pub ca_crt: Option<&'a [u8]>,
}

/// What the certificate in a Secret says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub serial_hex: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    pub common_name: Option<String>,
    pub dns_names: BTreeSet<String>,
    pub ip_addresses: BTreeSet<IpAddr>,
    pub uris: BTreeSet<String>,
    pub usages: BTreeSet<Usage>,
    pub key: Option<KeySpec>,
    /// Fingerprint of the CA certificate that signed it, if it is one we trust.
    pub issuer_fingerprint: Option<String>,
}

/// A problem with the stored certificate; each one is a reason to re-issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataProblem {
    Missing(&'static str),
    Unparseable(&'static str, String),
    KeyMismatch,
}

/// Parse the leaf certificate (first block of `tls.crt`).
pub fn parse_leaf(tls_crt: &[u8]) -> Result<(Vec<u8>, CertificateInfo), DataProblem> {
    let certs = parse_pem_certs(tls_crt).map_err(|e| DataProblem::Unparseable("tls.crt", e))?;
    let Some(leaf) = certs.into_iter().next() else {
        return Err(DataProblem::Unparseable(
            "tls.crt",
            "no PEM CERTIFICATE block".into(),
        ));
    };
    let info = {
        let (_, cert) = parse_x509_certificate(&leaf)
            .map_err(|e| DataProblem::Unparseable("tls.crt", e.to_string()))?;
        describe(&cert)
    };
    Ok((leaf, info))
}

fn describe(cert: &X509Certificate<'_>) -> CertificateInfo {
    let mut info = CertificateInfo {
        serial_hex: hex::encode(cert.raw_serial()),
        not_before: from_asn1(cert.validity().not_before),
        not_after: from_asn1(cert.validity().not_after),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        dns_names: BTreeSet::new(),
        ip_addresses: BTreeSet::new(),
        uris: BTreeSet::new(),
        usages: BTreeSet::new(),
        key: key_spec(cert.public_key()),
        issuer_fingerprint: None,
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    info.dns_names.insert(n.to_string());
                }
                GeneralName::URI(u) => {
                    info.uris.insert(u.to_string());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    info.ip_addresses.extend(ip);
                }
                _ => {}
            }
        }
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if eku.value.server_auth {
            info.usages.insert(Usage::Server);
        }
        if eku.value.client_auth {
            info.usages.insert(Usage::Client);
        }
    }
    info
}

fn key_spec(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeySpec> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return Some(KeySpec::Ed25519);
    }
    match spki.parsed().ok()? {
        PublicKey::EC(point) if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY => match point.key_size() {
            256 => Some(KeySpec::EcdsaP256),
            384 => Some(KeySpec::EcdsaP384),
            _ => None,
        },
        PublicKey::RSA(rsa) if *alg == OID_PKCS1_RSAENCRYPTION => {
            u32::try_from(rsa.key_size()).ok().map(KeySpec::Rsa)
        }
        _ => None,
    }
}

/// Check a Secret's certificate and key against each other and the CA.
/// Returns the certificate's description, with `issuer_fingerprint` set when the CA vouches for it.
pub fn inspect(data: &SecretData<'_>, ca: &Authority) -> Result<CertificateInfo, DataProblem> {
    let crt = data
        .tls_crt
        .filter(|b| !b.is_empty())
        .ok_or(DataProblem::Missing("tls.crt"))?;
    let key = data
        .tls_key
        .filter(|b| !b.is_empty())
        .ok_or(DataProblem::Missing("tls.key"))?;
    let (leaf_der, mut info) = parse_leaf(crt)?;
    let key_pem = std::str::from_utf8(key)
        .map_err(|_| DataProblem::Unparseable("tls.key", "not UTF-8".into()))?;
    // Parse errors from rcgen/aws-lc never contain the key bytes.
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| DataProblem::Unparseable("tls.key", e.to_string()))?;
    let (_, leaf) = parse_x509_certificate(&leaf_der)
        .map_err(|e| DataProblem::Unparseable("tls.crt", e.to_string()))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(DataProblem::KeyMismatch);
    }
    info.issuer_fingerprint = ca.trusted_issuers().find_map(|der| {
        let (_, issuer) = parse_x509_certificate(der).ok()?;
        (issuer.subject() == leaf.issuer()
            && leaf.verify_signature(Some(issuer.public_key())).is_ok())
        .then(|| fingerprint(der))
    });
    Ok(info)
}
