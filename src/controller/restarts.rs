//! Restart orchestration's I/O: caches of every Deployment, StatefulSet and DaemonSet (cut down
//! to what [`crate::plan::consumers`] reads), a pass over them on every change (and every 2 s),
//! and, on the leader only, the restarts it asks for (one merge patch of the pod template each,
//! against the resourceVersion seen), Events, and the consumer lists that identities'
//! `status.consumers` show (the identity reconcile reads them; a changed list triggers it).

use super::{Context, WatchBackoff, leader::Role};
use crate::api::{Consumer, TlsIdentity};
use crate::api::{FIELD_MANAGER, IDENTITY_LABEL, SERIAL_ANNOTATION, TRUST_BUNDLE_ANNOTATION};
use crate::plan::budget::Budget;
use crate::plan::consumers::{self, Kind, Restart, SecretFacts, Workload};
use futures::{FutureExt, StreamExt, channel::mpsc::Sender};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::EventType,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};
use tracing::{debug, info, warn};

/// Event reasons.
pub const RESTARTED: &str = "Restarted";
pub const SUB_PATH: &str = "SubPathMount";
pub const RESTART_FAILED: &str = "RestartFailed";

/// The watched kinds, in the order of the driver's streams.
const KINDS: [&str; 3] = ["Deployment", "StatefulSet", "DaemonSet"];

/// How often a pass runs without a change (Secret changes also wake it).
const TICK: Duration = Duration::from_secs(2);

/// Restart orchestration's settings, from the command line.
#[derive(Clone, Debug)]
pub struct RestartConfig {
    /// Watch workloads and restart those that opt in (`--restarts`).
    pub enabled: bool,
    /// Restarts per second across the install, and burst.
    pub rate: f64,
    pub burst: u32,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: consumers::DEFAULT_RATE,
            burst: consumers::DEFAULT_BURST,
        }
    }
}

type Index = HashMap<(String, String), Vec<Consumer>>;
/// Identity Secrets by (namespace, name).
type SecretIndex = HashMap<(String, String), SecretFacts>;

/// The workload caches.
pub struct Stores {
    deployments: Store<Deployment>,
    stateful_sets: Store<StatefulSet>,
    daemon_sets: Store<DaemonSet>,
}

/// Shared between the driver, the identity reconcile and the rollover.
#[derive(Default)]
pub struct State {
    stores: OnceLock<Stores>,
    synced: std::sync::atomic::AtomicBool,
    /// Consumers per identity, from the last pass (`None` before the first).
    index: RwLock<Option<Arc<Index>>>,
    /// Wakes the driver (a Secret changed).
    pub wake: tokio::sync::Notify,
}

/// The consumers `status.consumers` of this identity should list; `None`: leave the field as it
/// is (restarts off, or no pass yet).
pub fn consumers_of(ctx: &Context, namespace: &str, identity: &str) -> Option<Vec<Consumer>> {
    if !ctx.config.restarts.enabled {
        return None;
    }
    let index = ctx
        .restarts
        .index
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    Some(
        index
            .get(&(namespace.to_string(), identity.to_string()))
            .cloned()
            .unwrap_or_default(),
    )
}

/// Opted-in workloads that have not caught up with the Secrets they mount (the CA rollover's
/// gate), counted from the caches now; `None` while they have not listed.
pub fn awaiting(ctx: &Context) -> Option<u64> {
    if !ctx.config.restarts.enabled {
        return Some(0);
    }
    if !ctx
        .restarts
        .synced
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return None;
    }
    let (workloads, secrets) = snapshot(ctx)?;
    Some(consumers::pass(&workloads, &secrets, &HashMap::new()).awaiting)
}

/// Every workload and identity Secret, from the caches.
fn snapshot(ctx: &Context) -> Option<(Vec<Workload>, SecretIndex)> {
    let stores = ctx.restarts.stores.get()?;
    let secret_store = &ctx.stores.get()?.secrets;
    // Only the Secrets of identities this install serves: another install in the cluster
    // restarts the consumers of its own.
    let served: HashSet<(String, String)> = ctx
        .stores
        .get()?
        .identities
        .state()
        .iter()
        .filter(|o| crate::api::install_of(o.labels()) == ctx.config.install)
        .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    let mut workloads: Vec<Workload> = Vec::new();
    workloads.extend(
        stores
            .deployments
            .state()
            .iter()
            .map(|d| Workload::from_deployment(d)),
    );
    workloads.extend(
        stores
            .stateful_sets
            .state()
            .iter()
            .map(|s| Workload::from_stateful_set(s)),
    );
    workloads.extend(
        stores
            .daemon_sets
            .state()
            .iter()
            .map(|d| Workload::from_daemon_set(d)),
    );
    let secrets = secret_store
        .state()
        .iter()
        .filter_map(|s| {
            let identity = s.labels().get(IDENTITY_LABEL)?.clone();
            let ns = s.namespace().unwrap_or_default();
            if !served.contains(&(ns.clone(), identity.clone())) {
                return None;
            }
            let a = s.metadata.annotations.as_ref()?;
            let digest = consumers::secret_digest(
                a.get(SERIAL_ANNOTATION)?,
                a.get(TRUST_BUNDLE_ANNOTATION).map_or("", String::as_str),
            );
            Some(((ns, s.name_any()), SecretFacts { identity, digest }))
        })
        .collect();
    Some((workloads, secrets))
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Run the driver until the controller stops; `trigger` reconciles an identity whose consumer
/// list changed.
pub async fn run(ctx: Arc<Context>, mut trigger: Sender<ObjectRef<DynamicObject>>) {
    if !ctx.config.restarts.enabled {
        return;
    }
    let client = ctx.client.clone();
    let ns = ctx.config.watch_namespace.as_deref();
    let (dw, sw, aw) = (
        reflector::store::Writer::<Deployment>::default(),
        reflector::store::Writer::<StatefulSet>::default(),
        reflector::store::Writer::<DaemonSet>::default(),
    );
    let _ = ctx.restarts.stores.set(Stores {
        deployments: dw.as_reader(),
        stateful_sets: sw.as_reader(),
        daemon_sets: aw.as_reader(),
    });
    let cfg = watcher::Config::default();
    let deployments = watcher(api::<Deployment>(&client, ns), cfg.clone())
        .backoff(WatchBackoff::new())
        .modify(|d| {
            consumers::prune_metadata(&mut d.metadata);
            if let Some(s) = d.spec.as_mut() {
                consumers::prune_template(&mut s.template);
                s.selector = Default::default();
                s.strategy = None;
            }
            if let Some(st) = d.status.as_mut() {
                st.conditions = None;
            }
        })
        .reflect(dw)
        .map(|e| listed(0, &e));
    let stateful_sets = watcher(api::<StatefulSet>(&client, ns), cfg.clone())
        .backoff(WatchBackoff::new())
        .modify(|s| {
            consumers::prune_metadata(&mut s.metadata);
            if let Some(spec) = s.spec.as_mut() {
                consumers::prune_template(&mut spec.template);
                spec.selector = Default::default();
                spec.volume_claim_templates = None;
            }
            if let Some(st) = s.status.as_mut() {
                st.conditions = None;
            }
        })
        .reflect(sw)
        .map(|e| listed(1, &e));
    let daemon_sets = watcher(api::<DaemonSet>(&client, ns), cfg)
        .backoff(WatchBackoff::new())
        .modify(|d| {
            consumers::prune_metadata(&mut d.metadata);
            if let Some(spec) = d.spec.as_mut() {
                consumers::prune_template(&mut spec.template);
                spec.selector = Default::default();
            }
            if let Some(st) = d.status.as_mut() {
                st.conditions = None;
            }
        })
        .reflect(aw)
        .map(|e| listed(2, &e));
    let mut events = futures::stream::select_all([
        deployments.boxed(),
        stateful_sets.boxed(),
        daemon_sets.boxed(),
    ]);

    let mut synced = [false; 3];
    let mut failing = [false; 3];
    let mut budget = Budget::new(ctx.config.restarts.rate, ctx.config.restarts.burst);
    let started = std::time::Instant::now();
    // What this process restarted each workload (uid) for, this leader term.
    let mut done: HashMap<String, String> = HashMap::new();
    // SubPath warnings already published, this leader term.
    let mut warned: HashSet<(String, String)> = HashSet::new();
    let mut first_pass = true;
    let mut wait = TICK;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some((i, init_done, error)) => {
                    if init_done {
                        synced[i] = true;
                    }
                    if error {
                        // The caches keep their last state; until every watch has listed, no
                        // restart happens and a CA rollover waits (say so, once per outage).
                        if !failing[i] {
                            failing[i] = true;
                            warn!(kind = KINDS[i], synced = synced[i], "cannot watch workloads (RBAC for restarts? --restarts=false turns them off); retrying");
                        }
                        continue;
                    }
                    failing[i] = false;
                    // Let a burst of events (a list) settle into one pass.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => return,
            },
            _ = ctx.restarts.wake.notified() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        // Drain what arrived meanwhile without waiting.
        while let Some(Some((i, init_done, _))) = events.next().now_or_never() {
            if init_done {
                synced[i] = true;
            }
        }
        wait = TICK;
        if !synced.iter().all(|s| *s) || !secrets_listed(&ctx).await {
            continue;
        }
        ctx.restarts
            .synced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let Some((workloads, secrets)) = snapshot(&ctx) else {
            continue;
        };
        let pass = consumers::pass(&workloads, &secrets, &done);
        let index = Arc::new(pass.consumers);
        let old = ctx
            .restarts
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(index.clone());
        let leader = ctx.leadership.role() == Role::Leader;
        if !leader {
            done.clear();
            warned.clear();
            budget.clear(now_ms(started));
            first_pass = true;
            continue;
        }
        // Identities whose consumer list changed get a reconcile (their status shows it).
        let mut changed: Vec<(String, String)> = index
            .iter()
            .filter(|(k, v)| old.as_ref().and_then(|o| o.get(*k)) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(old) = &old {
            changed.extend(old.keys().filter(|k| !index.contains_key(*k)).cloned());
        }
        if first_pass {
            // A list left over from before (workloads deleted meanwhile) is emptied too.
            changed.extend(stale_listed(&ctx, &index));
            first_pass = false;
        }
        let ar = ApiResource::erase::<TlsIdentity>(&());
        for (ns, name) in changed {
            let _ = futures::SinkExt::send(
                &mut trigger,
                ObjectRef::new_with(&name, ar.clone()).within(&ns),
            )
            .await;
        }
        for w in &pass.sub_path {
            if warned.insert((w.uid.clone(), w.secret.clone())) {
                warn!(
                    namespace = w.namespace,
                    workload = w.name,
                    secret = w.secret,
                    "workload mounts an identity Secret with subPath"
                );
                ctx.publish_ref(
                    &workload_ref(w.kind, &w.namespace, &w.name, &w.uid),
                    EventType::Warning,
                    SUB_PATH,
                    w.message(),
                )
                .await;
                ctx.publish_ref(
                    &identity_ref(&ctx, &w.namespace, &w.identity),
                    EventType::Warning,
                    SUB_PATH,
                    w.message(),
                )
                .await;
            }
        }
        let (go, later) = consumers::admit(&mut budget, pass.wanted, now_ms(started));
        if let Some(later) = later {
            debug!(
                wait_ms = later.as_millis() as u64,
                "restarts waiting for the restart budget"
            );
            wait = later.min(TICK);
        }
        for r in go {
            if ctx.leadership.role() != Role::Leader {
                break;
            }
            match restart(&ctx, &r).await {
                Ok(()) => {
                    done.insert(r.uid.clone(), r.record.clone());
                    ctx.metrics.wrote("restart");
                    info!(
                        namespace = r.namespace,
                        kind = r.kind.as_str(),
                        workload = r.name,
                        reason = r.reason,
                        "restarted workload"
                    );
                    ctx.publish_ref(
                        &workload_ref(r.kind, &r.namespace, &r.name, &r.uid),
                        EventType::Normal,
                        RESTARTED,
                        format!(
                            "tlsid restarted the pods so they load the current certificates: {}",
                            r.reason
                        ),
                    )
                    .await;
                }
                // Changed since it was read (or the cache is behind): the next pass decides
                // again from the fresh copy.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    debug!(
                        namespace = r.namespace,
                        workload = r.name,
                        code = s.code,
                        "workload changed before its restart; deciding again"
                    );
                    wait = Duration::from_millis(500);
                }
                Err(e) => {
                    ctx.count_error(RESTART_FAILED);
                    warn!(namespace = r.namespace, kind = r.kind.as_str(), workload = r.name, error = %e, "restart failed");
                    if warned.insert((r.uid.clone(), format!("{RESTART_FAILED}/{}", r.record))) {
                        ctx.publish_ref(
                            &workload_ref(r.kind, &r.namespace, &r.name, &r.uid),
                            EventType::Warning,
                            RESTART_FAILED,
                            format!(
                                "tlsid could not restart this workload ({}); it retries",
                                super::error::api_message(&e)
                            ),
                        )
                        .await;
                    }
                }
            }
        }
    }
}

/// Which watch an event came from, whether it ends a (re)list, whether it is an error.
fn listed<K>(i: usize, e: &Result<watcher::Event<K>, watcher::Error>) -> (usize, bool, bool) {
    (i, matches!(e, Ok(watcher::Event::InitDone)), e.is_err())
}

async fn secrets_listed(ctx: &Context) -> bool {
    let Some(stores) = ctx.stores.get() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(50), stores.secrets.wait_until_ready()).await,
        Ok(Ok(()))
    )
}

/// Identities whose stored status lists consumers the index no longer has.
fn stale_listed(ctx: &Context, index: &Index) -> Vec<(String, String)> {
    let Some(stores) = ctx.stores.get() else {
        return Vec::new();
    };
    stores
        .identities
        .state()
        .iter()
        .filter(|o| {
            o.data["status"]["consumers"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
        .filter(|k| !index.contains_key(k))
        .collect()
}

async fn restart(ctx: &Context, r: &Restart) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default();
    let patch = Patch::Merge(r.patch(now));
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let client = ctx.client.clone();
    match r.kind {
        Kind::Deployment => {
            Api::<Deployment>::namespaced(client, &r.namespace)
                .patch(&r.name, &params, &patch)
                .await?;
        }
        Kind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client, &r.namespace)
                .patch(&r.name, &params, &patch)
                .await?;
        }
        Kind::DaemonSet => {
            Api::<DaemonSet>::namespaced(client, &r.namespace)
                .patch(&r.name, &params, &patch)
                .await?;
        }
    }
    Ok(())
}

fn now_ms(started: std::time::Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn workload_ref(kind: Kind, namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(kind.as_str().into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid: Some(uid.into()).filter(|u: &String| !u.is_empty()),
        ..Default::default()
    }
}

fn identity_ref(ctx: &Context, namespace: &str, name: &str) -> ObjectReference {
    let ar = ApiResource::erase::<TlsIdentity>(&());
    let uid = ctx.stores.get().and_then(|s| {
        s.identities
            .get(&ObjectRef::new_with(name, ar.clone()).within(namespace))
            .and_then(|o| o.uid())
    });
    ObjectReference {
        api_version: Some(ar.api_version),
        kind: Some(ar.kind),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        uid,
        ..Default::default()
    }
}
