//! The reconcile loop: the only code that talks to the apiserver.
//!
//! A reconcile reads the identity and its Secret, asks the pure policy whether to re-issue, writes
//! only what differs (Secret by server-side apply or create, status by server-side apply), and
//! requeues at the renewal time.

pub mod ca;
mod demo;
pub mod metrics;
pub mod server;
pub mod status;

use crate::{
    api::{FIELD_MANAGER, RENEW_ANNOTATION, TlsIdentity, TlsIdentityStatus},
    pki::{self, Authority, CertificateInfo, IssuanceRequest, PolicyInput, ReissueReason},
    resources::{self, SecretContent},
};
use futures::StreamExt;
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use metrics::Metrics;
use status::{ISSUING, READY, failure_backoff, ready_reason, set_condition};
use std::{
    sync::{Arc, RwLock, atomic::AtomicBool},
    time::Duration,
};
use tracing::{debug, info, instrument, warn};

/// How long a terminal condition (a conflicting Secret) waits before a quiet re-check. A change to
/// the identity triggers a reconcile at once; this only catches a user deleting their Secret.
const CONFLICT_RECHECK: Duration = Duration::from_secs(600);

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
}

/// Shared state, built once in `run`.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Metrics,
    recorder: Recorder,
    ca: RwLock<Option<Arc<Authority>>>,
    pub ready: AtomicBool,
}

impl Context {
    pub fn new(client: Client, config: Config) -> Self {
        let reporter = Reporter {
            controller: "tlsid".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics: Metrics::default(),
            ca: RwLock::new(None),
            ready: AtomicBool::new(false),
        }
    }

    pub fn ca(&self) -> Option<Arc<Authority>> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_ca(&self, ca: Arc<Authority>) {
        self.metrics.ca_expiration.set(ca.not_after().as_second());
        *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Some(ca);
    }

    async fn publish(&self, obj: &TlsIdentity, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

/// Reconcile errors. Each has a stable category: a metric label and an Event reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the cluster CA is not loaded yet")]
    CaNotReady,
    #[error("reading from the apiserver failed: {0}")]
    Read(#[source] kube::Error),
    #[error("writing the Secret failed: {0}")]
    SecretWrite(#[source] kube::Error),
    #[error("writing status failed: {0}")]
    StatusWrite(#[source] kube::Error),
    #[error("applying the demo workload failed: {0}")]
    DemoWrite(#[source] kube::Error),
    #[error("issuing the certificate failed: {0}")]
    Issuance(String),
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Error::CaNotReady => "CaNotReady",
            Error::Read(_) => "ApiRead",
            Error::SecretWrite(_) => "SecretWrite",
            Error::StatusWrite(_) => "StatusWrite",
            Error::DemoWrite(_) => "DemoWrite",
            Error::Issuance(_) => "IssuanceFailed",
        }
    }
}

/// Run the controller until SIGTERM/SIGINT.
pub async fn run(ctx: Arc<Context>) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let (identities, secrets, deployments, services) = match &ctx.config.watch_namespace {
        Some(ns) => (
            Api::<TlsIdentity>::namespaced(client.clone(), ns),
            Api::<Secret>::namespaced(client.clone(), ns),
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns),
            Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // Only Secrets we manage: never every Secret in the cluster.
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::api::MANAGED_BY_LABEL,
        crate::api::MANAGED_BY_VALUE
    ));

    let (ca_changed_tx, ca_changed_rx) = futures::channel::mpsc::channel::<()>(1);
    let ca_task = tokio::spawn(ca::watch(ctx.clone(), ca_changed_tx));

    let controller = Controller::new(identities, watcher::Config::default())
        .owns(secrets, managed.clone())
        .owns(deployments, managed.clone())
        .owns(services, managed)
        .with_config(
            kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency),
        )
        .reconcile_all_on(ca_changed_rx)
        .shutdown_on_signal();
    let store = controller.store();
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
            if synced && ready_ctx.ca().is_some() {
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
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    ca_task.abort();
    info!("controller stopped");
    Ok(())
}

fn error_policy(obj: Arc<TlsIdentity>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&metrics::ErrorLabels {
            category: err.category().into(),
        })
        .inc();
    warn!(namespace = obj.namespace().unwrap_or_default(), name = obj.name_any(), category = err.category(), error = %err, "reconcile failed");
    // Issuance failures are recorded in status and back off from there (see `reconcile`);
    // transient API errors retry with the same curve, starting from the recorded attempts.
    let attempts = obj
        .status
        .as_ref()
        .and_then(|s| s.failed_issuance_attempts)
        .unwrap_or(0);
    Action::requeue(failure_backoff(attempts + 1))
}

#[instrument(skip_all, fields(namespace = obj.namespace().unwrap_or_default(), name = obj.name_any()))]
async fn reconcile(obj: Arc<TlsIdentity>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciliations.inc();
    let result = reconcile_inner(&obj, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(obj: &TlsIdentity, ctx: &Context) -> Result<Action, Error> {
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    // Whole seconds: certificates and status timestamps carry no more, and comparing a
    // nanosecond `now` with them would make an unchanged status look changed.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default();
    let ca = ctx.ca().ok_or(Error::CaNotReady)?;
    let old_status = obj.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    status.observed_generation = obj.metadata.generation;
    status.secret_name = Some(obj.secret_name());

    let request = match IssuanceRequest::from_spec(&obj.spec) {
        Ok(r) => r,
        Err(invalid) => {
            set_condition(
                &mut status.conditions,
                READY,
                false,
                "InvalidSpec",
                invalid.0.clone(),
                obj.metadata.generation,
                now,
            );
            finish_terminal(obj, ctx, &old_status, status, "InvalidSpec", invalid.0).await?;
            return Ok(Action::await_change());
        }
    };

    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let existing = secrets
        .get_opt(&obj.secret_name())
        .await
        .map_err(Error::Read)?;
    if let Some(secret) = &existing
        && !resources::controlled_by(secret, &uid)
    {
        let msg = format!(
            "Secret {} exists and is not controlled by this TlsIdentity; tlsid will not modify it. Delete it or choose another secretName.",
            obj.secret_name()
        );
        set_condition(
            &mut status.conditions,
            READY,
            false,
            "SecretConflict",
            msg.clone(),
            obj.metadata.generation,
            now,
        );
        finish_terminal(obj, ctx, &old_status, status, "SecretConflict", msg).await?;
        return Ok(Action::requeue(CONFLICT_RECHECK));
    }

    // The demo workload does not depend on the certificate: pods wait for the Secret volume.
    let demo_requeue = demo::reconcile(obj, ctx, &mut status, now).await?;

    let renew_requested = obj.annotations().get(RENEW_ANNOTATION).map(String::as_str);
    let input = PolicyInput {
        secret: existing.as_ref().map(resources::secret_data),
        request: &request,
        ca: &ca,
        now,
        seed: &uid,
        renew_requested,
        renew_handled: old_status.last_renew_request.as_deref(),
    };
    let action = match pki::should_reissue(&input) {
        Ok((info, renew_at)) => {
            keep_current(
                obj,
                ctx,
                &ca,
                existing.as_ref(),
                &info,
                renew_at,
                old_status,
                status,
                now,
            )
            .await
        }
        Err(reason) => {
            issue_new(
                obj,
                ctx,
                &ca,
                &request,
                existing.as_ref(),
                reason,
                old_status,
                status,
                now,
            )
            .await
        }
    }?;
    Ok(match demo_requeue {
        Some(soon) => Action::requeue(soon),
        None => action,
    })
}

/// The stored certificate is good: make sure the Secret carries the current bundle and template,
/// and that status says so. Zero writes when both already hold.
#[allow(clippy::too_many_arguments)]
async fn keep_current(
    obj: &TlsIdentity,
    ctx: &Context,
    ca: &Authority,
    existing: Option<&Secret>,
    info: &CertificateInfo,
    renew_at: jiff::Timestamp,
    old_status: TlsIdentityStatus,
    mut status: TlsIdentityStatus,
    now: jiff::Timestamp,
) -> Result<Action, Error> {
    let secret = existing.expect("policy keeps only an existing Secret");
    // A reconcile triggered by our own Secret write may see a cached identity from before the
    // status written with it: the fresh copy is on its way, so wait for it rather than overwrite
    // newer status (revision, Issuing reason) with one rebuilt from stale input. Bounded: after
    // STALE_STATUS_GRACE the status is written regardless.
    if old_status.serial_number.as_deref() != Some(info.serial_hex.as_str())
        && written_by_us_within(secret, now, STALE_STATUS_GRACE)
    {
        debug!("cached status predates the Secret just written; waiting for the fresh copy");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let data = resources::secret_data(secret);
    let mut content = SecretContent {
        tls_crt: data.tls_crt.unwrap_or_default().to_vec(),
        tls_key: data.tls_key.unwrap_or_default().to_vec(),
        ca_crt: ca.bundle_pem().into_bytes(),
        ..Default::default()
    };
    let keystore_problem = add_keystores(ctx, obj, &mut content, Some(secret))
        .await?
        .err();
    let desired = resources::desired_secret(obj, &content, &info.serial_hex);
    if resources::secret_needs_update(secret, &desired) {
        info!(
            secret = obj.secret_name(),
            "updating Secret metadata or trust bundle"
        );
        apply_secret(ctx, obj, desired, Some(secret)).await?;
    }
    fill_certificate_status(&mut status, info, renew_at, ca);
    let generation = obj.metadata.generation;
    let msg = format!(
        "certificate valid until {}, renews at {renew_at}",
        info.not_after
    );
    set_condition(
        &mut status.conditions,
        READY,
        true,
        "Issued",
        msg,
        generation,
        now,
    );
    let renew_at = report_keystore_problem(
        obj,
        ctx,
        &old_status,
        &mut status,
        keystore_problem,
        renew_at,
        now,
    )
    .await;
    if status.conditions.iter().all(|c| c.type_ != ISSUING)
        || status.failed_issuance_attempts.is_some()
    {
        set_condition(
            &mut status.conditions,
            ISSUING,
            false,
            "UpToDate",
            "no issuance needed".into(),
            generation,
            now,
        );
    }
    status.failed_issuance_attempts = None;
    status.last_failure_time = None;
    write_status(ctx, obj, &old_status, &status).await?;
    record_metrics(ctx, obj, info.not_after, renew_at, "True");
    Ok(requeue_at(renew_at, now))
}

#[allow(clippy::too_many_arguments)]
async fn issue_new(
    obj: &TlsIdentity,
    ctx: &Context,
    ca: &Arc<Authority>,
    request: &IssuanceRequest,
    existing: Option<&Secret>,
    reason: ReissueReason,
    old_status: TlsIdentityStatus,
    mut status: TlsIdentityStatus,
    now: jiff::Timestamp,
) -> Result<Action, Error> {
    let generation = obj.metadata.generation;
    // Back off after failures, measured from the recorded failure so restarts do not reset it.
    if let (Some(attempts), Some(Time(last))) = (
        old_status.failed_issuance_attempts,
        &old_status.last_failure_time,
    ) {
        let retry_at = *last + failure_backoff(attempts);
        if now < retry_at {
            return Ok(requeue_at(retry_at, now));
        }
    }
    info!(
        reason = reason.reason(),
        detail = reason.message(),
        "issuing certificate"
    );

    let issued = {
        let (req, ca) = (request.clone(), ca.clone());
        tokio::task::spawn_blocking(move || pki::issue(&req, &ca, now))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    };
    let written = match issued {
        Ok(cert) => {
            let mut content = SecretContent {
                tls_crt: cert.chain_pem.clone().into_bytes(),
                tls_key: cert.key_pem.clone().into_bytes(),
                ca_crt: ca.bundle_pem().into_bytes(),
                ..Default::default()
            };
            match add_keystores(ctx, obj, &mut content, existing).await {
                Ok(problem) => {
                    let desired = resources::desired_secret(obj, &content, &cert.serial_hex);
                    apply_secret(ctx, obj, desired, existing)
                        .await
                        .map(|()| (cert, problem.err()))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(Error::Issuance(e)),
    };
    let (cert, keystore_problem) = match written {
        Ok(written) => written,
        Err(err) => {
            // Conflicts on create/apply mean someone else wrote the Secret meanwhile: the next
            // reconcile re-reads it (and reports a conflict if it is not ours).
            let attempts = old_status.failed_issuance_attempts.unwrap_or(0) + 1;
            status.failed_issuance_attempts = Some(attempts);
            status.last_failure_time = Some(Time(now));
            let msg = format!(
                "{} (attempt {attempts}; retrying in {}s)",
                err,
                failure_backoff(attempts).as_secs()
            );
            set_condition(
                &mut status.conditions,
                ISSUING,
                true,
                err.category(),
                msg.clone(),
                generation,
                now,
            );
            let still_valid = old_status.not_after.as_ref().is_some_and(|t| t.0 > now)
                && !matches!(
                    reason,
                    ReissueReason::SecretMissing
                        | ReissueReason::DataMissing(_)
                        | ReissueReason::Unparseable(..)
                        | ReissueReason::KeyMismatch
                );
            if !still_valid {
                set_condition(
                    &mut status.conditions,
                    READY,
                    false,
                    err.category(),
                    msg.clone(),
                    generation,
                    now,
                );
            }
            write_status(ctx, obj, &old_status, &status).await?;
            ctx.publish(obj, EventType::Warning, err.category(), msg)
                .await;
            return Err(err);
        }
    };

    let info = CertificateInfo {
        serial_hex: cert.serial_hex.clone(),
        not_before: cert.not_before,
        not_after: cert.not_after,
        common_name: None,
        dns_names: Default::default(),
        ip_addresses: Default::default(),
        uris: Default::default(),
        usages: Default::default(),
        key: Some(request.key),
        issuer_fingerprint: Some(ca.fingerprint().to_string()),
    };
    let renew_at = pki::renewal_time(
        cert.not_before,
        cert.not_after,
        request.renew,
        &obj.uid().unwrap_or_default(),
    );
    fill_certificate_status(&mut status, &info, renew_at, ca);
    status.revision = Some(old_status.revision.unwrap_or(0) + 1);
    status.failed_issuance_attempts = None;
    status.last_failure_time = None;
    if let ReissueReason::ManualRequest(v) = &reason {
        status.last_renew_request = Some(v.clone());
    }
    let (event_reason, verb) = if reason.is_renewal() {
        ("Renewed", "renewed")
    } else {
        ("Issued", "issued")
    };
    let msg = format!(
        "certificate {verb} (serial {}, valid until {}): {}",
        cert.serial_hex,
        cert.not_after,
        reason.message()
    );
    set_condition(
        &mut status.conditions,
        READY,
        true,
        event_reason,
        format!(
            "certificate valid until {}, renews at {renew_at}",
            cert.not_after
        ),
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        ISSUING,
        false,
        reason.reason(),
        msg.clone(),
        generation,
        now,
    );
    let renew_at = report_keystore_problem(
        obj,
        ctx,
        &old_status,
        &mut status,
        keystore_problem,
        renew_at,
        now,
    )
    .await;
    write_status(ctx, obj, &old_status, &status).await?;
    ctx.publish(obj, EventType::Normal, event_reason, msg).await;
    ctx.metrics
        .issuances
        .get_or_create(&metrics::ReasonLabels {
            reason: reason.reason().into(),
        })
        .inc();
    record_metrics(ctx, obj, cert.not_after, renew_at, "True");
    info!(serial = cert.serial_hex, not_after = %cert.not_after, renew_at = %renew_at, reason = reason.reason(), "certificate {verb}");
    Ok(requeue_at(renew_at, now))
}

const STALE_STATUS_GRACE: Duration = Duration::from_secs(10);

/// Whether tlsid's field manager wrote `secret` less than `within` before `now`.
fn written_by_us_within(secret: &Secret, now: jiff::Timestamp, within: Duration) -> bool {
    secret.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.time
                .as_ref()
                .is_some_and(|t| now.as_second() - t.0.as_second() < within.as_secs() as i64)
    })
}

/// Keystores are re-checked this often while their password is missing: no watch covers it.
const KEYSTORE_RECHECK: Duration = Duration::from_secs(30);

/// Add the keystores the spec asks for to `content`. `Ok(Err(msg))`: they cannot be made (e.g. no
/// password); the PEM files are still written, without keystores, and the identity is not Ready.
async fn add_keystores(
    ctx: &Context,
    obj: &TlsIdentity,
    content: &mut SecretContent,
    existing: Option<&Secret>,
) -> Result<Result<(), String>, Error> {
    use crate::resources::keystore::{
        KEYSTORE_P12, PROFILE_ANNOTATION, TRUSTSTORE_P12, pkcs12_data, profile_name,
    };
    let Some(p12) = obj
        .spec
        .keystores
        .as_ref()
        .and_then(|k| k.pkcs12.as_ref())
        .filter(|p| p.create)
    else {
        return Ok(Ok(()));
    };
    let Some(pw_ref) = &p12.password_secret_ref else {
        return Ok(Err("keystores.pkcs12.passwordSecretRef is not set".into()));
    };
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let password = api
        .get_opt(&pw_ref.name)
        .await
        .map_err(Error::Read)?
        .and_then(|s| s.data?.get(&pw_ref.key).map(|b| b.0.clone()))
        .filter(|p| !p.is_empty());
    let Some(password) = password else {
        return Ok(Err(format!(
            "the keystore password Secret {}/{} is missing or empty; keystore.p12 and truststore.p12 are not written",
            pw_ref.name, pw_ref.key
        )));
    };
    let Ok(password) = String::from_utf8(password) else {
        return Ok(Err(format!(
            "the keystore password in {}/{} is not UTF-8",
            pw_ref.name, pw_ref.key
        )));
    };
    let wanted = p12.profile.unwrap_or_default();
    let old = existing.and_then(|s| {
        let d = s.data.as_ref()?;
        let written_with = s.metadata.annotations.as_ref()?.get(PROFILE_ANNOTATION)?;
        Some((
            d.get(KEYSTORE_P12)?.0.as_slice(),
            d.get(TRUSTSTORE_P12)?.0.as_slice(),
            written_with.as_str(),
        ))
    });
    match pkcs12_data(
        &content.tls_crt,
        &content.tls_key,
        &content.ca_crt,
        &password,
        wanted,
        old,
    ) {
        Ok(files) => {
            content.extra.extend(files);
            content
                .annotations
                .insert(PROFILE_ANNOTATION.into(), profile_name(wanted).into());
            Ok(Ok(()))
        }
        Err(e) => Ok(Err(format!("cannot build the PKCS#12 keystores: {e}"))),
    }
}

/// Turn a keystore problem into `Ready=False KeystorePasswordMissing` (one Warning per new reason),
/// and look again soon.
async fn report_keystore_problem(
    obj: &TlsIdentity,
    ctx: &Context,
    old_status: &TlsIdentityStatus,
    status: &mut TlsIdentityStatus,
    problem: Option<String>,
    renew_at: jiff::Timestamp,
    now: jiff::Timestamp,
) -> jiff::Timestamp {
    let Some(msg) = problem else { return renew_at };
    const REASON: &str = "KeystorePasswordMissing";
    set_condition(
        &mut status.conditions,
        READY,
        false,
        REASON,
        msg.clone(),
        obj.metadata.generation,
        now,
    );
    if ready_reason(Some(old_status)) != Some(REASON) {
        warn!(reason = REASON, message = msg, "keystores not written");
        ctx.publish(obj, EventType::Warning, REASON, msg).await;
    }
    std::cmp::min(renew_at, now + KEYSTORE_RECHECK)
}

fn fill_certificate_status(
    status: &mut TlsIdentityStatus,
    info: &CertificateInfo,
    renew_at: jiff::Timestamp,
    ca: &Authority,
) {
    status.not_before = Some(Time(info.not_before));
    status.not_after = Some(Time(info.not_after));
    status.renewal_time = Some(Time(renew_at));
    status.serial_number = Some(info.serial_hex.clone());
    status.ca_fingerprint = info
        .issuer_fingerprint
        .clone()
        .or_else(|| Some(ca.fingerprint().to_string()));
}

fn record_metrics(
    ctx: &Context,
    obj: &TlsIdentity,
    not_after: jiff::Timestamp,
    renew_at: jiff::Timestamp,
    ready: &str,
) {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    ctx.metrics.set_certificate(&ns, &name, not_after, renew_at);
    ctx.metrics.set_ready(&ns, &name, ready);
}

/// Write a terminal Ready=False status; emit a Warning only when the reason is new, so a stuck
/// object does not flood Events.
async fn finish_terminal(
    obj: &TlsIdentity,
    ctx: &Context,
    old: &TlsIdentityStatus,
    new: TlsIdentityStatus,
    reason: &str,
    msg: String,
) -> Result<(), Error> {
    let is_new = ready_reason(Some(old)) != Some(reason);
    write_status(ctx, obj, old, &new).await?;
    ctx.metrics.set_ready(
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        "False",
    );
    if is_new {
        warn!(reason, message = msg, "identity not ready");
        ctx.publish(obj, EventType::Warning, reason, msg).await;
    }
    Ok(())
}

/// Create the Secret if absent (fails if someone created it meanwhile, rather than overwrite it),
/// else server-side apply with the observed resourceVersion as a precondition.
async fn apply_secret(
    ctx: &Context,
    obj: &TlsIdentity,
    mut desired: Secret,
    existing: Option<&Secret>,
) -> Result<(), Error> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    match existing {
        None => {
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&pp, &desired)
                .await
                .map_err(Error::SecretWrite)?;
        }
        Some(current) => {
            desired.metadata.resource_version = current.metadata.resource_version.clone();
            let mut value = serde_json::to_value(&desired).unwrap_or_default();
            value["apiVersion"] = "v1".into();
            value["kind"] = "Secret".into();
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&obj.secret_name(), &pp, &Patch::Apply(value))
                .await
                .map_err(Error::SecretWrite)?;
        }
    }
    Ok(())
}

/// Server-side apply the status, only when it differs from what the object already has.
async fn write_status(
    ctx: &Context,
    obj: &TlsIdentity,
    old: &TlsIdentityStatus,
    new: &TlsIdentityStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    let api =
        Api::<TlsIdentity>::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": TlsIdentity::api_version(&()),
        "kind": TlsIdentity::kind(&()),
        "status": new,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(Error::StatusWrite)?;
    Ok(())
}

/// Requeue at `at` (at least one second from now, so a clock edge never spins).
fn requeue_at(at: jiff::Timestamp, now: jiff::Timestamp) -> Action {
    let secs = (at.as_second() - now.as_second()).max(1);
    Action::requeue(Duration::from_secs(secs as u64))
}
