//! What the name policy needs from the cluster: every `TlsIdentityPolicy` (parsed into grants) and
//! the labels of namespaces. Both are watched into memory; the check itself is pure
//! ([`crate::tenancy`]) and shared by signing and the admission webhook.
//!
//! Nothing is decided before both watches have listed: an identity granted by a policy must never
//! be seen, for a moment at start, as refused.

use crate::api::TlsIdentityPolicy;
use crate::tenancy::{Grant, NamePolicy, Namespace as NamespaceRef, Refusal, Settings};
use futures::{SinkExt, StreamExt, channel::mpsc::Sender};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use kube::{
    ResourceExt,
    api::{ApiResource, DynamicObject},
};
use std::collections::HashMap;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};
use tracing::{debug, info, warn};

/// The name policy in force, as this replica sees it.
pub struct Names {
    pub settings: Settings,
    grants: RwLock<Arc<Vec<Grant>>>,
    policies_synced: AtomicBool,
    namespaces_synced: AtomicBool,
    namespaces: RwLock<Option<Store<PartialObjectMeta<Namespace>>>>,
}

/// Why the policy cannot be checked yet.
#[derive(Debug, PartialEq, Eq)]
pub enum NotYet {
    /// The policies or namespaces have not been listed yet.
    Syncing,
    /// The namespace is not in the cache (yet): its watch event is on its way.
    UnknownNamespace,
}

impl Names {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            grants: RwLock::default(),
            policies_synced: AtomicBool::new(false),
            namespaces_synced: AtomicBool::new(false),
            namespaces: RwLock::new(None),
        }
    }

    /// Whether both watches have listed once.
    pub fn synced(&self) -> bool {
        if !self.settings.restrict_to_namespace {
            return true;
        }
        self.policies_synced.load(Ordering::Relaxed)
            && self.namespaces_synced.load(Ordering::Relaxed)
    }

    pub fn grants(&self) -> Arc<Vec<Grant>> {
        self.grants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The labels of namespace `ns`.
    pub fn namespace_labels(&self, ns: &str) -> Result<BTreeMap<String, String>, NotYet> {
        if !self.settings.restrict_to_namespace {
            return Ok(BTreeMap::new());
        }
        if !self.synced() {
            return Err(NotYet::Syncing);
        }
        let store = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        store
            .as_ref()
            .and_then(|s| s.get(&ObjectRef::new(ns)))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
            .ok_or(NotYet::UnknownNamespace)
    }

    /// The whole check for a spec in namespace `ns` (the admission webhook's question).
    pub fn check(
        &self,
        ns: &str,
        spec: &crate::api::TlsIdentitySpec,
    ) -> Result<Result<(), Refusal>, NotYet> {
        let labels = self.namespace_labels(ns)?;
        let grants = self.grants();
        let policy = NamePolicy {
            settings: &self.settings,
            grants: &grants,
        };
        Ok(policy.check(
            NamespaceRef {
                name: ns,
                labels: &labels,
            },
            spec,
        ))
    }

    fn set_policies(&self, policies: &[Arc<TlsIdentityPolicy>]) -> bool {
        let mut grants = Vec::with_capacity(policies.len());
        for p in policies {
            match Grant::from_policy(p) {
                Ok(g) => grants.push(g),
                // Past admission (written to etcd directly, or an older schema): grants nothing.
                Err(why) => warn!(error = %why, "ignoring an unusable TlsIdentityPolicy"),
            }
        }
        grants.sort_by(|a, b| a.policy.cmp(&b.policy));
        let mut current = self.grants.write().unwrap_or_else(|e| e.into_inner());
        let changed = **current != grants;
        *current = Arc::new(grants);
        changed
    }
}

/// Watch the policies: keep the grants current and reconcile every identity when they change.
/// Returns when the watch ends (never, in practice).
pub async fn watch_policies(client: Client, names: Arc<Names>, mut changed: Sender<()>) {
    let api = Api::<TlsIdentityPolicy>::all(client);
    let (reader, writer) = reflector::store::<TlsIdentityPolicy>();
    let mut stream = watcher(api, watcher::Config::default())
        .backoff(super::WatchBackoff::new())
        .reflect(writer)
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                // Every (re)list: re-check identities only if the grants differ from before.
                let differ = names.set_policies(&reader.state());
                if !names.policies_synced.swap(true, Ordering::Relaxed) {
                    info!(
                        policies = reader.state().len(),
                        "TlsIdentityPolicies listed"
                    );
                }
                if differ {
                    let _ = changed.send(()).await;
                }
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))
                if names.policies_synced.load(Ordering::Relaxed) =>
            {
                if names.set_policies(&reader.state()) {
                    info!(
                        policies = reader.state().len(),
                        "TlsIdentityPolicies changed; re-checking every identity"
                    );
                    let _ = changed.send(()).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "TlsIdentityPolicy watch failed; retrying"),
        }
    }
}

/// Watch namespaces (metadata only) into the cache the check reads, and send the identities of
/// every namespace whose labels changed (`identities`: the controller's cache) to be reconciled.
/// Errors back off here and stop nothing else. Returns when the receiver is gone.
pub async fn watch_namespaces(
    client: Client,
    names: Arc<Names>,
    only: Option<String>,
    identities: Store<DynamicObject>,
    ar: ApiResource,
    mut changed: Sender<ObjectRef<DynamicObject>>,
) {
    let api = Api::<PartialObjectMeta<Namespace>>::all(client);
    let config = match &only {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (reader, writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    *names.namespaces.write().unwrap_or_else(|e| e.into_inner()) = Some(reader);
    // The labels each namespace had when last seen: only a change re-checks its identities.
    let mut seen: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut stream = watcher(api, config)
        .backoff(super::WatchBackoff::new())
        .reflect(writer)
        .boxed();
    while let Some(event) = stream.next().await {
        let ns = match event {
            Ok(watcher::Event::InitDone) => {
                names.namespaces_synced.store(true, Ordering::Relaxed);
                continue;
            }
            Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) => ns,
            Ok(watcher::Event::Delete(ns)) => {
                seen.remove(&ns.name_any());
                continue;
            }
            Ok(watcher::Event::Init) => continue,
            Err(e) => {
                debug!(error = %e, "namespace watch failed; retrying");
                continue;
            }
        };
        let name = ns.name_any();
        let labels = ns.metadata.labels.unwrap_or_default();
        if seen.get(&name) == Some(&labels) {
            continue;
        }
        let first = seen.insert(name.clone(), labels).is_none();
        if first && !names.namespaces_synced.load(Ordering::Relaxed) {
            // The initial list: identities are reconciled once the names are synced anyway.
            continue;
        }
        let refs: Vec<_> = identities
            .state()
            .into_iter()
            .filter(|o| o.namespace().as_deref() == Some(name.as_str()))
            .map(|o| ObjectRef::new_with(&o.name_any(), ar.clone()).within(&name))
            .collect();
        for r in refs {
            if changed.send(r).await.is_err() {
                return;
            }
        }
    }
}
