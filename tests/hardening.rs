//! Bad input never crashes, loops or stalls the controller; memory, metrics and deletion behave.
//! Against the real control plane, with a real controller process per test (see `support`).

mod support;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use std::time::Duration;
use support::*;
use tlsid::api::TlsIdentity;

fn reason_is(status: &'static str, reason: &'static str) -> impl Fn(Option<&TlsIdentity>) -> bool {
    move |o| condition(o, "Ready").is_some_and(|(s, r)| s == status && r == reason)
}

async fn warnings_at_least(env: &Env, reason: &str, at_least: usize) -> usize {
    events_at_least(&env.ids.clone().into_client(), &env.ns, reason, at_least).await
}

/// A stored object exactly as the apiserver keeps it, written past admission.
async fn put_raw(ns: &str, name: &str, spec: serde_json::Value) {
    let uid = format!(
        "{:08x}-0000-4000-8000-{:012x}",
        rand::random::<u32>(),
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    let obj = json!({
        "apiVersion": "tlsid.dev/v1alpha1",
        "kind": "TlsIdentity",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "generation": 1,
            "creationTimestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        },
        "spec": spec,
    });
    etcd_put(
        &format!("/registry/tlsid.dev/tlsidentities/{ns}/{name}"),
        &obj,
    )
    .await;
}

#[tokio::test]
async fn poison_objects_beside_a_healthy_one_do_not_stop_it_renewing() {
    let mut env = setup("poison").await;
    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "healthy",
                json!({"dnsNames": ["h.ns.svc"], "duration": "60s", "renewBefore": "30s"}),
            ),
        )
        .await
        .unwrap();
    let first = wait_identity(&env.ids, "healthy", "Ready", ready).await;

    // Values the schema now rejects, as an older CRD or a direct write could have stored them:
    // a duration that overflows every parser, a duration of the wrong type (the object cannot
    // be read at all), and a renewal point before issuance (would loop if it were honoured).
    put_raw(
        &env.ns,
        "overflow",
        json!({"dnsNames": ["o.ns.svc"], "duration": "99999999999999999999s"}),
    )
    .await;
    put_raw(
        &env.ns,
        "wrong-type",
        json!({"dnsNames": 5, "duration": "1h"}),
    )
    .await;
    put_raw(
        &env.ns,
        "short-renewal",
        json!({"dnsNames": ["s.ns.svc"], "duration": "60s", "renewBeforePercentage": 99}),
    )
    .await;

    let overflow = wait_identity(&env.ids, "overflow", "InvalidSpec", |o| {
        condition(o, "Ready").is_some_and(|(_, r)| r == "InvalidSpec")
    })
    .await;
    let msg = &overflow.condition("Ready").unwrap().message;
    assert!(msg.contains("duration"), "{msg}");
    let short = wait_identity(&env.ids, "short-renewal", "InvalidSpec", |o| {
        condition(o, "Ready").is_some_and(|(_, r)| r == "InvalidSpec")
    })
    .await;
    assert!(
        short.condition("Ready").unwrap().message.contains("renew"),
        "{:?}",
        short.condition("Ready")
    );
    // The wrong-typed one cannot be read as a TlsIdentity (nor patched: the apiserver cannot
    // convert it either): a Warning Event says so, once.
    warnings_at_least(&env, "UnreadableObject", 1).await;

    // The healthy identity keeps renewing, and the controller never restarted.
    let old = serial(&first);
    wait_identity(&env.ids, "healthy", "renewed beside the poison", |o| {
        ready(o) && o.map(serial) != Some(old.clone())
    })
    .await;
    assert!(env.controller.alive(), "the controller crashed");
    let issued = env.controller.metric("tlsid_issuances_total").await;
    assert!(
        (2.0..=3.0).contains(&issued),
        "only the healthy identity is issued: {issued}"
    );
    for r in ["InvalidSpec", "UnreadableObject"] {
        let n = warnings_at_least(&env, r, 1).await;
        assert!((1..=2).contains(&n), "{n} {r} Events");
    }
}

#[tokio::test]
async fn a_ca_that_expires_while_running_blocks_issuance_without_a_loop() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "ca-expiry").await;
    // A user-supplied CA with 90 seconds to live.
    let start = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90)
        - jiff::SignedDuration::try_from(tlsid::pki::ca::ROOT_LIFETIME).unwrap();
    let ca = tlsid::pki::Authority::generate_root(start).unwrap();
    let ca_end = ca.not_after();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tlsid-ca"},
        "type": "kubernetes.io/tls",
    }))
    .unwrap();
    let secret = Secret {
        data: Some(
            ca.to_secret_data()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..secret
    };
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let env = setup_in(ns).await;
    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "short",
                json!({"dnsNames": ["s.ns.svc"], "duration": "60s"}),
            ),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "short", "Ready", ready).await;
    let expiring = wait_identity_for(
        &env.ids,
        "short",
        "CaExpiring once renewal is due",
        Duration::from_secs(150),
        reason_is("False", "CaExpiring"),
    )
    .await;
    assert!(
        expiring
            .condition("Ready")
            .unwrap()
            .message
            .contains("the CA expires at")
    );
    let expired = wait_identity_for(
        &env.ids,
        "short",
        "CaExpired",
        Duration::from_secs(150),
        reason_is("False", "CaExpired"),
    )
    .await;
    assert!(jiff::Timestamp::now() >= ca_end);
    assert!(
        expired
            .condition("Ready")
            .unwrap()
            .message
            .contains("expired")
    );
    let issued = env.controller.metric("tlsid_issuances_total").await;
    assert!(issued <= 2.0, "{issued} issuances: a loop");
    let blocked = env.controller.metric("tlsid_issuance_blocked_total").await;
    assert_eq!(blocked, 2.0, "counted once per CA reason");
    assert_eq!(warnings_at_least(&env, "CaExpiring", 1).await, 1);
    assert_eq!(warnings_at_least(&env, "CaExpired", 1).await, 1);
    let reconciles = env
        .controller
        .metric("tlsid_reconcile_duration_seconds_count")
        .await;
    assert!(reconciles < 30.0, "{reconciles} reconciles in ~2 minutes");
}

#[tokio::test]
async fn foreign_secrets_wearing_our_label_cost_no_memory() {
    let env = setup("foreign-label").await;
    env.ids
        .create(
            &PostParams::default(),
            &identity("web", json!({"dnsNames": ["w.ns.svc"]})),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "web", "Ready", ready).await;
    let before = env.controller.rss_kib();
    let reconciles = env
        .controller
        .metric("tlsid_reconcile_duration_seconds_count")
        .await;
    let blob = vec![b'x'; 512 * 1024];
    for i in 0..100 {
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("foreign-{i}")),
                labels: Some(
                    [
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "tlsid".to_string(),
                        ),
                        ("tlsid.dev/identity".to_string(), "web".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([("blob".to_string(), ByteString(blob.clone()))].into()),
            ..Default::default()
        };
        env.secrets
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }
    // Each maps to "web" (its label says so): the controller has seen them once it reconciled
    // "web" again after the last one.
    env.controller.wait_reconciled(reconciles + 1.0).await;
    let after = env.controller.rss_kib();
    let grown = after.saturating_sub(before) / 1024;
    eprintln!("controller RSS {before} KiB -> {after} KiB with 100 x 512 KiB foreign Secrets");
    assert!(grown < 16, "RSS grew by {grown} MiB");
    // And the foreign Secrets were left alone.
    let foreign = env.secrets.get("foreign-7").await.unwrap();
    assert_eq!(data(&foreign, "blob").len(), blob.len());
}

#[tokio::test]
async fn metrics_of_a_deleted_identity_are_removed() {
    let env = setup("metrics-gone").await;
    env.ids
        .create(
            &PostParams::default(),
            &identity("gone", json!({"dnsNames": ["g.ns.svc"]})),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "gone", "Ready", ready).await;
    let series = |m: &str| m.lines().filter(|l| l.contains("name=\"gone\"")).count();
    assert!(series(&env.controller.metrics().await) >= 5);
    env.ids
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while series(&env.controller.metrics().await) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "series kept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_deleted_identity_leaves_its_secret_and_a_new_one_adopts_it_without_reissue() {
    let env = setup("adopt").await;
    env.ids
        .create(
            &PostParams::default(),
            &identity("keep", json!({"dnsNames": ["k.ns.svc"]})),
        )
        .await
        .unwrap();
    let first = wait_identity(&env.ids, "keep", "Ready", ready).await;
    let secret = env.secrets.get("keep-tls").await.unwrap();
    assert!(secret.owner_references().is_empty(), "retained by default");
    env.ids
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    wait_identity_gone(&env.ids, "keep").await;
    assert!(env.secrets.get_opt("keep-tls").await.unwrap().is_some());

    env.ids
        .create(
            &PostParams::default(),
            &identity("keep", json!({"dnsNames": ["k.ns.svc"]})),
        )
        .await
        .unwrap();
    let again = wait_identity(&env.ids, "keep", "Ready", ready).await;
    assert_eq!(serial(&again), serial(&first), "adopted, not re-issued");
    assert_eq!(env.controller.metric("tlsid_issuances_total").await, 1.0);

    // Opting in to deletion gives the Secret an owner reference (the garbage collector, which
    // runs on the real node, deletes it with the identity: see the e2e).
    env.ids
        .patch(
            "keep",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secretDeletionPolicy": "Delete"}})),
        )
        .await
        .unwrap();
    let uid = again.uid().unwrap();
    let owned = wait_secret(&env.secrets, "keep-tls", "owner reference", |s| {
        s.is_some_and(|s| s.owner_references().iter().any(|o| o.uid == uid))
    })
    .await
    .unwrap();
    assert_eq!(
        owned.annotations()["tlsid.dev/serial"],
        serial(&first),
        "no re-issue"
    );
}

async fn wait_identity_gone(api: &Api<TlsIdentity>, name: &str) {
    tokio::time::timeout(
        TIMEOUT,
        kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_deleted(""),
        ),
    )
    .await
    .expect("deleted in time")
    .expect("watch");
}

#[tokio::test]
async fn an_immutable_secret_is_a_terminal_condition_not_a_retry_storm() {
    let env = setup("immutable").await;
    env.ids
        .create(
            &PostParams::default(),
            &identity("frozen", json!({"dnsNames": ["f.ns.svc"]})),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "frozen", "Ready", ready).await;
    env.secrets
        .patch(
            "frozen-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"immutable": true})),
        )
        .await
        .unwrap();
    env.ids
        .patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tlsid.dev/renew": "now"}}})),
        )
        .await
        .unwrap();
    let stuck = wait_identity(&env.ids, "frozen", "refused", |o| {
        condition(o, "Issuing").is_some_and(|(s, r)| s == "True" && r == "SecretRejected")
    })
    .await;
    let msg = &stuck.condition("Issuing").unwrap().message;
    assert!(msg.contains("422") && msg.contains("immutable"), "{msg}");
    assert!(stuck.status.as_ref().unwrap().failed_issuance_attempts >= Some(7));
    env.controller.wait_reconciled(3.0).await;
    assert_eq!(warnings_at_least(&env, "SecretRejected", 1).await, 1);
    let errors = env.controller.metric("tlsid_reconcile_errors_total").await;
    assert!(errors <= 2.0, "retry storm: {errors}");
}

#[tokio::test]
async fn a_tampered_keystore_is_rebuilt_without_being_opened() {
    let env = setup("keystore-tamper").await;
    let pw: Secret = serde_json::from_value(
        json!({"metadata": {"name": "pw"}, "stringData": {"password": "changeit"}}),
    )
    .unwrap();
    env.secrets
        .create(&PostParams::default(), &pw)
        .await
        .unwrap();
    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "java",
                json!({"dnsNames": ["j.ns.svc"], "keystores": {"pkcs12": {"create": true, "passwordSecretRef": {"name": "pw", "key": "password"}}}}),
            ),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "java", "Ready", ready).await;
    let hostile = vec![0x30u8; 4096];
    env.secrets
        .patch(
            "java-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"keystore.p12": base64_of(&hostile)}})),
        )
        .await
        .unwrap();
    let rebuilt = wait_secret(&env.secrets, "java-tls", "keystore rebuilt", |s| {
        s.is_some_and(|s| data(s, "keystore.p12") != hostile.as_slice())
    })
    .await
    .unwrap();
    let ks = data(&rebuilt, "keystore.p12");
    assert!(
        p12_keystore::KeyStore::from_pkcs12(
            ks,
            "changeit",
            p12_keystore::Pkcs12ImportPolicy::Strict
        )
        .is_ok()
    );
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
