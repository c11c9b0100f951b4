//! One reconcile of one identity: observe → [`plan::decide`] → sign if asked → [`plan::finish`] →
//! apply what differs. Every rule lives in `plan`; this file only reads and writes.

use super::leader::Role;
use super::{
    Context,
    apply::{self, Written},
    demo,
    error::{Error, api_message, is_already_exists, is_persistent, is_throttled, throttle_pause},
    metrics,
    secret_reads::{self, Read},
};
use crate::plan::budget::Admit;
use crate::{
    api::{TlsIdentity, TlsIdentityStatus, conditions::READY, conditions::Reason},
    plan::{self, Decision, Failure, KeystorePassword, Observed, Outcome},
    resources,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::DynamicObject,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use std::{sync::Arc, time::Duration};
use tracing::{debug, info, warn};

/// Build Secret content with `work`: off the async workers when keystores may need building (key
/// derivation); without them it is a copy of a few bytes, done in place.
async fn keystore_work<T: Send + 'static>(
    identity: &TlsIdentity,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    if identity.spec.pkcs12_wanted().is_some() {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|source| Error::Task {
                object: object_ref(identity),
                source,
            })
    } else {
        Ok(work())
    }
}

/// Reconcile one object of the watch. An object that does not deserialize is reported on itself
/// and left alone: it never stops the others from being served.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    if crate::api::install_of(obj.labels()) != ctx.config.install {
        // Served by another install (the default install sees every identity, and a label can
        // change): leave it alone, and drop what this install held for it.
        ctx.metrics
            .forget(&obj.namespace().unwrap_or_default(), &obj.name_any());
        ctx.cancel_issuance(&Context::failure_key(&obj));
        ctx.metrics.skip("OtherInstall");
        return Ok(Action::await_change());
    }
    match ctx.leadership.role() {
        // A standby keeps its caches warm and writes nothing; when it becomes the leader every
        // identity is reconciled.
        Role::Follower => {
            ctx.metrics.skip("Standby");
            // Reservations of the issuance budget belong to a leader's term.
            ctx.retain_issuance(None);
            return Ok(Action::await_change());
        }
        // Elected, but our renewal is not confirmed yet: come back rather than drop the work.
        Role::Unconfirmed => return Ok(Action::requeue(Duration::from_secs(1))),
        Role::Leader => {}
    }
    let started = std::time::Instant::now();
    ctx.metrics.reconciliations.inc();
    let result = match typed(&obj) {
        Ok(identity) => reconcile_identity(&identity, &ctx).await,
        Err(why) => apply::unreadable(&obj, &ctx, why).await,
    };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.forget_failures(&obj);
    }
    result
}

/// The typed identity, or why the stored object cannot be one.
fn typed(obj: &DynamicObject) -> Result<TlsIdentity, String> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value::<TlsIdentity>)
        .map_err(|e| e.to_string())
}

pub fn object_ref(identity: &TlsIdentity) -> Box<ObjectRef<DynamicObject>> {
    let ar = kube::api::ApiResource::erase::<TlsIdentity>(&());
    Box::new(
        ObjectRef::new_with(&identity.name_any(), ar)
            .within(&identity.namespace().unwrap_or_default()),
    )
}

#[tracing::instrument(skip_all, fields(namespace = identity.namespace().unwrap_or_default(), name = identity.name_any()))]
async fn reconcile_identity(identity: &TlsIdentity, ctx: &Context) -> Result<Action, Error> {
    if identity.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // --- observe: every read, once.
    let ca = ctx.ca().ok_or(Error::CaNotReady)?;
    let ns = identity.namespace().unwrap_or_default();
    let namespace_labels = match ctx.names.namespace_labels(&ns) {
        Ok(labels) => labels,
        // Policies and namespaces not listed yet, or this namespace's watch event still on its
        // way: deciding now could refuse names a policy grants.
        Err(why) => {
            debug!(?why, "name policy not known yet; looking again shortly");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    };
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let read = |what| {
        move |source| Error::Read {
            what,
            object: object_ref(identity),
            source,
        }
    };
    // The Secret: a GET unless our own last write or the metadata cache already answers.
    let secret_key = format!("{ns}/{}", identity.secret_name());
    let cached_rv = ctx
        .stores
        .get()
        .and_then(|s| {
            s.secrets
                .get(&ObjectRef::new(&identity.secret_name()).within(&ns))
        })
        .and_then(|m| m.metadata.resource_version.clone());
    let issued = identity
        .status
        .as_ref()
        .is_some_and(|s| s.serial_number.is_some());
    let read_first = ctx.secret_reads.take_read_first(&secret_key);
    let kept = ctx.secret_reads.take_written(&secret_key);
    let how = secret_reads::plan(
        issued,
        cached_rv.as_deref(),
        kept.as_ref()
            .and_then(|s| s.metadata.resource_version.as_deref()),
        read_first,
    );
    let secret = match (how, kept) {
        (Read::Written, Some(kept)) => Some(kept),
        (Read::Absent, _) => None,
        _ => secrets
            .get_opt(&identity.secret_name())
            .await
            .map_err(read("its Secret"))?,
    };
    let created_unread = how == Read::Absent;
    let password = read_password(identity, &secrets)
        .await
        .map_err(read("its keystore password"))?;
    let ca_problem = ctx.ca_secret_problem();
    let grants = ctx.names.grants();
    let obs = Observed {
        identity,
        secret: secret.as_ref(),
        password,
        ca: &ca,
        ca_secret_problem: ca_problem.as_deref(),
        names: crate::tenancy::NamePolicy {
            settings: &ctx.names.settings,
            grants: &grants,
        },
        namespace_labels: &namespace_labels,
        now: now(),
        consumers: super::restarts::consumers_of(ctx, &ns, &identity.name_any()),
    };

    // --- decide, then sign or reuse (CPU-bound: off the async workers).
    let decision = plan::decide(&obs);
    let key = format!("{ns}/{}", identity.name_any());
    let mut budget_slot = None;
    if let Decision::Issue { reason, .. } = &decision {
        // Every issuance passes the install's budget: a bulk re-issue goes at a steady pace.
        if let Admit::Wait(wait) = ctx.admit_issuance(&key) {
            debug!(
                reason = reason.reason(),
                wait_ms = wait.as_millis() as u64,
                "waiting for the issuance budget"
            );
            if wait < plan::BUDGET_WAIT_VISIBLE {
                // A short wait writes nothing: it comes back at its slot.
                return Ok(Action::requeue(wait));
            }
            budget_slot = Some((reason.clone(), obs.now + wait));
        }
    } else {
        ctx.cancel_issuance(&key);
    }
    let outcome = match decision {
        // A long wait is shown on the identity (once), then it comes back at its slot.
        _ if budget_slot.is_some() => {
            let (reason, slot) = budget_slot.take().expect("checked");
            Outcome::Budget { reason, slot }
        }
        Decision::Keep { info, renew_at } => {
            let (id, existing, ca2, pw) = (
                identity.clone(),
                secret.clone(),
                ca.clone(),
                obs.password.clone(),
            );
            let (content, keystore_problem) = keystore_work(identity, move || {
                plan::kept_content(&id, existing.as_ref(), &ca2, &pw)
            })
            .await?;
            Outcome::Kept {
                info,
                renew_at,
                content,
                keystore_problem,
            }
        }
        Decision::Issue { request, reason } => {
            info!(
                reason = reason.reason(),
                detail = reason.message(),
                "issuing certificate"
            );
            let (id, existing, ca2, pw, req, now) = (
                identity.clone(),
                secret.clone(),
                ca.clone(),
                obs.password.clone(),
                request.clone(),
                obs.now,
            );
            let signed = tokio::task::spawn_blocking(move || {
                let cert = crate::pki::issue(&req, &ca2, now)?;
                let (content, problem) = plan::secret_content(
                    &id,
                    existing.as_ref(),
                    cert.chain_pem.clone().into_bytes(),
                    cert.key_pem.clone().into_bytes(),
                    &ca2,
                    &pw,
                );
                Ok::<_, crate::pki::PkiError>((cert, content, problem))
            })
            .await
            .map_err(|source| Error::Task {
                object: object_ref(identity),
                source,
            })?;
            match signed {
                Ok((cert, content, keystore_problem)) => Outcome::Issued {
                    cert: Box::new(cert),
                    request,
                    reason,
                    content,
                    keystore_problem,
                },
                Err(e) => Outcome::Failed {
                    reason: Some(reason),
                    failure: Failure {
                        reason: Reason::IssuanceFailed,
                        message: format!("issuing the certificate failed: {e}"),
                        persistent: false,
                    },
                },
            }
        }
        waiting @ (Decision::Defer { .. }
        | Decision::CaCannotSign { .. }
        | Decision::Blocked {
            reason: Reason::NotPermitted,
            ..
        }) => {
            // Not renewed now (or, for names no longer permitted, ever), but the Secret still
            // follows the trust bundle: a CA rollover waits for every Secret to hold the next
            // root, and the pods mounting this one must go on trusting their peers.
            let content = match secret
                .as_ref()
                .filter(|s| resources::belongs_to(s, identity))
            {
                Some(existing) => {
                    let (id, existing, ca2, pw) = (
                        identity.clone(),
                        existing.clone(),
                        ca.clone(),
                        obs.password.clone(),
                    );
                    Some(
                        keystore_work(identity, move || {
                            plan::kept_content(&id, Some(&existing), &ca2, &pw).0
                        })
                        .await?,
                    )
                }
                None => None,
            };
            Outcome::Waiting {
                decision: waiting,
                content,
            }
        }
        other => Outcome::Decided(other),
    };
    let reissue = match &outcome {
        Outcome::Issued { reason, .. } => Some(reason.clone()),
        _ => None,
    };
    let demo = demo::reconcile(identity, ctx).await;
    let mut plan = plan::finish(&obs, outcome, demo.clone());

    // --- apply: the Secret first, then the status that describes it, then Events.
    if let Some(desired) = plan.secret.take() {
        let existing = obs.secret.filter(|s| resources::belongs_to(s, identity));
        match apply::secret(ctx, identity, desired, existing).await {
            Written::Ok => {}
            Written::Failed(e) if created_unread && is_already_exists(&e) => {
                // A Secret of that name the cache cannot see (not ours): read it, at once.
                debug!("Secret exists though none of ours was cached; reading it");
                ctx.secret_reads.conflicted(secret_key);
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Written::Failed(e) if is_throttled(&e) => {
                // Asked to slow down: nothing failed. Try again shortly; the status says nothing.
                ctx.count_error("Throttled");
                debug!("Secret write throttled (429); retrying shortly");
                return Ok(Action::requeue(throttle_pause(&key)));
            }
            Written::Failed(e) => {
                ctx.count_error(if is_persistent(&e) {
                    Reason::SecretRejected.as_str()
                } else {
                    Reason::SecretWriteFailed.as_str()
                });
                let failure = Failure {
                    reason: if is_persistent(&e) {
                        Reason::SecretRejected
                    } else {
                        Reason::SecretWriteFailed
                    },
                    message: format!(
                        "writing Secret {} failed: {}",
                        identity.secret_name(),
                        api_message(&e)
                    ),
                    persistent: is_persistent(&e),
                };
                warn!(error = %e, "Secret write failed");
                plan = plan::finish(
                    &obs,
                    Outcome::Failed {
                        reason: reissue,
                        failure,
                    },
                    demo,
                );
                plan.secret = None;
            }
        }
    }
    // Metrics first: they describe what was written (the Secret) and what is about to be (the
    // status), so a reader who sees the status also sees the metrics.
    if let Some(reason) = plan.issued {
        ctx.metrics
            .issuances
            .get_or_create(&metrics::ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }
    if let Some(reason) = plan.ca_blocked {
        ctx.metrics
            .blocked
            .get_or_create(&metrics::ReasonLabels {
                reason: reason.as_str().into(),
            })
            .inc();
    }
    ctx.metrics.record(
        &ns,
        &identity.name_any(),
        &plan.effective_status,
        ready_of(&plan.effective_status),
    );
    // Events even when the status write fails: the apiserver may refuse to patch an object it
    // cannot convert (a value past the schema); the Event is then all the user sees. A failed
    // status write is retried with backoff, and repeated Events become one Event series.
    let written = match &plan.status {
        Some(status) => apply::status(ctx, identity, status).await,
        None => Ok(()),
    };
    for note in &plan.events {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        if note.warning {
            warn!(
                reason = note.reason,
                message = note.message,
                "identity event"
            );
        } else {
            info!(
                reason = note.reason,
                message = note.message,
                "identity event"
            );
        }
        ctx.publish(identity, type_, &note.reason, note.message.clone())
            .await;
    }
    // The identity changed since it was read (the precondition held): the watch brings the new
    // version, and the next reconcile adopts what was just written.
    if let Err(Error::StatusWrite {
        source: kube::Error::Api(s),
        ..
    }) = &written
        && s.code == 409
    {
        debug!("identity changed while reconciling; reconciling again");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    written?;
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

fn ready_of(status: &TlsIdentityStatus) -> &str {
    plan::status::condition(status, READY).map_or("Unknown", |c| c.status.as_str())
}

/// Whole seconds: certificates and status timestamps carry no more, and comparing a nanosecond
/// `now` with them would make an unchanged status look changed.
fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default()
}

/// The keystore password, when the spec asks for keystores. A missing Secret, key or an empty or
/// non-UTF-8 password is an observation (the identity says so), not an error.
async fn read_password(
    identity: &TlsIdentity,
    secrets: &Api<Secret>,
) -> Result<KeystorePassword, kube::Error> {
    let Some(p12) = identity.spec.pkcs12_wanted() else {
        return Ok(KeystorePassword::NotRequested);
    };
    let Some(r) = &p12.password_secret_ref else {
        return Ok(KeystorePassword::Unavailable(
            "keystores.pkcs12.passwordSecretRef is not set".into(),
        ));
    };
    let value = secrets
        .get_opt(&r.name)
        .await?
        .and_then(|s| s.data?.remove(&r.key))
        .map(|b| b.0)
        .filter(|p| !p.is_empty());
    Ok(match value.map(String::from_utf8) {
        None => KeystorePassword::Unavailable(format!(
            "the keystore password Secret {}/{} is missing or empty; keystore.p12 and truststore.p12 are not written",
            r.name, r.key
        )),
        Some(Err(_)) => KeystorePassword::Unavailable(format!(
            "the keystore password in {}/{} is not UTF-8",
            r.name, r.key
        )),
        Some(Ok(p)) => KeystorePassword::Present(p),
    })
}
