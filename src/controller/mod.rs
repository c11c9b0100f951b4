//! The controller: the only code that talks to the apiserver.
//!
//! Each reconcile (`identity.rs`) observes the identity, its Secret, the keystore password and the
//! CA once, lets the pure [`crate::plan`] decide, and applies what differs (`apply.rs`). The demo
//! workload (`demo.rs`) and the CA (`ca.rs`) have their own I/O.

mod apply;
pub mod ca;
mod demo;
pub mod error;
mod identity;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod restarts;
pub mod rollover;
pub mod secret_reads;
pub mod server;
pub mod trust;
pub mod webhook;

pub use error::Error;

use crate::api::{
    DEFAULT_INSTALL, IDENTITY_LABEL, INSTALL_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TlsIdentity,
};
use crate::pki::Authority;
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ObjectReference, Secret, Service},
};
use kube::core::PartialObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use metrics::Metrics;
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, RwLock, atomic::AtomicBool},
    time::Duration,
};
use tracing::{debug, info, warn};

/// Controller settings, from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the CA Secret (the controller's own).
    pub namespace: String,
    /// Name of the CA Secret.
    pub ca_secret: String,
    /// Image for demo workloads.
    pub demo_image: String,
    /// How many identities reconcile at once.
    pub concurrency: u16,
    /// Watch only this namespace (`None`: all namespaces).
    pub watch_namespace: Option<String>,
    /// This install's name: the identities it serves (label `tlsid.dev/install`, absent meaning
    /// `tlsid`), its Lease, its cluster-scoped objects.
    pub install: String,
    /// Stand for election (`false`: this process always writes; for a single replica only).
    pub leader_election: bool,
    pub lease: leader::LeaseTiming,
    /// The issuance budget: certificates per second, and burst.
    pub issuance_rate: f64,
    pub issuance_burst: u32,
    /// Who may claim which name: the built-in rule's settings.
    pub names: crate::tenancy::Settings,
    /// The admission webhook, when served.
    pub webhook: Option<webhook::WebhookConfig>,
    /// Run demo workloads (`spec.demo`); off, the install needs no RBAC for Deployments/Services.
    pub demo_workloads: bool,
    /// Name of the TlsAuthority this install writes (the install's name by default).
    pub authority: String,
    /// The CA rollover's settings.
    pub rollover: rollover::RolloverConfig,
    /// Trust bundles for workloads without an identity (ConfigMaps, ClusterTrustBundle).
    pub trust: trust::TrustConfig,
    /// Restart orchestration (workloads with `tlsid.dev/reload: restart`).
    pub restarts: restarts::RestartConfig,
}

/// Shared state, built once in `run`.
/// kubectl's copy of an object applied with `kubectl apply` (client-side).
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Metrics,
    recorder: Recorder,
    ca: RwLock<Option<Arc<Authority>>>,
    /// Why the CA Secret is unusable while the last good CA signs (shown on identities).
    ca_problem: RwLock<Option<String>>,
    pub ready: AtomicBool,
    /// The webhook has a serving certificate (always true when no webhook is served).
    pub webhook_ready: AtomicBool,
    /// The webhook configuration trusts the CA (always true when no webhook is served).
    pub webhook_trusted: AtomicBool,
    /// Digest of the bundle the webhook configuration's caBundle was last seen to equal.
    pub webhook_bundle: RwLock<Option<String>>,
    /// Consecutive errors per object (those that cannot be recorded in its status), for backoff.
    failures: Mutex<HashMap<String, i32>>,
    pub leadership: leader::Leadership,
    /// The install's issuance budget (used by the leader), on a monotonic clock from `started`.
    budget: Mutex<crate::plan::budget::Budget>,
    started: std::time::Instant,
    /// The name policy in force: settings, grants, namespace labels.
    pub names: Arc<names::Names>,
    /// The CA Secret as last accepted (the rollover's state).
    ca_seen: RwLock<Option<Arc<ca::SeenCa>>>,
    /// Wakes the rollover driver when the CA Secret changed.
    pub rollover_wake: tokio::sync::Notify,
    /// The caches the rollover counts from (set once the controller's watches exist).
    pub stores: std::sync::OnceLock<rollover::Stores>,
    /// The trust bundles' caches (set once their watches exist) and what wakes their writer.
    pub trust: std::sync::OnceLock<trust::Stores>,
    pub trust_wake: tokio::sync::Notify,
    /// Restart orchestration's caches and consumer lists.
    pub restarts: restarts::State,
    /// What spares a reconcile its Secret GET (see `secret_reads`).
    pub secret_reads: secret_reads::SecretReads,
}

impl Context {
    pub fn new(client: Client, config: Config) -> Self {
        let reporter = Reporter {
            controller: "tlsid".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let leadership = leader::Leadership::new(
            leader::holder_identity(),
            config.leader_election,
            config.lease,
        );
        let budget = crate::plan::budget::Budget::new(config.issuance_rate, config.issuance_burst);
        let metrics = Metrics::default();
        metrics.ca_secret_valid.set(1);
        metrics
            .name_policy_enforced
            .set(i64::from(config.names.restrict_to_namespace));
        let names = Arc::new(names::Names::new(config.names.clone()));
        let no_webhook = config.webhook.is_none();
        Self {
            names,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            ca: RwLock::new(None),
            ca_problem: RwLock::new(None),
            ready: AtomicBool::new(false),
            webhook_ready: AtomicBool::new(no_webhook),
            webhook_trusted: AtomicBool::new(no_webhook),
            webhook_bundle: RwLock::new(None),
            failures: Mutex::default(),
            leadership,
            budget: Mutex::new(budget),
            started: std::time::Instant::now(),
            ca_seen: RwLock::new(None),
            rollover_wake: tokio::sync::Notify::new(),
            stores: std::sync::OnceLock::new(),
            trust: std::sync::OnceLock::new(),
            trust_wake: tokio::sync::Notify::new(),
            restarts: restarts::State::default(),
            secret_reads: secret_reads::SecretReads::default(),
        }
    }

    /// Whether `key` may issue now under the install's budget.
    fn admit_issuance(&self, key: &str) -> crate::plan::budget::Admit {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let before = budget.waiting();
        let admit = budget.admit(key, self.budget_clock());
        if budget.waiting() > before {
            self.metrics.budget_waits.inc();
        }
        self.metrics.budget_waiting.set(budget.waiting() as i64);
        admit
    }

    /// `key` no longer waits to issue: give its reserved slot back, if it has one.
    fn cancel_issuance(&self, key: &str) {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if budget.waiting() > 0 {
            budget.cancel(key, self.budget_clock());
            self.metrics.budget_waiting.set(budget.waiting() as i64);
        }
    }

    /// Keep only the reservations of identities that still exist (`None`: keep none).
    fn retain_issuance(&self, live: Option<&BTreeSet<(String, String)>>) {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if budget.waiting() > 0 {
            let now = self.budget_clock();
            match live {
                Some(live) => budget.retain(
                    |k| {
                        k.split_once('/')
                            .is_some_and(|(ns, n)| live.contains(&(ns.to_string(), n.to_string())))
                    },
                    now,
                ),
                None => budget.clear(now),
            }
            self.metrics.budget_waiting.set(budget.waiting() as i64);
        }
    }

    /// Milliseconds on a monotonic clock: a wall-clock step never freezes or floods the budget.
    fn budget_clock(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    pub fn ca(&self) -> Option<Arc<Authority>> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn ca_secret_problem(&self) -> Option<String> {
        self.ca_problem
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record whether the CA Secret is usable; true if that changed.
    pub fn set_ca_secret_problem(&self, problem: Option<String>) -> bool {
        self.metrics
            .ca_secret_valid
            .set(i64::from(problem.is_none()));
        let mut current = self.ca_problem.write().unwrap_or_else(|e| e.into_inner());
        let changed = *current != problem;
        *current = problem;
        changed
    }

    pub fn ca_seen(&self) -> Option<Arc<ca::SeenCa>> {
        self.ca_seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Accept the CA Secret's state; true if the CA that identities use (signer or bundle)
    /// changed, so every identity must be reconciled.
    pub fn set_ca_seen(&self, seen: ca::SeenCa) -> bool {
        let ca = seen.state.current.clone();
        self.metrics.ca_expiration.set(ca.not_after().as_second());
        self.metrics.ca_state(&seen.state);
        *self.ca_seen.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(seen));
        let mut current = self.ca.write().unwrap_or_else(|e| e.into_inner());
        let same = current.as_ref().is_some_and(|c| {
            c.fingerprint() == ca.fingerprint() && c.bundle_pem() == ca.bundle_pem()
        });
        *current = Some(ca);
        !same
    }

    async fn publish(&self, obj: &TlsIdentity, type_: EventType, reason: &str, note: String) {
        self.publish_ref(&obj.object_ref(&()), type_, reason, note)
            .await;
    }

    async fn publish_ref(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.metrics.wrote("event");
        if let Err(e) = self.recorder.publish(&event, reference).await {
            warn!(error = %e, "could not publish event");
        }
    }

    fn count_error(&self, category: &str) {
        self.metrics
            .errors
            .get_or_create(&metrics::ErrorLabels {
                category: category.into(),
            })
            .inc();
    }

    fn failure_key(obj: &DynamicObject) -> String {
        format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// One more consecutive error for `obj`; returns the count.
    fn note_failure(&self, obj: &DynamicObject) -> i32 {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(Self::failure_key(obj)).or_default();
        *n = n.saturating_add(1);
        *n
    }

    fn forget_failures(&self, obj: &DynamicObject) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(&Self::failure_key(obj));
        }
    }
}

/// Backoff of every watch: exponential from 250 ms to 5 s with jitter, reset by the first event
/// that arrives. Short enough that the controller is back within seconds of the apiserver (kube's
/// default grows to 30 s over an outage and resets only after two quiet minutes: a restart of
/// the apiserver left the controller blind for half a minute), and still no spin while it is
/// away (a handful of reconnects per watch and minute at most).
pub struct WatchBackoff {
    attempt: u32,
    jitter: u64,
    last_error: Option<std::time::Instant>,
}

impl WatchBackoff {
    pub const MIN: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self {
            attempt: 0,
            jitter: rand::random(),
            last_error: None,
        }
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.last_error = Some(std::time::Instant::now());
        let base = Self::MIN
            .saturating_mul(1 << self.attempt.min(8))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        // Up to a fifth less, varying per attempt and per watch, so watches do not reconnect in step.
        self.jitter = self
            .jitter
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let cut = (self.jitter >> 33) % (base.as_millis() as u64 / 5 + 1);
        Some(base - Duration::from_millis(cut))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    /// Called on every successful item, including the `Init` a watcher emits before each relist
    /// attempt: only a watch that has stayed healthy for a while starts again from the minimum,
    /// so a list that keeps failing is retried at the full backoff, not every 250 ms.
    fn reset(&mut self) {
        if self.last_error.is_none_or(|t| t.elapsed() > Self::MAX * 2) {
            self.attempt = 0;
        }
    }
}

/// Run the controller until SIGTERM/SIGINT.
pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let ar = ApiResource::erase::<TlsIdentity>(&());
    // Identities are watched untyped and read one by one in the reconcile: an object that does
    // not deserialize (a value past the schema) is reported on itself instead of failing the list
    // that every other identity comes in.
    let (identities, secrets, deployments, services) = match &ctx.config.watch_namespace {
        Some(ns) => (
            Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Deployment>>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Service>>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            Api::<PartialObjectMeta<Deployment>>::all(client.clone()),
            Api::<PartialObjectMeta<Service>>::all(client.clone()),
        ),
    };
    // Only objects we manage: never every Secret in the cluster.
    let managed =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));

    // Every identity is reconciled again when the CA changes and when this replica becomes the
    // leader (a standby reconciles nothing; the new leader picks everything up from its cache).
    let (reconcile_all_tx, reconcile_all_rx) = futures::channel::mpsc::channel::<()>(1);
    let ca_task = tokio::spawn(ca::watch(ctx.clone(), reconcile_all_tx.clone()));
    let rollover_task = tokio::spawn(rollover::run(ctx.clone()));
    let trust_task = tokio::spawn(trust::run(ctx.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let leader_task = tokio::spawn(leader::run(ctx.clone(), reconcile_all_tx.clone(), stop_rx));
    let policy_task = ctx.config.names.restrict_to_namespace.then(|| {
        tokio::spawn(names::watch_policies(
            client.clone(),
            ctx.names.clone(),
            reconcile_all_tx,
        ))
    });

    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let store = writer.as_reader();
    let (sweep_ctx, sweep_store) = (ctx.clone(), store.clone());
    // The default install watches every identity and leaves those that name another install
    // alone; any other install watches only the identities that name it.
    let served = if ctx.config.install == DEFAULT_INSTALL {
        watcher::Config::default()
    } else {
        watcher::Config::default().labels(&format!("{INSTALL_LABEL}={}", ctx.config.install))
    };
    let stream = watcher(identities, served)
        .backoff(WatchBackoff::new())
        // What the cache keeps of each identity: not its managedFields, nor kubectl's copy of the
        // whole object (last-applied-configuration); nothing reads them, and at 10,000
        // identities they would be most of the controller's memory.
        .modify(|o| {
            o.metadata.managed_fields = None;
            if let Some(a) = o.metadata.annotations.as_mut() {
                a.remove(LAST_APPLIED_ANNOTATION);
            }
        })
        .reflect(writer)
        .inspect(move |event| match event {
            // Per-identity metric series go with the identity; a relist also sweeps away the
            // series of identities deleted while the watch was down.
            Ok(watcher::Event::Delete(obj)) => {
                sweep_ctx
                    .metrics
                    .forget(&obj.namespace().unwrap_or_default(), &obj.name_any());
                sweep_ctx.cancel_issuance(&Context::failure_key(obj));
            }
            Ok(watcher::Event::InitDone) => {
                let live: BTreeSet<(String, String)> = sweep_store
                    .state()
                    .iter()
                    .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
                    .collect();
                sweep_ctx.metrics.retain(&live);
                sweep_ctx.retain_issuance(Some(&live));
            }
            _ => {}
        })
        .applied_objects();

    let secret_ar = ar.clone();
    // Secret metadata is also kept in a cache (without managedFields): the CA rollover counts
    // which identity Secrets hold the current trust bundle from it.
    let secret_writer = reflector::store::Writer::<PartialObjectMeta<Secret>>::default();
    let _ = ctx.stores.set(rollover::Stores {
        identities: store.clone(),
        secrets: secret_writer.as_reader(),
    });
    // A namespace's labels decide which policies grant its identities names: a label change
    // re-checks the identities inside it. Watched by a task of its own, not as a trigger of the
    // controller: an error of a trigger stream pauses every trigger, and this watch's errors
    // (a 429, a relist) must not hold up the identities.
    let (namespace_tx, namespace_rx) =
        futures::channel::mpsc::channel::<ObjectRef<DynamicObject>>(256);
    // Workloads that opt in to restarts: their own watches and driver; an identity whose
    // consumers changed is reconciled (its status lists them).
    let (consumers_tx, consumers_rx) =
        futures::channel::mpsc::channel::<ObjectRef<DynamicObject>>(256);
    let restarts_task = tokio::spawn(restarts::run(ctx.clone(), consumers_tx));
    let namespace_task = ctx.config.names.restrict_to_namespace.then(|| {
        tokio::spawn(names::watch_namespaces(
            client.clone(),
            ctx.names.clone(),
            ctx.config.watch_namespace.clone(),
            store.clone(),
            ar.clone(),
            namespace_tx,
        ))
    });
    let controller = Controller::for_stream_with(stream, store.clone(), ar.clone())
        // Secret metadata only: a foreign Secret wearing tlsid's label costs its metadata, never
        // its data. A Secret maps to the identity its label names.
        .watches_stream_with(
            watcher(secrets, managed.clone())
                .backoff(WatchBackoff::new())
                .modify(|s| s.metadata.managed_fields = None)
                .reflect(secret_writer)
                .inspect({
                    let ctx = ctx.clone();
                    move |_| ctx.restarts.wake.notify_one()
                })
                .touched_objects(),
            move |s: PartialObjectMeta<Secret>| {
                let name = s.labels().get(IDENTITY_LABEL).cloned();
                let ns = s.namespace();
                let ar = secret_ar.clone();
                name.into_iter().map(move |n| {
                    ObjectRef::new_with(&n, ar.clone()).within(ns.as_deref().unwrap_or_default())
                })
            },
            (),
        )
        // Demo workloads: watched only when this install runs them (and has the RBAC to).
        .owns_stream(if ctx.config.demo_workloads {
            watcher(deployments, managed.clone())
                .backoff(WatchBackoff::new())
                .touched_objects()
                .left_stream()
        } else {
            futures::stream::empty().right_stream()
        })
        .owns_stream(if ctx.config.demo_workloads {
            watcher(services, managed)
                .backoff(WatchBackoff::new())
                .touched_objects()
                .left_stream()
        } else {
            futures::stream::empty().right_stream()
        })
        .with_config(
            kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency),
        )
        // The controller pauses every trigger (identities included) after an error from any
        // one of them; kube's default pause grows to 30 s+ over an apiserver outage and resets
        // only after two quiet minutes: after a restart nothing was reconciled for a minute.
        // Each watch already backs off on its own; this pause stays short.
        .trigger_backoff(WatchBackoff::new())
        .reconcile_all_on(reconcile_all_rx)
        .reconcile_on(namespace_rx)
        .reconcile_on(consumers_rx)
        .shutdown_on_signal();
    let ready_ctx = ctx.clone();
    tokio::spawn(async move {
        // The store's readiness signal wakes only its most recent waiter (a oneshot receiver
        // shared by clones), and the controller's own runner waits on it too: poll it afresh
        // each time instead of parking on it.
        loop {
            let synced = matches!(
                tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await,
                Ok(Ok(()))
            );
            if synced
                && ready_ctx.ca().is_some()
                && ready_ctx.names.synced()
                && ready_ctx
                    .webhook_ready
                    .load(std::sync::atomic::Ordering::Relaxed)
                && ready_ctx
                    .webhook_trusted
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ready_ctx
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        info!("CA loaded and initial sync done; ready");
    });

    controller
        .run(identity::reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    ca_task.abort();
    rollover_task.abort();
    trust_task.abort();
    restarts_task.abort();
    for task in [policy_task, namespace_task].into_iter().flatten() {
        task.abort();
    }
    // Hand the Lease over (released, not left to expire) so a standby takes over at once.
    let _ = stop_tx.send(true);
    let _ = leader_task.await;
    info!("controller stopped");
    Ok(())
}

/// Errors that the object's status could not carry: back off per object, with jitter, up to the
/// cap. Logged with their cause chain once.
fn error_policy(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.throttled() {
        // 429: the apiserver asks us to slow down; not a failure of the object.
        ctx.count_error("Throttled");
        debug!(
            namespace = obj.namespace().unwrap_or_default(),
            name = obj.name_any(),
            "throttled by the apiserver (429); retrying shortly"
        );
        return Action::requeue(error::throttle_pause(&Context::failure_key(&obj)));
    }
    ctx.count_error(err.category());
    let attempts = ctx.note_failure(&obj);
    let wait = crate::plan::status::failure_backoff(attempts, &obj.uid().unwrap_or_default());
    let cause = std::error::Error::source(err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        category = err.category(),
        error = %err,
        cause,
        attempts,
        retry_in_s = wait.as_secs(),
        "reconcile failed"
    );
    Action::requeue(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watch_backoff_grows_to_five_seconds_and_resets() {
        let mut b = WatchBackoff::new();
        let first: Vec<Duration> = b.by_ref().take(12).collect();
        assert!(first[0] <= WatchBackoff::MIN && first[0] >= WatchBackoff::MIN * 4 / 5);
        assert!(first.iter().all(|d| *d <= WatchBackoff::MAX));
        assert!(first[11] >= WatchBackoff::MAX * 4 / 5, "{first:?}");
        // Over a minute-long outage a watch reconnects at most ~20 times.
        let mut b2 = WatchBackoff::new();
        let mut spent = Duration::ZERO;
        let mut tries = 0;
        while spent < Duration::from_secs(60) {
            spent += b2.next().unwrap();
            tries += 1;
        }
        assert!(tries <= 20, "{tries} reconnects in a minute");
        // A reset right after an error (a relist starting) keeps the backoff where it was.
        b.reset();
        assert!(b.next().unwrap() >= WatchBackoff::MAX * 4 / 5);
        // One after a healthy stretch starts again from the minimum.
        b.last_error = Some(std::time::Instant::now() - WatchBackoff::MAX * 3);
        b.reset();
        assert!(b.next().unwrap() <= WatchBackoff::MIN);
    }
}
