//! The reconcile decision as a table: given this world, this is what tlsid writes, says and does
//! next. No apiserver; each case names the rule it pins.

use super::*;
use crate::api::{
    DemoSpec, Keystores, Pkcs12Keystore, SecretKeyRef, TlsIdentitySpec, conditions::Reason,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use std::{collections::BTreeSet, sync::OnceLock};

fn t0() -> jiff::Timestamp {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

fn secs(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(n)
}

/// One CA for every case (generating keys is slow), valid for a year from t0.
fn ca() -> &'static Authority {
    static CA: OnceLock<Authority> = OnceLock::new();
    CA.get_or_init(|| Authority::generate_root(t0()).unwrap())
}

/// A CA that expires at `t0 + secs`.
fn short_ca(lifetime: i64) -> Authority {
    // A root generated a year before, so that it ends at the wanted moment.
    let start =
        t0() + secs(lifetime) - jiff::SignedDuration::try_from(pki::ca::ROOT_LIFETIME).unwrap();
    Authority::generate_root(start).unwrap()
}

/// The built-in name rule with no grants: every case's names are in namespace `team`.
fn names() -> crate::tenancy::NamePolicy<'static> {
    static SETTINGS: OnceLock<crate::tenancy::Settings> = OnceLock::new();
    crate::tenancy::NamePolicy {
        settings: SETTINGS.get_or_init(Default::default),
        grants: &[],
    }
}

fn no_labels() -> &'static std::collections::BTreeMap<String, String> {
    static LABELS: OnceLock<std::collections::BTreeMap<String, String>> = OnceLock::new();
    LABELS.get_or_init(Default::default)
}

fn identity(spec: serde_json::Value) -> TlsIdentity {
    let mut spec = spec;
    if spec.get("dnsNames").is_none() {
        spec["dnsNames"] = serde_json::json!(["web.team.svc"]);
    }
    let spec: TlsIdentitySpec = serde_json::from_value(spec).unwrap();
    let mut id = TlsIdentity::new("web", spec);
    id.metadata.namespace = Some("team".into());
    id.metadata.uid = Some("uid-1".into());
    id.metadata.generation = Some(1);
    id
}

/// What one reconcile at `now` would write and say, with signing done for real.
struct Run {
    decision: Decision,
    plan: Plan,
}

fn run_with(
    id: &TlsIdentity,
    secret: Option<&Secret>,
    password: KeystorePassword,
    ca: &Authority,
    now: jiff::Timestamp,
    demo: DemoOutcome,
) -> Run {
    let obs = Observed {
        identity: id,
        secret,
        password,
        ca,
        ca_secret_problem: None,
        names: names(),
        namespace_labels: no_labels(),
        consumers: None,
        now,
    };
    let decision = decide(&obs);
    let outcome = match decision.clone() {
        Decision::Keep { info, renew_at } => {
            let (content, keystore_problem) = kept_content(id, secret, ca, &obs.password);
            Outcome::Kept {
                info,
                renew_at,
                content,
                keystore_problem,
            }
        }
        Decision::Issue { request, reason } => {
            let cert = pki::issue(&request, ca, now).unwrap();
            let (content, keystore_problem) = secret_content(
                id,
                secret,
                cert.chain_pem.clone().into_bytes(),
                cert.key_pem.clone().into_bytes(),
                ca,
                &obs.password,
            );
            Outcome::Issued {
                cert: Box::new(cert),
                request,
                reason,
                content,
                keystore_problem,
            }
        }
        // As the controller does: what must wait still gets the bundle of the moment.
        waiting @ (Decision::Defer { .. }
        | Decision::CaCannotSign { .. }
        | Decision::Blocked {
            reason: Reason::NotPermitted,
            ..
        }) => Outcome::Waiting {
            decision: waiting,
            content: obs
                .own_secret()
                .map(|s| kept_content(id, Some(s), ca, &obs.password).0),
        },
        other => Outcome::Decided(other),
    };
    Run {
        decision,
        plan: finish(&obs, outcome, demo),
    }
}

fn run(id: &TlsIdentity, secret: Option<&Secret>, now: jiff::Timestamp) -> Run {
    run_with(
        id,
        secret,
        KeystorePassword::NotRequested,
        ca(),
        now,
        DemoOutcome::default(),
    )
}

/// The world after a run's writes landed: the identity with the new status, and the Secret.
fn after(id: &TlsIdentity, secret: Option<&Secret>, r: &Run) -> (TlsIdentity, Option<Secret>) {
    let mut id = id.clone();
    if let Some(st) = &r.plan.status {
        id.status = Some(st.clone());
    }
    let secret = r.plan.secret.clone().or_else(|| secret.cloned());
    (id, secret)
}

fn cond<'a>(r: &'a Run, type_: &str) -> (&'a str, &'a str) {
    let c = status::condition(&r.plan.effective_status, type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str())
}

fn reasons(r: &Run) -> Vec<(bool, String)> {
    r.plan
        .events
        .iter()
        .map(|n| (n.warning, n.reason.clone()))
        .collect()
}

/// An identity issued at t0 and settled (status written, Secret in place).
fn settled(id: &TlsIdentity) -> (TlsIdentity, Secret) {
    let r = run(id, None, t0());
    let (id, secret) = after(id, None, &r);
    (id, secret.unwrap())
}

// === first issuance, steady state, idempotence ===

#[test]
fn a_new_identity_is_issued_once_and_then_left_alone() {
    let id = identity(serde_json::json!({}));
    let r = run(&id, None, t0());
    assert!(matches!(
        r.decision,
        Decision::Issue {
            reason: ReissueReason::SecretMissing,
            ..
        }
    ));
    assert_eq!(cond(&r, READY), ("True", "Issued"));
    assert_eq!(cond(&r, ISSUING), ("False", "SecretMissing"));
    assert_eq!(reasons(&r), vec![(false, "Issued".into())]);
    assert_eq!(r.plan.issued, Some("SecretMissing"));
    let st = r.plan.status.as_ref().expect("status written");
    assert_eq!(st.revision, Some(1));
    assert_eq!(st.secret_name.as_deref(), Some("web-tls"));
    let secret = r.plan.secret.as_ref().expect("Secret written");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    // Renewal at 2/3 of 24h (less jitter) after the backdated start.
    let requeue = r.plan.requeue.unwrap().as_secs();
    assert!(
        (15 * 3600..=16 * 3600 + 600).contains(&requeue),
        "{requeue}"
    );

    // Steady state: the same world a minute later writes nothing and says nothing.
    let (id, secret) = after(&id, None, &r);
    let again = run(&id, secret.as_ref(), t0() + secs(60));
    assert!(matches!(again.decision, Decision::Keep { .. }));
    assert!(again.plan.secret.is_none(), "no Secret write");
    assert!(again.plan.status.is_none(), "no status write");
    assert!(again.plan.events.is_empty(), "no Event");
    assert_eq!(cond(&again, READY), ("True", "Issued"));
}

#[test]
fn our_own_secret_write_seen_before_our_status_write_waits_for_the_status() {
    let id = identity(serde_json::json!({}));
    let r = run(&id, None, t0());
    let mut secret = r.plan.secret.clone().unwrap();
    secret.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(FIELD_MANAGER.into()),
        time: Some(Time(t0())),
        ..Default::default()
    }]);
    // The cached identity still has no status.
    let stale = run(&id, Some(&secret), t0() + secs(1));
    assert_eq!(stale.decision, Decision::AwaitFreshStatus);
    assert!(stale.plan.status.is_none() && stale.plan.secret.is_none());
    assert_eq!(stale.plan.requeue, Some(STALE_STATUS_RECHECK));

    // A status write that was lost for good (a crash between the two writes): after the grace
    // the certificate is adopted, not re-issued.
    let later = run(&id, Some(&secret), t0() + secs(60));
    assert!(matches!(later.decision, Decision::Keep { .. }));
    let st = later.plan.status.as_ref().unwrap();
    assert_eq!(st.revision, Some(1), "adopted as the next revision");
    assert_eq!(
        st.serial_number,
        r.plan.status.as_ref().unwrap().serial_number
    );
    assert!(later.plan.secret.is_none(), "not re-issued");
}

#[test]
fn a_renewal_request_seen_again_before_our_status_write_is_not_issued_twice() {
    // Issued, then a renewal requested: the first reconcile renews and writes the Secret; the
    // Secret's watch event arrives while the cached identity still says the request is unhandled.
    let id = identity(serde_json::json!({}));
    let first = run(&id, None, t0());
    let (mut id, secret) = after(&id, None, &first);
    id.metadata.annotations = Some([(RENEW_ANNOTATION.to_string(), "now".to_string())].into());
    let renewed = run(&id, secret.as_ref(), t0() + secs(60));
    assert!(matches!(
        renewed.decision,
        Decision::Issue {
            reason: ReissueReason::ManualRequest(_),
            ..
        }
    ));
    let mut written = renewed.plan.secret.clone().unwrap();
    written.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(FIELD_MANAGER.into()),
        time: Some(Time(t0() + secs(60))),
        ..Default::default()
    }]);
    let stale = run(&id, Some(&written), t0() + secs(61));
    assert_eq!(
        stale.decision,
        Decision::AwaitFreshStatus,
        "not a second issuance"
    );
    assert!(stale.plan.secret.is_none() && stale.plan.status.is_none());

    // The status write was lost for good (refused, or a crash): after the grace the Secret's
    // certificate is adopted, and the Secret says it answered the request: no second issuance.
    let later = run(&id, Some(&written), t0() + secs(600));
    assert!(
        matches!(later.decision, Decision::Keep { .. }),
        "{:?}",
        later.decision
    );
    let st = later.plan.status.as_ref().expect("status catches up");
    assert_eq!(
        st.serial_number,
        renewed.plan.status.as_ref().unwrap().serial_number
    );
    assert_eq!(
        st.last_renew_request.as_deref(),
        Some("now"),
        "recorded as handled"
    );
    assert!(
        later.plan.secret.is_none(),
        "the Secret keeps the request it answered"
    );
}

// === renewal ===

#[test]
fn renews_at_the_renewal_time_and_says_renewed() {
    let id = identity(serde_json::json!({"duration": "1h"}));
    let (id, secret) = settled(&id);
    let renew_at = id.status.as_ref().unwrap().renewal_time.clone().unwrap().0;
    let before = run(&id, Some(&secret), renew_at - secs(1));
    assert!(matches!(before.decision, Decision::Keep { .. }));
    assert_eq!(before.plan.requeue, Some(Duration::from_secs(1)));
    let r = run(&id, Some(&secret), renew_at);
    assert!(matches!(
        r.decision,
        Decision::Issue {
            reason: ReissueReason::RenewalDue(_),
            ..
        }
    ));
    assert_eq!(cond(&r, READY), ("True", "Renewed"));
    assert_eq!(cond(&r, ISSUING), ("False", "Renewing"));
    assert_eq!(reasons(&r), vec![(false, "Renewed".into())]);
    assert_eq!(r.plan.status.as_ref().unwrap().revision, Some(2));
    // And "Renewed" stays: the next idle reconcile does not flip it back to "Issued".
    let (id, secret) = after(&id, Some(&secret), &r);
    let idle = run(&id, secret.as_ref(), renew_at + secs(60));
    assert!(idle.plan.status.is_none() && idle.plan.events.is_empty());
}

/// The renewal at `now` as the controller runs it when the issuance budget gives it a slot
/// `wait` away instead of signing.
fn budget_wait(id: &TlsIdentity, secret: &Secret, now: jiff::Timestamp, wait: i64) -> Run {
    let obs = Observed {
        identity: id,
        secret: Some(secret),
        password: KeystorePassword::NotRequested,
        ca: ca(),
        ca_secret_problem: None,
        names: names(),
        namespace_labels: no_labels(),
        consumers: None,
        now,
    };
    let decision = decide(&obs);
    let Decision::Issue { reason, .. } = decision.clone() else {
        panic!("not due: {decision:?}");
    };
    let outcome = Outcome::Budget {
        reason,
        slot: now + secs(wait),
    };
    Run {
        decision,
        plan: finish(&obs, outcome, DemoOutcome::default()),
    }
}

#[test]
fn waiting_for_the_issuance_budget_shows_only_when_long_and_once() {
    let id = identity(serde_json::json!({"duration": "1h"}));
    let (id, secret) = settled(&id);
    let due = id.status.as_ref().unwrap().renewal_time.clone().unwrap().0;
    // A short wait (a bulk the budget passes within BUDGET_WAIT_VISIBLE) writes nothing.
    let short = budget_wait(&id, &secret, due, 30);
    assert!(short.plan.status.is_none() && short.plan.secret.is_none());
    assert!(short.plan.events.is_empty());
    assert_eq!(short.plan.requeue, Some(Duration::from_secs(30)));
    assert_eq!(cond(&short, ISSUING), ("False", "SecretMissing"));
    // A long one is shown once: Issuing=True WaitingForBudget, Ready untouched, no Event.
    let wait = BUDGET_WAIT_VISIBLE.as_secs() as i64 + 60;
    let long = budget_wait(&id, &secret, due, wait);
    assert_eq!(cond(&long, ISSUING), ("True", "WaitingForBudget"));
    assert_eq!(cond(&long, READY), ("True", "Issued"));
    assert!(long.plan.secret.is_none() && long.plan.events.is_empty());
    assert_eq!(long.plan.requeue, Some(Duration::from_secs(wait as u64)));
    let msg = &status::condition(&long.plan.effective_status, ISSUING)
        .unwrap()
        .message;
    assert!(msg.contains("issuance budget"), "{msg}");
    // Seen again while waiting (a watch event): nothing more is written.
    let (waiting, _) = after(&id, Some(&secret), &long);
    let again = budget_wait(&waiting, &secret, due + secs(10), wait - 10);
    assert!(again.plan.status.is_none(), "written once");
    // Its turn: renewed, and the condition says so.
    let r = run(&waiting, Some(&secret), due + secs(wait));
    assert_eq!(cond(&r, ISSUING), ("False", "Renewing"));
    assert_eq!(cond(&r, READY), ("True", "Renewed"));
    // No longer due by then (a spec change back, a restore): the wait is cleared, not left True.
    let kept = run(&waiting, Some(&secret), t0() + secs(60));
    assert!(matches!(kept.decision, Decision::Keep { .. }));
    assert_eq!(cond(&kept, ISSUING), ("False", "UpToDate"));
}

#[test]
fn a_renewal_point_at_issuance_never_loops() {
    // 60s with 99% before expiry: the renewal point is before the issuance (the backdate counts
    // in the lifetime). Whatever the spec, no certificate is renewed within the minimum interval.
    let id = identity(serde_json::json!({"duration": "60s", "renewBeforePercentage": 99}));
    let mut issued = 0;
    let (mut id, mut secret) = (id, None::<Secret>);
    for s in 0..120 {
        let r = run(&id, secret.as_ref(), t0() + secs(s));
        if r.plan.issued.is_some() {
            issued += 1;
        }
        (id, secret) = after(&id, secret.as_ref(), &r);
    }
    // At most one issuance per minimum interval, plus the first.
    let bound = 120 / MIN_REISSUE_INTERVAL.as_secs() as i32 + 1;
    assert!(
        issued <= bound,
        "{issued} issuances in 120s (bound {bound})"
    );
}

#[test]
fn a_manual_renewal_right_after_issuance_is_not_delayed() {
    let id = identity(serde_json::json!({}));
    let (mut id, secret) = settled(&id);
    id.metadata.annotations = Some([(RENEW_ANNOTATION.to_string(), "now".to_string())].into());
    let r = run(&id, Some(&secret), t0() + secs(2));
    assert!(matches!(
        r.decision,
        Decision::Issue {
            reason: ReissueReason::ManualRequest(_),
            ..
        }
    ));
}

#[test]
fn manual_renewal_is_handled_once() {
    let id = identity(serde_json::json!({}));
    let (mut id, secret) = settled(&id);
    id.metadata.annotations = Some([(RENEW_ANNOTATION.to_string(), "v1".to_string())].into());
    let r = run(&id, Some(&secret), t0() + secs(3600));
    assert!(matches!(
        r.decision,
        Decision::Issue {
            reason: ReissueReason::ManualRequest(_),
            ..
        }
    ));
    assert_eq!(
        r.plan
            .status
            .as_ref()
            .unwrap()
            .last_renew_request
            .as_deref(),
        Some("v1")
    );
    let (id, secret) = after(&id, Some(&secret), &r);
    let again = run(&id, secret.as_ref(), t0() + secs(3700));
    assert!(matches!(again.decision, Decision::Keep { .. }));
}

// === blocked: invalid spec, foreign Secret ===

#[test]
fn an_invalid_spec_is_reported_once_and_waits_for_a_change() {
    let id = identity(serde_json::json!({"dnsNames": ["UPPER.case"]}));
    let r = run(&id, None, t0());
    assert!(matches!(
        r.decision,
        Decision::Blocked {
            reason: Reason::InvalidSpec,
            ..
        }
    ));
    assert_eq!(cond(&r, READY), ("False", "InvalidSpec"));
    assert_eq!(reasons(&r), vec![(true, "InvalidSpec".into())]);
    assert!(r.plan.secret.is_none());
    assert_eq!(r.plan.requeue, None, "waits for a change to the spec");
    let (id, _) = after(&id, None, &r);
    let again = run(&id, None, t0() + secs(60));
    assert!(again.plan.status.is_none() && again.plan.events.is_empty());
}

#[test]
fn foreign_names_are_not_permitted_reported_once_and_never_signed() {
    let id = identity(serde_json::json!({"dnsNames": ["web.team.svc", "payments.prod.svc"]}));
    let r = run(&id, None, t0());
    let Decision::Blocked {
        reason: Reason::NotPermitted,
        message,
    } = &r.decision
    else {
        panic!("{:?}", r.decision)
    };
    assert!(
        message.starts_with("dnsNames[1] \"payments.prod.svc\" is outside namespace team"),
        "{message}"
    );
    assert_eq!(cond(&r, READY), ("False", "NotPermitted"));
    assert_eq!(reasons(&r), vec![(true, "NotPermitted".into())]);
    assert!(r.plan.secret.is_none(), "no Secret for a refused identity");
    assert_eq!(
        r.plan.requeue, None,
        "no retry loop: waits for the identity or a policy to change"
    );
    let (id, _) = after(&id, None, &r);
    let again = run(&id, None, t0() + secs(60));
    assert!(again.plan.status.is_none() && again.plan.events.is_empty());
}

#[test]
fn names_that_stop_being_permitted_are_not_renewed_and_say_so() {
    let id = identity(serde_json::json!({"dnsNames": ["web.team.svc"]}));
    let (mut id, secret) = settled(&id);
    // The same names, now seen from another namespace (as if a grant went away).
    id.metadata.namespace = Some("elsewhere".into());
    let serial = secret.metadata.annotations.as_ref().unwrap()[SERIAL_ANNOTATION].clone();
    for now in [t0() + secs(60), t0() + secs(23 * 3600)] {
        let r = run(&id, Some(&secret), now);
        assert!(
            matches!(
                r.decision,
                Decision::Blocked {
                    reason: Reason::NotPermitted,
                    ..
                }
            ),
            "{:?}",
            r.decision
        );
        assert!(
            r.plan.secret.is_none(),
            "the Secret ({serial}) is left as it is"
        );
        assert_eq!(cond(&r, READY), ("False", "NotPermitted"));
    }
}

/// A CA rollover publishes the next root in every identity's Secret, including those that cannot
/// be renewed now: here, names no longer permitted. The stored certificate stays as it is.
#[test]
fn a_secret_that_is_not_renewed_still_follows_the_trust_bundle() {
    let id = identity(serde_json::json!({"dnsNames": ["web.team.svc"]}));
    let (mut id, secret) = settled(&id);
    id.metadata.namespace = Some("elsewhere".into());
    let next = Authority::generate_root(t0()).unwrap();
    let mut roots = ca().roots().to_vec();
    roots.extend(next.roots().iter().cloned());
    let published = ca().with_roots(&roots, t0()).unwrap();
    let r = run_with(
        &id,
        Some(&secret),
        KeystorePassword::NotRequested,
        &published,
        t0() + secs(60),
        DemoOutcome::default(),
    );
    assert_eq!(cond(&r, READY), ("False", "NotPermitted"));
    let written = r.plan.secret.expect("the Secret takes the new bundle");
    let (old, new) = (
        resources::secret_data(&secret),
        resources::secret_data(&written),
    );
    assert_eq!(new.tls_crt, old.tls_crt, "the certificate stays");
    assert_eq!(new.tls_key, old.tls_key);
    assert_eq!(new.ca_crt, Some(published.bundle_pem().as_bytes()));
}

#[test]
fn spiffe_service_account_becomes_a_uri_san_of_the_namespace() {
    // The SPIFFE ID alone names the identity (no dnsNames).
    let id = identity(serde_json::json!({"dnsNames": [], "spiffe": {"serviceAccount": "web"}}));
    let Decision::Issue { request, .. } = run(&id, None, t0()).decision else {
        panic!("issues")
    };
    assert_eq!(
        request.uris.iter().collect::<Vec<_>>(),
        ["spiffe://cluster.local/ns/team/sa/web"]
    );
}

#[test]
fn a_foreign_secret_is_a_conflict_and_never_written() {
    let id = identity(serde_json::json!({}));
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("web-tls".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = run(&id, Some(&foreign), t0());
    assert_eq!(cond(&r, READY), ("False", "SecretConflict"));
    assert!(r.plan.secret.is_none());
    assert_eq!(r.plan.requeue, Some(CONFLICT_RECHECK));
    assert_eq!(reasons(&r), vec![(true, "SecretConflict".into())]);
}

#[test]
fn a_secret_left_by_a_deleted_identity_of_the_same_name_is_adopted_without_reissue() {
    let id = identity(serde_json::json!({}));
    let (_, secret) = settled(&id);
    let mut recreated = identity(serde_json::json!({}));
    recreated.metadata.uid = Some("uid-2".into());
    let r = run(&recreated, Some(&secret), t0() + secs(120));
    assert!(
        matches!(r.decision, Decision::Keep { .. }),
        "{:?}",
        r.decision
    );
    assert!(r.plan.secret.is_none());
    assert_eq!(cond(&r, READY), ("True", "Issued"));
}

// === failures and backoff ===

fn failed(id: &TlsIdentity, reason: Reason, persistent: bool, now: jiff::Timestamp) -> Run {
    let obs = Observed {
        identity: id,
        secret: None,
        password: KeystorePassword::NotRequested,
        ca: ca(),
        ca_secret_problem: None,
        names: names(),
        namespace_labels: no_labels(),
        consumers: None,
        now,
    };
    Run {
        decision: decide(&obs),
        plan: finish(
            &obs,
            Outcome::Failed {
                reason: Some(ReissueReason::SecretMissing),
                failure: Failure {
                    reason,
                    message: "the apiserver answered 422 Invalid: no".into(),
                    persistent,
                },
            },
            DemoOutcome::default(),
        ),
    }
}

#[test]
fn failures_back_off_exponentially_and_warn_once_per_kind() {
    let mut id = identity(serde_json::json!({}));
    let mut waits = Vec::new();
    let mut warnings = 0;
    let mut now = t0();
    for _ in 0..10 {
        let r = failed(&id, Reason::SecretWriteFailed, false, now);
        assert_eq!(cond(&r, READY), ("False", "SecretWriteFailed"));
        assert_eq!(cond(&r, ISSUING), ("True", "SecretWriteFailed"));
        warnings += r.plan.events.len();
        let wait = r.plan.requeue.unwrap();
        waits.push(wait.as_secs());
        (id, _) = after(&id, None, &r);
        // Before the wait is over, nothing is attempted.
        let early = run(&id, None, now + secs(1));
        assert!(matches!(early.decision, Decision::Defer { .. }));
        assert!(early.plan.status.is_none());
        now += secs(wait.as_secs() as i64);
    }
    assert_eq!(warnings, 1, "one Warning for a run of the same failure");
    assert!(
        waits.windows(2).all(|w| w[0] <= w[1] || w[1] >= 270),
        "grows until the cap (where only jitter varies): {waits:?}"
    );
    assert!(*waits.last().unwrap() <= status::BACKOFF_CAP.as_secs());
    assert!(waits[0] <= 5 && *waits.last().unwrap() >= 270, "{waits:?}");
}

#[test]
fn a_refused_write_waits_the_capped_backoff_with_the_apiservers_message() {
    let id = identity(serde_json::json!({}));
    let r = failed(&id, Reason::SecretRejected, true, t0());
    assert_eq!(cond(&r, READY), ("False", "SecretRejected"));
    let msg = &status::condition(&r.plan.effective_status, READY)
        .unwrap()
        .message;
    assert!(msg.contains("422 Invalid: no"), "{msg}");
    assert!(r.plan.requeue.unwrap() >= status::BACKOFF_CAP.mul_f64(0.9));
    assert_eq!(reasons(&r), vec![(true, "SecretRejected".into())]);
    // The user's fix (a new generation) is tried at once, not after the capped wait.
    let (mut fixed, _) = after(&id, None, &r);
    assert!(matches!(
        run(&fixed, None, t0() + secs(1)).decision,
        Decision::Defer { .. }
    ));
    fixed.metadata.generation = Some(2);
    assert!(matches!(
        run(&fixed, None, t0() + secs(1)).decision,
        Decision::Issue { .. }
    ));
}

#[test]
fn a_failed_renewal_keeps_a_valid_certificate_ready() {
    let id = identity(serde_json::json!({}));
    let (id, secret) = settled(&id);
    let obs = Observed {
        identity: &id,
        secret: Some(&secret),
        password: KeystorePassword::NotRequested,
        ca: ca(),
        ca_secret_problem: None,
        names: names(),
        namespace_labels: no_labels(),
        consumers: None,
        now: t0() + secs(3600),
    };
    let plan = finish(
        &obs,
        Outcome::Failed {
            reason: Some(ReissueReason::RenewalDue(t0())),
            failure: Failure {
                reason: Reason::IssuanceFailed,
                message: "signing failed".into(),
                persistent: false,
            },
        },
        DemoOutcome::default(),
    );
    let r = Run {
        decision: decide(&obs),
        plan,
    };
    assert_eq!(cond(&r, READY), ("True", "Issued"), "still serving");
    assert_eq!(cond(&r, ISSUING), ("True", "IssuanceFailed"));
    assert_eq!(reasons(&r), vec![(true, "IssuanceFailed".into())]);
}

// === the CA ===

#[test]
fn an_expiring_ca_blocks_issuance_without_a_loop() {
    // The CA ends in 90s; the identity wants 60s certificates.
    let ca90 = short_ca(90);
    let id = identity(serde_json::json!({"duration": "60s"}));
    let mut issued = 0;
    let mut warnings = Vec::new();
    let (mut id, mut secret) = (id, None::<Secret>);
    let mut now = t0();
    let mut reconciles = 0;
    while now < t0() + secs(600) {
        let r = run_with(
            &id,
            secret.as_ref(),
            KeystorePassword::NotRequested,
            &ca90,
            now,
            DemoOutcome::default(),
        );
        reconciles += 1;
        issued += usize::from(r.plan.issued.is_some());
        warnings.extend(
            r.plan
                .events
                .iter()
                .filter(|n| n.warning)
                .map(|n| n.reason.clone()),
        );
        (id, secret) = after(&id, secret.as_ref(), &r);
        now += secs(r.plan.requeue.unwrap().as_secs() as i64);
    }
    // Issued at t0 and renewed at t0+30s (the CA still covers a full 60s), then never again.
    assert_eq!(
        issued, 2,
        "issued while the CA could sign 60s, then never again"
    );
    assert_eq!(
        warnings,
        vec!["CaExpiring".to_string(), "CaExpired".to_string()]
    );
    assert!(reconciles < 20, "{reconciles} reconciles in 10 minutes");
    let st = id.status.unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CaExpired")
    );
}

#[test]
fn a_ca_blocked_identity_is_counted_once() {
    let ca_old = short_ca(-10);
    let id = identity(serde_json::json!({}));
    let r = run_with(
        &id,
        None,
        KeystorePassword::NotRequested,
        &ca_old,
        t0(),
        DemoOutcome::default(),
    );
    assert_eq!(cond(&r, READY), ("False", "CaExpired"));
    assert_eq!(r.plan.ca_blocked, Some(Reason::CaExpired));
    assert!(r.plan.secret.is_none());
    let (id, _) = after(&id, None, &r);
    let again = run_with(
        &id,
        None,
        KeystorePassword::NotRequested,
        &ca_old,
        t0() + secs(300),
        DemoOutcome::default(),
    );
    assert_eq!(again.plan.ca_blocked, None);
    assert!(again.plan.events.is_empty() && again.plan.status.is_none());
    assert_eq!(again.plan.requeue, Some(status::BACKOFF_CAP));
}

// === keystores ===

fn with_keystores() -> TlsIdentity {
    let mut id = identity(serde_json::json!({}));
    id.spec.keystores = Some(Keystores {
        pkcs12: Some(Pkcs12Keystore {
            create: true,
            password_secret_ref: Some(SecretKeyRef {
                name: "pw".into(),
                key: "password".into(),
            }),
            profile: None,
        }),
    });
    id
}

#[test]
fn a_missing_keystore_password_still_writes_pem_and_rechecks_soon() {
    let id = with_keystores();
    let r = run_with(
        &id,
        None,
        KeystorePassword::Unavailable("the keystore password Secret pw/password is missing".into()),
        ca(),
        t0(),
        DemoOutcome::default(),
    );
    assert_eq!(cond(&r, READY), ("False", "KeystorePasswordMissing"));
    let secret = r.plan.secret.as_ref().unwrap();
    let keys: BTreeSet<_> = secret.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["ca.crt", "tls.crt", "tls.key"].map(String::from).into()
    );
    assert_eq!(r.plan.requeue, Some(KEYSTORE_RECHECK));
    assert!(reasons(&r).contains(&(true, "KeystorePasswordMissing".into())));

    // Once the password appears: keystores are added, Ready again; then idle.
    let (id, secret) = after(&id, None, &r);
    let pw = KeystorePassword::Present("changeit".into());
    let fixed = run_with(
        &id,
        secret.as_ref(),
        pw.clone(),
        ca(),
        t0() + secs(30),
        DemoOutcome::default(),
    );
    assert_eq!(cond(&fixed, READY), ("True", "Issued"));
    let written = fixed.plan.secret.as_ref().expect("keystores added");
    assert!(written.data.as_ref().unwrap().contains_key("keystore.p12"));
    let (id, secret) = after(&id, secret.as_ref(), &fixed);
    let idle = run_with(
        &id,
        secret.as_ref(),
        pw,
        ca(),
        t0() + secs(90),
        DemoOutcome::default(),
    );
    assert!(
        idle.plan.secret.is_none(),
        "keystores reused, not rewritten"
    );
    assert!(idle.plan.status.is_none());
}

// === the demo never blocks the certificate ===

#[test]
fn a_demo_failure_is_a_condition_and_the_certificate_is_still_issued() {
    let mut id = identity(serde_json::json!({}));
    id.spec.demo = Some(DemoSpec::default());
    let demo = DemoOutcome {
        condition: Some((
            false,
            Reason::DemoFailed,
            "the apiserver answered 403".into(),
        )),
        recheck: Some(Duration::from_secs(30)),
    };
    let r = run_with(&id, None, KeystorePassword::NotRequested, ca(), t0(), demo);
    assert!(r.plan.secret.is_some(), "the certificate is issued anyway");
    assert_eq!(cond(&r, READY), ("True", "Issued"));
    assert_eq!(cond(&r, DEMO), ("False", "DemoFailed"));
    assert_eq!(
        r.plan.requeue,
        Some(Duration::from_secs(30)),
        "the earliest of both"
    );
}

#[test]
fn demo_conditions_pass_through_and_go_with_the_demo() {
    for (ok, reason) in [
        (true, Reason::Applied),
        (false, Reason::ServerNotFound),
        (false, Reason::DemoConflict),
    ] {
        let id = identity(serde_json::json!({}));
        let (id, secret) = settled(&id);
        let demo = DemoOutcome {
            condition: Some((ok, reason, "x".into())),
            recheck: None,
        };
        let r = run_with(
            &id,
            Some(&secret),
            KeystorePassword::NotRequested,
            ca(),
            t0() + secs(60),
            demo,
        );
        assert_eq!(
            cond(&r, DEMO),
            (if ok { "True" } else { "False" }, reason.as_str())
        );
        let (id, secret) = after(&id, Some(&secret), &r);
        let removed = run(&id, secret.as_ref(), t0() + secs(120));
        assert!(status::condition(&removed.plan.effective_status, DEMO).is_none());
    }
}

// === coverage: every reason a user can see is produced by some case above ===

#[test]
fn every_reason_is_reachable_from_the_decision() {
    // The cases above, reduced to the reasons they produce.
    let mut seen = BTreeSet::new();
    let mut note = |r: &Run| {
        for c in &r.plan.effective_status.conditions {
            seen.insert(c.reason.clone());
        }
    };
    let id = identity(serde_json::json!({}));
    let first = run(&id, None, t0());
    note(&first);
    let (id1, secret) = after(&id, None, &first);
    note(&run(&id1, secret.as_ref(), t0() + secs(17 * 3600)));
    let mut up_to_date = id1.clone();
    up_to_date
        .status
        .as_mut()
        .unwrap()
        .conditions
        .retain(|c| c.type_ != ISSUING);
    note(&run(&up_to_date, secret.as_ref(), t0() + secs(60)));
    note(&run(
        &identity(serde_json::json!({"dnsNames": ["A"]})),
        None,
        t0(),
    ));
    let foreign = Secret::default();
    note(&run(&id, Some(&foreign), t0()));
    note(&run(
        &identity(serde_json::json!({"dnsNames": ["bank.com"]})),
        None,
        t0(),
    ));
    for (reason, persistent) in [
        (Reason::SecretRejected, true),
        (Reason::SecretWriteFailed, false),
        (Reason::IssuanceFailed, false),
    ] {
        note(&failed(&id, reason, persistent, t0()));
    }
    for lifetime in [-10, 90] {
        note(&run_with(
            &id,
            None,
            KeystorePassword::NotRequested,
            &short_ca(lifetime),
            t0(),
            DemoOutcome::default(),
        ));
    }
    note(&run_with(
        &with_keystores(),
        None,
        KeystorePassword::Unavailable("x".into()),
        ca(),
        t0(),
        DemoOutcome::default(),
    ));
    for reason in [
        Reason::Applied,
        Reason::ServerNotFound,
        Reason::DemoConflict,
        Reason::DemoFailed,
        Reason::DemoDisabled,
    ] {
        let demo = DemoOutcome {
            condition: Some((reason == Reason::Applied, reason, "x".into())),
            recheck: None,
        };
        note(&run_with(
            &id,
            None,
            KeystorePassword::NotRequested,
            ca(),
            t0(),
            demo,
        ));
    }
    let conditions = unreadable_conditions(&[], "invalid type: integer", Some(1), t0()).unwrap();
    assert!(
        unreadable_conditions(
            &conditions,
            "invalid type: integer",
            Some(1),
            t0() + secs(60)
        )
        .is_none(),
        "reported once"
    );
    note(&Run {
        decision: Decision::AwaitFreshStatus,
        plan: Plan {
            effective_status: TlsIdentityStatus {
                conditions,
                ..Default::default()
            },
            ..Default::default()
        },
    });
    note(&ca_secret_broken());
    {
        let id = identity(serde_json::json!({"duration": "1h"}));
        let (id, secret) = settled(&id);
        let due = id.status.as_ref().unwrap().renewal_time.clone().unwrap().0;
        note(&budget_wait(
            &id,
            &secret,
            due,
            BUDGET_WAIT_VISIBLE.as_secs() as i64,
        ));
    }
    let missing: Vec<_> = Reason::ALL
        .iter()
        .filter(|r| !seen.contains(r.as_str()))
        .collect();
    assert!(missing.is_empty(), "reasons no case produces: {missing:?}");
}

/// A settled identity observed with the CA Secret in the given state (its certificate is kept).
fn observed_with_ca_secret(
    id: &TlsIdentity,
    secret: &Secret,
    problem: Option<&str>,
    now: jiff::Timestamp,
) -> Run {
    let obs = Observed {
        identity: id,
        secret: Some(secret),
        password: KeystorePassword::NotRequested,
        ca: ca(),
        ca_secret_problem: problem,
        names: names(),
        namespace_labels: no_labels(),
        consumers: None,
        now,
    };
    let decision = decide(&obs);
    let Decision::Keep { info, renew_at } = decision.clone() else {
        panic!("{decision:?}")
    };
    let (content, keystore_problem) =
        kept_content(id, Some(secret), ca(), &KeystorePassword::NotRequested);
    let plan = finish(
        &obs,
        Outcome::Kept {
            info,
            renew_at,
            content,
            keystore_problem,
        },
        DemoOutcome::default(),
    );
    Run { decision, plan }
}

/// An identity served while the CA Secret is broken: a `CaSecretValid=False` condition, gone again
/// once the Secret is fixed; the certificate is kept.
fn ca_secret_broken() -> Run {
    let id = identity(serde_json::json!({}));
    let (id, secret) = settled(&id);
    observed_with_ca_secret(
        &id,
        &secret,
        Some("tls.key: not a private key"),
        t0() + secs(60),
    )
}

#[test]
fn a_broken_ca_secret_shows_on_the_identities_until_fixed() {
    let broken = ca_secret_broken();
    assert!(broken.plan.secret.is_none(), "the certificate is kept");
    assert_eq!(cond(&broken, READY).0, "True");
    assert_eq!(cond(&broken, CA_SECRET), ("False", "CaSecretInvalid"));
    // Fixed: the condition goes, and nothing else is written.
    let mut id = identity(serde_json::json!({}));
    id.status = broken.plan.status.clone();
    let (_, secret) = settled(&identity(serde_json::json!({})));
    let fixed = observed_with_ca_secret(&id, &secret, None, t0() + secs(120));
    let st = fixed.plan.status.expect("the condition is removed");
    assert!(st.conditions.iter().all(|c| c.type_ != CA_SECRET));
}
