//! The CA rollover's I/O: the leader observes (the CA Secret as last accepted, identity statuses
//! and Secret metadata from the controller's caches, the demo pods' trusted roots), asks
//! [`crate::plan::rollover::step`] what to do, and writes the CA Secret once per step with a
//! resourceVersion precondition. Identities follow the CA Secret through the existing CA watch:
//! a new bundle is written into every identity Secret, a new signer re-issues every leaf at the
//! issuance budget.

use super::{
    Context,
    ca::{self, SeenCa},
    leader::Role,
};
use crate::{
    api::{GoDuration, IDENTITY_LABEL, TRUST_BUNDLE_ANNOTATION, conditions::READY},
    api::{TlsAuthority, TlsAuthorityStatus, authority::TlsAuthoritySpec},
    pki::{Authority, bundle_digest, fingerprint},
    plan::{
        ca_state::CaState,
        rollover::{self, Action, Consumers, Mode, Phase, Request, Settings, Source, World},
    },
};
use k8s_openapi::{
    api::core::v1::{Pod, Secret},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams, PartialObjectMeta},
    runtime::{events::EventType, reflector::Store},
};
use std::{collections::BTreeSet, sync::Arc, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Settings of the rollover (flags of the controller).
#[derive(Clone, Debug)]
pub struct RolloverConfig {
    /// Lifetime of a root tlsid generates (`--ca-lifetime`).
    pub ca_lifetime: Duration,
    /// `--trust-propagation-delay`.
    pub propagation_delay: Duration,
    /// `--ca-rotate-at`: fraction of a generated root's life after which it rolls over.
    pub rotate_at: f64,
    /// `--observe-demo-trust`: wait for every demo pod to report the next root.
    pub observe_demo_trust: bool,
}

impl Default for RolloverConfig {
    fn default() -> Self {
        Self {
            ca_lifetime: crate::pki::ca::ROOT_LIFETIME,
            propagation_delay: rollover::DEFAULT_PROPAGATION_DELAY,
            rotate_at: rollover::DEFAULT_ROTATE_AT,
            observe_demo_trust: true,
        }
    }
}

/// The controller's caches the rollover counts from.
pub struct Stores {
    pub identities: Store<DynamicObject>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
}

/// Event reasons on the CA Secret.
pub const STARTED: &str = "CaRolloverStarted";
pub const PHASE: &str = "CaRolloverPhase";
pub const COMPLETED: &str = "CaRolloverCompleted";
pub const DECLINED: &str = "CaRolloverDeclined";
pub const EXPIRING: &str = "CaExpiringSoon";

/// What the leader counted.
#[derive(Debug, Default)]
struct Counts {
    secrets_awaiting_bundle: u64,
    trust_bundles_awaiting: u64,
    leaves_on_previous: u64,
    longest_leaf: Duration,
}

/// Reasons of `Ready=False` under which tlsid writes nothing to the identity's Secret (not ours,
/// a spec that cannot be applied, an object that cannot be read): its Secret is not waited for.
/// (Identities waiting to renew, or refused for their names, still get every new bundle.)
const BLOCKED: [&str; 3] = ["InvalidSpec", "SecretConflict", "UnreadableObject"];

fn count(ctx: &Context, state: &CaState) -> Counts {
    let mut out = Counts::default();
    let Some(stores) = ctx.stores.get() else {
        return out;
    };
    let digest = bundle_digest(state.current.bundle_pem().as_bytes());
    out.trust_bundles_awaiting = super::trust::awaiting(ctx, &state.current.bundle_pem());
    let previous = state.previous.as_ref().map(|p| p.fingerprint.as_str());
    // The apiserver verifies the webhook with the configuration's caBundle: it must trust the
    // next root before the webhook's certificate is re-issued under it.
    if ctx
        .config
        .webhook
        .as_ref()
        .is_some_and(|w| w.configuration.is_some())
        && ctx
            .webhook_bundle
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            != Some(digest.as_str())
    {
        out.secrets_awaiting_bundle += 1;
    }
    for obj in stores.identities.state() {
        if crate::api::install_of(obj.labels()) != ctx.config.install {
            continue;
        }
        let status = obj.data.get("status");
        let ready_reason = status
            .and_then(|s| s.get("conditions"))
            .and_then(|c| c.as_array())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("type").and_then(|t| t.as_str()) == Some(READY))
            })
            .filter(|c| c.get("status").and_then(|s| s.as_str()) == Some("False"))
            .and_then(|c| c.get("reason"))
            .and_then(|r| r.as_str());
        if ready_reason.is_some_and(|r| BLOCKED.contains(&r)) {
            continue;
        }
        // A duration that does not parse is InvalidSpec (skipped above once reported); until
        // then count the longest lifetime the API allows, so no old leaf outlives the horizon.
        let duration = match obj
            .data
            .get("spec")
            .and_then(|s| s.get("duration"))
            .and_then(|d| d.as_str())
        {
            None => Duration::from_secs(crate::api::DEFAULT_DURATION_SECS),
            Some(d) => GoDuration(d.to_string())
                .parse()
                .unwrap_or(Duration::from_secs(crate::api::MAX_DURATION_SECS)),
        };
        out.longest_leaf = out.longest_leaf.max(duration);
        if previous.is_some()
            && status
                .and_then(|s| s.get("caFingerprint"))
                .and_then(|f| f.as_str())
                == previous
        {
            out.leaves_on_previous += 1;
        }
        let secret_name = obj
            .data
            .get("spec")
            .and_then(|s| s.get("secretName"))
            .and_then(|n| n.as_str())
            .map_or_else(
                || crate::api::default_secret_name(&obj.name_any()),
                str::to_string,
            );
        let ns = obj.namespace().unwrap_or_default();
        let key = kube::runtime::reflector::ObjectRef::new(&secret_name).within(&ns);
        if let Some(secret) = stores.secrets.get(&key)
            && secret.labels().get(IDENTITY_LABEL) == Some(&obj.name_any())
            && secret.annotations().get(TRUST_BUNDLE_ANNOTATION) != Some(&digest)
        {
            out.secrets_awaiting_bundle += 1;
        }
    }
    out
}

/// Ask every running demo pod of identities this install serves which roots it trusts. Pods that
/// cannot be listed count as one consumer that does not trust yet (the gate holds), with why.
async fn consumers(ctx: &Context, next: &Authority) -> (Consumers, Option<String>) {
    let mut out = Consumers {
        observed: true,
        ..Default::default()
    };
    let wanted: BTreeSet<String> = next.anchors().iter().map(|r| fingerprint(r)).collect();
    let pods: Api<Pod> = match &ctx.config.watch_namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let list = match pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=tlsid-demo"))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            out.total = 1;
            return (
                out,
                Some(format!(
                    "cannot list the demo pods to ask which roots they trust: {e}"
                )),
            );
        }
    };
    let served: BTreeSet<(String, String)> = ctx
        .stores
        .get()
        .map(|s| {
            s.identities
                .state()
                .iter()
                .filter(|o| crate::api::install_of(o.labels()) == ctx.config.install)
                .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
                .collect()
        })
        .unwrap_or_default();
    for pod in list {
        let instance = pod
            .labels()
            .get("app.kubernetes.io/instance")
            .cloned()
            .unwrap_or_default();
        if !served.contains(&(pod.namespace().unwrap_or_default(), instance)) {
            continue;
        }
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running")
            && pod.metadata.deletion_timestamp.is_none();
        let Some(ip) = status.and_then(|s| s.pod_ip.clone()).filter(|_| running) else {
            continue;
        };
        out.total += 1;
        match scrape(&ip, crate::api::DEMO_METRICS_PORT).await {
            Ok(body) => {
                let trusted = crate::demo::trusted_roots(&body);
                if wanted.iter().all(|w| trusted.contains(w)) {
                    out.trusting_next += 1;
                } else {
                    debug!(
                        pod = pod.name_any(),
                        "demo pod does not trust the next root yet"
                    );
                }
            }
            Err(e) => {
                debug!(pod = pod.name_any(), error = %e, "cannot read the demo pod's metrics")
            }
        }
    }
    (out, None)
}

/// GET /metrics over plain HTTP/1.0, bounded in time and size.
async fn scrape(ip: &str, port: i32) -> std::io::Result<String> {
    let host = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(&host).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nAccept: text/plain\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        stream.take(1 << 20).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

/// Whether the identity and Secret caches have listed (and the controller is ready).
async fn caches_synced(ctx: &Context) -> bool {
    let Some(stores) = ctx.stores.get() else {
        return false;
    };
    let listed = |r: Result<Result<(), _>, _>| matches!(r, Ok(Ok(())));
    ctx.ready.load(std::sync::atomic::Ordering::Relaxed)
        && listed(
            tokio::time::timeout(Duration::from_millis(50), stores.secrets.wait_until_ready())
                .await,
        )
}

/// How often the authority's status may be rewritten when only its counts changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// The `TlsAuthority` status for what the leader sees now.
fn authority_status(
    state: &CaState,
    step: &rollover::Step,
    counts: &Counts,
    previous: Option<&TlsAuthorityStatus>,
    now: jiff::Timestamp,
) -> TlsAuthorityStatus {
    let r = &state.record;
    let rolling = r.phase != Phase::Stable;
    let mut conditions = Vec::new();
    if step.expiring_user_ca {
        let since = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == "CaExpiring"))
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        conditions.push(Condition {
            type_: "CaExpiring".into(),
            status: "True".into(),
            reason: "CaExpiring".into(),
            message: step.waiting_for.clone().unwrap_or_default(),
            last_transition_time: since,
            observed_generation: None,
        });
    }
    TlsAuthorityStatus {
        waiting_for: step.waiting_for.clone().filter(|_| rolling),
        leaves_on_previous: Some(i64::try_from(counts.leaves_on_previous).unwrap_or(i64::MAX)),
        conditions,
        ..state.summary()
    }
}

/// Write the authority's status (creating the object first if needed). `known`: the status is
/// known to be something else (written by this leader); otherwise it is read first and left
/// alone when it already says this (a new leader, a restart: no write).
async fn write_authority(
    ctx: &Context,
    status: &TlsAuthorityStatus,
    known: bool,
) -> anyhow::Result<()> {
    let api: Api<TlsAuthority> = Api::all(ctx.client.clone());
    let name = &ctx.config.authority;
    let existing = if known {
        None
    } else {
        api.get_opt(name).await?
    };
    if !known && existing.as_ref().and_then(|o| o.status.as_ref()) == Some(status) {
        return Ok(());
    }
    if !known && existing.is_none() {
        let mut obj = TlsAuthority::new(name, TlsAuthoritySpec {});
        obj.metadata.labels = Some(std::collections::BTreeMap::from([(
            crate::api::MANAGED_BY_LABEL.to_string(),
            crate::api::MANAGED_BY_VALUE.to_string(),
        )]));
        ctx.metrics.wrote("authority");
        match api.create(&ca::create_params(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let patch = serde_json::json!({
        "apiVersion": "tlsid.dev/v1alpha1",
        "kind": "TlsAuthority",
        "status": status,
    });
    ctx.metrics.wrote("authority");
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(crate::api::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Run the rollover for as long as the controller runs; only the leader acts.
pub async fn run(ctx: Arc<Context>) {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let name = ctx.config.ca_secret.clone();
    let settings = Settings {
        propagation_delay: ctx.config.rollover.propagation_delay,
        rotate_at: ctx.config.rollover.rotate_at,
    };
    let mut warned_expiring: Option<String> = None;
    let mut last_waiting: Option<String> = None;
    let mut last_error: Option<String> = None;
    // Backoff after steps the apiserver refused.
    let mut failures: u32 = 0;
    let mut retry_at: Option<std::time::Instant> = None;
    // The authority status last written (by this replica, in this term) and when.
    let mut written: Option<(TlsAuthorityStatus, std::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = ctx.rollover_wake.notified() => {}
            _ = tokio::time::sleep(rollover::POLL) => {}
        }
        if ctx.leadership.role() != Role::Leader {
            written = None;
            continue;
        }
        // Nothing is counted from caches that have not listed yet: empty ones would read as
        // "every Secret holds the bundle, no leaf on the previous CA".
        if !caches_synced(&ctx).await {
            continue;
        }
        let Some(seen) = ctx.ca_seen() else { continue };
        if seen.resource_version.is_none() {
            continue;
        }
        let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let edit = seen.edited.as_ref().map(|_| Request {
            token: String::new(),
            source: Source::Edited,
            mode: Mode::Normal,
        });
        let request = edit.or_else(|| seen.request.clone());
        // Workloads that restart to load certificates: not counted before their caches list.
        let Some(awaiting_restart) = super::restarts::awaiting(&ctx) else {
            continue;
        };
        let state = &seen.state;
        let counts = count(&ctx, state);
        ctx.metrics
            .leaves_on_previous
            .set(i64::try_from(counts.leaves_on_previous).unwrap_or(i64::MAX));
        let consumers = match (&state.next, state.record.phase) {
            (Some(next), Phase::WaitForTrust)
                if ctx.config.rollover.observe_demo_trust && ctx.config.demo_workloads =>
            {
                let (c, error) = consumers(&ctx, next).await;
                if error != last_error
                    && let Some(e) = &error
                {
                    warn!("{e}");
                }
                last_error = error;
                c
            }
            _ => Consumers::default(),
        };
        let current = CaState::facts(&state.current, state.generated);
        let next = state
            .next
            .as_ref()
            .map(|n| CaState::facts(n, state.next_generated));
        let world = World {
            now,
            record: &state.record,
            current: &current,
            next: next.as_ref(),
            previous: state.previous.as_ref().map(|p| p.fingerprint.as_str()),
            request: request.as_ref(),
            secrets_awaiting_bundle: counts.secrets_awaiting_bundle,
            trust_bundles_awaiting: counts.trust_bundles_awaiting,
            consumers,
            awaiting_restart,
            leaves_on_previous: counts.leaves_on_previous,
            longest_leaf: counts.longest_leaf,
        };
        let step = rollover::step(&world, &settings);
        ctx.metrics
            .ca_expiring
            .set(i64::from(step.expiring_user_ca));
        if step.expiring_user_ca {
            if warned_expiring.as_deref() != Some(state.current.fingerprint()) {
                warned_expiring = Some(state.current.fingerprint().to_string());
                warn!(
                    not_after = %state.current.not_after(),
                    "the CA you supplied is past its rotation point; supply the next one (tlsid ca rotate --from-secret NAME)"
                );
                publish(
                    &ctx,
                    &api,
                    &name,
                    EventType::Warning,
                    EXPIRING,
                    step.waiting_for.clone().unwrap_or_default(),
                )
                .await;
            }
        } else if step.waiting_for != last_waiting
            && let Some(w) = &step.waiting_for
        {
            info!(
                phase = state.record.phase.as_str(),
                "CA rollover waits for {w}"
            );
        }
        last_waiting = step.waiting_for.clone();
        let status = authority_status(state, &step, &counts, written.as_ref().map(|(s, _)| s), now);
        let due = match &written {
            None => true,
            Some((old, at)) => {
                *old != status
                    && (old.phase != status.phase
                        || old.conditions != status.conditions
                        || at.elapsed() >= STATUS_INTERVAL)
            }
        };
        if due {
            match write_authority(&ctx, &status, written.is_some()).await {
                Ok(()) => written = Some((status, std::time::Instant::now())),
                Err(e) => debug!(error = %e, "cannot write the TlsAuthority status; retrying"),
            }
        }
        if step.action == Action::Nothing || retry_at.is_some_and(|t| std::time::Instant::now() < t)
        {
            continue;
        }
        if let Err(e) = act(
            &ctx,
            &api,
            &name,
            &seen,
            &step.action,
            request.as_ref(),
            now,
            counts.longest_leaf,
        )
        .await
        {
            failures = failures.saturating_add(1);
            let wait = rollover::POLL
                .saturating_mul(1 << failures.min(8))
                .min(Duration::from_secs(300));
            warn!(error = %e, action = ?step.action, "CA rollover step not taken; retrying in {}s", wait.as_secs());
            retry_at = Some(std::time::Instant::now() + wait);
        } else {
            failures = 0;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn act(
    ctx: &Context,
    api: &Api<Secret>,
    name: &str,
    seen: &SeenCa,
    action: &Action,
    request: Option<&Request>,
    now: jiff::Timestamp,
    longest_leaf: Duration,
) -> anyhow::Result<()> {
    let mut action = action.clone();
    // The CA a rollover starts with.
    let next = match &action {
        Action::Begin { source, .. } => match source {
            Source::Generate => Some((
                Arc::new(Authority::generate_root_for(
                    now,
                    ctx.config.rollover.ca_lifetime,
                )?),
                true,
            )),
            Source::Edited => seen.edited.clone().map(|a| (a, false)),
            Source::Secret(from) => match read_next(ctx, from).await {
                Ok(ca) => Some((Arc::new(ca), false)),
                Err(why) => {
                    action = Action::Decline(why);
                    None
                }
            },
        },
        _ => None,
    };
    if let (Action::Begin { .. }, Some((ca, false))) = (&action, &next)
        && let Some(why) = seen.state.refuse_next(
            ca,
            longest_leaf,
            ctx.config.rollover.propagation_delay * 2,
            now,
        )
    {
        action = Action::Decline(why);
    }
    let next = next.filter(|_| matches!(action, Action::Begin { .. }));
    let record = rollover::next_record(&seen.state.record, &action, now, request);
    let state = seen.state.apply(&action, record, next, now)?;
    let secret = ca::ca_secret(name, &state, &seen.annotations);
    // One JSON patch, tested against the resourceVersion the step was decided on: the whole data
    // and tlsid's annotations replaced at once, or nothing (another writer came first).
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": seen.resource_version},
        {"op": "add", "path": "/metadata/annotations", "value": secret.metadata.annotations},
        {"op": "add", "path": "/data", "value": secret.data},
    ]))?;
    ctx.metrics.wrote("ca_secret");
    let written = match api
        .patch(
            name,
            &ca::patch_params(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(w) => w,
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
            // The `test` of the resourceVersion failed (another writer came first: the watch
            // brings its state), or something refused the patch itself.
            let now_rv = api
                .get_opt(name)
                .await?
                .and_then(|s| s.metadata.resource_version);
            if now_rv != seen.resource_version {
                debug!("the CA Secret changed under the rollover step; looking again");
                return Ok(());
            }
            anyhow::bail!("the apiserver refused the CA Secret patch: {}", s.message);
        }
        Err(e) => return Err(e.into()),
    };
    // What was written comes back through the CA watch, in order, which accepts it and
    // reconciles every identity when their CA changed; the next step waits for it (a step taken
    // on the state before would fail its resourceVersion test).
    let (kind, reason, note) = describe(&action, &seen.state, &state);
    info!(phase = state.record.phase.as_str(), "{note}");
    if let Action::Begin { trigger, .. } = &action {
        ctx.metrics
            .rollovers
            .get_or_create(&super::metrics::ReasonLabels {
                reason: trigger.as_str().into(),
            })
            .inc();
    }
    ctx.publish_ref(&ca::secret_ref(&written), kind, reason, note)
        .await;
    Ok(())
}

/// The next CA from a Secret in the install's namespace.
async fn read_next(ctx: &Context, from: &str) -> Result<Authority, String> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    match api.get_opt(from).await {
        Ok(Some(s)) => ca::authority_from_secret(&s, jiff::Timestamp::now())
            .map_err(|e| format!("Secret {from} cannot be the next CA: {e}")),
        Ok(None) => Err(format!(
            "Secret {from} (the next CA) does not exist in namespace {}",
            ctx.config.namespace
        )),
        Err(e) => Err(format!("Secret {from} (the next CA) cannot be read: {e}")),
    }
}

fn short(fp: &str) -> &str {
    &fp[..fp.len().min(16)]
}

fn describe(
    action: &Action,
    before: &CaState,
    after: &CaState,
) -> (EventType, &'static str, String) {
    match action {
        Action::Begin { trigger, mode, .. } => (
            EventType::Normal,
            STARTED,
            format!(
                "CA rollover started ({}, {} mode): next CA {} published in the trust bundle{}; {} keeps signing",
                trigger.as_str(),
                mode.as_str(),
                after.next.as_ref().map_or("", |n| short(n.fingerprint())),
                if after.record.new_trust { "" } else { " (its root is already trusted: no propagation needed)" },
                short(after.current.fingerprint()),
            ),
        ),
        Action::Enter(p) => (
            EventType::Normal,
            PHASE,
            match p {
                Phase::WaitForTrust => "every identity Secret holds the bundle with the next root; waiting for consumers to load it".to_string(),
                Phase::Drain => "no identity holds a certificate of the previous CA; waiting before its root leaves the bundle".to_string(),
                Phase::Publish => "an identity Secret fell behind the bundle; waiting for it again".to_string(),
                Phase::Switch => "a certificate of the previous CA appeared again; re-issuing it".to_string(),
                Phase::Stable => String::new(),
            },
        ),
        Action::Switch { .. } => (
            EventType::Normal,
            PHASE,
            format!(
                "CA {} signs now; every certificate of {} is re-issued at the issuance budget; its key is destroyed",
                short(after.current.fingerprint()),
                short(before.current.fingerprint())
            ),
        ),
        Action::Retire => (
            EventType::Normal,
            COMPLETED,
            format!(
                "CA rollover completed: the previous root left the trust bundle; {} root(s) trusted, {} signs",
                after.current.roots().len(),
                short(after.current.fingerprint())
            ),
        ),
        Action::Escalate => (
            EventType::Warning,
            PHASE,
            "the rollover in progress is now an emergency one: the previous root is retired as soon as no identity holds a certificate it signed".to_string(),
        ),
        Action::Decline(why) => (EventType::Warning, DECLINED, why.clone()),
        Action::Reset(why) => (
            EventType::Warning,
            DECLINED,
            format!("the recorded rollover could not continue ({why}); back to Stable with the signer and bundle unchanged"),
        ),
        Action::Nothing => (EventType::Normal, PHASE, String::new()),
    }
}

async fn publish(
    ctx: &Context,
    api: &Api<Secret>,
    name: &str,
    kind: EventType,
    reason: &str,
    note: String,
) {
    if let Ok(Some(s)) = api.get_opt(name).await {
        ctx.publish_ref(&ca::secret_ref(&s), kind, reason, note)
            .await;
    }
}
