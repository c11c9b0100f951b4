//! PKCS#12 keystores for Java and other consumers that cannot read PEM, like cert-manager's
//! `spec.keystores.pkcs12`.
//!
//! Two files are written next to the PEM keys of an issued Secret:
//! - `keystore.p12`: one private-key entry, alias [`KEYSTORE_ALIAS`], holding the key and the chain
//!   leaf → intermediates → the root of the bundle that issued them (Java shows it as a
//!   `PrivateKeyEntry`);
//! - `truststore.p12`: every root of the trust bundle as a trusted-certificate entry. Each certificate
//!   bag carries Oracle's trusted-key-usage attribute (OID 2.16.840.1.113894.746875.1.1 =
//!   anyExtendedKeyUsage), without which the JDK ignores a certificate that has no key and shows no
//!   `trustedCertEntry`.
//!
//! The encoding is done by the `p12-keystore` crate; this module only chooses what goes in and how
//! it is protected. The PKCS#12 password protects nothing the Secret does not already hold in the
//! clear (`tls.key`): it exists because Java's `KeyStore` API wants one.

use super::{fingerprint, parse_pem_certs, pem_blocks};
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use x509_parser::prelude::*;

/// Alias of the private-key entry in `keystore.p12` (the same as cert-manager's).
pub const KEYSTORE_ALIAS: &str = "certificate";
/// Alias of the trusted entry in `truststore.p12` when the bundle holds one root (as cert-manager).
/// With several roots each is named `ca-` followed by the first 16 hex digits of its SHA-256
/// fingerprint, so an alias keeps naming the same root across a rollover.
pub const TRUSTSTORE_ALIAS: &str = "ca";

/// How the PKCS#12 files are encrypted and authenticated. The names are cert-manager's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pkcs12Profile {
    /// PBE-SHA1-RC2-40 for certificates and the key, SHA-1 MAC, 2048 iterations. For old readers
    /// only: OpenSSL 3 reads it only with `-legacy`. Unlike cert-manager, the key bag is also RC2-40
    /// encrypted, not 3DES (the crate uses one scheme for the whole file).
    LegacyRC2,
    /// PBE-SHA1-3DES for certificates and the key, SHA-1 MAC, 2048 iterations. Readable by OpenSSL 3
    /// without the legacy provider and by Java 8 before 8u301.
    LegacyDES,
    /// PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and an HMAC-SHA256 MAC, 10 000 iterations each (the
    /// JDK's own defaults). Java 8u301+/11.0.12+/17, OpenSSL 1.1.1+.
    #[default]
    Modern2023,
}

impl Pkcs12Profile {
    fn params(self) -> (EncryptionAlgorithm, MacAlgorithm, u32) {
        match self {
            // The crate's variant name says RC4 but it encodes pbeWithSHAAnd40BitRC2-CBC (1.2.840.113549.1.12.1.6).
            Pkcs12Profile::LegacyRC2 => (
                EncryptionAlgorithm::PbeWithShaAnd40BitRc4Cbc,
                MacAlgorithm::HmacSha1,
                2048,
            ),
            Pkcs12Profile::LegacyDES => (
                EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
                MacAlgorithm::HmacSha1,
                2048,
            ),
            Pkcs12Profile::Modern2023 => (
                EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
                MacAlgorithm::HmacSha256,
                10_000,
            ),
        }
    }
}

impl std::str::FromStr for Pkcs12Profile {
    type Err = KeystoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "LegacyRC2" => Ok(Self::LegacyRC2),
            "LegacyDES" => Ok(Self::LegacyDES),
            "Modern2023" => Ok(Self::Modern2023),
            other => Err(KeystoreError::Profile(other.to_string())),
        }
    }
}

/// The two PKCS#12 files, DER.
pub struct Keystores {
    /// `keystore.p12`: private key + leaf + chain.
    pub keystore_p12: Vec<u8>,
    /// `truststore.p12`: the trust bundle's roots as trusted-certificate entries.
    pub truststore_p12: Vec<u8>,
}

impl std::fmt::Debug for Keystores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystores")
            .field("keystore_p12", &self.keystore_p12.len())
            .field("truststore_p12", &self.truststore_p12.len())
            .finish()
    }
}

/// Why keystores could not be built. Messages never include key bytes or the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeystoreError {
    #[error("{key} is not usable for PKCS#12: {reason}")]
    Input { key: &'static str, reason: String },
    #[error("the private key does not match the first certificate of tls.crt")]
    KeyMismatch,
    #[error("unknown PKCS#12 profile {0:?} (expected LegacyRC2, LegacyDES or Modern2023)")]
    Profile(String),
    #[error("PKCS#12 encoding failed: {0}")]
    Encode(String),
}

/// Build `keystore.p12` and `truststore.p12` from the PEM contents of an issued Secret:
/// `chain_pem` (`tls.crt`: leaf first, then intermediates), `key_pem` (`tls.key`, PKCS#8) and
/// `bundle_pem` (`ca.crt`: the roots).
pub fn pkcs12(
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
    password: &str,
    profile: Pkcs12Profile,
) -> Result<Keystores, KeystoreError> {
    let input = |key: &'static str| move |reason: String| KeystoreError::Input { key, reason };
    let chain = parse_pem_certs(chain_pem.as_bytes()).map_err(input("tls.crt"))?;
    let roots = parse_pem_certs(bundle_pem.as_bytes()).map_err(input("ca.crt"))?;
    if chain.is_empty() {
        return Err(input("tls.crt")("no certificate".into()));
    }
    if roots.is_empty() {
        return Err(input("ca.crt")("no certificate".into()));
    }
    let key_der = pkcs8_der(key_pem)?;
    check_key_matches(&key_der, &chain[0])?;

    // The chain a Java PrivateKeyEntry shows: tls.crt, then the root(s) of the bundle that issued its
    // last certificate (cert-manager appends the CA too). A root already in tls.crt is not repeated.
    let mut full_chain = chain.clone();
    let top = chain.last().expect("checked non-empty");
    for root in &roots {
        if !full_chain.contains(root) && issued_by(top, root) {
            full_chain.push(root.clone());
        }
    }

    let (algorithm, mac, iterations) = profile.params();
    let encode = |e: p12_keystore::error::Error| KeystoreError::Encode(e.to_string());
    let to_cert = |key: &'static str| {
        move |der: &Vec<u8>| {
            Certificate::from_der(der).map_err(|e| KeystoreError::Input {
                key,
                reason: e.to_string(),
            })
        }
    };
    let write = |store: &KeyStore| {
        store
            .writer(password)
            .encryption_algorithm(algorithm)
            .encryption_iterations(iterations)
            .mac_algorithm(mac)
            .mac_iterations(iterations)
            .write()
            .map_err(encode)
    };

    let certs = full_chain
        .iter()
        .map(to_cert("tls.crt"))
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKey::from_der(&key_der).map_err(|e| input("tls.key")(e.to_string()))?;
    // localKeyId links the key bag to the leaf's certificate bag; any stable bytes do.
    let local_key_id = hex::decode(fingerprint(&chain[0])).expect("fingerprint is hex");
    let mut keystore = KeyStore::new();
    keystore.add_entry(
        KEYSTORE_ALIAS,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );

    Ok(Keystores {
        keystore_p12: write(&keystore)?,
        truststore_p12: write(&trust_entries(&roots)?)?,
    })
}

/// `truststore.p12` alone, for a trust bundle (`ca.crt`, the roots) without a key: the trust
/// ConfigMaps' Java option.
pub fn truststore(
    bundle_pem: &str,
    password: &str,
    profile: Pkcs12Profile,
) -> Result<Vec<u8>, KeystoreError> {
    let roots = parse_pem_certs(bundle_pem.as_bytes()).map_err(|reason| KeystoreError::Input {
        key: "ca.crt",
        reason,
    })?;
    if roots.is_empty() {
        return Err(KeystoreError::Input {
            key: "ca.crt",
            reason: "no certificate".into(),
        });
    }
    let (algorithm, mac, iterations) = profile.params();
    trust_entries(&roots)?
        .writer(password)
        .encryption_algorithm(algorithm)
        .encryption_iterations(iterations)
        .mac_algorithm(mac)
        .mac_iterations(iterations)
        .write()
        .map_err(|e| KeystoreError::Encode(e.to_string()))
}

/// Every root as a trusted-certificate entry.
fn trust_entries(roots: &[Vec<u8>]) -> Result<KeyStore, KeystoreError> {
    let mut truststore = KeyStore::new();
    for root in roots {
        let alias = if roots.len() == 1 {
            TRUSTSTORE_ALIAS.to_string()
        } else {
            format!("{TRUSTSTORE_ALIAS}-{}", &fingerprint(root)[..16])
        };
        let cert = Certificate::from_der(root).map_err(|e| KeystoreError::Input {
            key: "ca.crt",
            reason: e.to_string(),
        })?;
        truststore.add_entry(&alias, KeyStoreEntry::Certificate(cert));
    }
    Ok(truststore)
}

/// The DER of the single `PRIVATE KEY` (PKCS#8) block of `tls.key`.
fn pkcs8_der(key_pem: &str) -> Result<Vec<u8>, KeystoreError> {
    let bad = |reason: String| KeystoreError::Input {
        key: "tls.key",
        reason,
    };
    let blocks = pem_blocks(key_pem.as_bytes()).map_err(bad)?;
    let mut keys = blocks
        .into_iter()
        .filter(|(tag, _)| tag.ends_with("PRIVATE KEY"));
    match (keys.next(), keys.next()) {
        (Some((tag, der)), None) if tag == "PRIVATE KEY" => Ok(der),
        (Some((tag, _)), None) => Err(bad(format!(
            "a {tag} block; PKCS#8 (PRIVATE KEY) is required"
        ))),
        (None, _) => Err(bad("no PRIVATE KEY block".into())),
        (Some(_), Some(_)) => Err(bad("more than one private key".into())),
    }
}

fn check_key_matches(key_der: &[u8], leaf_der: &[u8]) -> Result<(), KeystoreError> {
    let bad = |key: &'static str| move |reason: String| KeystoreError::Input { key, reason };
    let key = rcgen::KeyPair::try_from(key_der).map_err(|e| bad("tls.key")(e.to_string()))?;
    let (_, leaf) = parse_x509_certificate(leaf_der).map_err(|e| bad("tls.crt")(e.to_string()))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(KeystoreError::KeyMismatch);
    }
    Ok(())
}

fn issued_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        parse_x509_certificate(cert_der),
        parse_x509_certificate(issuer_der),
    ) else {
        return false;
    };
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Usage;
    use crate::pki::{Authority, IssuanceRequest, KeySpec, RenewPolicy, certs_to_pem, issue};
    use p12_keystore::Pkcs12ImportPolicy;

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    fn request(key: KeySpec) -> IssuanceRequest {
        IssuanceRequest {
            common_name: None,
            dns_names: ["svc.ns.svc".to_string()].into(),
            ip_addresses: Default::default(),
            uris: Default::default(),
            usages: [Usage::Server, Usage::Client].into(),
            key,
            duration: std::time::Duration::from_secs(3600),
            renew: RenewPolicy::default(),
        }
    }

    /// An authority signing with an intermediate under a fresh root; returns it and the root's PEM.
    fn intermediate_authority() -> Authority {
        let root = Authority::generate_root(now()).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tlsid test intermediate");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.signed_by(&key, &root.issuer().unwrap()).unwrap();
        Authority::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            Some(root.bundle_pem().as_bytes()),
            now(),
        )
        .unwrap()
    }

    fn read(p12: &[u8], password: &str) -> KeyStore {
        KeyStore::from_pkcs12(p12, password, Pkcs12ImportPolicy::Strict).unwrap()
    }

    #[test]
    fn every_key_type_and_profile_round_trips() {
        let ca = Authority::generate_root(now()).unwrap();
        let root_der = ca.roots()[0].clone();
        for spec in [
            KeySpec::EcdsaP256,
            KeySpec::EcdsaP384,
            KeySpec::Ed25519,
            KeySpec::Rsa(2048),
        ] {
            let leaf = issue(&request(spec), &ca, now()).unwrap();
            for profile in [
                Pkcs12Profile::LegacyRC2,
                Pkcs12Profile::LegacyDES,
                Pkcs12Profile::Modern2023,
            ] {
                let stores = pkcs12(
                    &leaf.chain_pem,
                    &leaf.key_pem,
                    &ca.bundle_pem(),
                    "s3cret",
                    profile,
                )
                .unwrap_or_else(|e| panic!("{spec} {profile:?}: {e}"));
                let ks = read(&stores.keystore_p12, "s3cret");
                assert_eq!(ks.entries_len(), 1, "{spec} {profile:?}");
                let (alias, chain) = ks.private_key_chain().unwrap();
                assert_eq!(alias, KEYSTORE_ALIAS);
                let ders: Vec<&[u8]> = chain.certs().iter().map(|c| c.as_der()).collect();
                assert_eq!(
                    ders,
                    vec![leaf.leaf_der.as_slice(), root_der.as_slice()],
                    "{spec} {profile:?}"
                );
                assert_eq!(
                    chain.key().as_der(),
                    pkcs8_der(&leaf.key_pem).unwrap().as_slice()
                );

                let ts = read(&stores.truststore_p12, "s3cret");
                assert_eq!(ts.entries_len(), 1);
                match ts.entry(TRUSTSTORE_ALIAS) {
                    Some(KeyStoreEntry::Certificate(c)) => {
                        assert_eq!(c.as_der(), root_der.as_slice())
                    }
                    other => panic!("{spec} {profile:?}: truststore entry {other:?}"),
                }
                // The wrong password is refused (the MAC does not verify).
                assert!(
                    KeyStore::from_pkcs12(
                        &stores.keystore_p12,
                        "wrong",
                        Pkcs12ImportPolicy::Strict
                    )
                    .is_err()
                );
            }
        }
    }

    #[test]
    fn intermediate_chain_and_several_roots() {
        let ca = intermediate_authority();
        let other_root = Authority::generate_root(now()).unwrap();
        let bundle = format!("{}{}", ca.bundle_pem(), other_root.bundle_pem());
        let leaf = issue(&request(KeySpec::EcdsaP256), &ca, now()).unwrap();
        let stores = pkcs12(
            &leaf.chain_pem,
            &leaf.key_pem,
            &bundle,
            "pw",
            Pkcs12Profile::default(),
        )
        .unwrap();

        let ks = read(&stores.keystore_p12, "pw");
        let (_, chain) = ks.private_key_chain().unwrap();
        let ders: Vec<&[u8]> = chain.certs().iter().map(|c| c.as_der()).collect();
        // Leaf, intermediate, and only the root that issued the intermediate.
        assert_eq!(
            ders,
            vec![
                leaf.leaf_der.as_slice(),
                ca.signer_der(),
                ca.roots()[0].as_slice()
            ]
        );

        let ts = read(&stores.truststore_p12, "pw");
        let mut trusted: Vec<(String, Vec<u8>)> = ts
            .entries()
            .map(|(alias, e)| match e {
                KeyStoreEntry::Certificate(c) => (alias.clone(), c.as_der().to_vec()),
                other => panic!("{alias}: {other:?}"),
            })
            .collect();
        trusted.sort_by(|a, b| a.1.cmp(&b.1));
        let mut want: Vec<(String, Vec<u8>)> = [&ca.roots()[0], &other_root.roots()[0]]
            .into_iter()
            .map(|r| (format!("ca-{}", &fingerprint(r)[..16]), r.clone()))
            .collect();
        want.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(trusted, want);
    }

    #[test]
    fn truststore_alone_holds_every_root_of_the_bundle() {
        let a = Authority::generate_root(now()).unwrap();
        let b = Authority::generate_root(now()).unwrap();
        let bundle = format!("{}{}", a.bundle_pem(), b.bundle_pem());
        let ts = read(
            &truststore(&bundle, "changeit", Pkcs12Profile::default()).unwrap(),
            "changeit",
        );
        let mut trusted: Vec<Vec<u8>> = ts
            .entries()
            .map(|(_, e)| match e {
                KeyStoreEntry::Certificate(c) => c.as_der().to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        trusted.sort();
        let mut want = vec![a.roots()[0].clone(), b.roots()[0].clone()];
        want.sort();
        assert_eq!(trusted, want);
        assert!(truststore("", "changeit", Pkcs12Profile::default()).is_err());
    }

    #[test]
    fn rejects_unusable_inputs() {
        let ca = Authority::generate_root(now()).unwrap();
        let a = issue(&request(KeySpec::EcdsaP256), &ca, now()).unwrap();
        let b = issue(&request(KeySpec::EcdsaP256), &ca, now()).unwrap();
        let bundle = ca.bundle_pem();
        let p = |chain: &str, key: &str, bundle: &str| {
            pkcs12(chain, key, bundle, "pw", Pkcs12Profile::Modern2023).unwrap_err()
        };
        assert_eq!(
            p(&a.chain_pem, &b.key_pem, &bundle),
            KeystoreError::KeyMismatch
        );
        assert!(matches!(
            p("", &a.key_pem, &bundle),
            KeystoreError::Input { key: "tls.crt", .. }
        ));
        assert!(matches!(
            p(&a.chain_pem, &a.key_pem, ""),
            KeystoreError::Input { key: "ca.crt", .. }
        ));
        assert!(matches!(
            p(&a.chain_pem, "", &bundle),
            KeystoreError::Input { key: "tls.key", .. }
        ));
        let sec1 = a.key_pem.replace("PRIVATE KEY", "EC PRIVATE KEY");
        let err = p(&a.chain_pem, &sec1, &bundle);
        assert!(err.to_string().contains("PKCS#8"), "{err}");
        assert!(!err.to_string().contains(&a.key_pem[30..60]));
        // The chain may carry the root itself; it is not repeated.
        let with_root = format!("{}{}", a.chain_pem, certs_to_pem(ca.roots()));
        let stores = pkcs12(
            &with_root,
            &a.key_pem,
            &bundle,
            "pw",
            Pkcs12Profile::Modern2023,
        )
        .unwrap();
        assert_eq!(
            read(&stores.keystore_p12, "pw")
                .private_key_chain()
                .unwrap()
                .1
                .certs()
                .len(),
            2
        );
        assert_eq!(
            "Modern2023".parse::<Pkcs12Profile>().unwrap(),
            Pkcs12Profile::Modern2023
        );
        assert!("modern".parse::<Pkcs12Profile>().is_err());
    }
}
