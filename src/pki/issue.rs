//! Signing a leaf certificate for an [`IssuanceRequest`]. A fresh key every time.

use super::{
    Authority, BACKDATE, IssuanceRequest, KeySpec, PkiError, ca::random_serial, certs_to_pem,
    to_offset,
};
use crate::api::Usage;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, string::Ia5String,
};

/// A freshly issued certificate and its key. `Debug` never shows the key.
pub struct IssuedCertificate {
    /// Leaf followed by intermediates (not the root), PEM.
    pub chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// DER of the leaf.
    pub leaf_der: Vec<u8>,
    pub serial_hex: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The key as PKCS#8 PEM. Ed25519 is written as PKCS#8 v1 (RFC 8410 without the optional public
/// key): aws-lc emits v2 (`OneAsymmetricKey` with the public key), which OpenSSL 3.0 (Python's
/// `ssl`, curl, `openssl s_client`) refuses to load.
fn private_key_pem(key: &KeyPair, spec: KeySpec) -> String {
    const ED25519_V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = key.serialize_der();
    if spec == KeySpec::Ed25519 {
        // v2 layout: SEQUENCE { INTEGER 1, AlgorithmIdentifier, OCTET STRING { OCTET STRING seed }, [1] pub }
        // with the same 16-byte header as v1 up to the 32-byte seed.
        if let Some(seed) = der.get(16..48) {
            let mut v1 = ED25519_V1_PREFIX.to_vec();
            v1.extend_from_slice(seed);
            return pem::encode(&pem::Pem::new("PRIVATE KEY", v1));
        }
    }
    key.serialize_pem()
}

/// Generate a key for `spec`. RSA generation takes up to seconds: call from a blocking thread.
pub fn generate_key(spec: KeySpec) -> Result<KeyPair, PkiError> {
    let result = match spec {
        KeySpec::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeySpec::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeySpec::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeySpec::Rsa(bits) => {
            let size = match bits {
                2048 => rcgen::RsaKeySize::_2048,
                3072 => rcgen::RsaKeySize::_3072,
                _ => rcgen::RsaKeySize::_4096,
            };
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
        }
    };
    result.map_err(PkiError::KeyGeneration)
}

/// Sign a leaf for `req` with `ca`, valid from `now - BACKDATE` for `req.duration` after `now`
/// (never past the CA's own expiry).
pub fn issue(
    req: &IssuanceRequest,
    ca: &Authority,
    now: jiff::Timestamp,
) -> Result<IssuedCertificate, PkiError> {
    let key = generate_key(req.key)?;
    let mut params = CertificateParams::default();

    let mut dn = DistinguishedName::new();
    // Prefer the requested CN; otherwise the first DNS name that fits, so tools that show the
    // subject show something useful. With an empty subject rcgen marks the SAN critical (RFC 5280).
    let cn = req
        .common_name
        .clone()
        .or_else(|| req.dns_names.iter().find(|n| n.len() <= 64).cloned());
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    params.distinguished_name = dn;

    let ia5 = |s: &str| Ia5String::try_from(s).map_err(|e| PkiError::Name(format!("{s:?}: {e}")));
    for name in &req.dns_names {
        params.subject_alt_names.push(SanType::DnsName(ia5(name)?));
    }
    for ip in &req.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    for uri in &req.uris {
        params.subject_alt_names.push(SanType::URI(ia5(uri)?));
    }

    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if matches!(req.key, KeySpec::Rsa(_)) {
        // TLS 1.2 RSA key exchange encrypts to the certificate key.
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    for usage in &req.usages {
        params.extended_key_usages.push(match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        });
    }
    let serial = random_serial();
    let serial_hex = hex::encode(serial.as_ref());
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;

    let not_before = now - BACKDATE;
    let not_after = std::cmp::min(now + req.duration, ca.not_after());
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;

    let issuer = ca.issuer()?;
    let cert = params.signed_by(&key, &issuer).map_err(PkiError::Signing)?;
    let leaf_der = cert.der().to_vec();
    let mut chain_pem = cert.pem();
    chain_pem.push_str(&certs_to_pem(ca.chain_for_leaf()));
    Ok(IssuedCertificate {
        chain_pem,
        key_pem: private_key_pem(&key, req.key),
        leaf_der,
        serial_hex,
        not_before,
        not_after,
    })
}
