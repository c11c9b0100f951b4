//! Trust bundles for workloads without an identity: the I/O. Three metadata-only watches (the
//! selected namespaces, ConfigMaps of the trust bundle's name, the install's ClusterTrustBundle)
//! feed [`crate::plan::trust::plan`]; the leader applies its writes, each tested against the
//! resourceVersion it was decided on. The CA rollover counts, from the same caches, the trust
//! objects that do not hold the bundle yet ([`awaiting`]).

use super::{Context, leader::Role};
use crate::{
    api::TRUST_BUNDLE_ANNOTATION,
    pki::bundle_digest,
    plan::trust::{self as plan, KEYS_ANNOTATION, Seen, Want, Write},
    resources::trust::{
        TrustContent, annotations, desired_cluster_trust_bundle, desired_configmap,
    },
};
use futures::StreamExt;
use k8s_openapi::api::{
    certificates::v1beta1::ClusterTrustBundle,
    core::v1::{ConfigMap, Namespace, ObjectReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PartialObjectMeta, Patch, Preconditions},
    runtime::{
        WatchStreamExt,
        events::EventType,
        reflector::{self, Store},
        watcher,
    },
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tracing::{debug, info, warn};

/// Settings (flags of the controller).
#[derive(Clone, Debug)]
pub struct TrustConfig {
    /// Publish the trust ConfigMaps (`--trust-bundle-configmaps`).
    pub configmaps: bool,
    /// Label selector of the namespaces that get one (`--trust-bundle-namespaces`).
    pub namespace_selector: String,
    /// The ConfigMaps' name (`--trust-bundle-name`).
    pub name: String,
    /// Add `truststore.p12` (`--trust-bundle-truststore`).
    pub truststore: bool,
    /// Publish a ClusterTrustBundle when the cluster serves the API (`--cluster-trust-bundle`).
    pub cluster_trust_bundle: bool,
}

impl TrustConfig {
    /// The defaults for an install: namespaces labelled `tlsid.dev/trust-bundle=<install>` get a
    /// ConfigMap `<install>-ca-bundle`.
    pub fn defaults(install: &str) -> Self {
        Self {
            configmaps: true,
            namespace_selector: default_selector(install),
            name: default_name(install),
            truststore: false,
            cluster_trust_bundle: false,
        }
    }
}

/// The label that selects a namespace by default, and its value.
pub const SELECT_LABEL: &str = "tlsid.dev/trust-bundle";

pub fn default_selector(install: &str) -> String {
    format!("{SELECT_LABEL}={install}")
}

pub fn default_name(install: &str) -> String {
    format!("{install}-ca-bundle")
}

/// Event reason for an object of the trust bundle's name that tlsid does not own.
pub const CONFLICT: &str = "TrustBundleConflict";

/// The caches, each with whether it has listed.
pub struct Stores {
    namespaces: Option<Watched<Namespace>>,
    configmaps: Option<Watched<ConfigMap>>,
    cluster_trust_bundles: Option<Watched<ClusterTrustBundle>>,
}

struct Watched<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: Store<PartialObjectMeta<K>>,
    listed: Arc<AtomicBool>,
}

impl<K: Resource + Clone + 'static> Watched<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn listed(&self) -> bool {
        self.listed.load(Ordering::Relaxed)
    }
}

/// Watch `api` (metadata-only requests, managedFields dropped) into a store; wake the loop on every change.
fn watch<K>(
    ctx: &Arc<Context>,
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    what: &'static str,
) -> Watched<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + 'static,
    K: Send + Sync,
{
    let writer = reflector::store::Writer::<PartialObjectMeta<K>>::default();
    let store = writer.as_reader();
    let listed = Arc::new(AtomicBool::new(false));
    let (flag, wake) = (listed.clone(), ctx.clone());
    let stream = watcher(api, config)
        .backoff(super::WatchBackoff::new())
        .modify(|o| o.metadata.managed_fields = None)
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Said once until the watch lists again: until then nothing is written and a CA rollover
        // waits in Publish (e.g. the RBAC for ConfigMaps is missing).
        let mut warned = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    warned = false;
                    flag.store(true, Ordering::Relaxed);
                    wake.trust_wake.notify_one();
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    wake.trust_wake.notify_one()
                }
                Ok(_) => {}
                Err(e) if !warned && !flag.load(Ordering::Relaxed) => {
                    warned = true;
                    warn!(error = %e, what, "cannot list the trust bundle's objects: none is written, and a CA rollover waits in Publish, until it can; retrying");
                }
                Err(e) => debug!(error = %e, what, "trust bundle watch failed; retrying"),
            }
        }
    });
    Watched { store, listed }
}

/// Whether the cluster serves `certificates.k8s.io/v1beta1` ClusterTrustBundles. Retried while
/// the apiserver cannot answer; a 404 is "no".
async fn cluster_trust_bundles_served(client: &Client) -> bool {
    let mut backoff = super::WatchBackoff::new();
    loop {
        match client
            .list_api_group_resources("certificates.k8s.io/v1beta1")
            .await
        {
            Ok(list) => {
                return list
                    .resources
                    .iter()
                    .any(|r| r.name == "clustertrustbundles");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return false,
            Err(e) => {
                debug!(error = %e, "cannot ask the apiserver for ClusterTrustBundles yet");
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }
}

/// What the caches say now: the ConfigMap places, and the ClusterTrustBundle's. `None` until
/// every cache in use has listed.
#[allow(clippy::type_complexity)]
fn observe(
    ctx: &Context,
    stores: &Stores,
) -> Option<(
    Option<(BTreeSet<String>, Vec<Seen>)>,
    Option<(BTreeSet<String>, Vec<Seen>)>,
)> {
    let install = &ctx.config.install;
    let seen = |labels: &BTreeMap<String, String>,
                annotations: &BTreeMap<String, String>,
                namespace: String,
                rv: Option<String>| Seen {
        namespace,
        owned: plan::owned(labels, install),
        digest: annotations.get(TRUST_BUNDLE_ANNOTATION).cloned(),
        keys: annotations.get(KEYS_ANNOTATION).cloned(),
        resource_version: rv,
    };
    let configmaps = match (&stores.namespaces, &stores.configmaps) {
        (Some(ns), Some(cm)) => {
            if !ns.listed() || !cm.listed() {
                return None;
            }
            // A namespace being deleted takes no new objects.
            let selected = ns
                .store
                .state()
                .iter()
                .filter(|n| n.metadata.deletion_timestamp.is_none())
                .map(|n| n.name_any())
                .collect();
            let objects = cm
                .store
                .state()
                .iter()
                .map(|c| {
                    seen(
                        c.labels(),
                        c.annotations(),
                        c.namespace().unwrap_or_default(),
                        c.resource_version(),
                    )
                })
                .collect();
            Some((selected, objects))
        }
        _ => None,
    };
    let ctb = match &stores.cluster_trust_bundles {
        Some(w) => {
            if !w.listed() {
                return None;
            }
            let objects = w
                .store
                .state()
                .iter()
                .map(|c| {
                    seen(
                        c.labels(),
                        c.annotations(),
                        String::new(),
                        c.resource_version(),
                    )
                })
                .collect();
            Some((BTreeSet::from([String::new()]), objects))
        }
        None => None,
    };
    Some((configmaps, ctb))
}

fn want(bundle_pem: &str, truststore: bool) -> Want {
    Want {
        digest: bundle_digest(bundle_pem.as_bytes()),
        keys: plan::keys(truststore),
    }
}

/// Trust objects of this install, in selected places, that do not hold `bundle_pem` yet: what
/// the CA rollover's Publish phase also waits for. Caches that have not listed count as one.
pub fn awaiting(ctx: &Context, bundle_pem: &str) -> u64 {
    let cfg = &ctx.config.trust;
    if !cfg.configmaps && !cfg.cluster_trust_bundle {
        return 0;
    }
    let Some(stores) = ctx.trust.get() else {
        return 1;
    };
    let Some((configmaps, ctb)) = observe(ctx, stores) else {
        return 1;
    };
    let mut n = 0;
    if let Some((selected, seen)) = configmaps {
        n += plan::plan(&selected, &seen, &want(bundle_pem, cfg.truststore)).awaiting;
    }
    if let Some((selected, seen)) = ctb {
        n += plan::plan(&selected, &seen, &want(bundle_pem, false)).awaiting;
    }
    n
}

/// Per-target pacing of writes. After a refused write, a target that keeps refusing (an
/// admission policy, a quota) is retried at 2 s doubling to 5 min, not every pass; a new bundle
/// is tried at once. After a write that succeeded, the target is left alone until the watch
/// shows a resourceVersion other than the one the write was decided on (up to 30 s), so a
/// watch event that arrives after the next pass never causes the same write twice.
#[derive(Default)]
struct Pacing {
    failing: HashMap<String, (u32, Instant, String)>,
    written: HashMap<String, (Option<String>, Instant)>,
}

/// The resourceVersion a write was decided on (none: a create).
fn decided_on(w: &Write) -> Option<String> {
    match w {
        Write::Create(_) => None,
        Write::Update {
            resource_version, ..
        }
        | Write::Delete {
            resource_version, ..
        } => resource_version.clone(),
    }
}

impl Pacing {
    fn may_try(&mut self, key: &str, digest: &str, w: &Write) -> bool {
        if let Some((rv, at)) = self.written.get(key) {
            if *rv == decided_on(w) && at.elapsed() < Duration::from_secs(30) {
                return false;
            }
            self.written.remove(key);
        }
        self.failing
            .get(key)
            .is_none_or(|(_, at, d)| d != digest || Instant::now() >= *at)
    }
    fn failed(&mut self, key: &str, digest: &str) -> u32 {
        let entry =
            self.failing
                .entry(key.to_string())
                .or_insert((0, Instant::now(), digest.to_string()));
        if entry.2 != digest {
            *entry = (0, Instant::now(), digest.to_string());
        }
        entry.0 = entry.0.saturating_add(1);
        let wait = Duration::from_secs(1)
            .saturating_mul(1 << entry.0.min(9))
            .min(Duration::from_secs(300));
        entry.1 = Instant::now() + wait;
        entry.0
    }
    fn succeeded(&mut self, key: &str, w: &Write) {
        self.failing.remove(key);
        self.written
            .insert(key.to_string(), (decided_on(w), Instant::now()));
    }
}

/// Run for as long as the controller runs; only the leader writes.
pub async fn run(ctx: Arc<Context>) {
    let cfg = ctx.config.trust.clone();
    if !cfg.configmaps && !cfg.cluster_trust_bundle {
        return;
    }
    let client = ctx.client.clone();
    let mut stores = Stores {
        namespaces: None,
        configmaps: None,
        cluster_trust_bundles: None,
    };
    if cfg.configmaps {
        let mut config = watcher::Config::default().labels(&cfg.namespace_selector);
        if let Some(only) = &ctx.config.watch_namespace {
            config = config.fields(&format!("metadata.name={only}"));
        }
        stores.namespaces = Some(watch(
            &ctx,
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            config,
            "namespaces",
        ));
        let by_name = watcher::Config::default().fields(&format!("metadata.name={}", cfg.name));
        let api = match &ctx.config.watch_namespace {
            Some(ns) => Api::<PartialObjectMeta<ConfigMap>>::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        stores.configmaps = Some(watch(&ctx, api, by_name, "configmaps"));
        info!(
            name = cfg.name,
            namespaces = cfg.namespace_selector,
            "publishing the trust bundle as a ConfigMap in the selected namespaces"
        );
    }
    if cfg.cluster_trust_bundle {
        if cluster_trust_bundles_served(&client).await {
            let name = plan::cluster_trust_bundle_name(&ctx.config.install);
            stores.cluster_trust_bundles = Some(watch(
                &ctx,
                Api::<PartialObjectMeta<ClusterTrustBundle>>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
                "clustertrustbundles",
            ));
            info!(
                name,
                signer = plan::signer_name(&ctx.config.install),
                "publishing the trust bundle as a ClusterTrustBundle"
            );
        } else {
            info!(
                "the cluster does not serve certificates.k8s.io/v1beta1 ClusterTrustBundles: none is published (enable the ClusterTrustBundle feature gate and API, then restart tlsid)"
            );
        }
    }
    if ctx.trust.set(stores).is_err() {
        return;
    }
    let Some(stores) = ctx.trust.get() else {
        return;
    };
    let mut backoff = Pacing::default();
    // Conflicts already reported (by place and uid), in this leadership term.
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    // truststore.p12 of the last bundle (random salt: built once per bundle, shared by all).
    let mut truststore: Option<(String, Vec<u8>)> = None;
    loop {
        tokio::select! {
            _ = ctx.trust_wake.notified() => {}
            _ = tokio::time::sleep(crate::plan::rollover::POLL) => {}
        }
        if ctx.leadership.role() != Role::Leader {
            reported.clear();
            continue;
        }
        let Some(seen_ca) = ctx.ca_seen() else {
            continue;
        };
        let Some((configmaps, ctb)) = observe(&ctx, stores) else {
            continue;
        };
        let bundle_pem = seen_ca.state.current.bundle_pem();
        let digest = bundle_digest(bundle_pem.as_bytes());
        let mut conflicts = 0;
        if let Some((selected, seen)) = configmaps {
            let wanted = want(&bundle_pem, cfg.truststore);
            let p = plan::plan(&selected, &seen, &wanted);
            conflicts += p.conflicts.len();
            for ns in &p.conflicts {
                report_configmap_conflict(&ctx, stores, ns, &mut reported).await;
            }
            for w in &p.writes {
                let key = format!("configmap/{}", w.namespace());
                if !backoff.may_try(&key, &digest, w) || ctx.leadership.role() != Role::Leader {
                    continue;
                }
                let content =
                    match build_content(&bundle_pem, cfg.truststore, &mut truststore).await {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(error = %e, "cannot build the trust bundle's truststore.p12");
                            break;
                        }
                    };
                match write_configmap(&ctx, stores, &cfg.name, w, &content).await {
                    Ok(()) => backoff.succeeded(&key, w),
                    Err(e) => {
                        ctx.count_error("TrustBundle");
                        let n = backoff.failed(&key, &digest);
                        if n == 1 {
                            warn!(namespace = w.namespace(), error = %e, "cannot write the trust ConfigMap; retrying with backoff");
                        } else {
                            debug!(namespace = w.namespace(), error = %e, attempts = n, "cannot write the trust ConfigMap");
                        }
                    }
                }
            }
        }
        if let Some((selected, seen)) = ctb {
            let wanted = want(&bundle_pem, false);
            let p = plan::plan(&selected, &seen, &wanted);
            conflicts += p.conflicts.len();
            if !p.conflicts.is_empty() {
                report_ctb_conflict(&ctx, stores, &mut reported).await;
            }
            for w in &p.writes {
                let key = "clustertrustbundle".to_string();
                if !backoff.may_try(&key, &digest, w) || ctx.leadership.role() != Role::Leader {
                    continue;
                }
                match write_cluster_trust_bundle(&ctx, stores, w, &bundle_pem).await {
                    Ok(()) => backoff.succeeded(&key, w),
                    Err(e) => {
                        ctx.count_error("TrustBundle");
                        let n = backoff.failed(&key, &digest);
                        if n == 1 {
                            warn!(error = %e, "cannot write the ClusterTrustBundle; retrying with backoff");
                        } else {
                            debug!(error = %e, attempts = n, "cannot write the ClusterTrustBundle");
                        }
                    }
                }
            }
        }
        ctx.metrics
            .trust_bundle_conflicts
            .set(i64::try_from(conflicts).unwrap_or(i64::MAX));
        // Forget conflicts that are gone, so one that comes back is reported again.
        let live: BTreeSet<(String, String)> = stores
            .configmaps
            .iter()
            .flat_map(|w| w.store.state())
            .map(|c| {
                (
                    c.namespace().unwrap_or_default(),
                    c.uid().unwrap_or_default(),
                )
            })
            .chain(
                stores
                    .cluster_trust_bundles
                    .iter()
                    .flat_map(|w| w.store.state())
                    .map(|c| (String::new(), c.uid().unwrap_or_default())),
            )
            .collect();
        reported.retain(|k| live.contains(k));
    }
}

/// The ConfigMap content for `bundle_pem` (the truststore built once per bundle, off the async
/// workers: PKCS#12 key derivation is CPU-bound).
async fn build_content(
    bundle_pem: &str,
    with_truststore: bool,
    cache: &mut Option<(String, Vec<u8>)>,
) -> anyhow::Result<TrustContent> {
    let truststore_p12 = if with_truststore {
        let digest = bundle_digest(bundle_pem.as_bytes());
        match cache {
            Some((d, bytes)) if *d == digest => Some(bytes.clone()),
            _ => {
                let pem = bundle_pem.to_string();
                let bytes = tokio::task::spawn_blocking(move || {
                    crate::pki::keystore::truststore(
                        &pem,
                        plan::TRUSTSTORE_PASSWORD,
                        crate::pki::keystore::Pkcs12Profile::default(),
                    )
                })
                .await??;
                *cache = Some((digest, bytes.clone()));
                Some(bytes)
            }
        }
    } else {
        None
    };
    Ok(TrustContent {
        bundle_pem: bundle_pem.to_string(),
        truststore_p12,
    })
}

/// A refusal that another writer explains (the object changed or went away under us): the watch
/// brings the new state, nothing to retry.
fn raced(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 404 || (s.code == 422 && s.message.contains("testing value")))
}

async fn write_configmap(
    ctx: &Context,
    stores: &Stores,
    name: &str,
    w: &Write,
    content: &TrustContent,
) -> Result<(), kube::Error> {
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), w.namespace());
    ctx.metrics.wrote("trust_configmap");
    let result = match w {
        Write::Create(ns) => {
            let cm = desired_configmap(name, ns, &ctx.config.install, content);
            api.create(&super::ca::create_params(), &cm)
                .await
                .map(|_| ())
        }
        Write::Update {
            namespace,
            resource_version,
        } => {
            let current = stores
                .configmaps
                .as_ref()
                .and_then(|c| {
                    c.store
                        .get(&reflector::ObjectRef::new(name).within(namespace))
                })
                .map(|c| c.annotations().clone())
                .unwrap_or_default();
            let desired = desired_configmap(name, namespace, &ctx.config.install, content);
            let mut merged = current;
            merged.extend(annotations(content));
            let patch = serde_json::json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
                {"op": "add", "path": "/metadata/annotations", "value": merged},
                {"op": "add", "path": "/data", "value": desired.data},
                {"op": "add", "path": "/binaryData", "value": desired.binary_data.unwrap_or_default()},
            ]);
            patch_json(&api, name, patch).await
        }
        Write::Delete {
            resource_version, ..
        } => delete(&api, name, resource_version.clone()).await,
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 409 && matches!(w, Write::Create(_)) => Ok(()),
        Err(e) if raced(&e) => {
            debug!(namespace = w.namespace(), error = %e, "the trust ConfigMap changed under the write; looking again");
            Ok(())
        }
        Ok(()) => {
            debug!(namespace = w.namespace(), write = ?w, "trust ConfigMap written");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn write_cluster_trust_bundle(
    ctx: &Context,
    stores: &Stores,
    w: &Write,
    bundle_pem: &str,
) -> Result<(), kube::Error> {
    let api = Api::<ClusterTrustBundle>::all(ctx.client.clone());
    let desired = desired_cluster_trust_bundle(&ctx.config.install, bundle_pem);
    let name = desired.name_any();
    ctx.metrics.wrote("cluster_trust_bundle");
    let result = match w {
        Write::Create(_) => api
            .create(&super::ca::create_params(), &desired)
            .await
            .map(|_| ()),
        Write::Update {
            resource_version, ..
        } => {
            let mut merged = stores
                .cluster_trust_bundles
                .as_ref()
                .and_then(|c| c.store.get(&reflector::ObjectRef::new(&name)))
                .map(|c| c.annotations().clone())
                .unwrap_or_default();
            merged.extend(desired.metadata.annotations.clone().unwrap_or_default());
            let patch = serde_json::json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
                {"op": "add", "path": "/metadata/annotations", "value": merged},
                {"op": "add", "path": "/spec/trustBundle", "value": bundle_pem},
            ]);
            patch_json(&api, &name, patch).await
        }
        Write::Delete {
            resource_version, ..
        } => delete(&api, &name, resource_version.clone()).await,
    };
    match result {
        Err(kube::Error::Api(s)) if s.code == 409 && matches!(w, Write::Create(_)) => Ok(()),
        Err(e) if raced(&e) => Ok(()),
        Ok(()) => {
            info!(write = ?w, "ClusterTrustBundle {name} written");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn patch_json<K>(
    api: &Api<K>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    api.patch(name, &super::ca::patch_params(), &Patch::Json::<()>(patch))
        .await
        .map(|_| ())
}

async fn delete<K>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<String>,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version,
            uid: None,
        }),
        ..Default::default()
    };
    api.delete(name, &params).await.map(|_| ())
}

async fn report_configmap_conflict(
    ctx: &Context,
    stores: &Stores,
    ns: &str,
    reported: &mut BTreeSet<(String, String)>,
) {
    let name = &ctx.config.trust.name;
    let Some(cm) = stores
        .configmaps
        .as_ref()
        .and_then(|c| c.store.get(&reflector::ObjectRef::new(name).within(ns)))
    else {
        return;
    };
    let uid = cm.uid().unwrap_or_default();
    if !reported.insert((ns.to_string(), uid.clone())) {
        return;
    }
    warn!(
        namespace = ns,
        name, "a ConfigMap of the trust bundle's name that tlsid does not own: left alone"
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        name: Some(name.clone()),
        namespace: Some(ns.to_string()),
        uid: Some(uid),
        ..Default::default()
    };
    ctx.publish_ref(
        &reference,
        EventType::Warning,
        CONFLICT,
        format!(
            "ConfigMap {ns}/{name} is not tlsid's (no labels app.kubernetes.io/managed-by=tlsid, tlsid.dev/install={}): tlsid leaves it alone and publishes no trust bundle in this namespace; rename or delete it, or deselect the namespace",
            ctx.config.install
        ),
    )
    .await;
}

async fn report_ctb_conflict(
    ctx: &Context,
    stores: &Stores,
    reported: &mut BTreeSet<(String, String)>,
) {
    let name = plan::cluster_trust_bundle_name(&ctx.config.install);
    let Some(ctb) = stores
        .cluster_trust_bundles
        .as_ref()
        .and_then(|c| c.store.get(&reflector::ObjectRef::new(&name)))
    else {
        return;
    };
    let uid = ctb.uid().unwrap_or_default();
    if !reported.insert((String::new(), uid.clone())) {
        return;
    }
    warn!(
        name,
        "a ClusterTrustBundle of the install's name that tlsid does not own: left alone"
    );
    // On the install's TlsAuthority (`kubectl describe tlsca`): an Event's name derives from
    // its object's, and a ClusterTrustBundle's (with ':') is not a valid one.
    let authority = Api::<crate::api::TlsAuthority>::all(ctx.client.clone())
        .get_opt(&ctx.config.authority)
        .await
        .ok()
        .flatten();
    let reference = ObjectReference {
        api_version: Some("tlsid.dev/v1alpha1".into()),
        kind: Some("TlsAuthority".into()),
        name: Some(ctx.config.authority.clone()),
        uid: authority.and_then(|a| a.metadata.uid),
        ..Default::default()
    };
    ctx.publish_ref(
        &reference,
        EventType::Warning,
        CONFLICT,
        format!(
            "ClusterTrustBundle {name} is not tlsid's (no labels app.kubernetes.io/managed-by=tlsid, tlsid.dev/install={}): tlsid leaves it alone and publishes none",
            ctx.config.install
        ),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(rv: &str) -> Write {
        Write::Update {
            namespace: "a".into(),
            resource_version: Some(rv.into()),
        }
    }

    #[test]
    fn a_write_is_not_repeated_before_the_watch_shows_it() {
        let mut p = Pacing::default();
        assert!(p.may_try("k", "d1", &update("1")));
        p.succeeded("k", &update("1"));
        // The cache still shows resourceVersion 1: the same write is not made again.
        assert!(!p.may_try("k", "d1", &update("1")));
        // The watch brought version 2 (someone else's edit, say): a new decision may write.
        assert!(p.may_try("k", "d1", &update("2")));
        // Creates alike: until the created object shows up in the cache.
        p.succeeded("c", &Write::Create("a".into()));
        assert!(!p.may_try("c", "d1", &Write::Create("a".into())));
    }

    #[test]
    fn refused_writes_back_off_until_the_bundle_changes() {
        let mut p = Pacing::default();
        assert_eq!(p.failed("k", "d1"), 1);
        assert!(!p.may_try("k", "d1", &update("1")));
        assert_eq!(p.failed("k", "d1"), 2);
        let (_, at, _) = p.failing["k"];
        assert!(at > Instant::now() + Duration::from_secs(3));
        // A new bundle is tried at once, and counts from the start.
        assert!(p.may_try("k", "d2", &update("1")));
        assert_eq!(p.failed("k", "d2"), 1);
        p.succeeded("k", &update("1"));
        assert!(p.failing.is_empty());
    }
}
