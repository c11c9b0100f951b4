//! End to end on a real node: the chart's controller, the mTLS demo pods it runs, a rotation under
//! load, an impostor, clients that never reload (one restarted by tlsid, one failing once its
//! certificate expires), and a CA rollover under load with its control. Driven by `hack/e2e.sh` (a
//! stage of `make test`), which starts the node cluster, loads the image, installs the chart with
//! helm, runs this, then uninstalls and checks for orphans. A plain `cargo test` does not build
//! this target (`test = false` in Cargo.toml); run on its own it needs:
//!
//! - `TLSID_E2E_KUBECONFIG`: a cluster with nodes, the chart installed and `tlsid:dev` loaded;
//! - `TLSID_E2E_KUBELET_SYNC_FREQUENCY` (default `1m`, the kubelet's): the node's
//!   `syncFrequency`, which bounds how soon a renewed Secret reaches the pods;
//! - `TLSID_E2E_TRUST_PROPAGATION_DELAY` (default `5m`, the chart's): the install's
//!   `ca.trustPropagationDelay`, restored after the rollover's control;
//! - `TLSID_E2E_HELM` (default `helm`): the helm that installed the chart (the control upgrades
//!   the release).
//!
//! Everything asserted is read from the pods themselves: their `/metrics` through the apiserver's
//! pod proxy, and their logs. It prints the figures it saw at the end.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    future::Future,
    path::PathBuf,
    pin::pin,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Pod, Secret},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{
        DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch, PatchParams,
    },
    config::{KubeConfigOptions, Kubeconfig},
    discovery::pinned_kind,
    runtime::{
        WatchStreamExt,
        wait::{Condition, await_condition, conditions},
        watcher,
    },
};
use tlsid::{
    api::{DEMO_TRUST_LAG_ANNOTATION, IDENTITY_LABEL, RENEW_ANNOTATION, TlsIdentity},
    pki::{fingerprint, parse_pem_certs},
    plan::rollover::{PHASE_ANNOTATION, ROTATE_HANDLED_ANNOTATION},
};

const NS: &str = "tlsid-demo";
const SYSTEM_NS: &str = "tlsid-system";
const SERVER: &str = "demo-server";
const CLIENT: &str = "demo-client";
const IMPOSTOR: &str = "demo-impostor";
/// A namespace with a client of the demo server (examples/mtls-other-namespace.yaml).
const OTHER_NS: &str = "tlsid-demo-other";
const METRICS_PORT: u16 = 9090;
const FIELD_MANAGER: &str = "tlsid-e2e";
/// Pods start from an image already on the node: a minute is plenty for anything but a rotation.
const TIMEOUT: Duration = Duration::from_secs(90);
/// Successful exchanges with the new certificates on both sides before the window closes.
const AFTER_ROTATION: f64 = 3.0;
const RELEASE: &str = "tlsid";
const CA_SECRET: &str = "tlsid-ca";
/// The control's deliberately slow consumer: the demo client verifies with a new `ca.crt` only
/// this long after it first saw it.
const CONTROL_TRUST_LAG: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_demo_on_a_real_node() {
    let e2e = E2e::from_env().await;
    let started = Instant::now();

    // === the demo: handshakes both ways ===
    e2e.apply_file("examples/mtls-demo.yaml").await;
    let server_id = e2e.wait_identity(SERVER, "Ready", |_| true).await;
    let client_id = e2e.wait_identity(CLIENT, "Ready", |_| true).await;
    let (server_serial, client_serial) = (serial(&server_id), serial(&client_id));
    let server = e2e.ready_pod("demo-server", SERVER).await;
    let client = e2e.ready_pod("demo-client", CLIENT).await;
    step(&format!(
        "demo up: pods {} and {} ({:.0?})",
        server.name_any(),
        client.name_any(),
        started.elapsed()
    ));

    let (s, c) = e2e
        .eventually(
            "a successful mTLS handshake seen by both sides",
            TIMEOUT,
            || async {
                let (s, c) = (e2e.scrape(&server).await?, e2e.scrape(&client).await?);
                let both = s.handshakes("server", "success") > 0.0
                    && c.handshakes("client", "success") > 0.0
                    && s.peer_serial() == Some(client_serial.clone())
                    && c.peer_serial() == Some(server_serial.clone());
                both.then_some((s, c))
            },
        )
        .await;
    assert_eq!(
        s.own_serial().as_deref(),
        Some(server_serial.as_str()),
        "server presents its identity's certificate"
    );
    assert_eq!(
        c.own_serial().as_deref(),
        Some(client_serial.as_str()),
        "client presents its identity's certificate"
    );
    let server_log = e2e.log(&server).await;
    let client_log = e2e.log(&client).await;
    assert_log(
        &server_log,
        &[
            "mTLS handshake ok",
            "role=server",
            &format!("peer_serial={client_serial}"),
            "sa/demo-client",
        ],
    );
    assert_log(
        &client_log,
        &[
            "mTLS handshake ok",
            "role=client",
            &format!("peer_serial={server_serial}"),
            "sa/demo-server",
        ],
    );
    assert_eq!(
        s.handshakes("server", "failure"),
        0.0,
        "server handshake failures before the rotation:\n{server_log}"
    );
    assert_eq!(
        c.handshakes("client", "failure"),
        0.0,
        "client handshake failures before the rotation:\n{client_log}"
    );
    step(&format!(
        "mTLS both ways: server accepted {} (serial {client_serial}), client verified {} (serial {server_serial})",
        client_id.name_any(),
        server_id.name_any()
    ));

    // Two clients that load their certificate once (`--no-reload`), one opted in to restarts:
    // they run while the rest goes on, and are judged before the CA rollover.
    let legacy = start_legacy_clients(&e2e).await;
    step(&format!(
        "legacy clients (--no-reload) started on identity {LEGACY} (serial {}, valid {LEGACY_LIFETIME:?}): {LEGACY_RESTART} (tlsid.dev/reload: restart) and {LEGACY_PLAIN}",
        legacy.first_serial
    ));

    // === rotation of both identities under load, by a standby: the leader is killed first ===
    let before = Window::scrape(&e2e, &server, &client).await;
    let killed = e2e.kill_leader().await;
    step(&format!(
        "leader pod {killed} deleted (grace period 0) before the rotation; the standby does it"
    ));
    let requested = jiff::Timestamp::now();
    let requested_at = Instant::now();
    for name in [SERVER, CLIENT] {
        e2e.request_renewal(name, &requested.as_second().to_string())
            .await;
    }
    let new_server = serial(
        &e2e.wait_identity(SERVER, "a new serial", |s| s != server_serial)
            .await,
    );
    let new_client = serial(
        &e2e.wait_identity(CLIENT, "a new serial", |s| s != client_serial)
            .await,
    );
    step(&format!(
        "renewal requested at {requested}: issued {new_server} (server) and {new_client} (client) after {:.1?}",
        requested_at.elapsed()
    ));

    let bound = e2e.delivery_bound();
    let c = e2e
        .eventually("both pods serving the new serials", bound, || async {
            let (s, c) = (e2e.scrape(&server).await?, e2e.scrape(&client).await?);
            let served = s.own_serial() == Some(new_server.clone())
                && c.own_serial() == Some(new_client.clone())
                && c.peer_serial() == Some(new_server.clone())
                && s.peer_serial() == Some(new_client.clone());
            served.then_some(c)
        })
        .await;
    // Keep the window open for a few more exchanges on the new certificates.
    let c_new = c.handshakes("client", "success");
    e2e.eventually(
        "more exchanges on the new certificates",
        TIMEOUT,
        || async {
            let c = e2e.scrape(&client).await?;
            (c.handshakes("client", "success") >= c_new + AFTER_ROTATION).then_some(())
        },
    )
    .await;
    let after = Window::scrape(&e2e, &server, &client).await;
    let rotation = after.since(&before);

    let server_log = e2e.log(&server).await;
    let client_log = e2e.log(&client).await;
    let server_took = reload_delay(
        &server_log,
        &serial_of(&before.server),
        &new_server,
        requested,
    );
    let client_took = reload_delay(
        &client_log,
        &serial_of(&before.client),
        &new_client,
        requested,
    );
    assert_eq!(
        (
            rotation.server_failed,
            rotation.client_failed,
            rotation.client_unreachable
        ),
        (0.0, 0.0, 0.0),
        "failures during the rotation window (server handshakes, client handshakes, client connects)\n\
         server log:\n{server_log}\nclient log:\n{client_log}"
    );
    assert!(rotation.client_ok >= AFTER_ROTATION, "{rotation:?}");
    for (pod, role) in [(&server, "demo-server"), (&client, "demo-client")] {
        let now = e2e.pod(&pod.name_any()).await;
        assert_eq!(
            now.uid(),
            pod.uid(),
            "{role} pod replaced: a rotation must not need a restart"
        );
        assert_eq!(
            restarts(&now),
            restarts(pod),
            "{role} container restarted during the rotation"
        );
    }
    let sync_bound = bound.as_secs_f64();
    for (who, took) in [("server", server_took), ("client", client_took)] {
        assert!(
            took <= sync_bound,
            "{who} served its new serial {took:.1} s after the request (bound {sync_bound:.0} s)"
        );
    }
    step(&format!(
        "rotation: server serving {new_server} {server_took:.1} s and client {new_client} {client_took:.1} s after the request; \
         {} exchanges, 0 failures in the window",
        rotation.client_attempted()
    ));

    // === the impostor ===
    let server_failures = after.server.handshakes("server", "failure");
    let client_ok = after.client.handshakes("client", "success");
    e2e.apply_file("examples/mtls-impostor.yaml").await;
    let impostor = e2e.running_pod("demo-impostor").await;
    let (s_imp, c_imp) = e2e
        .eventually(
            "the server rejecting the impostor, the real client still accepted",
            TIMEOUT,
            || async {
                let (s, c) = (e2e.scrape(&server).await?, e2e.scrape(&client).await?);
                let rejected = s.handshakes("server", "failure") >= server_failures + 2.0
                    && c.handshakes("client", "success") >= client_ok + 2.0;
                rejected.then_some((s, c))
            },
        )
        .await;
    let server_log = e2e.log(&server).await;
    let impostor_log = e2e.log(&impostor).await;
    let rejection = assert_log(
        &server_log,
        &[
            "mTLS handshake failed",
            "role=server",
            "UnknownIssuer",
            "peer=spiffe://impostor.invalid/demo-client",
        ],
    );
    assert_log(
        &impostor_log,
        &["impostor mode: presenting a certificate from a throwaway CA"],
    );
    assert_log(
        &impostor_log,
        &[
            "mTLS handshake failed",
            "role=client",
            "rejected by the server",
        ],
    );
    assert!(
        !impostor_log.contains("mTLS handshake ok"),
        "the impostor got through:\n{impostor_log}"
    );
    let impostor_metrics = e2e.scrape(&impostor).await.expect("impostor metrics");
    assert_eq!(
        impostor_metrics.handshakes("client", "success"),
        0.0,
        "the impostor got through"
    );
    assert_eq!(
        c_imp.handshakes("client", "failure"),
        0.0,
        "the real client failed while the impostor was rejected"
    );
    let rejected = s_imp.handshakes("server", "failure") - server_failures;
    step(&format!(
        "impostor rejected {rejected} times; the server logged:\n    {}",
        strip_ansi(&rejection)
    ));
    e2e.delete_deployment(IMPOSTOR).await;

    // === tenancy: names are checked at admission, and the demo server authorizes ===
    // In the cluster, through the Service the chart made: the apiserver calls the webhook.
    let foreign = TlsIdentity::new(
        "claims-kube-system",
        serde_json::from_value(serde_json::json!({"dnsNames": ["api.kube-system.svc"]})).unwrap(),
    );
    // A dry run, until refused: the leader was killed without grace above, and a call the
    // apiserver makes on a connection to it fails once and (failurePolicy Ignore) lets the
    // request through; the dry run leaves nothing behind when that happens.
    let dry = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let refusal = e2e
        .eventually("the webhook refusing a foreign name", TIMEOUT, || async {
            e2e.identities()
                .create(&dry, &foreign)
                .await
                .err()
                .filter(|e| matches!(e, kube::Error::Api(s) if s.code == 403))
        })
        .await;
    assert!(
        refusal.to_string().contains(&format!(
            "dnsNames[0] \"api.kube-system.svc\" is outside namespace {NS}"
        )),
        "{refusal}"
    );
    let said = match &refusal {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    };
    step(&format!("webhook refused a foreign name: {said}"));
    // Every pod ran in namespaces that enforce the restricted Pod Security Standard.
    e2e.apply_file("examples/mtls-other-namespace.yaml").await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(e2e.client.clone());
    for ns in [NS, SYSTEM_NS, OTHER_NS] {
        let labels = namespaces.get(ns).await.expect("namespace").metadata.labels;
        assert_eq!(
            labels
                .as_ref()
                .and_then(|l| l.get("pod-security.kubernetes.io/enforce"))
                .map(String::as_str),
            Some("restricted"),
            "{ns}"
        );
    }
    // A client from another namespace: its handshake succeeds (same CA), its requests are refused.
    let refused_before = after.server.requests("server", "refused");
    let allowed_before = after.client.requests("client", "allowed");
    let other_pods: Api<Pod> = Api::namespaced(e2e.client.clone(), OTHER_NS);
    let outsider = e2e
        .eventually("the outsider's client pod running", TIMEOUT, || async {
            let list = other_pods
                .list(&ListParams::default().labels("app.kubernetes.io/instance=outsider"))
                .await
                .ok()?;
            list.items.into_iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|phase| phase == "Running")
            })
        })
        .await;
    let (s_out, c_out) = e2e
        .eventually(
            "the server refusing the outsider, the demo client still allowed",
            TIMEOUT,
            || async {
                let (s, c) = (e2e.scrape(&server).await?, e2e.scrape(&client).await?);
                let ok = s.requests("server", "refused") >= refused_before + 2.0
                    && c.requests("client", "allowed") >= allowed_before + 2.0;
                ok.then_some((s, c))
            },
        )
        .await;
    let server_log = e2e.log(&server).await;
    let refused_line = assert_log(
        &server_log,
        &[
            "request refused",
            "role=server",
            &format!("peer=spiffe://cluster.local/ns/{OTHER_NS}/sa/outsider"),
        ],
    );
    let outsider_log = other_pods
        .logs(&outsider.name_any(), &LogParams::default())
        .await
        .expect("outsider log");
    assert_log(
        &outsider_log,
        &["request refused", "role=client", "status=403"],
    );
    assert!(
        !outsider_log.contains("mTLS handshake failed"),
        "the outsider was refused by the TLS handshake, not by the server's authorization:\n{outsider_log}"
    );
    assert_eq!(
        c_out.requests("client", "refused"),
        0.0,
        "the demo client was refused"
    );
    assert_eq!(
        s_out.handshakes("server", "failure"),
        s_imp.handshakes("server", "failure"),
        "the outsider's handshakes failed: authentication must pass, authorization refuse"
    );
    step(&format!(
        "outsider refused {} times after a good handshake; the server logged:\n    {}",
        s_out.requests("server", "refused") - refused_before,
        strip_ansi(&refused_line)
    ));

    // The demo's counters so far (the control below replaces the client pod).
    let end = Window::scrape(&e2e, &server, &client).await;

    // === apps that do not reload: restarted onto each rotation, or failing once it expires ===
    let restarts = legacy_clients_across_a_rotation(&e2e, legacy).await;

    // === a CA rollover under load, and its control ===
    let rollover = ca_rollover_under_load(&e2e, &server, &client).await;
    let control = control_without_gates(&e2e, &server, &client).await;

    // === figures ===
    println!("\n=== e2e figures ===");
    println!(
        "renewal request → new serial served: server {server_took:.1} s, client {client_took:.1} s \
         (kubelet syncFrequency {:?}, bound {sync_bound:.0} s)",
        e2e.sync_frequency
    );
    println!(
        "rotation window ({:.1} s): client attempted {}, failed {} ({} handshake, {} unreachable); server accepted {}, failed {}",
        rotation.seconds,
        rotation.client_attempted(),
        rotation.client_failed + rotation.client_unreachable,
        rotation.client_failed,
        rotation.client_unreachable,
        rotation.server_ok,
        rotation.server_failed,
    );
    println!(
        "up to the CA rollover: client attempted {}, handshakes failed {}, unreachable {} (before the server listened); \
         server accepted {}, rejected {} (all the impostor's)",
        end.client_attempted(),
        end.client.handshakes("client", "failure"),
        end.client.unreachable(),
        end.server.handshakes("server", "success"),
        end.server.handshakes("server", "failure"),
    );
    println!("impostor: {rejected} handshakes rejected by the server (UnknownIssuer), 0 accepted");
    println!("{restarts}");
    println!("{rollover}");
    println!("{control}");
    println!("total {:.0?}", started.elapsed());
}

// === restarts for apps that do not reload ===

/// The identity of the legacy clients: a short lifetime, so it is renewed (at 2/3) and its first
/// certificate expires while the e2e goes on.
const LEGACY: &str = "legacy";
const LEGACY_LIFETIME: Duration = Duration::from_secs(90);
const LEGACY_RESTART: &str = "legacy-restart";
const LEGACY_PLAIN: &str = "legacy-plain";

struct Legacy {
    first_serial: String,
    first_not_after: jiff::Timestamp,
    started: Instant,
}

/// The `legacy` identity and two Deployments of `tlsid demo client --no-reload` on its Secret,
/// built from the demo client's own pod template: `legacy-restart` annotated
/// `tlsid.dev/reload: restart`, `legacy-plain` not.
async fn start_legacy_clients(e2e: &E2e) -> Legacy {
    let started = Instant::now();
    let id: TlsIdentity = serde_json::from_value(serde_json::json!({
        "apiVersion": "tlsid.dev/v1alpha1", "kind": "TlsIdentity",
        "metadata": {"name": LEGACY, "namespace": NS},
        "spec": {"spiffe": {"serviceAccount": LEGACY}, "usages": ["client"],
                 "duration": format!("{}s", LEGACY_LIFETIME.as_secs())},
    }))
    .unwrap();
    e2e.identities()
        .patch(
            LEGACY,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&id),
        )
        .await
        .expect("apply the legacy identity");
    let id = e2e.wait_identity(LEGACY, "Ready", |_| true).await;
    let deployments: Api<Deployment> = Api::namespaced(e2e.client.clone(), NS);
    let demo = deployments
        .get(&format!("{CLIENT}-demo"))
        .await
        .expect("the demo client's Deployment");
    let mut template = demo.spec.expect("spec").template;
    let pod = template.spec.as_mut().expect("pod spec");
    for v in pod.volumes.iter_mut().flatten() {
        if let Some(secret) = v.secret.as_mut() {
            secret.secret_name = Some(format!("{LEGACY}-tls"));
        }
    }
    pod.containers[0]
        .args
        .as_mut()
        .expect("args")
        .push("--no-reload".into());
    for (name, opted_in) in [(LEGACY_RESTART, true), (LEGACY_PLAIN, false)] {
        let labels = BTreeMap::from([
            (
                "app.kubernetes.io/component".to_string(),
                "legacy".to_string(),
            ),
            ("app.kubernetes.io/instance".to_string(), name.to_string()),
        ]);
        let mut t = template.clone();
        t.metadata = Some(kube::api::ObjectMeta {
            labels: Some(labels.clone()),
            ..Default::default()
        });
        let annotations = opted_in
            .then(|| BTreeMap::from([("tlsid.dev/reload".to_string(), "restart".to_string())]));
        let d = Deployment {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                annotations,
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas: Some(1),
                selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(labels),
                    ..Default::default()
                },
                template: t,
                ..Default::default()
            }),
            ..Default::default()
        };
        deployments
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&d),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }
    let status = id.status.expect("status");
    Legacy {
        first_serial: status.serial_number.expect("serial"),
        first_not_after: status.not_after.expect("notAfter").0,
        started,
    }
}

/// What the legacy clients showed.
struct RestartProof {
    renewed: String,
    restarts: i64,
    restart_ok: f64,
    plain_failed: f64,
    plain_failing_after: f64,
    seconds: f64,
}

impl fmt::Display for RestartProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "apps that do not reload ({:.0} s): {LEGACY_RESTART} restarted {} time(s) by tlsid (onto serial {}), \
             its current pod {} handshakes, 0 failed; {LEGACY_PLAIN} (not opted in) failing {:.0} s after its \
             certificate expired ({} failed handshakes)",
            self.seconds,
            self.restarts,
            self.renewed,
            self.restart_ok,
            self.plain_failing_after,
            self.plain_failed
        )
    }
}

/// Once the legacy identity's first certificate has expired: the opted-in client was restarted
/// onto the renewed certificate and its handshakes succeed (every pod of it scraped on the way
/// saw no failure); the other one, the same program on the same Secret, fails its handshakes.
/// Then both Deployments and the identity are deleted (the CA rollover that follows does not
/// wait for them).
async fn legacy_clients_across_a_rotation(e2e: &E2e, legacy: Legacy) -> RestartProof {
    let renewed = serial(
        &e2e.wait_identity_for(LEGACY, "a renewed serial", LEGACY_LIFETIME, |s| {
            s != legacy.first_serial
        })
        .await,
    );
    let restart_selector = format!("app.kubernetes.io/instance={LEGACY_RESTART}");
    let plain_selector = format!("app.kubernetes.io/instance={LEGACY_PLAIN}");
    // Until the plain client fails (its certificate expired), every scrape of the opted-in one
    // must show no failed handshake.
    let (plain_failed, failing_at) = e2e
        .eventually(
            "the client not opted in failing once its certificate expired",
            LEGACY_LIFETIME + TIMEOUT,
            || async {
                let pods = e2e
                    .pods()
                    .list(&ListParams::default().labels(&restart_selector))
                    .await
                    .ok()?;
                for pod in &pods.items {
                    if let Some(m) = e2e.scrape(pod).await {
                        assert_eq!(
                            m.handshakes("client", "failure"),
                            0.0,
                            "{LEGACY_RESTART} pod {} failed a handshake:\n{}",
                            pod.name_any(),
                            e2e.log(pod).await
                        );
                    }
                }
                let plain = e2e.find_one_pod(&plain_selector, false).await?;
                let m = e2e.scrape(&plain).await?;
                let failed = m.handshakes("client", "failure");
                (failed > 0.0).then(|| (failed, jiff::Timestamp::now()))
            },
        )
        .await;
    let plain = e2e
        .find_one_pod(&plain_selector, false)
        .await
        .expect("plain pod");
    let plain_log = e2e.log(&plain).await;
    assert!(
        failing_at >= legacy.first_not_after,
        "{LEGACY_PLAIN} failed before its certificate expired at {}:\n{plain_log}",
        legacy.first_not_after
    );
    let m = e2e.scrape(&plain).await.expect("plain metrics");
    assert_eq!(
        m.own_serial().as_deref(),
        Some(legacy.first_serial.as_str()),
        "{LEGACY_PLAIN} still presents its first certificate (it never reloads)"
    );
    // The opted-in one: restarted onto the renewed certificate, succeeding on it.
    let pod = e2e.ready_pod("legacy", LEGACY_RESTART).await;
    let current = serial(&e2e.identities().get(LEGACY).await.expect("legacy"));
    let ok = e2e
        .eventually(
            "the opted-in client handshaking on the renewed certificate",
            TIMEOUT,
            || async {
                let m = e2e.scrape(&pod).await?;
                assert_eq!(
                    m.handshakes("client", "failure"),
                    0.0,
                    "{}",
                    e2e.log(&pod).await
                );
                (m.own_serial() == Some(current.clone())
                    && m.handshakes("client", "success") >= 2.0)
                    .then(|| m.handshakes("client", "success"))
            },
        )
        .await;
    let deployments: Api<Deployment> = Api::namespaced(e2e.client.clone(), NS);
    let d = deployments
        .get(LEGACY_RESTART)
        .await
        .expect("legacy-restart");
    let annotations = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert!(
        annotations
            .get("tlsid.dev/restarted-for")
            .is_some_and(|r| r.contains(&format!("={current}."))),
        "{annotations:?}"
    );
    // Opting in restarted it once, then each renewal once.
    let restarts = d.metadata.generation.unwrap_or(1) - 1;
    let id = e2e.identities().get(LEGACY).await.expect("legacy");
    let consumers = id.status.map(|s| s.consumers).unwrap_or_default();
    assert!(
        consumers
            .iter()
            .any(|c| c.name == LEGACY_RESTART && c.reload == "restart"),
        "{consumers:?}"
    );
    assert!(
        consumers
            .iter()
            .any(|c| c.name == LEGACY_PLAIN && c.reload == "none"),
        "{consumers:?}"
    );
    assert_eq!(
        deployments
            .get(LEGACY_PLAIN)
            .await
            .expect("legacy-plain")
            .metadata
            .generation,
        Some(1),
        "tlsid restarted a workload that did not opt in"
    );
    for name in [LEGACY_RESTART, LEGACY_PLAIN] {
        e2e.delete_deployment(name).await;
    }
    e2e.identities()
        .delete(LEGACY, &DeleteParams::default())
        .await
        .expect("delete the legacy identity");
    // Its Secret stays (deletion keeps what workloads mount): delete it too, once the identity
    // is gone, or the rollover below would wait for it to get the next bundle.
    tokio::time::timeout(
        TIMEOUT,
        await_condition(e2e.identities(), LEGACY, conditions::is_deleted("")),
    )
    .await
    .expect("the legacy identity gone")
    .expect("watch TlsIdentity");
    e2e.secrets(NS)
        .delete(&format!("{LEGACY}-tls"), &DeleteParams::default())
        .await
        .expect("delete the legacy Secret");
    step(&format!(
        "legacy clients: {LEGACY_RESTART} restarted {restarts} time(s) and handshaking on {current}; \
         {LEGACY_PLAIN} failing since its certificate expired ({plain_failed} failed handshakes)"
    ));
    RestartProof {
        renewed,
        restarts,
        restart_ok: ok,
        plain_failed,
        plain_failing_after: (failing_at.as_second() - legacy.first_not_after.as_second()) as f64,
        seconds: legacy.started.elapsed().as_secs_f64(),
    }
}

fn step(what: &str) {
    println!("e2e: {what}");
}

// === the CA rollover ===

/// A full CA rollover (to a new root, in emergency mode so that Drain waits only the propagation
/// delay, not for the old leaves to expire: the normal mode is tests/rollover.rs's) while the
/// demo client and server keep handshaking: not one handshake may fail on either side, no pod may
/// restart, and at the end the identities, their Secrets and the pods are on the new root alone.
async fn ca_rollover_under_load(e2e: &E2e, server: &Pod, client: &Pod) -> Rollover {
    let ca_before = e2e.ca_secret().await;
    let old_root = signer_of(&ca_before);
    let before = Window::scrape(e2e, server, client).await;
    let started = Instant::now();
    let limit = e2e.rollover_limit();
    let (said, (ca, phases)) = tokio::join!(
        e2e.tlsid(&["ca", "rotate", "--emergency", "--wait"]),
        e2e.follow_rollover(&ca_before, limit),
    );
    let took = started.elapsed();
    let new_root = signer_of(&ca);
    assert_ne!(new_root, old_root, "the rollover kept the signer");
    assert_eq!(
        bundle(&ca),
        BTreeSet::from([new_root.clone()]),
        "the CA Secret's bundle after the rollover"
    );
    step(&format!(
        "tlsid ca rotate --emergency ({}): root {} replaced by {} in {took:.1?} ({phases})",
        said.trim(),
        short(&old_root),
        short(&new_root),
    ));

    // Every identity chains to the new CA, and (written just after the CA Secret's last step)
    // every identity Secret trusts its root alone.
    let mut serials = Vec::new();
    for name in [SERVER, CLIENT] {
        let id = e2e.identities().get(name).await.expect("get identity");
        let status = id.status.clone().unwrap_or_default();
        assert_eq!(
            status.ca_fingerprint.as_deref(),
            Some(new_root.as_str()),
            "{name}: status.caFingerprint after the rollover"
        );
        serials.push(serial(&id));
    }
    let secrets = e2e.secrets(NS);
    e2e.eventually(
        "the identity Secrets trusting the new root alone",
        TIMEOUT,
        || async {
            for name in [SERVER, CLIENT] {
                let secret = secrets.get(&format!("{name}-tls")).await.ok()?;
                if bundle(&secret) != BTreeSet::from([new_root.clone()]) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // The pods serve their new leaves and verify peers with the new root alone, once the kubelet
    // has delivered the last Secrets.
    let delivered = Instant::now();
    let c = e2e
        .eventually(
            "both demo pods serving leaves of the new CA and trusting only its root",
            e2e.delivery_bound(),
            || async {
                let (s, c) = (e2e.scrape(server).await?, e2e.scrape(client).await?);
                let only_new = BTreeSet::from([new_root.clone()]);
                let done = s.own_serial().as_ref() == Some(&serials[0])
                    && c.own_serial().as_ref() == Some(&serials[1])
                    && s.trusted_roots() == only_new
                    && c.trusted_roots() == only_new;
                done.then_some(c)
            },
        )
        .await;
    let settled = took + delivered.elapsed();
    // A few more exchanges with nothing but the new root.
    let c_new = c.handshakes("client", "success");
    e2e.eventually("more exchanges after the rollover", TIMEOUT, || async {
        let c = e2e.scrape(client).await?;
        (c.handshakes("client", "success") >= c_new + AFTER_ROTATION).then_some(())
    })
    .await;
    let window = Window::scrape(e2e, server, client).await.since(&before);
    assert_eq!(
        (
            window.server_failed,
            window.client_failed,
            window.client_unreachable
        ),
        (0.0, 0.0, 0.0),
        "failures during the CA rollover (server handshakes, client handshakes, client connects)\n\
         server log:\n{}\nclient log:\n{}",
        e2e.log(server).await,
        e2e.log(client).await
    );
    assert!(window.client_ok >= AFTER_ROTATION, "{window:?}");
    for (pod, role) in [(server, "demo-server"), (client, "demo-client")] {
        let now = e2e.pod(&pod.name_any()).await;
        assert_eq!(
            now.uid(),
            pod.uid(),
            "{role} pod replaced: a CA rollover must not need a restart"
        );
        assert_eq!(
            restarts(&now),
            restarts(pod),
            "{role} container restarted during the CA rollover"
        );
    }
    // `tlsid ca status` tells the same story.
    let status: serde_json::Value =
        serde_json::from_str(&e2e.tlsid(&["ca", "status", "-o", "json"]).await)
            .expect("tlsid ca status -o json");
    assert_eq!(status["phase"], "Stable", "{status:#}");
    assert_eq!(
        status["signer"]["fingerprint"],
        new_root.as_str(),
        "{status:#}"
    );
    assert_eq!(
        status["roots"].as_array().map(Vec::len),
        Some(1),
        "{status:#}"
    );
    assert_eq!(status["leavesOnPrevious"], 0, "{status:#}");
    assert_eq!(status["leavesOnOther"], 0, "{status:#}");
    step(&format!(
        "CA rollover under load: pods on the new root alone {settled:.1?} after the request; \
         {} exchanges, 0 failures, 0 restarts",
        window.client_attempted()
    ));
    Rollover {
        phases,
        took,
        settled,
        window,
    }
}

/// The control: the same rollover with every gate off (propagation delay zero, demo pods not
/// observed) and a client that adopts new trust only `CONTROL_TRUST_LAG` after it sees it. Its
/// handshakes must fail, or this e2e could not see a broken rollover. Then everything is put back:
/// the client without a lag, the install's own settings, handshakes succeeding both ways.
async fn control_without_gates(e2e: &E2e, server: &Pod, client: &Pod) -> Control {
    let started = Instant::now();
    e2e.helm_upgrade(&[
        "ca.trustPropagationDelay=0s".into(),
        "ca.observeDemoTrust=false".into(),
    ])
    .await;
    // `helm upgrade --wait` returns once the new pods are ready; the old leader may still lead,
    // and a rollover it took up would run with the gates on.
    e2e.wait_leader_with(&[
        ("TLSID_TRUST_PROPAGATION_DELAY", "0s"),
        ("TLSID_OBSERVE_DEMO_TRUST", "false"),
    ])
    .await;
    let lag = format!("{}s", CONTROL_TRUST_LAG.as_secs());
    e2e.set_demo_trust_lag(CLIENT, Some(&lag)).await;
    let lagging = e2e.replaced_pod("demo-client", CLIENT, client).await;
    let args = lagging
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.args.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        args.windows(2).any(
            |a| a[0] == "--trust-lag" && a[1] == format!("{}ms", CONTROL_TRUST_LAG.as_millis())
        ),
        "the demo client does not run with --trust-lag {lag}: {args:?}"
    );
    e2e.eventually("the lagging client handshaking", TIMEOUT, || async {
        let c = e2e.scrape(&lagging).await?;
        (c.handshakes("client", "success") > 0.0).then_some(())
    })
    .await;
    let setup = started.elapsed();

    let ca_before = e2e.ca_secret().await;
    let before = Window::scrape(e2e, server, &lagging).await;
    let requested = Instant::now();
    let said = e2e.tlsid(&["ca", "rotate", "--emergency", "--wait"]).await;
    // Why a failure must come, and within this bound. With the gates off the switch follows the
    // request within a few of the controller's 2 s steps (Publish only waits for the identity
    // Secrets to be written); the server's Secret then reaches its files within the kubelet's
    // delivery bound and it presents a leaf of the new CA at its next 1 s reload; the client tries
    // every 2 s. The client saw the new bundle no earlier than the request, so it verifies with
    // the old root alone until at least CONTROL_TRUST_LAG after the request: every attempt from
    // the server's reload to then fails (UnknownIssuer), and that span lies inside the bound (if
    // the client's own new leaf lands first, the server refuses it sooner: UnknownCA).
    let bound = e2e.delivery_bound() + Duration::from_secs(15);
    assert!(
        bound + Duration::from_secs(15) < CONTROL_TRUST_LAG,
        "the control's trust lag ({CONTROL_TRUST_LAG:?}) must outlast its bound ({bound:?})"
    );
    let failing = e2e
        .eventually(
            "the lagging client failing handshakes (the control)",
            bound,
            || async {
                let c = e2e.scrape(&lagging).await?;
                (c.handshakes("client", "failure") > before.client.handshakes("client", "failure"))
                    .then_some(c)
            },
        )
        .await;
    let first_failure = requested.elapsed();
    let failing_log = e2e.log(&lagging).await;
    // Which side refuses first depends on which file reaches its pod first: the server's new
    // leaf (the client refuses it: UnknownIssuer) or the client's own new leaf before the server
    // loaded the overlap bundle (the server refuses it: the client logs an UnknownCA alert).
    // Either is the broken rollover the gates prevent.
    let failure_line = strip_ansi(&failing_log)
        .lines()
        .find(|l| {
            l.contains("mTLS handshake failed")
                && l.contains("role=client")
                && (l.contains("UnknownIssuer") || l.contains("UnknownCA"))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!("no failed handshake for an unknown CA in the client's log:\n{failing_log}")
        });
    // Let it fail a little longer: failures, not one unlucky attempt.
    let failures_at_first = failing.handshakes("client", "failure");
    e2e.eventually("a second failed handshake", TIMEOUT, || async {
        let c = e2e.scrape(&lagging).await?;
        (c.handshakes("client", "failure") > failures_at_first).then_some(())
    })
    .await;
    let window = Window::scrape(e2e, server, &lagging).await.since(&before);
    step(&format!(
        "control ({}; gates off, client --trust-lag {lag}): first failed handshake {first_failure:.1?} after \
         the request, {} client and {} server handshakes failed; the client logged:\n    {}",
        said.trim(),
        window.client_failed,
        window.server_failed,
        strip_ansi(&failure_line)
    ));

    // === restore ===
    let restoring = Instant::now();
    let (ca, _) = e2e.follow_rollover(&ca_before, e2e.rollover_limit()).await;
    let new_root = signer_of(&ca);
    let restore = [
        format!("ca.trustPropagationDelay={}", e2e.propagation_delay_value),
        "ca.observeDemoTrust=true".into(),
    ];
    let ((), restored) = tokio::join!(e2e.helm_upgrade(&restore), async {
        e2e.set_demo_trust_lag(CLIENT, None).await;
        e2e.replaced_pod("demo-client", CLIENT, &lagging).await
    });
    e2e.wait_leader_with(&[
        (
            "TLSID_TRUST_PROPAGATION_DELAY",
            e2e.propagation_delay_value.as_str(),
        ),
        ("TLSID_OBSERVE_DEMO_TRUST", "true"),
    ])
    .await;
    let only_new = BTreeSet::from([new_root.clone()]);
    let c = e2e
        .eventually(
            "both demo pods trusting only the control's new root",
            e2e.delivery_bound(),
            || async {
                let (s, c) = (e2e.scrape(server).await?, e2e.scrape(&restored).await?);
                (s.trusted_roots() == only_new && c.trusted_roots() == only_new).then_some(c)
            },
        )
        .await;
    let after_restore = Window::scrape(e2e, server, &restored).await;
    let c_ok = c.handshakes("client", "success");
    e2e.eventually(
        "handshakes succeeding again after the control",
        TIMEOUT,
        || async {
            let c = e2e.scrape(&restored).await?;
            (c.handshakes("client", "success") >= c_ok + AFTER_ROTATION).then_some(())
        },
    )
    .await;
    let again = Window::scrape(e2e, server, &restored)
        .await
        .since(&after_restore);
    assert_eq!(
        (
            again.server_failed,
            again.client_failed,
            again.client_unreachable
        ),
        (0.0, 0.0, 0.0),
        "failures after the control was undone (server handshakes, client handshakes, client connects)"
    );
    let restored_in = restoring.elapsed();
    step(&format!(
        "control undone in {restored_in:.1?}: client without a lag, {RELEASE} back to \
         ca.trustPropagationDelay={} and ca.observeDemoTrust=true, {} exchanges since, 0 failures",
        e2e.propagation_delay_value,
        again.client_attempted()
    ));
    Control {
        setup,
        first_failure,
        window,
        restored_in,
        total: started.elapsed(),
    }
}

/// What the rollover step saw.
struct Rollover {
    phases: Phases,
    took: Duration,
    settled: Duration,
    window: Delta,
}

impl fmt::Display for Rollover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CA rollover (emergency) under load: completed in {:.1?} ({}), pods on the new root alone \
             after {:.1?}; window {:.1} s: client attempted {}, failed {} ({} handshake, {} unreachable); \
             server accepted {}, failed {}",
            self.took,
            self.phases,
            self.settled,
            self.window.seconds,
            self.window.client_attempted(),
            self.window.client_failed + self.window.client_unreachable,
            self.window.client_failed,
            self.window.client_unreachable,
            self.window.server_ok,
            self.window.server_failed,
        )
    }
}

/// What the control saw.
struct Control {
    setup: Duration,
    first_failure: Duration,
    window: Delta,
    restored_in: Duration,
    total: Duration,
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "control (gates off, client --trust-lag {:?}): first failed handshake {:.1?} after the request; \
             {} client and {} server handshakes failed in {:.1} s; set up {:.1?}, undone {:.1?}, {:.1?} in all",
            CONTROL_TRUST_LAG,
            self.first_failure,
            self.window.client_failed,
            self.window.server_failed,
            self.window.seconds,
            self.setup,
            self.restored_in,
            self.total,
        )
    }
}

/// When the CA Secret entered each phase of a rollover, from the moment it was requested.
#[derive(Default)]
struct Phases(Vec<(String, Duration)>);

impl Phases {
    fn seen(&self, phase: &str) -> bool {
        self.0.iter().any(|(p, _)| p == phase)
    }

    fn saw(&mut self, phase: &str, at: Duration) {
        let last = self.0.last().map(|(p, _)| p.as_str());
        // The Secret as it was before the request is not a phase of this rollover.
        if last != Some(phase) && !(last.is_none() && phase == "Stable") {
            self.0.push((phase.to_owned(), at));
        }
    }
}

impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (phase, at)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{phase} +{:.1}s", at.as_secs_f64())?;
        }
        Ok(())
    }
}

/// Fingerprint of the CA Secret's signer (the first certificate of `tls.crt`).
fn signer_of(ca: &Secret) -> String {
    certs(ca, "tls.crt")
        .first()
        .cloned()
        .expect("a signer in tls.crt")
}

/// Fingerprints of the roots in a Secret's `ca.crt`.
fn bundle(secret: &Secret) -> BTreeSet<String> {
    certs(secret, "ca.crt").into_iter().collect()
}

fn certs(secret: &Secret, key: &str) -> Vec<String> {
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.as_slice())
        .unwrap_or_default();
    parse_pem_certs(pem)
        .unwrap_or_else(|e| panic!("{key} of Secret {}: {e}", secret.name_any()))
        .iter()
        .map(|der| fingerprint(der))
        .collect()
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

fn serial(id: &TlsIdentity) -> String {
    id.status
        .as_ref()
        .and_then(|s| s.serial_number.clone())
        .unwrap_or_default()
}

fn serial_of(m: &Metrics) -> String {
    m.own_serial().unwrap_or_default()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// Run a command off the async workers; its standard output, or a failure showing its error.
async fn run(mut cmd: std::process::Command, shown: String) -> String {
    let what = shown.clone();
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The plain-text log format colours its fields when it thinks it has a terminal.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first log line containing every needle (escape codes removed), or a failure showing the log.
fn assert_log(log: &str, needles: &[&str]) -> String {
    let plain = strip_ansi(log);
    plain
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no log line with {needles:?} in:\n{plain}"))
}

/// Seconds from `requested` to the pod's "credentials reloaded: OLD → NEW" line: the moment it
/// started presenting the new certificate (the node's clock is the host's).
fn reload_delay(log: &str, old: &str, new: &str, requested: jiff::Timestamp) -> f64 {
    let line = assert_log(
        log,
        &["credentials reloaded", &format!("{old} \u{2192} {new}")],
    );
    let stamp: jiff::Timestamp = line
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp at the start of {line:?}"));
    let took = stamp.duration_since(requested).as_secs_f64();
    assert!(
        took >= 0.0,
        "reloaded before the renewal was requested? {line}"
    );
    took
}

// === impl E2e ===

struct E2e {
    client: Client,
    sync_frequency: Duration,
    /// For the commands this runs (`tlsid ca ...`, `helm upgrade`).
    kubeconfig: PathBuf,
    helm: PathBuf,
    /// The install's `ca.trustPropagationDelay`, as given to helm and as a duration.
    propagation_delay_value: String,
    propagation_delay: Duration,
}

impl E2e {
    async fn from_env() -> Self {
        let path = std::env::var_os("TLSID_E2E_KUBECONFIG").unwrap_or_else(|| {
            panic!(
                "TLSID_E2E_KUBECONFIG is not set: this test needs a node cluster with the chart \
                 installed; run it with hack/e2e.sh (part of make test)"
            )
        });
        let sync =
            std::env::var("TLSID_E2E_KUBELET_SYNC_FREQUENCY").unwrap_or_else(|_| "1m".into());
        let sync_frequency =
            tlsid::demo::parse_positive_duration(&sync).expect("TLSID_E2E_KUBELET_SYNC_FREQUENCY");
        let propagation_delay_value =
            std::env::var("TLSID_E2E_TRUST_PROPAGATION_DELAY").unwrap_or_else(|_| "5m".into());
        let propagation_delay = tlsid::demo::parse_duration(&propagation_delay_value)
            .expect("TLSID_E2E_TRUST_PROPAGATION_DELAY");
        let helm = std::env::var_os("TLSID_E2E_HELM").map_or_else(|| "helm".into(), PathBuf::from);
        let kubeconfig = Kubeconfig::read_from(&path).expect("read TLSID_E2E_KUBECONFIG");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Self {
            client: Client::try_from(config).expect("client"),
            sync_frequency,
            kubeconfig: path.into(),
            helm,
            propagation_delay_value,
            propagation_delay,
        }
    }

    /// How soon a changed Secret is in use by a demo pod: the kubelet refreshes a pod's Secret
    /// volume when it syncs the pod, every syncFrequency with up to 50% jitter; then the pod's own
    /// 1 s reload check, and our scrape.
    fn delivery_bound(&self) -> Duration {
        self.sync_frequency.mul_f64(1.5) + Duration::from_secs(15)
    }

    /// How long a requested rollover may take: the propagation delay twice (WaitForTrust, Drain in
    /// emergency mode), and 3 minutes for the rest (Secrets written and delivered, demo pods
    /// observed, leaves re-issued).
    fn rollover_limit(&self) -> Duration {
        2 * self.propagation_delay + Duration::from_secs(180)
    }

    /// Server-side apply every document of a repository file, as `kubectl apply --server-side`.
    async fn apply_file(&self, file: &str) {
        let text =
            std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{file}: {e}"));
            let types = obj
                .types
                .clone()
                .unwrap_or_else(|| panic!("{file}: a document without apiVersion/kind"));
            let gvk = GroupVersionKind::try_from(&types).expect("apiVersion");
            let (resource, caps) = pinned_kind(&self.client, &gvk).await.expect("discovery");
            let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
                (kube::discovery::Scope::Namespaced, Some(ns)) => {
                    Api::namespaced_with(self.client.clone(), &ns, &resource)
                }
                (kube::discovery::Scope::Namespaced, None) => {
                    Api::default_namespaced_with(self.client.clone(), &resource)
                }
                (kube::discovery::Scope::Cluster, _) => {
                    Api::all_with(self.client.clone(), &resource)
                }
            };
            api.patch(
                &obj.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {} {} from {file}: {e}", types.kind, obj.name_any()));
        }
    }

    /// Run the tlsid CLI (the binary of this build) on the install; its standard output.
    async fn tlsid(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tlsid"));
        cmd.args(args)
            .args(["--install-namespace", SYSTEM_NS])
            .env("KUBECONFIG", &self.kubeconfig);
        run(cmd, format!("tlsid {}", args.join(" "))).await
    }

    /// `helm upgrade` of the install with the values it has and `sets`, waiting for the rollout.
    async fn helm_upgrade(&self, sets: &[String]) {
        let mut cmd = std::process::Command::new(&self.helm);
        cmd.args(["upgrade", RELEASE])
            .arg(repo().join("charts/tlsid"))
            .args(["--namespace", SYSTEM_NS, "--reuse-values", "--wait"])
            .args(["--timeout", "120s"])
            .env("KUBECONFIG", &self.kubeconfig);
        for set in sets {
            cmd.args(["--set", set]);
        }
        run(cmd, format!("helm upgrade --set {}", sets.join(" --set "))).await;
    }

    /// Wait until the leader is a controller pod (not terminating) with these environment
    /// values: after a `helm upgrade`, the previous leader may lead a little longer.
    async fn wait_leader_with(&self, env: &[(&str, &str)]) -> String {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        self.eventually(&format!("a leader with {env:?}"), TIMEOUT, || async {
            let holder = leases
                .get("tlsid-leader")
                .await
                .ok()?
                .spec?
                .holder_identity?;
            let pod = pods.get_opt(&holder).await.ok()??;
            if pod.metadata.deletion_timestamp.is_some() {
                return None;
            }
            let have: BTreeMap<String, String> = pod
                .spec?
                .containers
                .into_iter()
                .flat_map(|c| c.env.unwrap_or_default())
                .filter_map(|e| Some((e.name, e.value?)))
                .collect();
            env.iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
                .then_some(holder)
        })
        .await
    }

    fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn ca_secret(&self) -> Secret {
        self.secrets(SYSTEM_NS)
            .get(CA_SECRET)
            .await
            .expect("the CA Secret")
    }

    /// Follow the CA Secret on a watch until the rollover requested after `before` was seen is
    /// over: a new request handled, no phase recorded, nothing staged (only `tls.crt`, `tls.key`,
    /// `ca.crt`). The Secret then, and when each phase was first seen.
    async fn follow_rollover(&self, before: &Secret, limit: Duration) -> (Secret, Phases) {
        let handled_before = before.annotations().get(ROTATE_HANDLED_ANNOTATION).cloned();
        let config = watcher::Config::default().fields(&format!("metadata.name={CA_SECRET}"));
        let started = Instant::now();
        let mut phases = Phases::default();
        let mut last = None;
        let follow = async {
            let mut secrets = pin!(
                watcher(self.secrets(SYSTEM_NS), config)
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(event) = secrets.next().await {
                let Ok(secret) = event else { continue };
                let a = secret.annotations();
                let phase = a.get(PHASE_ANNOTATION).map_or("Stable", String::as_str);
                if phase == "WaitForTrust" && !phases.seen("WaitForTrust") {
                    self.assert_published(&secret).await;
                }
                phases.saw(phase, started.elapsed());
                let keys: BTreeSet<&str> = secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, _)| k.as_str())
                    .collect();
                let done = a.get(ROTATE_HANDLED_ANNOTATION).is_some()
                    && a.get(ROTATE_HANDLED_ANNOTATION) != handled_before.as_ref()
                    && !a.contains_key(PHASE_ANNOTATION)
                    && keys == BTreeSet::from(["tls.crt", "tls.key", "ca.crt"]);
                if done {
                    return Some(secret);
                }
                last = Some(a.clone());
            }
            None
        };
        let outcome = tokio::time::timeout(limit, follow).await;
        match outcome {
            Ok(Some(secret)) => (secret, phases),
            _ => panic!(
                "the CA rollover did not complete within {limit:?} (phases seen: {phases}); \
                 the CA Secret's annotations: {last:#?}"
            ),
        }
    }

    /// Publish is over only once every identity Secret holds the CA's bundle (with the next
    /// root): read back from the apiserver once WaitForTrust is recorded, so a Secret written
    /// after the phase moved on is caught.
    async fn assert_published(&self, ca: &Secret) {
        let want = bundle(ca);
        let secrets: Api<Secret> = Api::all(self.client.clone());
        let list = secrets
            .list(&ListParams::default().labels(IDENTITY_LABEL))
            .await
            .expect("list identity Secrets");
        assert!(!list.items.is_empty(), "no identity Secret");
        for secret in list {
            assert_eq!(
                bundle(&secret),
                want,
                "identity Secret {}/{} without the CA's bundle when WaitForTrust began",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            );
        }
    }

    /// Set (or remove) the demo trust lag of an identity; the controller re-rolls its demo.
    async fn set_demo_trust_lag(&self, name: &str, lag: Option<&str>) {
        let patch =
            serde_json::json!({"metadata": {"annotations": {DEMO_TRUST_LAG_ANNOTATION: lag}}});
        self.identities()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("annotate {name}: {e}"));
    }

    fn identities(&self) -> Api<TlsIdentity> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Wait (on a watch) for the identity to be Ready with a serial `accept` takes.
    async fn wait_identity(
        &self,
        name: &str,
        what: &str,
        accept: impl Fn(&str) -> bool,
    ) -> TlsIdentity {
        let cond = |obj: Option<&TlsIdentity>| {
            obj.is_some_and(|id| {
                id.condition("Ready").is_some_and(|c| c.status == "True") && {
                    let s = serial(id);
                    !s.is_empty() && accept(&s)
                }
            })
        };
        let found = tokio::time::timeout(TIMEOUT, await_condition(self.identities(), name, cond))
            .await
            .unwrap_or_else(|_| panic!("TlsIdentity {NS}/{name}: no {what} within {TIMEOUT:?}"))
            .expect("watch TlsIdentity");
        found.expect("identity exists")
    }

    /// [`Self::wait_identity`] with a longer bound (a renewal that follows the clock).
    async fn wait_identity_for(
        &self,
        name: &str,
        what: &str,
        extra: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> TlsIdentity {
        let cond = |obj: Option<&TlsIdentity>| {
            obj.is_some_and(|id| {
                id.condition("Ready").is_some_and(|c| c.status == "True") && {
                    let s = serial(id);
                    !s.is_empty() && accept(&s)
                }
            })
        };
        let found = tokio::time::timeout(
            TIMEOUT + extra,
            await_condition(self.identities(), name, cond),
        )
        .await
        .unwrap_or_else(|_| panic!("TlsIdentity {NS}/{name}: no {what}"))
        .expect("watch TlsIdentity");
        found.expect("identity exists")
    }

    async fn request_renewal(&self, name: &str, value: &str) {
        let patch = serde_json::json!({"metadata": {"annotations": {RENEW_ANNOTATION: value}}});
        self.identities()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("annotate {name}: {e}"));
    }

    async fn pod(&self, name: &str) -> Pod {
        self.pods()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get pod {name}: {e}"))
    }

    /// The one Ready, not terminating pod of a demo Deployment.
    async fn ready_pod(&self, component: &str, instance: &str) -> Pod {
        let selector = format!(
            "app.kubernetes.io/component={component},app.kubernetes.io/instance={instance}"
        );
        self.one_pod(&selector, true).await
    }

    /// The one running pod with this component label (the impostor never becomes Ready).
    async fn running_pod(&self, component: &str) -> Pod {
        self.one_pod(&format!("app.kubernetes.io/component={component}"), false)
            .await
    }

    async fn one_pod(&self, selector: &str, ready: bool) -> Pod {
        self.eventually(
            &format!(
                "one {} pod with {selector}",
                if ready { "Ready" } else { "running" }
            ),
            TIMEOUT,
            || self.find_one_pod(selector, ready),
        )
        .await
    }

    /// The demo Deployment's one Ready pod, once it is another than `old` (a re-rolled demo).
    async fn replaced_pod(&self, component: &str, instance: &str, old: &Pod) -> Pod {
        let selector = format!(
            "app.kubernetes.io/component={component},app.kubernetes.io/instance={instance}"
        );
        self.eventually(
            &format!("a Ready pod of {instance} replacing {}", old.name_any()),
            TIMEOUT,
            || async {
                let pod = self.find_one_pod(&selector, true).await?;
                (pod.uid() != old.uid()).then_some(pod)
            },
        )
        .await
    }

    /// The one live pod with `selector`, if there is exactly one and it is Ready (`ready`) or has
    /// every container running.
    async fn find_one_pod(&self, selector: &str, ready: bool) -> Option<Pod> {
        let lp = ListParams::default().labels(selector);
        let list = self.pods().list(&lp).await.ok()?;
        let live: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let [pod] = <[Pod; 1]>::try_from(live).ok()?;
        let status = pod.status.as_ref()?;
        let ok = if ready {
            conditions::is_pod_running().matches_object(Some(&pod))
                && status
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        } else {
            status
                .container_statuses
                .as_ref()?
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        };
        ok.then_some(pod)
    }

    async fn log(&self, pod: &Pod) -> String {
        self.pods()
            .logs(&pod.name_any(), &LogParams::default())
            .await
            .unwrap_or_else(|e| panic!("logs of {}: {e}", pod.name_any()))
    }

    /// The pod's `/metrics`, through the apiserver's pod proxy (the image has no shell or curl).
    async fn scrape(&self, pod: &Pod) -> Option<Metrics> {
        let path = format!(
            "/api/v1/namespaces/{NS}/pods/{}:{METRICS_PORT}/proxy",
            pod.name_any()
        );
        let request = kube::core::Request::new(path)
            .get("metrics", &Default::default())
            .ok()?;
        let text = self.client.request_text(request).await.ok()?;
        Some(Metrics::parse(&text))
    }

    /// Force-delete the controller pod that holds the leader Lease (no graceful release: the
    /// standby must wait out the Lease). Returns its name.
    async fn kill_leader(&self) -> String {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), SYSTEM_NS);
        let holder = leases
            .get("tlsid-leader")
            .await
            .expect("the leader Lease")
            .spec
            .and_then(|s| s.holder_identity)
            .expect("a leader holds the Lease");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        pods.delete(&holder, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("delete leader pod {holder}: {e}"));
        holder
    }

    async fn delete_deployment(&self, name: &str) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        api.delete(name, &DeleteParams::foreground())
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
        let deleted = await_condition(api, name, conditions::is_deleted(""));
        tokio::time::timeout(TIMEOUT, deleted)
            .await
            .unwrap_or_else(|_| panic!("Deployment {name} not gone within {TIMEOUT:?}"))
            .expect("watch Deployment");
    }

    /// Poll `check` (every 250 ms) until it yields a value; fail after `timeout`. For state that
    /// has no watch, such as a pod's metrics.
    async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
        }
    }
}

// === metrics ===

/// One scrape of a demo pod's `/metrics`.
#[derive(Debug, Default)]
struct Metrics {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// The Prometheus/OpenMetrics text format, as far as the demo writes it.
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Self { samples }
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .fold(0.0, |total, (_, _, v)| total + v)
    }

    fn handshakes(&self, role: &str, result: &str) -> f64 {
        self.sum(
            "tlsid_demo_handshakes_total",
            &[("role", role), ("result", result)],
        )
    }

    /// HTTP requests after the handshake, by the server's decision (`allowed`, `refused`, `error`).
    fn requests(&self, role: &str, result: &str) -> f64 {
        self.sum(
            "tlsid_demo_requests_total",
            &[("role", role), ("result", result)],
        )
    }

    /// Client attempts that never reached a handshake (server not listening yet, or gone).
    fn unreachable(&self) -> f64 {
        self.sum("tlsid_demo_connect_failures_total", &[])
    }

    fn info_serial(&self, name: &str) -> Option<String> {
        self.samples
            .iter()
            .find(|(n, _, v)| n == name && *v == 1.0)
            .and_then(|(_, l, _)| l.get("serial").cloned())
    }

    fn own_serial(&self) -> Option<String> {
        self.info_serial("tlsid_demo_certificate_serial_info")
    }

    fn peer_serial(&self) -> Option<String> {
        self.info_serial("tlsid_demo_peer_certificate_serial_info")
    }

    /// Fingerprints of the roots the pod verifies its peers with now.
    fn trusted_roots(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|(n, _, v)| n == "tlsid_demo_trusted_root" && *v == 1.0)
            .filter_map(|(_, l, _)| l.get("fingerprint").cloned())
            .collect()
    }
}

/// `a="x",b="y"` (values may contain commas; quotes and backslashes are escaped).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// Counters of the server and client pods at one moment.
struct Window {
    at: Instant,
    server: Metrics,
    client: Metrics,
}

#[derive(Debug)]
struct Delta {
    seconds: f64,
    server_ok: f64,
    server_failed: f64,
    client_ok: f64,
    client_failed: f64,
    client_unreachable: f64,
}

impl Delta {
    fn client_attempted(&self) -> f64 {
        self.client_ok + self.client_failed + self.client_unreachable
    }
}

impl Window {
    async fn scrape(e2e: &E2e, server: &Pod, client: &Pod) -> Self {
        let server = e2e.scrape(server).await.expect("scrape the server pod");
        let client = e2e.scrape(client).await.expect("scrape the client pod");
        Self {
            at: Instant::now(),
            server,
            client,
        }
    }

    fn client_attempted(&self) -> f64 {
        self.client.handshakes("client", "success")
            + self.client.handshakes("client", "failure")
            + self.client.unreachable()
    }

    fn since(&self, before: &Window) -> Delta {
        let d = |a: &Metrics, b: &Metrics, f: &dyn Fn(&Metrics) -> f64| f(a) - f(b);
        Delta {
            seconds: self.at.duration_since(before.at).as_secs_f64(),
            server_ok: d(&self.server, &before.server, &|m| {
                m.handshakes("server", "success")
            }),
            server_failed: d(&self.server, &before.server, &|m| {
                m.handshakes("server", "failure")
            }),
            client_ok: d(&self.client, &before.client, &|m| {
                m.handshakes("client", "success")
            }),
            client_failed: d(&self.client, &before.client, &|m| {
                m.handshakes("client", "failure")
            }),
            client_unreachable: d(&self.client, &before.client, &Metrics::unreachable),
        }
    }
}

#[test]
fn metrics_parse() {
    let m = Metrics::parse(
        "# HELP x y\ntlsid_demo_handshakes_total{role=\"server\",result=\"success\"} 12\n\
         tlsid_demo_certificate_serial_info{serial=\"ab01\",identity=\"spiffe://a,b\"} 1\n\
         tlsid_demo_connect_failures_total 2\n",
    );
    assert_eq!(m.handshakes("server", "success"), 12.0);
    assert_eq!(m.handshakes("server", "failure"), 0.0);
    assert_eq!(m.own_serial().as_deref(), Some("ab01"));
    assert_eq!(m.unreachable(), 2.0);
    let roots = Metrics::parse(
        "tlsid_demo_trusted_root{role=\"client\",fingerprint=\"ab\"} 1\n\
         tlsid_demo_trusted_root{role=\"client\",fingerprint=\"cd\"} 0\n",
    );
    assert_eq!(roots.trusted_roots(), BTreeSet::from(["ab".to_string()]));
    assert_eq!(strip_ansi("\u{1b}[2mx\u{1b}[0m=1"), "x=1");
}
