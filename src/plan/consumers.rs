//! Restart orchestration, as pure functions: which workloads consume which identity Secrets,
//! which of those that opted in (`tlsid.dev/reload: restart`) must restart now, whether each has
//! caught up, and what to warn about.
//!
//! The record of what a workload's pods were started for lives on its pod template
//! ([`RESTARTED_FOR_ANNOTATION`]): a restart is one patch that writes the new record (and with it
//! a new template, which is what makes the workload controller roll). A pass compares the record
//! with the Secrets' current content (serial and trust-bundle digest, from Secret metadata alone),
//! so recomputing after a crash gives the same answer: a restart is never skipped (the record
//! still differs) nor doubled (the record already matches).
//!
//! A workload seen opted in with no record at all is restarted once ("opted in"): tlsid cannot
//! tell what content its pods mounted (a pod reads its Secret when it starts; when that was is
//! not on the workload), and a workload that never reloads and was started before the latest
//! rotation would otherwise serve an expiring certificate until it fails. One extra rollout when
//! opting in is the price of never leaving one behind.

use crate::api::{
    Consumer, MAX_CONSUMERS, RELOAD_ANNOTATION, RELOAD_RESTART, RESTART_REASON_ANNOTATION,
    RESTARTED_AT_ANNOTATION, RESTARTED_FOR_ANNOTATION,
};
use crate::plan::budget::{Admit, Budget};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, PodSpec, PodTemplateSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Default restart budget: restarts per second across the install, and burst.
pub const DEFAULT_RATE: f64 = 1.0;
pub const DEFAULT_BURST: u32 = 10;
/// Longest restart reason kept on the pod template and in Events.
const MAX_REASON: usize = 512;

/// The workload kinds tlsid restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }
}

/// How a workload consumes a Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    Volume,
    Projected,
    Env,
    EnvFrom,
}

/// A workload, as a pass needs it (built from the cached object by [`Workload::from_deployment`]
/// and its siblings).
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    /// The `tlsid.dev/reload` annotation, as written.
    pub reload: Option<String>,
    /// [`RESTARTED_FOR_ANNOTATION`] on the pod template.
    pub record: Option<String>,
    /// [`RESTARTED_AT_ANNOTATION`] on the pod template, when it parses.
    pub restarted_at: Option<jiff::Timestamp>,
    /// Secrets its pods consume, and how.
    pub secrets: BTreeMap<String, BTreeSet<Via>>,
    /// Secrets mounted (in part) with `subPath`/`subPathExpr`: those files never change.
    pub sub_path: BTreeSet<String>,
    /// `None`: the rollout has finished; otherwise what it waits for.
    pub rolling: Option<String>,
}

/// An identity Secret, from its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFacts {
    /// The identity that writes it (its `tlsid.dev/identity` label).
    pub identity: String,
    /// Its content as pods see it: the certificate's serial and the trust bundle's digest.
    pub digest: String,
}

/// The digest recorded for a Secret: `<serial>.<first 16 hex digits of the bundle digest>`.
pub fn secret_digest(serial: &str, bundle_digest: &str) -> String {
    let bundle: String = bundle_digest.chars().take(16).collect();
    format!("{serial}.{bundle}")
}

/// The record for these Secrets and digests: `name=digest` pairs, sorted, comma-separated.
pub fn format_record(current: &BTreeMap<String, String>) -> String {
    current
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A record read back (pairs that do not parse are dropped: they then differ, and the next
/// restart writes a clean record).
pub fn parse_record(record: &str) -> BTreeMap<String, String> {
    record
        .split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .collect()
}

/// A restart to perform: one merge patch of the workload's pod template.
#[derive(Clone, Debug, PartialEq)]
pub struct Restart {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The resourceVersion the decision was made on (the patch's precondition).
    pub resource_version: Option<String>,
    /// The new record ([`RESTARTED_FOR_ANNOTATION`]).
    pub record: String,
    /// Why, for the template annotation and the Event.
    pub reason: String,
}

impl Restart {
    /// The merge patch: the three template annotations, with the resourceVersion seen (a
    /// workload changed since, or a cache behind our own last patch, gets a 409, not a second
    /// restart).
    pub fn patch(&self, now: jiff::Timestamp) -> serde_json::Value {
        let mut metadata = serde_json::json!({});
        if let Some(rv) = &self.resource_version {
            metadata["resourceVersion"] = rv.clone().into();
        }
        serde_json::json!({
            "metadata": metadata,
            "spec": {"template": {"metadata": {"annotations": {
                RESTARTED_FOR_ANNOTATION: self.record,
                RESTARTED_AT_ANNOTATION: now.to_string(),
                RESTART_REASON_ANNOTATION: self.reason,
            }}}}
        })
    }
}

/// A Warning about a workload that mounts an identity Secret with `subPath`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubPathWarning {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub identity: String,
    pub secret: String,
}

impl SubPathWarning {
    pub fn message(&self) -> String {
        format!(
            "{} {} mounts Secret {} (identity {}) with subPath: files mounted with subPath never see a rotation, whatever the reload mode; mount the whole volume (a directory) instead",
            self.kind.as_str(),
            self.name,
            self.secret,
            self.identity
        )
    }
}

/// What one pass found.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    /// Restarts wanted now (before the rate budget).
    pub wanted: Vec<Restart>,
    /// Per identity (namespace, name): its consumers, as `status.consumers` should show them.
    pub consumers: HashMap<(String, String), Vec<Consumer>>,
    pub sub_path: Vec<SubPathWarning>,
    /// Opted-in workloads (consuming an identity Secret) not caught up: the CA rollover's gate.
    pub awaiting: u64,
}

/// One pass over every workload: what to restart, what each identity's consumers look like.
/// `secrets`: identity Secrets by (namespace, name). `done`: what this process already restarted
/// each workload (by uid) for, so that a cache that has not seen our own patch yet does not
/// restart it twice.
pub fn pass<'a>(
    workloads: impl IntoIterator<Item = &'a Workload>,
    secrets: &HashMap<(String, String), SecretFacts>,
    done: &HashMap<String, String>,
) -> Pass {
    let mut out = Pass::default();
    for w in workloads {
        let mut current = BTreeMap::new();
        let mut identities = BTreeSet::new();
        for name in w.secrets.keys() {
            if let Some(f) = secrets.get(&(w.namespace.clone(), name.clone())) {
                current.insert(name.clone(), f.digest.clone());
                identities.insert(f.identity.clone());
            }
        }
        if current.is_empty() {
            continue;
        }
        let opted_in = w.reload.as_deref().map(str::trim) == Some(RELOAD_RESTART);
        let record = format_record(&current);
        let recorded = w.record.as_deref() == Some(record.as_str());
        let caught_up = opted_in && recorded && w.rolling.is_none();
        if opted_in && !caught_up {
            out.awaiting += 1;
        }
        if opted_in && !recorded && done.get(&w.uid) != Some(&record) {
            out.wanted.push(Restart {
                kind: w.kind,
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                uid: w.uid.clone(),
                resource_version: w.resource_version.clone(),
                reason: reason(w.record.as_deref(), &current),
                record: record.clone(),
            });
        }
        let sub_path: BTreeSet<&String> = w
            .sub_path
            .iter()
            .filter(|s| current.contains_key(*s))
            .collect();
        for s in &sub_path {
            if let Some(f) = secrets.get(&(w.namespace.clone(), (*s).clone())) {
                out.sub_path.push(SubPathWarning {
                    kind: w.kind,
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    uid: w.uid.clone(),
                    identity: f.identity.clone(),
                    secret: (*s).clone(),
                });
            }
        }
        let message = if !sub_path.is_empty() {
            Some(format!(
                "mounts {} with subPath: those files never see a rotation",
                sub_path
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else if !opted_in {
            w.reload.as_deref().map(|other| {
                format!(
                    "{RELOAD_ANNOTATION}: {other:?} is not a reload mode tlsid knows (only {RELOAD_RESTART:?}); not restarted"
                )
            })
        } else if !recorded {
            Some("restart pending".into())
        } else {
            w.rolling.clone()
        };
        let consumer = Consumer {
            kind: w.kind.as_str().into(),
            name: w.name.clone(),
            reload: if opted_in { RELOAD_RESTART } else { "none" }.into(),
            caught_up,
            last_restart: w.restarted_at.map(Time),
            message,
        };
        for id in identities {
            out.consumers
                .entry((w.namespace.clone(), id))
                .or_default()
                .push(consumer.clone());
        }
    }
    for list in out.consumers.values_mut() {
        list.sort_by(|a, b| {
            (a.reload != RELOAD_RESTART, &a.kind, &a.name).cmp(&(
                b.reload != RELOAD_RESTART,
                &b.kind,
                &b.name,
            ))
        });
        list.truncate(MAX_CONSUMERS);
    }
    out.wanted
        .sort_by(|a, b| (&a.namespace, a.kind, &a.name).cmp(&(&b.namespace, b.kind, &b.name)));
    out.sub_path.sort();
    out
}

/// Why a workload restarts: which Secrets changed since the record, and how.
fn reason(record: Option<&str>, current: &BTreeMap<String, String>) -> String {
    let Some(record) = record else {
        return "opted in to restarts (tlsid.dev/reload: restart); no record of what its pods were started for".into();
    };
    let old = parse_record(record);
    let mut parts = Vec::new();
    for (name, now) in current {
        match old.get(name) {
            None => parts.push(format!("Secret {name} newly consumed")),
            Some(was) if was != now => {
                let (ws, wb) = was.split_once('.').unwrap_or((was, ""));
                let (ns, nb) = now.split_once('.').unwrap_or((now, ""));
                let mut what = Vec::new();
                if ws != ns {
                    what.push(format!("certificate {ws} → {ns}"));
                }
                if wb != nb {
                    what.push("trust bundle changed".to_string());
                }
                parts.push(format!("Secret {name} rotated ({})", what.join(", ")));
            }
            Some(_) => {}
        }
    }
    if parts.is_empty() {
        parts.push("its record of the Secrets it was started for is out of date".into());
    }
    let mut s = parts.join("; ");
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The restarts the global budget admits now, and when to look again for the rest. A workload
/// that waits keeps its reserved slot; one no longer wanted gives it back.
pub fn admit(
    budget: &mut Budget,
    wanted: Vec<Restart>,
    now_ms: i64,
) -> (Vec<Restart>, Option<Duration>) {
    let live: BTreeSet<&str> = wanted.iter().map(|r| r.uid.as_str()).collect();
    budget.retain(|k| live.contains(k), now_ms);
    let mut go = Vec::new();
    let mut wait: Option<Duration> = None;
    for r in wanted {
        match budget.admit(&r.uid, now_ms) {
            Admit::Go => go.push(r),
            Admit::Wait(d) => wait = Some(wait.map_or(d, |w| w.min(d))),
        }
    }
    (go, wait)
}

// === discovery: which Secrets a pod template consumes ===

/// Secrets a pod spec consumes (volumes, projected volumes, `env` and `envFrom` of every
/// container and init container), and those mounted with `subPath`.
pub fn secret_refs(spec: &PodSpec) -> (BTreeMap<String, BTreeSet<Via>>, BTreeSet<String>) {
    let mut refs: BTreeMap<String, BTreeSet<Via>> = BTreeMap::new();
    let mut by_volume: HashMap<&str, Vec<&str>> = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            refs.entry(name.into()).or_default().insert(Via::Volume);
            by_volume.entry(v.name.as_str()).or_default().push(name);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &src.secret {
                refs.entry(s.name.clone())
                    .or_default()
                    .insert(Via::Projected);
                by_volume
                    .entry(v.name.as_str())
                    .or_default()
                    .push(s.name.as_str());
            }
        }
    }
    let mut sub_path = BTreeSet::new();
    for c in containers(spec) {
        for e in c.env.iter().flatten() {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                refs.entry(r.name.clone()).or_default().insert(Via::Env);
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.secret_ref {
                refs.entry(r.name.clone()).or_default().insert(Via::EnvFrom);
            }
        }
        for m in c.volume_mounts.iter().flatten() {
            let with_sub_path = m.sub_path.as_deref().is_some_and(|p| !p.is_empty())
                || m.sub_path_expr.as_deref().is_some_and(|p| !p.is_empty());
            if with_sub_path && let Some(names) = by_volume.get(m.name.as_str()) {
                sub_path.extend(names.iter().map(|n| n.to_string()));
            }
        }
    }
    (refs, sub_path)
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

/// Cut a pod template down to what [`secret_refs`] reads and the annotations a pass needs, so
/// the controller's cache of every workload stays small: Secret volumes (and the Secret sources
/// of projected ones), and of each container its name, Secret env refs, `envFrom` Secret refs and
/// `subPath` mounts. [`secret_refs`] answers the same on the result.
pub fn prune_template(template: &mut PodTemplateSpec) {
    let annotations = template.metadata.as_ref().and_then(|m| {
        let a: BTreeMap<String, String> = m
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| {
                [RESTARTED_FOR_ANNOTATION, RESTARTED_AT_ANNOTATION].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!a.is_empty()).then_some(a)
    });
    template.metadata = Some(ObjectMeta {
        annotations,
        ..Default::default()
    });
    let Some(spec) = template.spec.take() else {
        return;
    };
    let volumes: Vec<Volume> = spec
        .volumes
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let projected = v.projected.and_then(|mut p| {
                let sources: Vec<_> = p
                    .sources
                    .take()
                    .into_iter()
                    .flatten()
                    .filter(|s| s.secret.is_some())
                    .map(|s| k8s_openapi::api::core::v1::VolumeProjection {
                        secret: s.secret,
                        ..Default::default()
                    })
                    .collect();
                (!sources.is_empty()).then(|| k8s_openapi::api::core::v1::ProjectedVolumeSource {
                    sources: Some(sources),
                    ..Default::default()
                })
            });
            (v.secret.is_some() || projected.is_some()).then(|| Volume {
                name: v.name,
                secret: v.secret,
                projected,
                ..Default::default()
            })
        })
        .collect();
    let prune = |c: Container| {
        let env: Vec<EnvVar> = c
            .env
            .into_iter()
            .flatten()
            .filter(|e| {
                e.value_from
                    .as_ref()
                    .is_some_and(|f| f.secret_key_ref.is_some())
            })
            .map(|e| EnvVar {
                name: e.name,
                value_from: e
                    .value_from
                    .map(|f| k8s_openapi::api::core::v1::EnvVarSource {
                        secret_key_ref: f.secret_key_ref,
                        ..Default::default()
                    }),
                ..Default::default()
            })
            .collect();
        let env_from: Vec<EnvFromSource> = c
            .env_from
            .into_iter()
            .flatten()
            .filter(|e| e.secret_ref.is_some())
            .map(|e| EnvFromSource {
                secret_ref: e.secret_ref,
                ..Default::default()
            })
            .collect();
        let mounts: Vec<VolumeMount> = c
            .volume_mounts
            .into_iter()
            .flatten()
            .filter(|m| m.sub_path.is_some() || m.sub_path_expr.is_some())
            .collect();
        Container {
            name: c.name,
            env: (!env.is_empty()).then_some(env),
            env_from: (!env_from.is_empty()).then_some(env_from),
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            ..Default::default()
        }
    };
    template.spec = Some(PodSpec {
        volumes: (!volumes.is_empty()).then_some(volumes),
        containers: spec.containers.into_iter().map(prune).collect(),
        init_containers: spec
            .init_containers
            .map(|cs| cs.into_iter().map(prune).collect()),
        ..Default::default()
    });
}

/// Keep of a workload's metadata only what a pass reads (no managedFields, labels or other
/// annotations).
pub fn prune_metadata(meta: &mut ObjectMeta) {
    let reload = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(RELOAD_ANNOTATION))
        .cloned();
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        generation: meta.generation,
        annotations: reload.map(|r| BTreeMap::from([(RELOAD_ANNOTATION.to_string(), r)])),
        ..Default::default()
    };
}

fn from_parts(
    kind: Kind,
    meta: &ObjectMeta,
    template: &PodTemplateSpec,
    rolling: Option<String>,
) -> Workload {
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    let (secrets, sub_path) = template.spec.as_ref().map(secret_refs).unwrap_or_default();
    Workload {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
        reload: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(RELOAD_ANNOTATION))
            .cloned(),
        record: annotations
            .and_then(|a| a.get(RESTARTED_FOR_ANNOTATION))
            .cloned(),
        restarted_at: annotations
            .and_then(|a| a.get(RESTARTED_AT_ANNOTATION))
            .and_then(|t| t.parse().ok()),
        secrets,
        sub_path,
        rolling,
    }
}

fn behind(generation: Option<i64>, observed: Option<i64>) -> Option<String> {
    (observed.unwrap_or(0) < generation.unwrap_or(0))
        .then(|| "its controller has not seen the latest template yet".to_string())
}

impl Workload {
    /// A Deployment; its rollout is finished as `kubectl rollout status` judges it.
    pub fn from_deployment(d: &Deployment) -> Self {
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        let updated = st.updated_replicas.unwrap_or(0);
        let rolling = behind(d.metadata.generation, st.observed_generation).or_else(|| {
            if updated < desired {
                Some(format!("rolling out: {updated} of {desired} pods updated"))
            } else if st.replicas.unwrap_or(0) > updated {
                Some(format!(
                    "rolling out: {} old pods still running",
                    st.replicas.unwrap_or(0) - updated
                ))
            } else if st.available_replicas.unwrap_or(0) < updated {
                Some(format!(
                    "rolling out: {} of {updated} updated pods available",
                    st.available_replicas.unwrap_or(0)
                ))
            } else {
                None
            }
        });
        let template = d.spec.as_ref().map(|s| &s.template);
        from_parts(
            Kind::Deployment,
            &d.metadata,
            template.unwrap_or(&Default::default()),
            rolling,
        )
    }

    pub fn from_stateful_set(s: &StatefulSet) -> Self {
        let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = s.status.clone().unwrap_or_default();
        let rolling = behind(s.metadata.generation, st.observed_generation).or_else(|| {
            let updated = st.updated_replicas.unwrap_or(0);
            let ready = st.ready_replicas.unwrap_or(0);
            if updated < desired {
                Some(format!("rolling out: {updated} of {desired} pods updated"))
            } else if ready < desired {
                Some(format!("rolling out: {ready} of {desired} pods ready"))
            } else {
                None
            }
        });
        let template = s.spec.as_ref().map(|s| &s.template);
        from_parts(
            Kind::StatefulSet,
            &s.metadata,
            template.unwrap_or(&Default::default()),
            rolling,
        )
    }

    pub fn from_daemon_set(d: &DaemonSet) -> Self {
        let st = d.status.clone().unwrap_or_default();
        let desired = st.desired_number_scheduled;
        let rolling = behind(d.metadata.generation, st.observed_generation).or_else(|| {
            let updated = st.updated_number_scheduled.unwrap_or(0);
            let available = st.number_available.unwrap_or(0);
            if updated < desired {
                Some(format!("rolling out: {updated} of {desired} pods updated"))
            } else if available < desired {
                Some(format!(
                    "rolling out: {available} of {desired} pods available"
                ))
            } else {
                None
            }
        });
        let template = d.spec.as_ref().map(|s| &s.template);
        from_parts(
            Kind::DaemonSet,
            &d.metadata,
            template.unwrap_or(&Default::default()),
            rolling,
        )
    }
}

#[cfg(test)]
mod tests;
