//! The controller against a real kube-apiserver + etcd: what a user relies on.

mod support;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};
use support::*;
use tlsid::{
    api::{TlsIdentity, TlsIdentitySpec, Usage},
    pki::{self, KeySpec, inspect::parse_leaf},
};

#[tokio::test]
async fn issues_a_verifiable_certificate_matching_the_spec() {
    let env = setup("issues").await;
    let id = create(
        &env,
        &identity(
            "web",
            json!({
                "dnsNames": ["web.ns.svc", "web.ns.svc.cluster.local"],
                "ipAddresses": ["10.0.0.7"],
                "uris": ["spiffe://cluster.local/ns/x/sa/web"],
                "usages": ["server"],
                "duration": "2h",
                "privateKey": {"algorithm": "ECDSA", "size": 384},
                "secretTemplate": {"labels": {"team": "payments"}, "annotations": {"owner": "alice"}}
            }),
        ),
    )
    .await;
    let secret = env.secrets.get("web-tls").await.expect("Secret web-tls");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    openssl_verify(&secret, "sslserver").expect("openssl verifies the chain against ca.crt");
    assert!(
        openssl_verify(&secret, "sslclient").is_err(),
        "server-only usage must not verify as a client"
    );

    let (_, info) = parse_leaf(data(&secret, "tls.crt")).unwrap();
    assert_eq!(
        info.dns_names,
        [
            "web.ns.svc".to_string(),
            "web.ns.svc.cluster.local".to_string()
        ]
        .into()
    );
    assert_eq!(info.ip_addresses, ["10.0.0.7".parse().unwrap()].into());
    assert_eq!(
        info.uris,
        ["spiffe://cluster.local/ns/x/sa/web".to_string()].into()
    );
    assert_eq!(info.usages, [Usage::Server].into());
    assert_eq!(info.key, Some(KeySpec::EcdsaP384));
    assert!(
        String::from_utf8_lossy(data(&secret, "tls.key"))
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let lifetime = info.not_after.as_second() - info.not_before.as_second();
    assert_eq!(lifetime, 2 * 3600 + 30, "2h plus the 30s backdate");

    let labels = secret.labels();
    assert_eq!(labels["team"], "payments");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "tlsid");
    assert_eq!(secret.annotations()["owner"], "alice");
    assert_eq!(labels["tlsid.dev/identity"], "web");
    assert!(
        secret.owner_references().is_empty(),
        "by default the Secret outlives its identity (secretDeletionPolicy: Retain)"
    );

    let status = id.status.as_ref().unwrap();
    assert_eq!(
        status.serial_number.as_deref(),
        Some(info.serial_hex.as_str())
    );
    assert_eq!(status.revision, Some(1));
    assert!(status.renewal_time.as_ref().unwrap().0 > status.not_before.as_ref().unwrap().0);
    assert!(status.renewal_time.as_ref().unwrap().0 < status.not_after.as_ref().unwrap().0);

    // An Issued event, and no key material anywhere a user or log collector can see.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.ids.clone().into_client(), &env.ns);
    let events = events.list(&ListParams::default()).await.unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Issued"))
    );
    let everything = format!(
        "{}{:?}{:?}",
        read(&env.controller.log),
        events.items,
        id.status
    );
    assert!(
        !everything.contains("PRIVATE KEY"),
        "key material leaked into logs, events or status"
    );
    assert!(
        env.controller
            .metrics()
            .await
            .contains("tlsid_certificate_expiration_timestamp_seconds{namespace=")
    );
}

#[tokio::test]
async fn spec_change_reissues() {
    let env = setup("spec-change").await;
    let before = create(&env, &identity("api", json!({"dnsNames": ["api.ns.svc"]}))).await;
    let patch = json!({"spec": {"dnsNames": ["api.ns.svc", "api2.ns.svc"], "privateKey": {"algorithm": "Ed25519"}}});
    env.ids
        .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let old = serial(&before);
    let after = wait_identity(&env.ids, "api", "re-issued", |o| {
        ready(o) && o.map(serial) != Some(old.clone())
    })
    .await;
    let reason = after.condition("Issuing").unwrap();
    assert_eq!(reason.reason, "SpecChanged", "{}", reason.message);
    let secret = env.secrets.get("api-tls").await.unwrap();
    let (_, info) = parse_leaf(data(&secret, "tls.crt")).unwrap();
    assert!(info.dns_names.contains("api2.ns.svc"));
    assert_eq!(info.key, Some(KeySpec::Ed25519));
    assert_eq!(after.status.as_ref().unwrap().revision, Some(2));
}

#[tokio::test]
async fn deleted_or_tampered_secret_is_repaired() {
    let env = setup("repair").await;
    let first = create(&env, &identity("db", json!({"dnsNames": ["db.ns.svc"]}))).await;

    env.secrets
        .delete("db-tls", &DeleteParams::default())
        .await
        .unwrap();
    let old = serial(&first);
    let second = wait_identity(&env.ids, "db", "re-issued after delete", |o| {
        o.map(serial) != Some(old.clone())
    })
    .await;
    assert_eq!(second.condition("Issuing").unwrap().reason, "SecretMissing");
    let secret = wait_secret(&env.secrets, "db-tls", "recreated", |s| s.is_some())
        .await
        .unwrap();
    openssl_verify(&secret, "sslserver").unwrap();

    // Replace the key with another valid key: the pair no longer matches.
    let other = pki::issue(
        &pki::IssuanceRequest::from_spec(&TlsIdentitySpec {
            dns_names: vec!["x".into()],
            ..Default::default()
        })
        .unwrap(),
        &pki::Authority::generate_root(jiff::Timestamp::now()).unwrap(),
        jiff::Timestamp::now(),
    )
    .unwrap();
    let tamper = json!({"data": {"tls.key": ByteString(other.key_pem.into_bytes())}});
    env.secrets
        .patch("db-tls", &PatchParams::default(), &Patch::Merge(&tamper))
        .await
        .unwrap();
    let old = serial(&second);
    let third = wait_identity(&env.ids, "db", "re-issued after tamper", |o| {
        ready(o) && o.map(serial) != Some(old.clone())
    })
    .await;
    assert_eq!(third.condition("Issuing").unwrap().reason, "KeyMismatch");
    let secret = env.secrets.get("db-tls").await.unwrap();
    let ca_secret = env.secrets.get("tlsid-ca").await.expect("CA Secret");
    let ca = tlsid::controller::ca::authority_from_secret(&ca_secret, jiff::Timestamp::now())
        .expect("CA");
    pki::inspect::inspect(&tlsid::resources::secret_data(&secret), &ca)
        .expect("repaired Secret is consistent");
}

#[tokio::test]
async fn unowned_secret_is_a_conflict_and_left_untouched() {
    let env = setup("conflict").await;
    let mine: Secret = serde_json::from_value(json!({
        "metadata": {"name": "precious", "labels": {"owner": "user"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "dXNlcg==", "tls.key": "dXNlcg=="}
    }))
    .unwrap();
    let created = env
        .secrets
        .create(&PostParams::default(), &mine)
        .await
        .unwrap();
    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "grabby",
                json!({"secretName": "precious", "dnsNames": ["a.ns.svc"]}),
            ),
        )
        .await
        .unwrap();
    let id = wait_identity(&env.ids, "grabby", "conflict", |o| {
        condition(o, "Ready").is_some_and(|(_, r)| r == "SecretConflict")
    })
    .await;
    assert!(
        id.condition("Ready")
            .unwrap()
            .message
            .contains("does not belong to this TlsIdentity")
    );

    // Two identities naming one Secret: the first owns it, the second gets the conflict.
    create(
        &env,
        &identity(
            "first",
            json!({"secretName": "shared", "dnsNames": ["a.ns.svc"]}),
        ),
    )
    .await;
    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "second",
                json!({"secretName": "shared", "dnsNames": ["b.ns.svc"]}),
            ),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "second", "conflict", |o| {
        condition(o, "Ready").is_some_and(|(_, r)| r == "SecretConflict")
    })
    .await;
    let shared = env.secrets.get("shared").await.unwrap();
    let (_, info) = parse_leaf(data(&shared, "tls.crt")).unwrap();
    assert!(
        info.dns_names.contains("a.ns.svc"),
        "the first identity's certificate stays"
    );

    // Let every identity settle, then check nothing was written to the user's Secret.
    env.controller.wait_reconciled(4.0).await;
    let after = env.secrets.get("precious").await.unwrap();
    assert_eq!(
        after.resource_version(),
        created.resource_version(),
        "user's Secret modified"
    );
    assert_eq!(after.data, created.data);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.ids.clone().into_client(), &env.ns);
    let conflicts = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SecretConflict"))
        .count();
    assert_eq!(
        conflicts, 2,
        "one Warning per conflicting identity, not a stream"
    );
}

#[tokio::test]
async fn invalid_examples_are_rejected_by_the_apiserver_with_their_message() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "invalid").await;
    // Raw objects, as `kubectl apply` sends them: some invalid values would not even deserialize
    // into the Rust types.
    let resource = kube::api::ApiResource::erase::<TlsIdentity>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    let dir = repo().join("examples/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // Each example documents the message it is rejected with on the line after "Rejected with:".
        let expected = text
            .lines()
            .skip_while(|l| !l.contains("Rejected with:"))
            .nth(1)
            .map(|l| l.trim_start_matches('#').trim().to_string())
            .unwrap_or_else(|| panic!("{} documents no expected message", path.display()));
        let mut obj: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        obj["metadata"]["namespace"] = json!(ns);
        let err = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).unwrap(),
            )
            .await
            .expect_err(&format!("{} must be rejected", path.display()));
        let msg = err.to_string();
        assert!(
            msg.contains(&expected),
            "{}: got {msg:?}, want {expected:?}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} invalid examples");
}

#[tokio::test]
async fn renews_at_the_renewal_time() {
    let env = setup("renewal").await;
    // Lifetime 60s (+30s backdate), renew 30s before the end: about 30s after issuance (the
    // shortest tlsid allows).
    let first = create(
        &env,
        &identity(
            "short",
            json!({"dnsNames": ["s.ns.svc"], "duration": "60s", "renewBefore": "30s"}),
        ),
    )
    .await;
    let renew_at = first
        .status
        .as_ref()
        .unwrap()
        .renewal_time
        .clone()
        .unwrap()
        .0;
    let old = serial(&first);
    let renewed = wait_identity(&env.ids, "short", "renewed", |o| {
        ready(o) && o.map(serial) != Some(old.clone())
    })
    .await;
    let now = jiff::Timestamp::now();
    assert!(
        now >= renew_at,
        "renewed before its renewal time {renew_at}"
    );
    assert!(
        now.as_second() - renew_at.as_second() < 10,
        "renewed late: {now} vs {renew_at}"
    );
    assert_eq!(renewed.condition("Issuing").unwrap().reason, "Renewing");
    let secret = env.secrets.get("short-tls").await.unwrap();
    openssl_verify(&secret, "sslserver").unwrap();
}

#[tokio::test]
async fn manual_renewal_by_annotation() {
    let env = setup("manual").await;
    let first = create(&env, &identity("m", json!({"dnsNames": ["m.ns.svc"]}))).await;
    let patch = json!({"metadata": {"annotations": {"tlsid.dev/renew": "now-1"}}});
    env.ids
        .patch("m", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let old = serial(&first);
    let renewed = wait_identity(&env.ids, "m", "renewed", |o| {
        o.map(serial) != Some(old.clone())
    })
    .await;
    assert_eq!(
        renewed
            .status
            .as_ref()
            .unwrap()
            .last_renew_request
            .as_deref(),
        Some("now-1")
    );
    assert_eq!(
        renewed.condition("Issuing").unwrap().reason,
        "ManuallyTriggered"
    );
}

#[tokio::test]
async fn a_restarted_controller_writes_nothing_for_up_to_date_identities() {
    let env = setup("restart").await;
    for n in ["a", "b", "c"] {
        create(
            &env,
            &identity(n, json!({"dnsNames": [format!("{n}.ns.svc")]})),
        )
        .await;
    }
    let snapshot = |env: &Env| {
        let (ids, secrets) = (env.ids.clone(), env.secrets.clone());
        async move {
            let mut versions = BTreeMap::new();
            for i in ids.list(&ListParams::default()).await.unwrap() {
                versions.insert(format!("id/{}", i.name_any()), i.resource_version());
            }
            for s in secrets.list(&ListParams::default()).await.unwrap() {
                versions.insert(format!("secret/{}", s.name_any()), s.resource_version());
            }
            versions
        }
    };
    // Let the first controller settle (its own writes trigger a few more reconciles).
    env.controller.wait_reconciled(6.0).await;
    let before = snapshot(&env).await;
    let Env {
        ids,
        secrets,
        ns,
        controller,
    } = env;
    controller.stop();
    let cluster = cluster().await;
    let controller = Controller::start(cluster, &ns).await;
    controller.wait_reconciled(3.0).await;
    let env = Env {
        ids,
        secrets,
        ns,
        controller,
    };
    assert_eq!(
        snapshot(&env).await,
        before,
        "a restart must not rewrite identities or Secrets"
    );
    assert_eq!(env.controller.metric("tlsid_issuances_total").await, 0.0);
}

/// A new signer put into the CA Secret by hand: a staged rollover re-issues the identity under it,
/// and its Secret trusts both roots (the previous one stays until its leaves expire).
#[tokio::test]
async fn replacing_the_ca_reissues_every_identity() {
    let env = setup_with("ca-rotation", &["--trust-propagation-delay", "1s"]).await;
    let first = create(&env, &identity("w", json!({"dnsNames": ["w.ns.svc"]}))).await;
    let new_ca = pki::Authority::generate_root(jiff::Timestamp::now()).unwrap();
    let data: BTreeMap<String, ByteString> = new_ca
        .to_secret_data()
        .into_iter()
        .map(|(k, v)| (k, ByteString(v)))
        .collect();
    env.secrets
        .patch(
            "tlsid-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": data})),
        )
        .await
        .unwrap();
    let old = serial(&first);
    let after = wait_identity(&env.ids, "w", "re-issued by the new CA", |o| {
        ready(o) && o.map(serial) != Some(old.clone())
    })
    .await;
    assert_eq!(after.condition("Issuing").unwrap().reason, "SignerChanged");
    assert_eq!(
        after.status.as_ref().unwrap().ca_fingerprint.as_deref(),
        Some(new_ca.fingerprint())
    );
    let secret = env.secrets.get("w-tls").await.unwrap();
    let bundle = data_str(&secret, "ca.crt");
    assert!(bundle.contains(new_ca.bundle_pem().trim()), "{bundle}");
    assert_eq!(pki::parse_pem_certs(bundle.as_bytes()).unwrap().len(), 2);
    openssl_verify(&secret, "sslserver").unwrap();
}

fn data_str(secret: &Secret, key: &str) -> String {
    String::from_utf8_lossy(data(secret, key)).into_owned()
}

#[tokio::test]
async fn a_refused_write_is_a_condition_with_the_apiservers_message_and_no_retry_storm() {
    let env = setup("refused").await;
    // A real admission policy refuses every Secret write in this namespace that carries the
    // label "refuse": the apiserver answers 422 with the policy's message.
    let client = env.ids.clone().into_client();
    let denial = Denial::install(
        &client,
        &format!("refuse-secrets-{}", env.ns),
        &env.ns,
        json!([{
            "apiGroups": [""], "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"], "resources": ["secrets"]}]),
        "!has(object.metadata.labels) || !('refuse' in object.metadata.labels)",
        "secrets labelled refuse are not allowed here",
    )
    .await;
    // Policies take effect asynchronously: wait until a probe Secret is refused.
    let probe: Secret = serde_json::from_value(
        json!({"metadata": {"name": "probe", "labels": {"refuse": "x"}}, "stringData": {"a": "b"}}),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while env
        .secrets
        .create(&PostParams::default(), &probe)
        .await
        .is_ok()
    {
        env.secrets
            .delete("probe", &Default::default())
            .await
            .unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "bad",
                json!({"dnsNames": ["b.ns.svc"], "secretTemplate": {"labels": {"refuse": "x"}}}),
            ),
        )
        .await
        .unwrap();
    let failing = wait_identity(&env.ids, "bad", "refused write recorded", |o| {
        condition(o, "Ready").is_some_and(|(s, r)| s == "False" && r == "SecretRejected")
    })
    .await;
    let msg = &failing.condition("Ready").unwrap().message;
    assert!(
        msg.contains("secrets labelled refuse are not allowed here"),
        "{msg}"
    );
    assert!(msg.contains("422"), "{msg}");
    // The refusal will not change by retrying soon: the next attempt waits the capped backoff.
    let attempts = failing
        .status
        .as_ref()
        .unwrap()
        .failed_issuance_attempts
        .unwrap();
    assert!(attempts >= 7, "jumped to the capped backoff: {attempts}");
    // Let the controller see its own status write; then count: no retry storm, one Warning.
    env.controller.wait_reconciled(2.0).await;
    let before = env.controller.metric("tlsid_reconcile_errors_total").await;
    assert!(before <= 2.0, "retry storm: {before} errors");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &env.ns)
        .list(&Default::default())
        .await
        .unwrap();
    let warnings = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("SecretRejected"))
        .count();
    assert_eq!(warnings, 1, "one Warning for one refusal");

    // Remove the policy and fix the spec: the fix is tried at once, not after the capped wait.
    denial.remove().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while env
        .secrets
        .create(&PostParams::default(), &probe)
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never went away"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fix = json!({"spec": {"secretTemplate": null}});
    env.ids
        .patch("bad", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    let fixed = wait_identity(&env.ids, "bad", "Ready after the fix", ready).await;
    assert_eq!(
        fixed.status.as_ref().unwrap().failed_issuance_attempts,
        None
    );
}

#[tokio::test]
async fn demo_workloads_follow_spec_demo() {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
    let env = setup("demo").await;
    let client = env.ids.clone().into_client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &env.ns);
    let services: Api<Service> = Api::namespaced(client, &env.ns);

    // A client whose server does not exist yet: a clear condition, no Deployment to crash-loop.
    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "shopper",
                json!({
                    "dnsNames": ["shopper.ns.svc"], "demo": {"role": "client", "server": "shop"}
                }),
            ),
        )
        .await
        .unwrap();
    let waiting = wait_identity(&env.ids, "shopper", "ServerNotFound", |o| {
        condition(o, "Demo").is_some_and(|(_, r)| r == "ServerNotFound")
    })
    .await;
    assert!(
        waiting
            .condition("Demo")
            .unwrap()
            .message
            .contains("\"shop\" does not exist")
    );
    assert!(deployments.get_opt("shopper-demo").await.unwrap().is_none());

    let server_dns = format!("shop.{}.svc", env.ns);
    create(
        &env,
        &identity(
            "shop",
            json!({"dnsNames": [server_dns], "demo": {"role": "server", "port": 9443}}),
        ),
    )
    .await;
    wait_identity(&env.ids, "shopper", "client applied", |o| {
        condition(o, "Demo").is_some_and(|(s, _)| s == "True")
    })
    .await;

    let server = deployments.get("shop-demo").await.unwrap();
    let pod = server
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(
        pod.volumes.as_ref().unwrap()[0]
            .secret
            .as_ref()
            .unwrap()
            .secret_name
            .as_deref(),
        Some("shop-tls")
    );
    assert_eq!(server.owner_references()[0].kind, "TlsIdentity");
    let svc = services.get("shop").await.unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 9443);
    let client_args = deployments
        .get("shopper-demo")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    let want = format!("shop.{}.svc.cluster.local.:9443", env.ns);
    assert!(
        client_args
            .windows(2)
            .any(|w| w[0] == "--connect" && w[1] == want),
        "{client_args:?}"
    );

    // The apiserver accepts our Deployment as is: no drift, so no write on the next reconcile.
    let rv = server.resource_version();
    let before = env
        .controller
        .metric("tlsid_reconcile_duration_seconds_count")
        .await;
    env.ids
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    env.controller.wait_reconciled(before + 1.0).await;
    assert_eq!(
        deployments
            .get("shop-demo")
            .await
            .unwrap()
            .resource_version(),
        rv
    );

    // Removing spec.demo removes the workload.
    env.ids
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"demo": null}})),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "shop", "demo removed", |o| {
        o.is_some_and(|i| i.condition("Demo").is_none())
    })
    .await;
    assert!(deployments.get_opt("shop-demo").await.unwrap().is_none());
    assert!(services.get_opt("shop").await.unwrap().is_none());
}

#[tokio::test]
async fn pkcs12_keystores_need_a_password_and_are_not_rewritten_when_idle() {
    let env = setup("keystores").await;
    env.ids
        .create(&PostParams::default(), &identity("java", json!({
            "dnsNames": ["java.ns.svc"],
            "keystores": {"pkcs12": {"create": true, "passwordSecretRef": {"name": "p12-password", "key": "password"}}}
        })))
        .await
        .unwrap();
    // No password Secret yet: a clear condition, PEM files still there, no keystore.
    let waiting = wait_identity(&env.ids, "java", "KeystorePasswordMissing", |o| {
        condition(o, "Ready").is_some_and(|(_, r)| r == "KeystorePasswordMissing")
    })
    .await;
    assert!(
        waiting
            .condition("Ready")
            .unwrap()
            .message
            .contains("p12-password/password is missing or empty")
    );
    let secret = env.secrets.get("java-tls").await.unwrap();
    assert!(!data(&secret, "tls.crt").is_empty());
    assert!(data(&secret, "keystore.p12").is_empty());

    let password: Secret = serde_json::from_value(
        json!({"metadata": {"name": "p12-password"}, "stringData": {"password": "changeit"}}),
    )
    .unwrap();
    env.secrets
        .create(&PostParams::default(), &password)
        .await
        .unwrap();
    // The controller re-checks a missing password on its own, within 30s.
    wait_identity(&env.ids, "java", "Ready with keystores", ready).await;
    let secret = env.secrets.get("java-tls").await.unwrap();
    let ks = p12_keystore::KeyStore::from_pkcs12(
        data(&secret, "keystore.p12"),
        "changeit",
        Default::default(),
    )
    .expect("keystore.p12 opens with the password");
    let (_, chain) = ks.private_key_chain().expect("a private key entry");
    let leaf = tlsid::pki::parse_pem_certs(data(&secret, "tls.crt"))
        .unwrap()
        .remove(0);
    assert_eq!(chain.certs()[0].as_der(), leaf.as_slice());
    assert!(!data(&secret, "truststore.p12").is_empty());

    // Idle reconciles keep the (randomised) PKCS#12 bytes: no Secret write.
    let rv = secret.resource_version();
    let before = env
        .controller
        .metric("tlsid_reconcile_duration_seconds_count")
        .await;
    env.ids
        .patch(
            "java",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    env.controller.wait_reconciled(before + 1.0).await;
    assert_eq!(
        env.secrets
            .get("java-tls")
            .await
            .unwrap()
            .resource_version(),
        rv
    );
}
