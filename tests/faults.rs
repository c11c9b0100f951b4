//! Faults injected for real on the shared control plane: the controller SIGKILLed mid-issuance,
//! the CA Secret deleted or corrupted, a status write that keeps failing (an admission policy
//! says no). Each test asserts that nothing is lost, nothing loops, and the controller converges
//! without a restart, and prints one row of the fault table.

mod support;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rand::Rng;
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};
use support::*;
use tlsid::api::TlsIdentity;

fn row(fault: &str, outcome: &str) {
    fault_row(fault, outcome);
}

fn revision(o: Option<&TlsIdentity>) -> i64 {
    o.and_then(|o| o.status.as_ref()?.revision).unwrap_or(0)
}

fn fingerprint(o: Option<&TlsIdentity>) -> String {
    o.and_then(|o| o.status.as_ref()?.ca_fingerprint.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_deleted_ca_secret_is_restored_with_the_same_key_and_nothing_is_reissued() {
    let env = setup("ca-deleted").await;
    let client = env.ids.clone().into_client();
    let id = create(&env, &identity("svc", json!({"dnsNames": ["svc.ns.svc"]}))).await;
    let before = env.secrets.get("tlsid-ca").await.unwrap();
    env.controller.wait_leader(true).await;

    env.secrets
        .delete("tlsid-ca", &DeleteParams::default())
        .await
        .unwrap();
    let restored = wait_secret(&env.secrets, "tlsid-ca", "restored", |s| {
        s.is_some_and(|s| s.uid() != before.uid())
    })
    .await
    .unwrap();
    assert_eq!(
        data(&restored, "tls.crt"),
        data(&before, "tls.crt"),
        "the same CA certificate"
    );
    assert_eq!(
        data(&restored, "tls.key"),
        data(&before, "tls.key"),
        "the same key"
    );
    assert_eq!(
        events_at_least(&client, &env.ns, "CaSecretRestored", 1).await,
        1
    );
    // The restore is seen by the CA watch as the same CA: no identity is touched.
    env.controller.wait_reconciled(2.0).await;
    let after = env.ids.get("svc").await.unwrap();
    assert_eq!(serial(&after), serial(&id), "not re-issued");
    assert_eq!(revision(Some(&after)), 1);
    assert_eq!(env.controller.metric("tlsid_issuances_total").await, 1.0);
    row(
        "CA Secret deleted",
        "restored from memory in place (same key and certificate), 1 Warning, 0 re-issued",
    );
}

#[tokio::test]
async fn an_unusable_ca_secret_keeps_the_last_good_ca_signing() {
    let mut env = setup("ca-corrupt").await;
    let client = env.ids.clone().into_client();
    let first = create(&env, &identity("a", json!({"dnsNames": ["a.ns.svc"]}))).await;
    env.controller.wait_leader(true).await;
    let original = env.secrets.get("tlsid-ca").await.unwrap();
    env.secrets
        .patch(
            "tlsid-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"tls.key": "bm90IGEga2V5"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        events_at_least(&client, &env.ns, "CaSecretInvalid", 1).await,
        1
    );
    assert_eq!(env.controller.metric("tlsid_ca_secret_valid").await, 0.0);
    let flagged = wait_identity(&env.ids, "a", "CaSecretValid=False", |o| {
        condition(o, "CaSecretValid").is_some_and(|(s, r)| s == "False" && r == "CaSecretInvalid")
    })
    .await;
    assert!(ready(Some(&flagged)), "still served");
    // A new identity is still signed, by the last good CA.
    let second = create(&env, &identity("b", json!({"dnsNames": ["b.ns.svc"]}))).await;
    assert_eq!(fingerprint(Some(&second)), fingerprint(Some(&first)));
    assert_eq!(revision(env.ids.get("a").await.ok().as_ref()), 1);
    // Fixed (the original CA put back): the condition goes, nothing is re-issued.
    env.secrets
        .patch(
            "tlsid-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"tls.key": b64(data(&original, "tls.key"))}})),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "a", "CaSecretValid gone", |o| {
        ready(o) && condition(o, "CaSecretValid").is_none()
    })
    .await;
    assert_eq!(env.controller.metric("tlsid_ca_secret_valid").await, 1.0);
    assert_eq!(revision(env.ids.get("a").await.ok().as_ref()), 1);
    assert!(env.controller.alive());
    row(
        "CA Secret made unusable",
        "last good CA keeps signing; 1 Warning; CaSecretValid=False on identities; tlsid_ca_secret_valid 0; nothing re-issued",
    );
}

/// The status subresource of identities labelled `deny-status` refused by a real admission
/// policy (422), once it has taken effect.
struct DenyStatus;

impl DenyStatus {
    async fn install(client: &kube::Client, ns: &str, ids: &Api<TlsIdentity>) -> Denial {
        let denial = Denial::install(
            client,
            &format!("deny-status-{ns}"),
            ns,
            json!([{
                "apiGroups": ["tlsid.dev"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["tlsidentities/status"]}]),
            "!has(object.metadata.labels) || !('deny-status' in object.metadata.labels)",
            "status writes are switched off for this test",
        )
        .await;
        // Policies take effect asynchronously: wait until a probe's status write is refused.
        let mut probe = identity("probe", json!({"dnsNames": ["probe.ns.svc"]}));
        probe.labels_mut().insert("deny-status".into(), "x".into());
        probe
            .labels_mut()
            .insert("tlsid.dev/install".into(), "nobody".into());
        ids.create(&PostParams::default(), &probe).await.unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while ids
            .patch_status(
                "probe",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"secretName": "x"}})),
            )
            .await
            .is_ok()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "policy never took effect"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        denial
    }
}

#[tokio::test]
async fn a_status_write_that_keeps_failing_renews_the_secret_once() {
    let mut env = setup("status-refused").await;
    let client = env.ids.clone().into_client();
    let id = create(&env, &identity("st", json!({"dnsNames": ["st.ns.svc"]}))).await;
    let policy = DenyStatus::install(&client, &env.ns, &env.ids).await;
    let serial_of = |s: Option<&Secret>| {
        s.and_then(|s| s.annotations().get("tlsid.dev/serial").cloned())
            .unwrap_or_default()
    };
    let old = serial_of(env.secrets.get(&id.secret_name()).await.ok().as_ref());

    // Refuse its status writes, and ask for a renewal.
    env.ids
        .patch(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "labels": {"deny-status": "x"},
                "annotations": {"tlsid.dev/renew": "once"}}})),
        )
        .await
        .unwrap();
    let renewed = wait_secret(&env.secrets, &id.secret_name(), "renewed", |s| {
        serial_of(s) != old
    })
    .await;
    let new = serial_of(renewed.as_ref());
    // Let it retry the refused status write a few times (with backoff).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while env
        .controller
        .metric("tlsid_reconcile_errors_total{category=\"StatusWrite\"}")
        .await
        < 3.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "status write retried"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secret = env.secrets.get(&id.secret_name()).await.unwrap();
    assert_eq!(
        serial_of(Some(&secret)),
        new,
        "renewed once, not on every retry"
    );
    assert_eq!(env.controller.metric("tlsid_issuances_total").await, 2.0);

    // The policy goes: the status catches up with the Secret, without another issuance.
    policy.remove().await;
    let caught_up = wait_identity(&env.ids, "st", "status describes the Secret", |o| {
        o.is_some_and(|o| serial(o) == new)
    })
    .await;
    assert_eq!(revision(Some(&caught_up)), 2);
    assert_eq!(env.controller.metric("tlsid_issuances_total").await, 2.0);
    assert!(env.controller.alive());
    row(
        "status write refused (422) while a renewal is due",
        "Secret renewed once; status retried with backoff; caught up when allowed; 1 issuance",
    );
}

/// SIGKILL the controller at a random point while every identity is due, many times; then let
/// one run to the end. Never two CAs; each identity converges; no identity is issued more than
/// once per trigger plus once per kill.
#[tokio::test]
async fn killed_mid_issuance_again_and_again_converges_without_extra_issuance() {
    const IDS: usize = 20;
    let rounds: usize = std::env::var("TLSID_FAULT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "kill-rounds").await;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    for i in 0..IDS {
        ids.create(
            &PostParams::default(),
            &identity(
                &format!("k{i}"),
                json!({"dnsNames": [format!("k{i}.ns.svc")]}),
            ),
        )
        .await
        .unwrap();
    }
    let args = ["--watch-namespace", ns.as_str(), "--namespace", ns.as_str()];
    let mut kills = 0;
    for round in 0..rounds {
        // Every identity due: a new renewal request.
        for i in 0..IDS {
            ids.patch(
                &format!("k{i}"),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"tlsid.dev/renew": format!("r{round}")}}}),
                ),
            )
            .await
            .unwrap();
        }
        let mut c = Controller::start_with(cluster, &format!("{ns}-r{round}"), &args).await;
        let delay = rand::rng().random_range(0..1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        c.kill();
        kills += 1;
        // The killed holder's Lease would take 10 s to expire; the next process starts at once.
        let _ = leases
            .delete("tlsid-leader", &DeleteParams::default())
            .await;
    }
    let last = format!("r{}", rounds - 1);
    let mut c = Controller::start_with(cluster, &format!("{ns}-final"), &args).await;
    let mut revisions = BTreeMap::new();
    for i in 0..IDS {
        let name = format!("k{i}");
        let o = wait_identity(&ids, &name, "converged", |o| {
            ready(o)
                && o.and_then(|o| o.status.as_ref()?.last_renew_request.clone())
                    == Some(last.clone())
        })
        .await;
        revisions.insert(name, revision(Some(&o)));
    }
    let cas = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("tlsid.dev/ca=true"))
        .await
        .unwrap();
    assert_eq!(cas.items.len(), 1, "never two CA Secrets");
    let triggers = rounds as i64 + 1; // the first issuance, then one renewal request per round
    for (name, rev) in &revisions {
        assert!(
            *rev <= triggers + kills,
            "{name}: revision {rev} > triggers {triggers} + kills {kills}"
        );
        // Each identity's Secret is the one its status describes.
        let o = ids.get(name).await.unwrap();
        let s = Api::<Secret>::namespaced(client.clone(), &ns)
            .get(&o.secret_name())
            .await
            .unwrap();
        assert_eq!(
            s.annotations().get("tlsid.dev/serial"),
            Some(&serial(&o)),
            "{name}: status and Secret agree"
        );
    }
    let max = revisions.values().max().copied().unwrap_or(0);
    assert!(c.alive());
    row(
        &format!(
            "controller SIGKILLed at random points of issuance, {rounds} rounds × {IDS} identities"
        ),
        &format!(
            "converged; 1 CA Secret; highest revision {max} ≤ triggers {triggers} + kills {kills}"
        ),
    );
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A CA replaced on purpose (its Secret edited by hand) is a staged rollover, never an instant
/// swap: the old CA keeps signing while the new root is published, then every leaf is re-issued
/// at the install's issuance budget, never all at once. With a budget of 2 per second (burst 1),
/// 8 leaves take at least 3.5 s; the waits show in the metrics.
#[tokio::test]
async fn a_replaced_ca_reissues_every_leaf_at_the_issuance_budget() {
    const LEAVES: usize = 8;
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "ca-budget").await;
    let c = Controller::start_with(
        cluster,
        &ns,
        &[
            "--watch-namespace",
            &ns,
            "--namespace",
            &ns,
            "--issuance-rate",
            "2",
            "--issuance-burst",
            "1",
            "--trust-propagation-delay",
            "1s",
        ],
    )
    .await;
    c.wait_leader(true).await;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create_ready(&ids, "b", LEAVES, "ns.svc").await;
    let waits_before = c.metric("tlsid_issuance_budget_waits_total").await;
    let new_ca = tlsid::pki::Authority::generate_root(jiff::Timestamp::now()).unwrap();
    let data: BTreeMap<String, k8s_openapi::ByteString> = new_ca
        .to_secret_data()
        .into_iter()
        .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
        .collect();
    let started = std::time::Instant::now();
    secrets
        .patch(
            "tlsid-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": data})),
        )
        .await
        .unwrap();
    // Staged: the edit is undone at once (the old CA still signs) and the new CA waits as the
    // next one, its root published in every identity's bundle before it signs anything.
    let staged = wait_secret(
        &secrets,
        "tlsid-ca",
        "the edit staged as the next CA",
        |s| {
            s.and_then(|s| s.metadata.annotations.as_ref())
                .is_some_and(|a| {
                    a.get("tlsid.dev/rollover-trigger").map(String::as_str) == Some("SecretEdited")
                })
        },
    )
    .await
    .unwrap();
    assert!(
        support::data(&staged, "next.crt").starts_with(b"-----BEGIN CERTIFICATE"),
        "the edited CA is the next CA"
    );
    for i in 0..LEAVES {
        wait_identity(&ids, &format!("b{i}"), "re-issued by the new CA", |o| {
            ready(o) && fingerprint(o) == new_ca.fingerprint()
        })
        .await;
    }
    let took = started.elapsed();
    // 8 leaves at 2/s with a burst of 1: the last is admitted no sooner than 3.5 s after the first.
    assert!(
        took >= Duration::from_millis(3500),
        "{LEAVES} leaves re-issued in {took:?}: faster than the budget allows"
    );
    assert!(c.metric("tlsid_issuance_budget_waits_total").await > waits_before);
    for i in 0..LEAVES {
        assert_eq!(revision(ids.get(&format!("b{i}")).await.ok().as_ref()), 2);
    }
    row(
        &format!("CA replaced on purpose, {LEAVES} leaves, budget 2/s burst 1"),
        &format!(
            "every leaf re-issued once, paced by the budget: {:.1} s (≥ 3.5 s)",
            took.as_secs_f64()
        ),
    );
}

/// A wait for the issuance budget long enough to matter shows on the identity, once: with one
/// certificate per 300 s (burst 1), the second of two new identities says `Issuing=True`
/// `WaitingForBudget` with its turn while the first is Ready, and the gauge counts it. (A wait
/// under two minutes writes nothing: the plan's table tests.)
#[tokio::test]
async fn a_long_wait_for_the_issuance_budget_shows_on_the_identity() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "budget-wait").await;
    let c = Controller::start_with(
        cluster,
        &ns,
        &[
            "--watch-namespace",
            &ns,
            "--namespace",
            &ns,
            "--issuance-rate",
            "0.0033",
            "--issuance-burst",
            "1",
        ],
    )
    .await;
    c.wait_leader(true).await;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    create_ready(&ids, "w", 1, "ns.svc").await;
    ids.create(
        &PostParams::default(),
        &identity("w1", json!({"dnsNames": ["w1.ns.svc"]})),
    )
    .await
    .unwrap();
    let waiting = wait_identity(&ids, "w1", "waiting for the budget", |o| {
        condition(o, "Issuing") == Some(("True".into(), "WaitingForBudget".into()))
    })
    .await;
    assert!(!ready(Some(&waiting)), "nothing issued yet");
    let msg = waiting.condition("Issuing").unwrap().message.clone();
    assert!(msg.contains("issuance budget"), "{msg}");
    assert_eq!(c.metric("tlsid_issuance_budget_waiting").await, 1.0);
    assert!(ready(ids.get_opt("w0").await.unwrap().as_ref()));
    row(
        "issuance budget exhausted for minutes (1 per 300 s, burst 1)",
        "the waiting identity says Issuing=True WaitingForBudget with its turn; the gauge counts it",
    );
}

/// Deleting the CA Secret and creating a new one at once is a replacement, not an accident: the
/// controller does not race the user's create with a restore of the old CA; it rolls over to the
/// new CA (staged: published, then signing) and re-issues under it.
#[tokio::test]
async fn a_ca_secret_deleted_and_created_again_is_a_replacement_not_restored() {
    let env = setup_with("ca-replaced", &["--trust-propagation-delay", "1s"]).await;
    let client = env.ids.clone().into_client();
    create(&env, &identity("r", json!({"dnsNames": ["r.ns.svc"]}))).await;
    env.controller.wait_leader(true).await;
    let new_ca = tlsid::pki::Authority::generate_root(jiff::Timestamp::now()).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tlsid-ca"},
        "type": "kubernetes.io/tls",
        "data": new_ca.to_secret_data().into_iter()
            .map(|(k, v)| (k, b64(&v))).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap();
    env.secrets
        .delete("tlsid-ca", &DeleteParams::default())
        .await
        .unwrap();
    env.secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("the user's new CA Secret is not pre-empted by a restore");
    let reissued = wait_identity(&env.ids, "r", "re-issued under the new CA", |o| {
        ready(o) && fingerprint(o) == new_ca.fingerprint()
    })
    .await;
    assert_eq!(revision(Some(&reissued)), 2);
    let ca = env.secrets.get("tlsid-ca").await.unwrap();
    assert_eq!(
        tlsid::pki::fingerprint(
            tlsid::pki::parse_pem_certs(data(&ca, "tls.crt")).unwrap()[0].as_slice()
        ),
        new_ca.fingerprint(),
        "the new CA signs"
    );
    let bundle = String::from_utf8(data(&ca, "ca.crt").to_vec()).unwrap();
    assert!(
        bundle.contains(new_ca.bundle_pem().trim()),
        "the new root is trusted"
    );
    assert_eq!(events(&client, &env.ns, "CaSecretRestored").await, 0);
    row(
        "the CA Secret deleted and created again with a new CA (a replacement)",
        "not restored over; a staged rollover to the new CA; every leaf re-issued under it",
    );
}
