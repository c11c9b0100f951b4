//! Who may claim which name, against the real apiserver: own-namespace names are issued; foreign
//! DNS names, wildcards, SPIFFE IDs and IP addresses are refused at admission by the controller's
//! webhook (with the offending name and the rule) and, where admission is bypassed, refused at
//! signing (no Secret, one Warning, no retry loop); a TlsIdentityPolicy makes a name issuable
//! and deleting it stops renewal.
//!
//! One controller serves a private install (its identities carry `tlsid.dev/install`), so it
//! leaves the other suites' identities alone, and the webhook configuration covers only this
//! test's first namespace: the second one is "admission bypassed".

mod support;

use k8s_openapi::api::{
    admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::Namespace,
    core::v1::Secret,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::*;
use tlsid::api::{TlsIdentity, TlsIdentityPolicy};

/// The name the chart's RBAC lets the controller patch (`<install.name>-webhook` of the default
/// install, as rendered in deploy/tlsid.yaml).
const WEBHOOK_CONFIGURATION: &str = "tlsid-webhook";

fn labelled(install: &str, name: &str, spec: serde_json::Value) -> TlsIdentity {
    let mut id = identity(name, spec);
    id.metadata.labels = Some([("tlsid.dev/install".to_string(), install.to_string())].into());
    id
}

async fn apply_policy(client: &Client, name: &str, spec: serde_json::Value) {
    let policy: TlsIdentityPolicy = serde_json::from_value(json!({
        "apiVersion": "tlsid.dev/v1alpha1",
        "kind": "TlsIdentityPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    Api::<TlsIdentityPolicy>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("tlsid-tests").force(),
            &Patch::Apply(&policy),
        )
        .await
        .expect("apply TlsIdentityPolicy");
}

async fn delete_policy(client: &Client, name: &str) {
    let _ = Api::<TlsIdentityPolicy>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

fn for_namespace(ns: &str) -> serde_json::Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

fn refused(id: Option<&TlsIdentity>) -> bool {
    condition(id, "Ready").is_some_and(|(s, r)| s == "False" && r == "NotPermitted")
}

#[tokio::test]
async fn policies_are_validated_by_their_schema() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    // Untyped, so that what the Rust type cannot even hold reaches the apiserver.
    let ar = kube::api::ApiResource::erase::<TlsIdentityPolicy>(&());
    let api = Api::<kube::api::DynamicObject>::all_with(client.clone(), &ar);
    for (spec, want) in [
        (
            json!({"namespaceSelector": {}, "ipAddresses": ["10.0.0.0/33"]}),
            "ipAddresses must be CIDR ranges",
        ),
        (
            json!({"namespaceSelector": {}, "ipAddresses": ["10.0.0.1"]}),
            "ipAddresses must be CIDR ranges",
        ),
        (
            json!({"namespaceSelector": {}, "dnsNames": ["*.*.example.com"]}),
            "dnsNames must be lowercase RFC 1123 DNS names",
        ),
        (
            json!({"namespaceSelector": {}, "uris": ["spiffe://x/*/y"]}),
            "uris must be absolute URIs, optionally ending in '/*'",
        ),
        (
            json!({"namespaceSelector": {}, "uris": ["spiffe://partner.example*"]}),
            "uris must be absolute URIs, optionally ending in '/*'",
        ),
        (
            json!({"namespaceSelector": {}}),
            "grants at least one of dnsNames, ipAddresses or uris",
        ),
        (
            json!({"dnsNames": ["a.example.com"]}),
            "namespaceSelector: Required value",
        ),
    ] {
        let policy: serde_json::Value = json!({
            "apiVersion": "tlsid.dev/v1alpha1",
            "kind": "TlsIdentityPolicy",
            "metadata": {"name": "invalid-policy"},
            "spec": spec,
        });
        let err = api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &serde_json::from_value(policy).unwrap(),
            )
            .await
            .expect_err(want)
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[tokio::test]
async fn names_are_checked_at_admission_and_at_signing() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let sys = namespace_labelled(&client, "tenancy-sys", &[]).await;
    let team_a = namespace_labelled(&client, "tenancy-a", &[]).await;
    let team_b = namespace_labelled(&client, "tenancy-b", &[]).await;
    let install = format!("t{}", &sys[sys.len() - 6..]);
    let (grant_webhook, grant_b, grant_a) = (
        format!("{sys}-webhook"),
        format!("{sys}-team-b"),
        format!("{sys}-team-a"),
    );

    // The webhook's own certificate carries 127.0.0.1 (the apiserver calls it by address): an IP
    // SAN, which only a policy can grant, to the install's namespace.
    apply_policy(
        &client,
        &grant_webhook,
        json!({"namespaceSelector": for_namespace(&sys), "ipAddresses": ["127.0.0.1/32"]}),
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": WEBHOOK_CONFIGURATION},
        "webhooks": [{
            "name": "names.tlsid.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate")},
            "rules": [{"apiGroups": ["tlsid.dev"], "apiVersions": ["v1alpha1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["tlsidentities"]}],
            "namespaceSelector": for_namespace(&team_a),
            "objectSelector": {"matchLabels": {"tlsid.dev/install": install}},
        }]
    }))
    .unwrap();
    let vwcs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let _ = vwcs
        .delete(WEBHOOK_CONFIGURATION, &DeleteParams::default())
        .await;
    vwcs.create(&PostParams::default(), &vwc)
        .await
        .expect("create the webhook configuration");

    let listen = format!("127.0.0.1:{port}");
    let controller = Controller::start_with(
        cluster,
        &sys,
        &[
            "--namespace",
            &sys,
            "--install",
            &install,
            "--webhook-listen",
            &listen,
            "--webhook-service",
            "webhook",
            "--webhook-configuration",
            WEBHOOK_CONFIGURATION,
            "--webhook-ip-addresses",
            "127.0.0.1",
        ],
    )
    .await;

    let ids_a = Api::<TlsIdentity>::namespaced(client.clone(), &team_a);
    let ids_b = Api::<TlsIdentity>::namespaced(client.clone(), &team_b);

    // The webhook answers once the leader has written the CA into the configuration's caBundle.
    let probe = labelled(
        &install,
        "probe",
        json!({"dnsNames": [format!("probe.{team_a}.svc")]}),
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match ids_a.create(&dry, &probe).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the webhook never answered: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }

    // Own names: every form the built-in rule permits.
    ids_a
        .create(
            &PostParams::default(),
            &labelled(
                &install,
                "own",
                json!({
                    "dnsNames": [format!("own.{team_a}.svc"), format!("web-0.web.{team_a}.svc.cluster.local"),
                                 format!("*.web.{team_a}.svc")],
                    "uris": [format!("spiffe://cluster.local/ns/{team_a}/sa/own")],
                    "spiffe": {"serviceAccount": "web"},
                }),
            ),
        )
        .await
        .expect("own-namespace names are admitted");
    wait_identity(&ids_a, "own", "Ready", ready).await;
    let secret = Api::<Secret>::namespaced(client.clone(), &team_a)
        .get("own-tls")
        .await
        .unwrap();
    let crt = String::from_utf8_lossy(data(&secret, "tls.crt")).to_string();
    let text = openssl_text(&crt);
    assert!(
        text.contains(&format!("URI:spiffe://cluster.local/ns/{team_a}/sa/web")),
        "spec.spiffe becomes a URI SAN: {text}"
    );

    // Each kind of foreign name, refused at admission with its field, name and rule.
    for (name, spec, want) in [
        (
            "dns",
            json!({"dnsNames": [format!("api.{team_b}.svc")]}),
            format!("dnsNames[0] \"api.{team_b}.svc\" is outside namespace {team_a}"),
        ),
        (
            "wildcard",
            json!({"dnsNames": [format!("ok.{team_a}.svc"), format!("*.{team_b}.svc")]}),
            format!("dnsNames[1] \"*.{team_b}.svc\" is outside namespace {team_a}"),
        ),
        (
            "spiffe",
            json!({"uris": ["spiffe://cluster.local/ns/kube-system/sa/admin"]}),
            format!(
                "uris[0] \"spiffe://cluster.local/ns/kube-system/sa/admin\" is outside namespace {team_a}"
            ),
        ),
        (
            "ip",
            json!({"ipAddresses": ["10.1.2.3"]}),
            format!("ipAddresses[0] \"10.1.2.3\" is not granted to namespace {team_a}"),
        ),
    ] {
        let err = ids_a
            .create(&PostParams::default(), &labelled(&install, name, spec))
            .await
            .expect_err(name);
        let msg = err.to_string();
        assert!(msg.contains(&want), "{name}: {msg}");
        assert!(
            msg.contains("TlsIdentityPolicy"),
            "{name}: names the way out: {msg}"
        );
    }

    // Created for another install (not this webhook's to judge), then moved to this one: the
    // names are checked on the move, not waved through as unchanged.
    ids_a
        .create(
            &PostParams::default(),
            &labelled(
                "someone-else",
                "sneaky",
                json!({"dnsNames": [format!("api.{team_b}.svc")]}),
            ),
        )
        .await
        .expect("another install's identity is not this webhook's");
    let moved = ids_a
        .patch(
            "sneaky",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tlsid.dev/install": install}}})),
        )
        .await
        .expect_err("moving it to this install checks its names");
    assert!(
        moved.to_string().contains("is outside namespace"),
        "{moved}"
    );

    // A policy granting the namespace a name makes it admissible.
    let partner = labelled(
        &install,
        "partner",
        json!({"dnsNames": ["api.partner.example"]}),
    );
    assert!(ids_a.create(&dry, &partner).await.is_err());
    apply_policy(
        &client,
        &grant_a,
        json!({"namespaceSelector": for_namespace(&team_a), "dnsNames": ["*.partner.example"]}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while let Err(e) = ids_a.create(&PostParams::default(), &partner).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "granted name still refused: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    wait_identity(&ids_a, "partner", "Ready", ready).await;

    // Admission bypassed (team-b is outside the webhook's selector): refused at signing.
    let foreign = labelled(
        &install,
        "foreign",
        json!({"dnsNames": [format!("api.{team_a}.svc"), format!("*.{team_a}.svc")],
               "uris": ["spiffe://cluster.local/ns/kube-system/sa/admin"], "ipAddresses": ["10.1.2.3"],
               "duration": "1h"}),
    );
    ids_b
        .create(&PostParams::default(), &foreign)
        .await
        .expect("no webhook covers team-b");
    let seen = wait_identity(&ids_b, "foreign", "NotPermitted", refused).await;
    let message = seen.condition("Ready").unwrap().message.clone();
    for want in [
        format!("dnsNames[0] \"api.{team_a}.svc\" is outside namespace {team_b}"),
        format!("dnsNames[1] \"*.{team_a}.svc\" is outside namespace {team_b}"),
        format!("ipAddresses[0] \"10.1.2.3\" is not granted to namespace {team_b}"),
        format!(
            "uris[0] \"spiffe://cluster.local/ns/kube-system/sa/admin\" is outside namespace {team_b}"
        ),
    ] {
        assert!(message.contains(&want), "{want}: {message}");
    }
    let secrets_b = Api::<Secret>::namespaced(client.clone(), &team_b);
    assert!(
        secrets_b.get_opt("foreign-tls").await.unwrap().is_none(),
        "no Secret written"
    );
    assert_eq!(
        events_at_least(&client, &team_b, "NotPermitted", 1).await,
        1
    );
    // No retry loop: another reconcile (a touch) writes nothing and says nothing again.
    let before = controller.metric("tlsid_reconciliations_total").await;
    annotate(&ids_b, "foreign", "example.com/touched", "1").await;
    wait_metric_above(&controller, "tlsid_reconciliations_total", before).await;
    assert_eq!(events(&client, &team_b, "NotPermitted").await, 1);
    assert!(secrets_b.get_opt("foreign-tls").await.unwrap().is_none());
    let now = ids_b.get("foreign").await.unwrap();
    assert_eq!(now.status, seen.status, "status unchanged");

    // A policy granting team-b those names (by a label of the namespace) makes it issuable...
    label_namespace(&client, &team_b, "tenant", "b").await;
    apply_policy(
        &client,
        &grant_b,
        json!({"namespaceSelector": {"matchLabels": {"tenant": "b"}},
               "dnsNames": [format!("*.{team_a}.svc")], "ipAddresses": ["10.0.0.0/8"],
               "uris": ["spiffe://cluster.local/ns/kube-system/sa/admin"]}),
    )
    .await;
    let issued = wait_identity(&ids_b, "foreign", "Ready once granted", ready).await;
    let first = serial(&issued);
    // ... and renewable (the control for what follows) ...
    annotate(&ids_b, "foreign", "tlsid.dev/renew", "r1").await;
    let renewed = wait_identity(&ids_b, "foreign", "renewed", |o| {
        ready(o) && o.is_some_and(|o| serial(o) != first)
    })
    .await;
    let second = serial(&renewed);
    // ... until the policy goes: then it says so and is not renewed, even when asked.
    delete_policy(&client, &grant_b).await;
    wait_identity(
        &ids_b,
        "foreign",
        "NotPermitted after the grant went",
        refused,
    )
    .await;
    let before = controller.metric("tlsid_reconciliations_total").await;
    annotate(&ids_b, "foreign", "tlsid.dev/renew", "r2").await;
    wait_metric_above(&controller, "tlsid_reconciliations_total", before).await;
    let after = ids_b.get("foreign").await.unwrap();
    assert!(refused(Some(&after)));
    assert_eq!(serial(&after), second, "not renewed without a grant");
    let secret = secrets_b.get("foreign-tls").await.unwrap();
    assert_eq!(
        secret.metadata.annotations.as_ref().unwrap()["tlsid.dev/serial"],
        second,
        "the Secret is left as it was"
    );

    // The same names, no longer admissible in team-a either once its grant goes.
    delete_policy(&client, &grant_a).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let again = labelled(
            &install,
            "partner2",
            json!({"dnsNames": ["api.partner.example"]}),
        );
        if ids_a.create(&dry, &again).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "grant deletion never reached the webhook"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let _ = vwcs
        .delete(WEBHOOK_CONFIGURATION, &DeleteParams::default())
        .await;
    delete_policy(&client, &grant_webhook).await;
    fault_row(
        "foreign names (DNS, wildcard, SPIFFE, IP)",
        "refused at admission with the name and rule; bypassed: NotPermitted, no Secret, 1 Event; a grant issues, its deletion stops renewal",
    );
}

async fn annotate(ids: &Api<TlsIdentity>, name: &str, key: &str, value: &str) {
    ids.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
    )
    .await
    .expect("annotate");
}

async fn label_namespace(client: &Client, ns: &str, key: &str, value: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .expect("label namespace");
}

async fn wait_metric_above(controller: &Controller, name: &str, above: f64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while controller.metric(name).await <= above {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {above}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn openssl_text(pem: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}
