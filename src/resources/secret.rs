//! The `kubernetes.io/tls` Secret of an identity.

use crate::{
    api::{
        IDENTITY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SERIAL_ANNOTATION,
        SecretDeletionPolicy, TlsIdentity,
    },
    pki::SecretData,
};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use std::collections::BTreeMap;

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";

/// What goes into the Secret's data. `Debug` shows key names only.
#[derive(Clone, Default, PartialEq)]
pub struct SecretContent {
    /// Leaf + intermediates, PEM.
    pub tls_crt: Vec<u8>,
    /// PKCS#8 PEM.
    pub tls_key: Vec<u8>,
    /// Trust bundle, PEM.
    pub ca_crt: Vec<u8>,
    /// Further keys (e.g. `keystore.p12`, `truststore.p12`).
    pub extra: BTreeMap<String, Vec<u8>>,
    /// Annotations describing the extra keys (e.g. the PKCS#12 profile).
    pub annotations: BTreeMap<String, String>,
}

impl std::fmt::Debug for SecretContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretContent")
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The Secret as tlsid wants it: type `kubernetes.io/tls`, our labels over the template's, and a
/// controller owner reference to the identity only when `secretDeletionPolicy: Delete` asks for
/// the Secret to be deleted with it (by default it outlives the identity).
pub fn desired_secret(identity: &TlsIdentity, content: &SecretContent, serial_hex: &str) -> Secret {
    let template = identity.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(
        IDENTITY_LABEL.into(),
        identity.metadata.name.clone().unwrap_or_default(),
    );
    let mut annotations = template.annotations;
    annotations.extend(content.annotations.clone());
    annotations.insert(SERIAL_ANNOTATION.into(), serial_hex.into());
    annotations.insert(
        crate::api::TRUST_BUNDLE_ANNOTATION.into(),
        crate::pki::bundle_digest(&content.ca_crt),
    );

    let mut data = BTreeMap::from([
        (TLS_CRT.to_string(), ByteString(content.tls_crt.clone())),
        (TLS_KEY.to_string(), ByteString(content.tls_key.clone())),
        (CA_CRT.to_string(), ByteString(content.ca_crt.clone())),
    ]);
    for (k, v) in &content.extra {
        data.insert(k.clone(), ByteString(v.clone()));
    }

    Secret {
        metadata: ObjectMeta {
            name: Some(identity.secret_name()),
            namespace: identity.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: match identity.spec.secret_deletion_policy.unwrap_or_default() {
                SecretDeletionPolicy::Delete => identity.controller_owner_ref(&()).map(|o| vec![o]),
                SecretDeletionPolicy::Retain => None,
            },
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Whether `owner_uid` is the Secret's controller. Anything else (no owner, another identity, a
/// user's Secret) is not ours to touch.
pub fn controlled_by<K: Resource>(obj: &K, owner_uid: &str) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == owner_uid && o.kind == "TlsIdentity")
}

/// Whether `secret` is the Secret tlsid keeps for `identity`: it carries tlsid's labels naming
/// the identity, and no controller other than this identity. Ownership is by name, not by UID, so
/// a re-created identity (or a reinstalled tlsid) adopts the Secret its predecessor left behind.
pub fn belongs_to(secret: &Secret, identity: &TlsIdentity) -> bool {
    let uid = identity.metadata.uid.as_deref().unwrap_or_default();
    let labels = secret.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let named = label(MANAGED_BY_LABEL) == Some(MANAGED_BY_VALUE)
        && label(IDENTITY_LABEL) == identity.metadata.name.as_deref();
    let other_controller = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid != uid);
    named && !other_controller
}

/// Whether the Secret carries a controller reference to `identity` that its deletion policy no
/// longer wants (a Secret written before `Retain` became the default, or the policy changed).
pub fn owner_ref_to_drop(secret: &Secret, identity: &TlsIdentity) -> bool {
    identity.spec.secret_deletion_policy.unwrap_or_default() == SecretDeletionPolicy::Retain
        && controlled_by(secret, identity.metadata.uid.as_deref().unwrap_or_default())
}

/// Borrow the three TLS keys of a Secret.
pub fn secret_data(secret: &Secret) -> SecretData<'_> {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
    };
    SecretData {
        tls_crt: get(TLS_CRT),
        tls_key: get(TLS_KEY),
        ca_crt: get(CA_CRT),
    }
}

/// Whether applying `desired` would change `actual`: data, type, and our labels, annotations and
/// owner reference. Fields others added are left alone (server-side apply does the same).
pub fn secret_needs_update(actual: &Secret, desired: &Secret) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    actual.type_ != desired.type_
        || actual.data != desired.data
        || !subset(&desired.metadata.labels, &actual.metadata.labels)
        || !subset(&desired.metadata.annotations, &actual.metadata.annotations)
        || !desired.metadata.owner_references.iter().flatten().all(|o| {
            actual
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|a| a == o)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SecretTemplate, TlsIdentitySpec};

    fn identity() -> TlsIdentity {
        let mut id = TlsIdentity::new(
            "web",
            TlsIdentitySpec {
                dns_names: vec!["web.default.svc".into()],
                secret_template: Some(SecretTemplate {
                    labels: BTreeMap::from([
                        ("team".to_string(), "a".to_string()),
                        (MANAGED_BY_LABEL.to_string(), "someone-else".to_string()),
                    ]),
                    annotations: BTreeMap::from([("note".to_string(), "x".to_string())]),
                }),
                ..Default::default()
            },
        );
        id.metadata.namespace = Some("default".into());
        id.metadata.uid = Some("uid-1".into());
        id
    }

    fn content() -> SecretContent {
        SecretContent {
            tls_crt: b"crt".to_vec(),
            tls_key: b"key".to_vec(),
            ca_crt: b"ca".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn builds_a_tls_secret_that_belongs_to_the_identity() {
        let s = desired_secret(&identity(), &content(), "abcd");
        assert_eq!(s.metadata.name.as_deref(), Some("web-tls"));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels[MANAGED_BY_LABEL], "tlsid",
            "our label wins over the template"
        );
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[IDENTITY_LABEL], "web");
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[SERIAL_ANNOTATION],
            "abcd"
        );
        assert!(
            s.metadata.owner_references.is_none(),
            "Retain (the default): no owner reference, the Secret outlives the identity"
        );
        assert!(belongs_to(&s, &identity()));
        let mut recreated = identity();
        recreated.metadata.uid = Some("uid-2".into());
        assert!(
            belongs_to(&s, &recreated),
            "adopted by name after re-creation"
        );
        let mut other = identity();
        other.metadata.name = Some("other".into());
        assert!(!belongs_to(&s, &other));
        let mut foreign = s.clone();
        foreign.metadata.labels = None;
        assert!(!belongs_to(&foreign, &identity()), "a user's Secret");

        let mut deleting = identity();
        deleting.spec.secret_deletion_policy = Some(SecretDeletionPolicy::Delete);
        let owned = desired_secret(&deleting, &content(), "abcd");
        assert!(controlled_by(&owned, "uid-1"));
        assert!(belongs_to(&owned, &deleting));
        assert!(
            !belongs_to(&owned, &recreated),
            "controlled by the old identity"
        );
        assert!(!owner_ref_to_drop(&owned, &deleting));
        assert!(
            owner_ref_to_drop(&owned, &identity()),
            "policy back to Retain"
        );
        let data = secret_data(&s);
        assert_eq!(data.tls_crt, Some(&b"crt"[..]));
        assert_eq!(data.ca_crt, Some(&b"ca"[..]));
    }

    #[test]
    fn update_only_when_something_we_own_differs() {
        let desired = desired_secret(&identity(), &content(), "abcd");
        let mut actual = desired.clone();
        actual
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("added-by-user".into(), "y".into());
        actual.metadata.resource_version = Some("42".into());
        assert!(
            !secret_needs_update(&actual, &desired),
            "others' labels are not a change"
        );

        let mut new_bundle = content();
        new_bundle.ca_crt = b"ca2".to_vec();
        assert!(secret_needs_update(
            &actual,
            &desired_secret(&identity(), &new_bundle, "abcd")
        ));

        let mut tampered = actual.clone();
        tampered
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(MANAGED_BY_LABEL);
        assert!(secret_needs_update(&tampered, &desired));
    }

    #[test]
    fn debug_hides_key_bytes() {
        let c = SecretContent {
            tls_key: b"-----BEGIN PRIVATE KEY-----".to_vec(),
            ..content()
        };
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }
}
