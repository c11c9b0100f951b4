//! Trust bundles for workloads without an identity: which of the install's trust ConfigMaps (one
//! per selected namespace) and which ClusterTrustBundle to create, update or delete, decided from
//! metadata alone. No client.
//!
//! What an object holds is read from its annotations (`tlsid.dev/trust-bundle`: the digest of the
//! bundle, `tlsid.dev/trust-bundle-keys`: which files), never from its data, so the controller
//! watches metadata only (no ConfigMap data in memory). An object of our name that tlsid does not
//! own (labels) is never touched: it is a conflict, reported once.

use std::collections::{BTreeMap, BTreeSet};

/// The PEM bundle's key in the ConfigMap (the same as in identity Secrets).
pub const BUNDLE_KEY: &str = "ca.crt";
/// The PKCS#12 truststore's key (`binaryData`), with `--trust-bundle-truststore`.
pub const TRUSTSTORE_KEY: &str = "truststore.p12";
/// The truststore's password: Java's default. Not a secret: the file holds public certificates
/// only, and the password exists because Java's `KeyStore` API wants one.
pub const TRUSTSTORE_PASSWORD: &str = "changeit";
/// Annotation listing the keys tlsid wrote (comma-separated, sorted): a change of format is a
/// rewrite even when the bundle is the same.
pub const KEYS_ANNOTATION: &str = "tlsid.dev/trust-bundle-keys";

/// One existing object of the trust bundle's name, from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its namespace (`""` for the cluster-scoped ClusterTrustBundle).
    pub namespace: String,
    /// Labelled as this install's (`app.kubernetes.io/managed-by: tlsid`, `tlsid.dev/install`).
    pub owned: bool,
    /// `tlsid.dev/trust-bundle`: the digest of the bundle it holds.
    pub digest: Option<String>,
    /// [`KEYS_ANNOTATION`].
    pub keys: Option<String>,
    pub resource_version: Option<String>,
}

/// What every selected place should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Digest of the bundle (`crate::pki::bundle_digest` of its PEM).
    pub digest: String,
    /// The keys written, as in [`KEYS_ANNOTATION`].
    pub keys: String,
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Create in this namespace (create-if-absent: an object that appeared meanwhile wins).
    Create(String),
    /// Rewrite ours, tested against the resourceVersion seen.
    Update {
        namespace: String,
        resource_version: Option<String>,
    },
    /// Delete ours (the namespace is no longer selected), with a resourceVersion precondition.
    Delete {
        namespace: String,
        resource_version: Option<String>,
    },
}

impl Write {
    pub fn namespace(&self) -> &str {
        match self {
            Write::Create(ns) => ns,
            Write::Update { namespace, .. } | Write::Delete { namespace, .. } => namespace,
        }
    }
}

/// What to do, and what the CA rollover waits for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Selected namespaces where an object of our name belongs to someone else (left alone).
    pub conflicts: Vec<String>,
    /// Objects of ours, in selected places, that do not hold the wanted bundle yet: a CA rollover
    /// does not leave `Publish` while any does. A selected place without one (not created yet)
    /// is not counted, as an identity Secret not written yet is not: nothing mounts it.
    pub awaiting: u64,
}

/// Whether `labels` mark an object as `install`'s.
pub fn owned(labels: &BTreeMap<String, String>, install: &str) -> bool {
    labels.get(crate::api::MANAGED_BY_LABEL).map(String::as_str)
        == Some(crate::api::MANAGED_BY_VALUE)
        && labels.get(crate::api::INSTALL_LABEL).map(String::as_str) == Some(install)
}

/// The keys annotation for a ConfigMap with or without the truststore.
pub fn keys(truststore: bool) -> String {
    if truststore {
        format!("{BUNDLE_KEY},{TRUSTSTORE_KEY}")
    } else {
        BUNDLE_KEY.to_string()
    }
}

/// Decide the writes for the `selected` places, given every object of our name that exists.
pub fn plan(selected: &BTreeSet<String>, seen: &[Seen], want: &Want) -> Plan {
    let mut out = Plan::default();
    let by_ns: BTreeMap<&str, &Seen> = seen.iter().map(|s| (s.namespace.as_str(), s)).collect();
    for ns in selected {
        match by_ns.get(ns.as_str()) {
            None => out.writes.push(Write::Create(ns.clone())),
            Some(s) if !s.owned => out.conflicts.push(ns.clone()),
            Some(s) => {
                let stale = s.digest.as_deref() != Some(want.digest.as_str());
                if stale {
                    out.awaiting += 1;
                }
                if stale || s.keys.as_deref() != Some(want.keys.as_str()) {
                    out.writes.push(Write::Update {
                        namespace: ns.clone(),
                        resource_version: s.resource_version.clone(),
                    });
                }
            }
        }
    }
    for s in seen {
        if s.owned && !selected.contains(&s.namespace) {
            out.writes.push(Write::Delete {
                namespace: s.namespace.clone(),
                resource_version: s.resource_version.clone(),
            });
        }
    }
    out
}

/// The ClusterTrustBundle's signer name for an install.
pub fn signer_name(install: &str) -> String {
    format!("tlsid.dev/{install}")
}

/// The ClusterTrustBundle's name: the apiserver requires a signer-linked bundle's name to start
/// with the signer name, `/` replaced by `:`, and a `:`.
pub fn cluster_trust_bundle_name(install: &str) -> String {
    format!("{}:ca-bundle", signer_name(install).replace('/', ":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> Want {
        Want {
            digest: "d2".into(),
            keys: keys(false),
        }
    }

    fn ours(ns: &str, digest: &str) -> Seen {
        Seen {
            namespace: ns.into(),
            owned: true,
            digest: Some(digest.into()),
            keys: Some(keys(false)),
            resource_version: Some(format!("rv-{ns}")),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_to_do_when_every_selected_place_holds_the_bundle() {
        let p = plan(
            &set(&["a", "b"]),
            &[ours("a", "d2"), ours("b", "d2")],
            &want(),
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn creates_updates_and_deletes() {
        let seen = [ours("a", "d1"), ours("gone", "d2"), ours("b", "d2")];
        let p = plan(&set(&["a", "b", "new"]), &seen, &want());
        assert_eq!(
            p.writes,
            vec![
                Write::Update {
                    namespace: "a".into(),
                    resource_version: Some("rv-a".into())
                },
                Write::Create("new".into()),
                Write::Delete {
                    namespace: "gone".into(),
                    resource_version: Some("rv-gone".into())
                },
            ]
        );
        // Only the stale one holds a rollover up: neither the missing one nor the deselected one.
        assert_eq!(p.awaiting, 1);
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn a_foreign_object_is_a_conflict_and_never_written() {
        let foreign = Seen {
            owned: false,
            digest: None,
            keys: None,
            ..ours("a", "x")
        };
        // Selected: a conflict. Not selected: ignored (never deleted).
        let p = plan(&set(&["a"]), std::slice::from_ref(&foreign), &want());
        assert_eq!(p.conflicts, vec!["a".to_string()]);
        assert!(p.writes.is_empty());
        assert_eq!(p.awaiting, 0);
        let p = plan(&set(&[]), &[foreign], &want());
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_format_change_rewrites_without_holding_a_rollover() {
        let mut w = want();
        w.keys = keys(true);
        let p = plan(&set(&["a"]), &[ours("a", "d2")], &w);
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.awaiting, 0);
        // A missing annotation (edited away) is stale: rewritten and waited for.
        let mut bare = ours("a", "d2");
        bare.digest = None;
        let p = plan(&set(&["a"]), &[bare], &want());
        assert_eq!(p.awaiting, 1);
        assert_eq!(p.writes.len(), 1);
    }

    #[test]
    fn ownership_needs_both_labels_naming_this_install() {
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let m = crate::api::MANAGED_BY_LABEL;
        let i = crate::api::INSTALL_LABEL;
        assert!(owned(&l(&[(m, "tlsid"), (i, "tlsid")]), "tlsid"));
        assert!(!owned(&l(&[(m, "tlsid"), (i, "other")]), "tlsid"));
        assert!(!owned(&l(&[(m, "tlsid")]), "tlsid"));
        assert!(!owned(&l(&[(m, "helm"), (i, "tlsid")]), "tlsid"));
        assert!(!owned(&l(&[]), "tlsid"));
    }

    #[test]
    fn cluster_trust_bundle_name_is_prefixed_by_the_signer() {
        assert_eq!(signer_name("tlsid"), "tlsid.dev/tlsid");
        assert_eq!(
            cluster_trust_bundle_name("tlsid"),
            "tlsid.dev:tlsid:ca-bundle"
        );
    }
}
