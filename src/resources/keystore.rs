//! The keystore files of a Secret: built from its PEM contents, or kept as they are.
//!
//! PKCS#12 encoding is randomised (salts, IVs), so rebuilding on every reconcile would rewrite the
//! Secret each time. Existing files are kept while they open with the current password and hold the
//! current leaf and trust bundle, and were written with the requested profile.

use crate::{
    api::Pkcs12ProfileName,
    pki::{
        keystore::{KeystoreError, Pkcs12Profile, pkcs12},
        parse_pem_certs,
    },
};
use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
use std::collections::BTreeMap;

pub const KEYSTORE_P12: &str = "keystore.p12";
pub const TRUSTSTORE_P12: &str = "truststore.p12";
/// Annotation naming the profile the files were written with.
pub const PROFILE_ANNOTATION: &str = "tlsid.dev/pkcs12-profile";

pub fn profile(name: Pkcs12ProfileName) -> Pkcs12Profile {
    match name {
        Pkcs12ProfileName::Modern2023 => Pkcs12Profile::Modern2023,
        Pkcs12ProfileName::LegacyDes => Pkcs12Profile::LegacyDES,
        Pkcs12ProfileName::LegacyRc2 => Pkcs12Profile::LegacyRC2,
    }
}

/// `keystore.p12` and `truststore.p12` for the given PEM contents. `existing` holds the current
/// Secret's files and the profile they were written with, if any.
pub fn pkcs12_data(
    chain_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    password: &str,
    wanted: Pkcs12ProfileName,
    existing: Option<(&[u8], &[u8], &str)>,
) -> Result<BTreeMap<String, Vec<u8>>, KeystoreError> {
    if let Some((ks, ts, written_with)) = existing
        && written_with == profile_name(wanted)
        && still_current(ks, ts, chain_pem, bundle_pem, password)
    {
        return Ok(BTreeMap::from([
            (KEYSTORE_P12.into(), ks.to_vec()),
            (TRUSTSTORE_P12.into(), ts.to_vec()),
        ]));
    }
    let text = |b: &[u8], key: &'static str| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| KeystoreError::Input {
                key,
                reason: "not UTF-8".into(),
            })
    };
    let built = pkcs12(
        &text(chain_pem, "tls.crt")?,
        &text(key_pem, "tls.key")?,
        &text(bundle_pem, "ca.crt")?,
        password,
        profile(wanted),
    )?;
    Ok(BTreeMap::from([
        (KEYSTORE_P12.into(), built.keystore_p12),
        (TRUSTSTORE_P12.into(), built.truststore_p12),
    ]))
}

/// The keystore files and the annotations that describe them.
#[derive(Clone, Default, PartialEq)]
pub struct Pkcs12Files {
    pub data: BTreeMap<String, Vec<u8>>,
    pub annotations: BTreeMap<String, String>,
}

/// `keystore.p12` and `truststore.p12` for the given PEM contents, reusing `existing`'s files
/// when they are still current.
pub fn pkcs12_files(
    chain_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    password: &str,
    wanted: Pkcs12ProfileName,
    existing: Option<&k8s_openapi::api::core::v1::Secret>,
) -> Result<Pkcs12Files, KeystoreError> {
    let old = existing.and_then(|s| {
        let d = s.data.as_ref()?;
        let written_with = s.metadata.annotations.as_ref()?.get(PROFILE_ANNOTATION)?;
        Some((
            d.get(KEYSTORE_P12)?.0.as_slice(),
            d.get(TRUSTSTORE_P12)?.0.as_slice(),
            written_with.as_str(),
        ))
    });
    let data = pkcs12_data(chain_pem, key_pem, bundle_pem, password, wanted, old)?;
    Ok(Pkcs12Files {
        data,
        annotations: BTreeMap::from([(
            PROFILE_ANNOTATION.to_string(),
            profile_name(wanted).to_string(),
        )]),
    })
}

pub fn profile_name(p: Pkcs12ProfileName) -> &'static str {
    match p {
        Pkcs12ProfileName::Modern2023 => "Modern2023",
        Pkcs12ProfileName::LegacyDes => "LegacyDES",
        Pkcs12ProfileName::LegacyRc2 => "LegacyRC2",
    }
}

fn still_current(
    ks: &[u8],
    ts: &[u8],
    chain_pem: &[u8],
    bundle_pem: &[u8],
    password: &str,
) -> bool {
    let (Ok(chain), Ok(roots)) = (parse_pem_certs(chain_pem), parse_pem_certs(bundle_pem)) else {
        return false;
    };
    let Ok(keystore) = KeyStore::from_pkcs12(ks, password, Pkcs12ImportPolicy::Strict) else {
        return false;
    };
    let leaf_matches = keystore
        .private_key_chain()
        .and_then(|(_, c)| {
            c.certs()
                .first()
                .map(|cert| Some(cert.as_der()) == chain.first().map(Vec::as_slice))
        })
        .unwrap_or(false);
    let Ok(truststore) = KeyStore::from_pkcs12(ts, password, Pkcs12ImportPolicy::Raw) else {
        return false;
    };
    let mut trusted: Vec<&[u8]> = truststore
        .entries()
        .filter_map(|(_, e)| match e {
            KeyStoreEntry::Certificate(c) => Some(c.as_der()),
            _ => None,
        })
        .collect();
    let mut want: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
    trusted.sort();
    want.sort();
    leaf_matches && trusted == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::TlsIdentitySpec,
        pki::{Authority, IssuanceRequest, issue},
    };

    #[test]
    fn reuses_current_files_and_rebuilds_on_any_change() {
        let now = jiff::Timestamp::now();
        let ca = Authority::generate_root(now).unwrap();
        let req = IssuanceRequest::from_spec(&TlsIdentitySpec {
            dns_names: vec!["a.b.svc".into()],
            ..Default::default()
        })
        .unwrap();
        let cert = issue(&req, &ca, now).unwrap();
        let (chain, key, bundle) = (
            cert.chain_pem.as_bytes(),
            cert.key_pem.as_bytes(),
            ca.bundle_pem(),
        );
        let modern = Pkcs12ProfileName::Modern2023;
        let first = pkcs12_data(chain, key, bundle.as_bytes(), "pw", modern, None).unwrap();
        let existing = Some((
            &first[KEYSTORE_P12][..],
            &first[TRUSTSTORE_P12][..],
            "Modern2023",
        ));
        let again = pkcs12_data(chain, key, bundle.as_bytes(), "pw", modern, existing).unwrap();
        assert_eq!(
            again, first,
            "unchanged inputs keep the same bytes (no Secret write)"
        );

        let rebuilt = |pw: &str, p: Pkcs12ProfileName, bundle: &str| {
            pkcs12_data(chain, key, bundle.as_bytes(), pw, p, existing).unwrap()
        };
        assert_ne!(rebuilt("other", modern, &bundle), first, "password change");
        assert_ne!(
            rebuilt("pw", Pkcs12ProfileName::LegacyDes, &bundle),
            first,
            "profile change"
        );
        let two_roots = format!(
            "{bundle}{}",
            Authority::generate_root(now).unwrap().bundle_pem()
        );
        assert_ne!(rebuilt("pw", modern, &two_roots), first, "bundle change");
        let renewed = issue(&req, &ca, now).unwrap();
        let after_renewal = pkcs12_data(
            renewed.chain_pem.as_bytes(),
            renewed.key_pem.as_bytes(),
            bundle.as_bytes(),
            "pw",
            modern,
            existing,
        )
        .unwrap();
        assert_ne!(after_renewal, first, "new certificate");
    }
}
