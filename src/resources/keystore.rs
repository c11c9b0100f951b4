//! The keystore files of a Secret: built from its PEM contents, or kept as they are.
//!
//! PKCS#12 encoding is randomised (salts, IVs), so rebuilding on every reconcile would rewrite the
//! Secret each time. Existing files are kept when the digest tlsid recorded beside them
//! ([`DIGEST_ANNOTATION`]) still matches the wanted inputs and the files' bytes. The files
//! themselves are never opened: a hostile `keystore.p12` (e.g. with an absurd PBKDF2 iteration
//! count) costs nothing but a hash.

use crate::{
    api::Pkcs12ProfileName,
    pki::keystore::{KeystoreError, Pkcs12Profile, pkcs12},
};
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const KEYSTORE_P12: &str = "keystore.p12";
pub const TRUSTSTORE_P12: &str = "truststore.p12";
/// Annotation naming the profile the files were written with.
pub const PROFILE_ANNOTATION: &str = "tlsid.dev/pkcs12-profile";
/// Annotation holding [`pkcs12_digest`] of the files as written: SHA-256, lowercase hex.
pub const DIGEST_ANNOTATION: &str = "tlsid.dev/pkcs12-digest";

/// Domain separation for [`pkcs12_digest`]; bump the version if the encoding changes.
const DIGEST_DOMAIN: &[u8] = b"tlsid.dev/pkcs12-digest/v1";

pub fn profile(name: Pkcs12ProfileName) -> Pkcs12Profile {
    match name {
        Pkcs12ProfileName::Modern2023 => Pkcs12Profile::Modern2023,
        Pkcs12ProfileName::LegacyDes => Pkcs12Profile::LegacyDES,
        Pkcs12ProfileName::LegacyRc2 => Pkcs12Profile::LegacyRC2,
    }
}

pub fn profile_name(p: Pkcs12ProfileName) -> &'static str {
    match p {
        Pkcs12ProfileName::Modern2023 => "Modern2023",
        Pkcs12ProfileName::LegacyDes => "LegacyDES",
        Pkcs12ProfileName::LegacyRc2 => "LegacyRC2",
    }
}

/// The keystore files to put into a Secret, and the annotations to set beside them.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs12Files {
    /// `keystore.p12` and `truststore.p12`.
    pub data: BTreeMap<String, Vec<u8>>,
    /// [`PROFILE_ANNOTATION`] and [`DIGEST_ANNOTATION`].
    pub annotations: BTreeMap<String, String>,
}

impl std::fmt::Debug for Pkcs12Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs12Files")
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("annotations", &self.annotations.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// SHA-256 (lowercase hex) over a length-prefixed, domain-separated encoding of the inputs of the
/// keystore files and the files' bytes as written. `tls.key` is an input so the digest cannot be
/// used to test password guesses without the key.
pub fn pkcs12_digest(
    chain_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    password: &str,
    profile: Pkcs12ProfileName,
    keystore_p12: &[u8],
    truststore_p12: &[u8],
) -> String {
    let mut h = Sha256::new();
    h.update((DIGEST_DOMAIN.len() as u64).to_be_bytes());
    h.update(DIGEST_DOMAIN);
    for (name, bytes) in [
        ("tls.crt", chain_pem),
        ("tls.key", key_pem),
        ("ca.crt", bundle_pem),
        ("password", password.as_bytes()),
        ("profile", profile_name(profile).as_bytes()),
        (KEYSTORE_P12, keystore_p12),
        (TRUSTSTORE_P12, truststore_p12),
    ] {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

/// `keystore.p12` and `truststore.p12` for the given PEM contents, with the annotations recording
/// how they were made. The files in `existing` (the current Secret) are reused, byte for byte, iff
/// its [`DIGEST_ANNOTATION`] equals the digest of the wanted inputs and those files; otherwise new
/// files are built. Existing files are never parsed or decrypted.
pub fn pkcs12_files(
    chain_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    password: &str,
    wanted: Pkcs12ProfileName,
    existing: Option<&Secret>,
) -> Result<Pkcs12Files, KeystoreError> {
    let digest_of = |ks: &[u8], ts: &[u8]| {
        pkcs12_digest(chain_pem, key_pem, bundle_pem, password, wanted, ks, ts)
    };
    if let Some((ks, ts, recorded)) = existing.and_then(existing_files) {
        let digest = digest_of(ks, ts);
        if eq_constant_time(digest.as_bytes(), recorded.as_bytes()) {
            return Ok(files(ks.to_vec(), ts.to_vec(), wanted, digest));
        }
    }
    let built = build(chain_pem, key_pem, bundle_pem, password, wanted)?;
    let digest = digest_of(&built.keystore_p12, &built.truststore_p12);
    Ok(files(
        built.keystore_p12,
        built.truststore_p12,
        wanted,
        digest,
    ))
}

/// The existing files and the digest recorded for them, if all three are present.
fn existing_files(secret: &Secret) -> Option<(&[u8], &[u8], &str)> {
    let data = secret.data.as_ref()?;
    let recorded = secret
        .metadata
        .annotations
        .as_ref()?
        .get(DIGEST_ANNOTATION)?;
    Some((
        data.get(KEYSTORE_P12)?.0.as_slice(),
        data.get(TRUSTSTORE_P12)?.0.as_slice(),
        recorded.as_str(),
    ))
}

fn eq_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn files(ks: Vec<u8>, ts: Vec<u8>, wanted: Pkcs12ProfileName, digest: String) -> Pkcs12Files {
    Pkcs12Files {
        data: BTreeMap::from([(KEYSTORE_P12.into(), ks), (TRUSTSTORE_P12.into(), ts)]),
        annotations: BTreeMap::from([
            (PROFILE_ANNOTATION.into(), profile_name(wanted).into()),
            (DIGEST_ANNOTATION.into(), digest),
        ]),
    }
}

fn build(
    chain_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    password: &str,
    wanted: Pkcs12ProfileName,
) -> Result<crate::pki::keystore::Keystores, KeystoreError> {
    let text = |b: &[u8], key: &'static str| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| KeystoreError::Input {
                key,
                reason: "not UTF-8".into(),
            })
    };
    pkcs12(
        &text(chain_pem, "tls.crt")?,
        &text(key_pem, "tls.key")?,
        &text(bundle_pem, "ca.crt")?,
        password,
        profile(wanted),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::TlsIdentitySpec,
        pki::{Authority, IssuanceRequest, issue},
    };

    struct Inputs {
        ca: Authority,
        chain: String,
        key: String,
        bundle: String,
    }

    fn inputs() -> Inputs {
        let now = jiff::Timestamp::now();
        let ca = Authority::generate_root(now).unwrap();
        let req = IssuanceRequest::from_spec(&TlsIdentitySpec {
            dns_names: vec!["a.b.svc".into()],
            ..Default::default()
        })
        .unwrap();
        let cert = issue(&req, &ca, now).unwrap();
        let bundle = ca.bundle_pem();
        Inputs {
            ca,
            chain: cert.chain_pem,
            key: cert.key_pem,
            bundle,
        }
    }

    /// The Secret tlsid would have written with `files`.
    fn secret_with(files: &Pkcs12Files) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some(files.annotations.clone()),
                ..Default::default()
            },
            data: Some(
                files
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn files_are_reused_by_digest_and_rebuilt_on_any_change() {
        let i = inputs();
        let modern = Pkcs12ProfileName::Modern2023;
        let make = |chain: &str,
                    key: &str,
                    bundle: &str,
                    pw: &str,
                    p: Pkcs12ProfileName,
                    existing: Option<&Secret>| {
            pkcs12_files(
                chain.as_bytes(),
                key.as_bytes(),
                bundle.as_bytes(),
                pw,
                p,
                existing,
            )
            .unwrap()
        };
        let first = make(&i.chain, &i.key, &i.bundle, "pw", modern, None);
        assert_eq!(first.annotations[PROFILE_ANNOTATION], "Modern2023");
        assert_eq!(first.annotations[DIGEST_ANNOTATION].len(), 64);
        let existing = secret_with(&first);

        let again = make(&i.chain, &i.key, &i.bundle, "pw", modern, Some(&existing));
        assert_eq!(
            again, first,
            "unchanged inputs keep the same bytes (no Secret write)"
        );

        let other_root = Authority::generate_root(jiff::Timestamp::now()).unwrap();
        let two_roots = format!("{}{}", i.bundle, other_root.bundle_pem());
        let req = IssuanceRequest::from_spec(&TlsIdentitySpec {
            dns_names: vec!["a.b.svc".into()],
            ..Default::default()
        })
        .unwrap();
        let renewed = issue(&req, &i.ca, jiff::Timestamp::now()).unwrap();
        let cases: Vec<(&str, Pkcs12Files)> = vec![
            (
                "password",
                make(
                    &i.chain,
                    &i.key,
                    &i.bundle,
                    "other",
                    modern,
                    Some(&existing),
                ),
            ),
            (
                "profile",
                make(
                    &i.chain,
                    &i.key,
                    &i.bundle,
                    "pw",
                    Pkcs12ProfileName::LegacyDes,
                    Some(&existing),
                ),
            ),
            (
                "bundle",
                make(&i.chain, &i.key, &two_roots, "pw", modern, Some(&existing)),
            ),
            (
                "leaf",
                make(
                    &renewed.chain_pem,
                    &renewed.key_pem,
                    &i.bundle,
                    "pw",
                    modern,
                    Some(&existing),
                ),
            ),
        ];
        for (what, rebuilt) in cases {
            assert_ne!(
                rebuilt.data[KEYSTORE_P12], first.data[KEYSTORE_P12],
                "{what}"
            );
            assert_ne!(
                rebuilt.data[TRUSTSTORE_P12], first.data[TRUSTSTORE_P12],
                "{what}"
            );
            assert_ne!(
                rebuilt.annotations[DIGEST_ANNOTATION], first.annotations[DIGEST_ANNOTATION],
                "{what}"
            );
        }

        // Tampered bytes, a missing or forged digest: rebuilt.
        let mut tampered = existing.clone();
        if let Some(ks) = tampered.data.as_mut().and_then(|d| d.get_mut(KEYSTORE_P12)) {
            ks.0[10] ^= 1;
        }
        let mut no_digest = existing.clone();
        no_digest.metadata.annotations = None;
        let mut forged = existing.clone();
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DIGEST_ANNOTATION.into(), "0".repeat(64));
        for (what, secret) in [
            ("tampered", tampered),
            ("no digest", no_digest),
            ("forged", forged),
        ] {
            let rebuilt = make(&i.chain, &i.key, &i.bundle, "pw", modern, Some(&secret));
            assert_ne!(
                rebuilt.data[KEYSTORE_P12], first.data[KEYSTORE_P12],
                "{what}"
            );
            let want = pkcs12_digest(
                i.chain.as_bytes(),
                i.key.as_bytes(),
                i.bundle.as_bytes(),
                "pw",
                modern,
                &rebuilt.data[KEYSTORE_P12],
                &rebuilt.data[TRUSTSTORE_P12],
            );
            assert_eq!(rebuilt.annotations[DIGEST_ANNOTATION], want, "{what}");
        }
    }

    #[test]
    fn existing_files_are_never_opened() {
        let i = inputs();
        let modern = Pkcs12ProfileName::Modern2023;
        // Not PKCS#12 at all (a parser would reject it; a crafted file with a huge PBKDF2
        // iteration count would stall one). With a matching digest it is kept byte for byte,
        // which shows it was never parsed; with any other digest it is replaced, quickly.
        let hostile = vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0x03];
        let digest = pkcs12_digest(
            i.chain.as_bytes(),
            i.key.as_bytes(),
            i.bundle.as_bytes(),
            "pw",
            modern,
            &hostile,
            &hostile,
        );
        let with_digest = |digest: String| {
            secret_with(&Pkcs12Files {
                data: BTreeMap::from([
                    (KEYSTORE_P12.into(), hostile.clone()),
                    (TRUSTSTORE_P12.into(), hostile.clone()),
                ]),
                annotations: BTreeMap::from([(DIGEST_ANNOTATION.into(), digest)]),
            })
        };
        let run = |secret: &Secret| {
            let started = std::time::Instant::now();
            let files = pkcs12_files(
                i.chain.as_bytes(),
                i.key.as_bytes(),
                i.bundle.as_bytes(),
                "pw",
                modern,
                Some(secret),
            )
            .unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            files
        };
        let kept = run(&with_digest(digest));
        assert_eq!(kept.data[KEYSTORE_P12], hostile);
        let rebuilt = run(&with_digest("f".repeat(64)));
        assert_ne!(rebuilt.data[KEYSTORE_P12], hostile);
        assert!(
            p12_keystore::KeyStore::from_pkcs12(
                &rebuilt.data[KEYSTORE_P12],
                "pw",
                p12_keystore::Pkcs12ImportPolicy::Strict
            )
            .is_ok()
        );
    }

    #[test]
    fn debug_shows_no_key_material() {
        let i = inputs();
        let files = pkcs12_files(
            i.chain.as_bytes(),
            i.key.as_bytes(),
            i.bundle.as_bytes(),
            "secret-password",
            Pkcs12ProfileName::Modern2023,
            None,
        )
        .unwrap();
        let debug = format!("{files:?}");
        assert!(!debug.contains("secret-password"));
        assert!(!debug.contains(&files.annotations[DIGEST_ANNOTATION]));
        assert!(debug.len() < 200, "{debug}");
    }

    #[test]
    fn digest_encoding_is_unambiguous() {
        let modern = Pkcs12ProfileName::Modern2023;
        // Moving a byte across a field boundary changes the digest.
        let a = pkcs12_digest(b"ab", b"c", b"", "", modern, b"", b"");
        let b = pkcs12_digest(b"a", b"bc", b"", "", modern, b"", b"");
        assert_ne!(a, b);
        let c = pkcs12_digest(b"", b"", b"", "", modern, b"x", b"");
        let d = pkcs12_digest(b"", b"", b"", "", modern, b"", b"x");
        assert_ne!(c, d);
    }
}
