//! The trust bundle published for workloads without an identity: a ConfigMap per selected
//! namespace and a ClusterTrustBundle, labelled as the install's, annotated with what they hold.

use crate::{
    api::{INSTALL_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TRUST_BUNDLE_ANNOTATION},
    plan::trust::{BUNDLE_KEY, KEYS_ANNOTATION, TRUSTSTORE_KEY, keys},
};
use k8s_openapi::{
    ByteString,
    api::{
        certificates::v1beta1::{ClusterTrustBundle, ClusterTrustBundleSpec},
        core::v1::ConfigMap,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use std::collections::BTreeMap;

/// What a trust ConfigMap holds.
#[derive(Clone, PartialEq)]
pub struct TrustContent {
    /// The bundle, PEM (exactly an identity Secret's `ca.crt`).
    pub bundle_pem: String,
    /// `truststore.p12`, when asked for.
    pub truststore_p12: Option<Vec<u8>>,
}

/// The labels of every trust object of `install`.
pub fn labels(install: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (INSTALL_LABEL.to_string(), install.to_string()),
    ])
}

/// The annotations recording what a trust object holds.
pub fn annotations(content: &TrustContent) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            TRUST_BUNDLE_ANNOTATION.to_string(),
            crate::pki::bundle_digest(content.bundle_pem.as_bytes()),
        ),
        (
            KEYS_ANNOTATION.to_string(),
            keys(content.truststore_p12.is_some()),
        ),
    ])
}

/// The ConfigMap `name` in `namespace`. No owner reference: it outlives the install, like the
/// identity Secrets workloads mount.
pub fn desired_configmap(
    name: &str,
    namespace: &str,
    install: &str,
    content: &TrustContent,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels(install)),
            annotations: Some(annotations(content)),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            BUNDLE_KEY.to_string(),
            content.bundle_pem.clone(),
        )])),
        binary_data: content
            .truststore_p12
            .as_ref()
            .map(|p12| BTreeMap::from([(TRUSTSTORE_KEY.to_string(), ByteString(p12.clone()))])),
        ..Default::default()
    }
}

/// The install's ClusterTrustBundle, linked to its signer name.
pub fn desired_cluster_trust_bundle(install: &str, bundle_pem: &str) -> ClusterTrustBundle {
    let content = TrustContent {
        bundle_pem: bundle_pem.to_string(),
        truststore_p12: None,
    };
    ClusterTrustBundle {
        metadata: ObjectMeta {
            name: Some(crate::plan::trust::cluster_trust_bundle_name(install)),
            labels: Some(labels(install)),
            annotations: Some(annotations(&content)),
            ..Default::default()
        },
        spec: ClusterTrustBundleSpec {
            signer_name: Some(crate::plan::trust::signer_name(install)),
            trust_bundle: bundle_pem.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_carries_the_bundle_and_says_what_it_holds() {
        let content = TrustContent {
            bundle_pem: "PEM".into(),
            truststore_p12: Some(vec![1, 2]),
        };
        let cm = desired_configmap("tlsid-ca-bundle", "app", "tlsid", &content);
        assert!(crate::plan::trust::owned(
            cm.metadata.labels.as_ref().unwrap(),
            "tlsid"
        ));
        assert!(cm.metadata.owner_references.is_none());
        let a = cm.metadata.annotations.unwrap();
        assert_eq!(
            a[TRUST_BUNDLE_ANNOTATION],
            crate::pki::bundle_digest(b"PEM")
        );
        assert_eq!(a[KEYS_ANNOTATION], "ca.crt,truststore.p12");
        assert_eq!(cm.data.unwrap()[BUNDLE_KEY], "PEM");
        assert_eq!(cm.binary_data.unwrap()[TRUSTSTORE_KEY].0, vec![1, 2]);
        let ctb = desired_cluster_trust_bundle("tlsid", "PEM");
        assert_eq!(
            ctb.metadata.name.as_deref(),
            Some("tlsid.dev:tlsid:ca-bundle")
        );
        assert_eq!(ctb.spec.signer_name.as_deref(), Some("tlsid.dev/tlsid"));
        assert_eq!(ctb.metadata.annotations.unwrap()[KEYS_ANNOTATION], "ca.crt");
    }
}
