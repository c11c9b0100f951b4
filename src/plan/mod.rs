//! The reconcile decision, as pure functions: no client, no async, no clock of its own.
//!
//! The controller observes the world once into an [`Observed`], asks [`decide`] what to do, does
//! the one expensive step the decision may call for (signing, keystores: [`secret_content`]), and
//! hands the [`Outcome`] to [`finish`], which says everything that should be written: the desired
//! Secret (only when it differs), the status (only when it differs), the Events, and when to look
//! again. Every rule that decides a condition, a reason, an Event or a requeue lives here, and is
//! table-tested in `tests.rs` without an apiserver.

pub mod budget;
pub mod ca_state;
pub mod consumers;
pub mod rollover;
pub mod status;
pub mod trust;

#[cfg(test)]
mod tests;

use crate::{
    api::{
        FIELD_MANAGER, Pkcs12ProfileName, RENEW_ANNOTATION, SERIAL_ANNOTATION, TlsIdentity,
        TlsIdentityStatus,
        conditions::{CA_SECRET, DEMO, ISSUING, READY, Reason},
    },
    pki::{
        self, Authority, BACKDATE, CertificateInfo, IssuanceRequest, IssuedCertificate,
        PolicyInput, ReissueReason,
    },
    resources::{self, SecretContent},
    tenancy,
};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time};
use status::{BACKOFF_CAP, CAPPED_ATTEMPTS, failure_backoff, ready_reason, set_condition};
use std::time::Duration;

/// A certificate is never renewed sooner than this after it was issued, whatever the spec and the
/// CA say: the floor that keeps a short lifetime, a clamped renewal point or a dying CA from
/// turning into an issuance loop.
pub const MIN_REISSUE_INTERVAL: Duration = Duration::from_secs(30);
/// An identity waiting for the issuance budget shows it (`Issuing=True` `WaitingForBudget`) only
/// when its slot is at least this far away: a bulk that the budget passes within this costs no
/// extra write.
pub const BUDGET_WAIT_VISIBLE: Duration = Duration::from_secs(120);
/// A conflicting Secret is re-checked this often (a change to the identity triggers a reconcile at
/// once; this only catches a user deleting their Secret, which no watch of ours sees).
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(600);
/// Keystores are re-checked this often while their password is missing: no watch covers it.
pub const KEYSTORE_RECHECK: Duration = Duration::from_secs(30);
/// A demo client waits for its server identity; no watch links the two.
pub const SERVER_RECHECK: Duration = Duration::from_secs(10);
/// How long a Secret tlsid just wrote may disagree with the cached status before the status is
/// rebuilt from the Secret (see [`Decision::AwaitFreshStatus`]).
pub const STALE_STATUS_GRACE: Duration = Duration::from_secs(10);
/// How soon to look again while waiting for the cache to catch up with our own status write.
pub const STALE_STATUS_RECHECK: Duration = Duration::from_secs(2);
/// Stored certificate or key files larger than this are not parsed: no honest PEM chain or key is
/// this large, and parsing what a user put in a Secret must stay bounded.
pub const MAX_PEM_BYTES: usize = 256 * 1024;

/// The keystore password, as observed (only read when `spec.keystores.pkcs12.create` is set).
#[derive(Clone, PartialEq)]
pub enum KeystorePassword {
    NotRequested,
    /// Why no usable password could be read.
    Unavailable(String),
    Present(String),
}

impl std::fmt::Debug for KeystorePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRequested => f.write_str("NotRequested"),
            Self::Unavailable(why) => f.debug_tuple("Unavailable").field(why).finish(),
            Self::Present(_) => f.write_str("Present(..)"),
        }
    }
}

/// Everything one reconcile of an identity needs, read once.
#[derive(Debug)]
pub struct Observed<'a> {
    pub identity: &'a TlsIdentity,
    /// The identity's Secret, if it exists (ours or not).
    pub secret: Option<&'a Secret>,
    pub password: KeystorePassword,
    pub ca: &'a Authority,
    /// Why the CA Secret is unusable, while the last good CA (`ca`) signs in its place.
    pub ca_secret_problem: Option<&'a str>,
    /// Who may claim which name: the install's settings and every `TlsIdentityPolicy`.
    pub names: tenancy::NamePolicy<'a>,
    /// The labels of the identity's namespace (policies select namespaces by label).
    pub namespace_labels: &'a std::collections::BTreeMap<String, String>,
    /// Whole seconds: certificates and status timestamps carry no more.
    pub now: jiff::Timestamp,
    /// The workloads that mount the identity's Secret (`status.consumers`), from
    /// [`consumers::pass`]; `None` leaves the field as it is (restarts off, or not computed yet).
    pub consumers: Option<Vec<crate::api::Consumer>>,
}

impl Observed<'_> {
    fn status(&self) -> TlsIdentityStatus {
        self.identity.status.clone().unwrap_or_default()
    }
    fn seed(&self) -> &str {
        self.identity.metadata.uid.as_deref().unwrap_or_default()
    }
    fn generation(&self) -> Option<i64> {
        self.identity.metadata.generation
    }
    /// The Secret, when it is ours to write.
    fn own_secret(&self) -> Option<&Secret> {
        self.secret
            .filter(|s| resources::secret::belongs_to(s, self.identity))
    }
}

/// What to do about the certificate.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing can be done until the identity or its Secret changes.
    Blocked { reason: Reason, message: String },
    /// The stored certificate is good.
    Keep {
        info: Box<CertificateInfo>,
        renew_at: jiff::Timestamp,
    },
    /// The Secret holds a certificate tlsid wrote moments ago that the cached status does not
    /// describe yet: the status written with it is on its way, so wait for it rather than rebuild
    /// status from stale input (bounded by [`STALE_STATUS_GRACE`]).
    AwaitFreshStatus,
    /// A new certificate is needed, but not before `until`.
    Defer {
        reason: ReissueReason,
        until: jiff::Timestamp,
    },
    /// A new certificate is needed and the CA cannot sign it.
    CaCannotSign {
        reason: ReissueReason,
        problem: Reason,
        message: String,
    },
    /// Sign a new certificate.
    Issue {
        request: Box<IssuanceRequest>,
        reason: ReissueReason,
    },
}

/// Decide what to do about the certificate of `obs.identity`.
pub fn decide(obs: &Observed<'_>) -> Decision {
    let old = obs.status();
    let mut request = match IssuanceRequest::from_spec(&obs.identity.spec) {
        Ok(r) => r,
        Err(invalid) => {
            return Decision::Blocked {
                reason: Reason::InvalidSpec,
                message: invalid.0,
            };
        }
    };
    // Names come before the Secret: a refused identity gets no Secret, and one whose names stop
    // being permitted is not renewed (its Secret is left as it is, valid until it expires).
    let namespace = obs
        .identity
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default();
    if let Some(spiffe) = &obs.identity.spec.spiffe {
        request.uris.insert(
            obs.names
                .settings
                .spiffe_id(namespace, &spiffe.service_account),
        );
    }
    let ns = tenancy::Namespace {
        name: namespace,
        labels: obs.namespace_labels,
    };
    if let Err(refusal) = obs.names.check(ns, &obs.identity.spec) {
        return Decision::Blocked {
            reason: Reason::NotPermitted,
            message: format!(
                "{refusal}. Nothing is issued or renewed for this identity until its names are permitted."
            ),
        };
    }
    if let Some(secret) = obs.secret
        && obs.own_secret().is_none()
    {
        let _ = secret;
        return Decision::Blocked {
            reason: Reason::SecretConflict,
            message: format!(
                "Secret {} exists and does not belong to this TlsIdentity; tlsid will not modify it. Delete it or choose another secretName.",
                obs.identity.secret_name()
            ),
        };
    }
    let data = obs.own_secret().map(bounded_secret_data);
    let input = PolicyInput {
        secret: data,
        request: &request,
        ca: obs.ca,
        now: obs.now,
        seed: obs.seed(),
        renew_requested: obs
            .identity
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RENEW_ANNOTATION))
            .map(String::as_str),
        renew_handled: handled_request(obs, &old),
    };
    let reason = match pki::should_reissue(&input) {
        Ok((info, renew_at)) => {
            let described = old.serial_number.as_deref() == Some(info.serial_hex.as_str());
            if !described
                && obs
                    .own_secret()
                    .is_some_and(|s| written_by_us_within(s, obs.now, STALE_STATUS_GRACE))
            {
                return Decision::AwaitFreshStatus;
            }
            return Decision::Keep {
                info: Box::new(info),
                renew_at,
            };
        }
        Err(reason) => {
            // A Secret we wrote moments ago that the (cached) status does not describe yet: the
            // status is on its way. Deciding again from the stale status would issue a second
            // time for the same trigger (a renewal request seen as still unhandled).
            let serial = obs
                .own_secret()
                .and_then(|s| s.metadata.annotations.as_ref()?.get(SERIAL_ANNOTATION));
            if serial.is_some_and(|s| old.serial_number.as_deref() != Some(s.as_str()))
                && obs
                    .own_secret()
                    .is_some_and(|s| written_by_us_within(s, obs.now, STALE_STATUS_GRACE))
            {
                return Decision::AwaitFreshStatus;
            }
            reason
        }
    };
    // Back off after failures, measured from the recorded failure so that restarts do not reset
    // it. A spec changed since the failure (the user's fix) is tried at once.
    let failed_at_this_generation =
        status::condition(&old, ISSUING).is_some_and(|c| c.observed_generation == obs.generation());
    if let (Some(attempts), Some(Time(last)), true) = (
        old.failed_issuance_attempts,
        &old.last_failure_time,
        failed_at_this_generation,
    ) {
        let retry_at = *last + failure_backoff(attempts, obs.seed());
        if obs.now < retry_at {
            return Decision::Defer {
                reason,
                until: retry_at,
            };
        }
    }
    let ca_end = obs.ca.not_after();
    if ca_end <= obs.now {
        return Decision::CaCannotSign {
            reason,
            problem: Reason::CaExpired,
            message: format!(
                "the CA expired at {ca_end}; nothing can be signed until it is replaced"
            ),
        };
    }
    let wanted_end = obs.now + request.duration;
    if ca_end < wanted_end {
        return Decision::CaCannotSign {
            reason,
            problem: Reason::CaExpiring,
            message: format!(
                "the CA expires at {ca_end}, before a certificate of the requested lifetime ({}s) would; replace the CA",
                request.duration.as_secs()
            ),
        };
    }
    // Renewals the clock asks for wait for the minimum interval since the last issuance; repairs,
    // spec changes and a user's request do not (each settles after one issuance).
    if matches!(
        reason,
        ReissueReason::RenewalDue(_) | ReissueReason::Expired(_)
    ) && let Some(Time(not_before)) = &old.not_before
    {
        let issued_at = *not_before + BACKDATE;
        let earliest = issued_at + MIN_REISSUE_INTERVAL;
        if obs.now < earliest {
            return Decision::Defer {
                reason,
                until: earliest,
            };
        }
    }
    Decision::Issue {
        request: Box::new(request),
        reason,
    }
}

/// The Secret's TLS files, with oversized ones treated as absent-by-size (they then fail to parse
/// and are re-issued, without being parsed).
fn bounded_secret_data(secret: &Secret) -> pki::SecretData<'_> {
    let mut data = resources::secret_data(secret);
    fn cap(b: Option<&[u8]>) -> Option<&[u8]> {
        b.map(|b| if b.len() > MAX_PEM_BYTES { &b[..0] } else { b })
    }
    data.tls_crt = cap(data.tls_crt);
    data.tls_key = cap(data.tls_key);
    data
}

/// The renewal request already answered: the status's record, or the Secret's when the Secret
/// answers the request now pending (a status write lost after the Secret write).
fn handled_request<'a>(obs: &'a Observed<'_>, old: &'a TlsIdentityStatus) -> Option<&'a str> {
    let pending = obs
        .identity
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RENEW_ANNOTATION));
    let answered = obs.own_secret().and_then(|s| {
        s.metadata
            .annotations
            .as_ref()?
            .get(RENEW_HANDLED_ANNOTATION)
    });
    match (pending, answered) {
        (Some(p), Some(a)) if p == a => Some(a.as_str()),
        _ => old.last_renew_request.as_deref(),
    }
}

/// Whether tlsid's field manager wrote `secret` less than `within` before `now`.
fn written_by_us_within(secret: &Secret, now: jiff::Timestamp, within: Duration) -> bool {
    secret.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.time
                .as_ref()
                .is_some_and(|t| now.as_second() - t.0.as_second() < within.as_secs() as i64)
    })
}

/// The Secret's content for the PEM files given: the current trust bundle, and keystores if the
/// spec asks for them. CPU-bound (PKCS#12 key derivation): run it off the async workers.
/// Returns the problem that kept the keystores from being written, if any.
pub fn secret_content(
    identity: &TlsIdentity,
    existing: Option<&Secret>,
    tls_crt: Vec<u8>,
    tls_key: Vec<u8>,
    ca: &Authority,
    password: &KeystorePassword,
) -> (SecretContent, Option<String>) {
    let mut content = SecretContent {
        tls_crt,
        tls_key,
        ca_crt: ca.bundle_pem().into_bytes(),
        ..Default::default()
    };
    let Some(p12) = identity.spec.pkcs12_wanted() else {
        return (content, None);
    };
    let password = match password {
        KeystorePassword::Present(p) => p,
        KeystorePassword::Unavailable(why) => return (content, Some(why.clone())),
        KeystorePassword::NotRequested => {
            return (
                content,
                Some("keystores.pkcs12.passwordSecretRef is not set".into()),
            );
        }
    };
    let wanted: Pkcs12ProfileName = p12.profile.unwrap_or_default();
    match resources::keystore::pkcs12_files(
        &content.tls_crt,
        &content.tls_key,
        &content.ca_crt,
        password,
        wanted,
        existing,
    ) {
        Ok(files) => {
            content.extra.extend(files.data);
            content.annotations.extend(files.annotations);
            (content, None)
        }
        Err(e) => (
            content,
            Some(format!("cannot build the PKCS#12 keystores: {e}")),
        ),
    }
}

/// [`secret_content`] for a certificate that stays: the PEM files as the Secret holds them.
pub fn kept_content(
    identity: &TlsIdentity,
    existing: Option<&Secret>,
    ca: &Authority,
    password: &KeystorePassword,
) -> (SecretContent, Option<String>) {
    let data = existing.map(resources::secret_data);
    let crt = data.and_then(|d| d.tls_crt).unwrap_or_default().to_vec();
    let key = data.and_then(|d| d.tls_key).unwrap_or_default().to_vec();
    let (mut content, problem) = secret_content(identity, existing, crt, key, ca, password);
    if let Some(v) = existing.and_then(|s| {
        s.metadata
            .annotations
            .as_ref()?
            .get(RENEW_HANDLED_ANNOTATION)
    }) {
        content
            .annotations
            .insert(RENEW_HANDLED_ANNOTATION.into(), v.clone());
    }
    (content, problem)
}

/// Annotation on a Secret naming the renewal request (`tlsid.dev/renew` value) its certificate
/// answered. A request is handled if the status or the Secret says so.
pub const RENEW_HANDLED_ANNOTATION: &str = "tlsid.dev/renew-request";

/// What came of the decision.
#[derive(Debug)]
pub enum Outcome {
    /// The decision called for no work ([`Decision::Blocked`], [`Decision::AwaitFreshStatus`],
    /// [`Decision::Defer`], [`Decision::CaCannotSign`]).
    Decided(Decision),
    /// A new certificate is needed but must wait ([`Decision::Defer`], [`Decision::CaCannotSign`]),
    /// or is refused for names no longer permitted ([`Decision::Blocked`] `NotPermitted`);
    /// meanwhile the certificate stored stays and the Secret is brought up to date with the
    /// current trust bundle (`content`, from [`kept_content`]): a CA rollover must reach every
    /// Secret, including those that cannot be renewed now.
    Waiting {
        decision: Decision,
        content: Option<SecretContent>,
    },
    /// The stored certificate stays; `content` is what the Secret should hold.
    Kept {
        info: Box<CertificateInfo>,
        renew_at: jiff::Timestamp,
        content: SecretContent,
        keystore_problem: Option<String>,
    },
    /// A new certificate was signed; `content` is what the Secret should hold.
    Issued {
        cert: Box<IssuedCertificate>,
        request: Box<IssuanceRequest>,
        reason: ReissueReason,
        content: SecretContent,
        keystore_problem: Option<String>,
    },
    /// A certificate is due ([`Decision::Issue`]) but the install's issuance budget has given it
    /// a slot at `slot`: nothing is signed now. Shown as `Issuing=True` `WaitingForBudget` only
    /// when the slot is at least [`BUDGET_WAIT_VISIBLE`] away.
    Budget {
        reason: ReissueReason,
        slot: jiff::Timestamp,
    },
    /// Issuing or writing the Secret failed.
    Failed {
        /// Why a certificate was being issued (`None`: only the Secret's metadata or bundle was
        /// being brought up to date).
        reason: Option<ReissueReason>,
        failure: Failure,
    },
}

/// A failure to issue or write, as the user sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    /// What went wrong, with the apiserver's message when it answered.
    pub message: String,
    /// Retrying soon will not help (403, 422, an immutable field): wait the capped backoff.
    pub persistent: bool,
}

/// The demo workload's result, from `controller::demo`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DemoOutcome {
    /// The `Demo` condition to set: (status, reason, message); `None` removes it.
    pub condition: Option<(bool, Reason, String)>,
    /// Look again within this long (a client waiting for its server; a failed apply).
    pub recheck: Option<Duration>,
}

/// An Event to publish on the identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Everything to write, and when to look again.
#[derive(Debug, Default)]
pub struct Plan {
    /// The desired Secret, only when it differs from the observed one.
    pub secret: Option<Secret>,
    /// The new status, only when it differs from the observed one.
    pub status: Option<TlsIdentityStatus>,
    /// The status as it will be (new or unchanged): metrics are derived from it.
    pub effective_status: TlsIdentityStatus,
    pub events: Vec<Note>,
    /// `None`: wait for a change.
    pub requeue: Option<Duration>,
    /// The reason label of a new certificate, for the issuance counter.
    pub issued: Option<&'static str>,
    /// The CA reason that blocked issuance, for the blocked counter (set when newly blocked).
    pub ca_blocked: Option<Reason>,
}

/// Turn an outcome into writes, Events and a requeue.
pub fn finish(obs: &Observed<'_>, outcome: Outcome, demo: DemoOutcome) -> Plan {
    let old = obs.status();
    let (now, generation) = (obs.now, obs.generation());
    let mut st = old.clone();
    st.observed_generation = generation;
    st.secret_name = Some(obs.identity.secret_name());
    let mut plan = Plan::default();
    let mut requeue: Option<Duration> = None;
    let mut soon = |d: Duration| {
        requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
    };
    // Ready=False with a Warning the first time this reason shows.
    let not_ready = |st: &mut TlsIdentityStatus, reason: Reason, message: String| {
        set_condition(
            &mut st.conditions,
            READY,
            false,
            reason.as_str(),
            message.clone(),
            generation,
            now,
        );
        (ready_reason(&old) != Some(reason.as_str())).then(|| Note {
            warning: true,
            reason: reason.as_str().into(),
            message,
        })
    };

    let outcome = match outcome {
        Outcome::Waiting { decision, content } => {
            // The stored leaf as it is, with the bundle of the moment.
            if let (Some(content), Some(secret)) = (content, obs.own_secret())
                && let Ok((_, info)) = pki::inspect::parse_leaf(&content.tls_crt)
            {
                let desired = resources::desired_secret(obs.identity, &content, &info.serial_hex);
                if resources::secret_needs_update(secret, &desired) {
                    plan.secret = Some(desired);
                }
            }
            Outcome::Decided(decision)
        }
        other => other,
    };
    match outcome {
        Outcome::Waiting { .. } => unreachable!("turned into Decided above"),
        Outcome::Decided(Decision::Blocked { reason, message }) => {
            plan.events.extend(not_ready(&mut st, reason, message));
            if reason == Reason::SecretConflict {
                soon(CONFLICT_RECHECK);
            }
        }
        Outcome::Decided(Decision::AwaitFreshStatus) => {
            // Leave status alone: the fresh copy is on its way.
            st = old.clone();
            soon(STALE_STATUS_RECHECK);
        }
        Outcome::Decided(Decision::Defer { until, .. }) => {
            soon(until_from(now, until));
        }
        Outcome::Budget { reason, slot } => {
            let shown = status::condition(&old, ISSUING).is_some_and(|c| {
                c.status == "True" && c.reason == Reason::WaitingForBudget.as_str()
            });
            if !shown && until_from(now, slot) >= BUDGET_WAIT_VISIBLE {
                set_condition(
                    &mut st.conditions,
                    ISSUING,
                    true,
                    Reason::WaitingForBudget.as_str(),
                    format!(
                        "{}; waiting for the install's issuance budget, this certificate's turn is at {slot}",
                        reason.message()
                    ),
                    generation,
                    now,
                );
            }
            soon(until_from(now, slot));
        }
        Outcome::Decided(Decision::CaCannotSign {
            problem, message, ..
        }) => {
            let note = not_ready(&mut st, problem, message);
            if note.is_some() {
                plan.ca_blocked = Some(problem);
            }
            plan.events.extend(note);
            let ca_end = obs.ca.not_after();
            soon(if ca_end > now {
                until_from(now, ca_end).min(BACKOFF_CAP)
            } else {
                BACKOFF_CAP
            });
        }
        Outcome::Decided(Decision::Keep { .. } | Decision::Issue { .. }) => {
            // The controller turns these into Kept/Issued/Failed; reaching here is a no-op.
        }
        Outcome::Kept {
            info,
            renew_at,
            content,
            keystore_problem,
        } => {
            let desired = resources::desired_secret(obs.identity, &content, &info.serial_hex);
            if obs.own_secret().is_none_or(|s| {
                resources::secret_needs_update(s, &desired)
                    || resources::secret::owner_ref_to_drop(s, obs.identity)
            }) {
                plan.secret = Some(desired);
            }
            if old.serial_number.as_deref() != Some(info.serial_hex.as_str()) {
                // A certificate tlsid wrote whose status write was lost (a crash between the
                // two writes): adopt it as the next revision, with the request it answered.
                st.revision = Some(old.revision.unwrap_or(0) + 1);
                st.last_renew_request = handled_request(obs, &old).map(str::to_string);
            }
            fill_certificate(&mut st, &info, renew_at, obs.ca);
            // Keep Issued/Renewed as they were: flipping between them would be a write a minute.
            let reason = match ready_reason(&old) {
                Some(r) if r == Reason::Renewed.as_str() => Reason::Renewed,
                _ => Reason::Issued,
            };
            set_condition(
                &mut st.conditions,
                READY,
                true,
                reason.as_str(),
                valid_message(info.not_after, renew_at),
                generation,
                now,
            );
            if st.conditions.iter().all(|c| c.type_ != ISSUING)
                || st.failed_issuance_attempts.is_some()
                || status::condition(&st, ISSUING)
                    .is_some_and(|c| c.reason == Reason::WaitingForBudget.as_str())
            {
                set_condition(
                    &mut st.conditions,
                    ISSUING,
                    false,
                    Reason::UpToDate.as_str(),
                    "no issuance needed".into(),
                    generation,
                    now,
                );
            }
            st.failed_issuance_attempts = None;
            st.last_failure_time = None;
            soon(until_from(now, renew_at));
            if let Some(problem) = keystore_problem {
                plan.events
                    .extend(not_ready(&mut st, Reason::KeystorePasswordMissing, problem));
                soon(KEYSTORE_RECHECK);
            }
        }
        Outcome::Issued {
            cert,
            request,
            reason,
            content,
            keystore_problem,
        } => {
            let mut content = content;
            if let ReissueReason::ManualRequest(v) = &reason {
                // The Secret says which request it answers: if the status write is lost, the
                // request is not answered a second time (see `decide`).
                content
                    .annotations
                    .insert(RENEW_HANDLED_ANNOTATION.into(), v.clone());
            }
            plan.secret = Some(resources::desired_secret(
                obs.identity,
                &content,
                &cert.serial_hex,
            ));
            let renew_at =
                pki::renewal_time(cert.not_before, cert.not_after, request.renew, obs.seed());
            st.not_before = Some(Time(cert.not_before));
            st.not_after = Some(Time(cert.not_after));
            st.renewal_time = Some(Time(renew_at));
            st.serial_number = Some(cert.serial_hex.clone());
            st.ca_fingerprint = Some(obs.ca.fingerprint().to_string());
            st.revision = Some(old.revision.unwrap_or(0) + 1);
            st.failed_issuance_attempts = None;
            st.last_failure_time = None;
            if let ReissueReason::ManualRequest(v) = &reason {
                st.last_renew_request = Some(v.clone());
            }
            let (ready, verb) = if reason.is_renewal() {
                (Reason::Renewed, "renewed")
            } else {
                (Reason::Issued, "issued")
            };
            let msg = format!(
                "certificate {verb} (serial {}, valid until {}): {}",
                cert.serial_hex,
                cert.not_after,
                reason.message()
            );
            set_condition(
                &mut st.conditions,
                READY,
                true,
                ready.as_str(),
                valid_message(cert.not_after, renew_at),
                generation,
                now,
            );
            set_condition(
                &mut st.conditions,
                ISSUING,
                false,
                reason.reason(),
                msg.clone(),
                generation,
                now,
            );
            plan.events.push(Note {
                warning: false,
                reason: ready.as_str().into(),
                message: msg,
            });
            plan.issued = Some(reason.reason());
            soon(until_from(now, renew_at));
            if let Some(problem) = keystore_problem {
                plan.events
                    .extend(not_ready(&mut st, Reason::KeystorePasswordMissing, problem));
                soon(KEYSTORE_RECHECK);
            }
        }
        Outcome::Failed { reason, failure } => {
            let attempts = if failure.persistent {
                old.failed_issuance_attempts
                    .unwrap_or(0)
                    .max(CAPPED_ATTEMPTS - 1)
                    + 1
            } else {
                old.failed_issuance_attempts.unwrap_or(0).saturating_add(1)
            };
            let wait = failure_backoff(attempts, obs.seed());
            st.failed_issuance_attempts = Some(attempts);
            st.last_failure_time = Some(Time(now));
            let msg = format!(
                "{} (attempt {attempts}; retrying in {}s)",
                failure.message,
                wait.as_secs()
            );
            let new_kind = st
                .conditions
                .iter()
                .find(|c| c.type_ == ISSUING)
                .is_none_or(|c| c.reason != failure.reason.as_str() || c.status != "True");
            set_condition(
                &mut st.conditions,
                ISSUING,
                true,
                failure.reason.as_str(),
                msg.clone(),
                generation,
                now,
            );
            // A certificate that is still valid keeps serving: Ready stays True while the
            // failure is retried, unless the stored certificate is unusable or the write was
            // refused for good.
            let still_valid = old.not_after.as_ref().is_some_and(|t| t.0 > now)
                && !failure.persistent
                && !matches!(
                    reason,
                    None | Some(
                        ReissueReason::SecretMissing
                            | ReissueReason::DataMissing(_)
                            | ReissueReason::Unparseable(..)
                            | ReissueReason::KeyMismatch
                    )
                );
            let note = if still_valid {
                None
            } else {
                not_ready(&mut st, failure.reason, msg.clone())
            };
            // One Warning per new kind of failure: the rest shows in the condition's attempt count.
            if note.is_some() || new_kind {
                plan.events.push(Note {
                    warning: true,
                    reason: failure.reason.as_str().into(),
                    message: msg,
                });
            }
            soon(wait);
        }
    }

    match obs.ca_secret_problem {
        Some(problem) => set_condition(
            &mut st.conditions,
            CA_SECRET,
            false,
            Reason::CaSecretInvalid.as_str(),
            format!(
                "the CA Secret is not usable ({problem}); the last good CA keeps signing this identity"
            ),
            generation,
            now,
        ),
        None => st.conditions.retain(|c| c.type_ != CA_SECRET),
    }
    match demo.condition {
        Some((ok, reason, message)) => set_condition(
            &mut st.conditions,
            DEMO,
            ok,
            reason.as_str(),
            message,
            generation,
            now,
        ),
        None => st.conditions.retain(|c| c.type_ != DEMO),
    }
    if let Some(d) = demo.recheck {
        soon(d);
    }
    if let Some(consumers) = &obs.consumers {
        st.consumers = consumers.clone();
    }

    if st != old {
        plan.status = Some(st.clone());
    }
    plan.effective_status = st;
    plan.requeue = requeue;
    plan
}

/// The conditions of an object tlsid cannot read as a `TlsIdentity` (`why`: the decoder's
/// message), or `None` when they already say so (so nothing is written twice).
pub fn unreadable_conditions(
    current: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    why: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>> {
    let message = format!("tlsid cannot read this object ({why}); fix or re-create it");
    let mut conditions = current.to_vec();
    set_condition(
        &mut conditions,
        READY,
        false,
        Reason::UnreadableObject.as_str(),
        message,
        generation,
        now,
    );
    let same = |a: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
                b: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
            })
    };
    let mut sorted = current.to_vec();
    sorted.sort_by(|a, b| a.type_.cmp(&b.type_));
    (!same(&sorted, &conditions)).then_some(conditions)
}

fn fill_certificate(
    st: &mut TlsIdentityStatus,
    info: &CertificateInfo,
    renew_at: jiff::Timestamp,
    ca: &Authority,
) {
    st.not_before = Some(Time(info.not_before));
    st.not_after = Some(Time(info.not_after));
    st.renewal_time = Some(Time(renew_at));
    st.serial_number = Some(info.serial_hex.clone());
    st.ca_fingerprint = info
        .issuer_fingerprint
        .clone()
        .or_else(|| Some(ca.fingerprint().to_string()));
}

fn valid_message(not_after: jiff::Timestamp, renew_at: jiff::Timestamp) -> String {
    format!("certificate valid until {not_after}, renews at {renew_at}")
}

/// The wait from `now` until `at`: at least one second, so a clock edge never spins.
pub fn until_from(now: jiff::Timestamp, at: jiff::Timestamp) -> Duration {
    Duration::from_secs((at.as_second() - now.as_second()).max(1) as u64)
}
