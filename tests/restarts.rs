//! Restart orchestration against the real control plane: workloads annotated
//! `tlsid.dev/reload: restart` are restarted exactly once per rotation of an identity Secret they
//! mount (as a volume, a projected volume, `env` or `envFrom`), never when nothing changed, at the
//! pace of the restart budget, and a controller killed between the Secret write and the restart
//! neither skips nor doubles it. `subPath` mounts are warned about; `status.consumers` lists every
//! consumer.
//!
//! The test control plane has no kube-controller-manager: nothing rolls pods. A restart is a
//! change of the pod template, which the apiserver counts in `metadata.generation` (each spec
//! change + 1; nothing but tlsid changes these specs here), and the test plays the workload
//! controllers by writing a finished rollout to `status`.

mod support;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use std::time::Duration;
use support::*;
use tlsid::api::{Consumer, TlsIdentity};

const RECORD: &str = "tlsid.dev/restarted-for";

fn pod_spec(how: &str, secret: &str) -> serde_json::Value {
    let mut container = json!({"name": "app", "image": "example.com/app:1"});
    let mut volumes = json!([]);
    match how {
        "volume" => {
            volumes = json!([{"name": "tls", "secret": {"secretName": secret}}]);
            container["volumeMounts"] = json!([{"name": "tls", "mountPath": "/tls"}]);
        }
        "projected" => {
            volumes =
                json!([{"name": "tls", "projected": {"sources": [{"secret": {"name": secret}}]}}]);
            container["volumeMounts"] = json!([{"name": "tls", "mountPath": "/tls"}]);
        }
        "subPath" => {
            volumes = json!([{"name": "tls", "secret": {"secretName": secret}}]);
            container["volumeMounts"] =
                json!([{"name": "tls", "mountPath": "/tls/tls.crt", "subPath": "tls.crt"}]);
        }
        "env" => {
            container["env"] = json!([{"name": "CERT", "valueFrom": {"secretKeyRef": {"name": secret, "key": "tls.crt"}}}]);
        }
        "envFrom" => container["envFrom"] = json!([{"secretRef": {"name": secret}}]),
        other => panic!("{other}"),
    }
    json!({"volumes": volumes, "containers": [container]})
}

fn meta(name: &str, opted_in: bool) -> serde_json::Value {
    if opted_in {
        json!({"name": name, "annotations": {"tlsid.dev/reload": "restart"}})
    } else {
        json!({"name": name})
    }
}

async fn create_workload(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    opted_in: bool,
    how: &str,
    secret: &str,
) {
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": pod_spec(how, secret)});
    let selector = json!({"matchLabels": {"app": name}});
    let pp = PostParams::default();
    match kind {
        "Deployment" => {
            let d: Deployment = serde_json::from_value(json!({"metadata": meta(name, opted_in),
                "spec": {"replicas": 0, "selector": selector, "template": template}}))
            .unwrap();
            Api::<Deployment>::namespaced(client.clone(), ns)
                .create(&pp, &d)
                .await
                .expect("create Deployment");
        }
        "StatefulSet" => {
            let s: StatefulSet = serde_json::from_value(json!({"metadata": meta(name, opted_in),
                "spec": {"replicas": 0, "serviceName": name, "selector": selector, "template": template}}))
            .unwrap();
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .create(&pp, &s)
                .await
                .expect("create StatefulSet");
        }
        "DaemonSet" => {
            let d: DaemonSet = serde_json::from_value(json!({"metadata": meta(name, opted_in),
                "spec": {"selector": selector, "template": template}}))
            .unwrap();
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .create(&pp, &d)
                .await
                .expect("create DaemonSet");
        }
        other => panic!("{other}"),
    }
}

/// The workload's `metadata.generation` (1 + the template changes since it was created) and its
/// pod template's annotations.
async fn generation(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> (i64, std::collections::BTreeMap<String, String>) {
    let (meta, template) = match kind {
        "Deployment" => {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap();
            (d.metadata, d.spec.unwrap().template)
        }
        "StatefulSet" => {
            let d = Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap();
            (d.metadata, d.spec.unwrap().template)
        }
        _ => {
            let d = Api::<DaemonSet>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .unwrap();
            (d.metadata, d.spec.unwrap().template)
        }
    };
    (
        meta.generation.unwrap_or(0),
        template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default(),
    )
}

async fn wait_generation(client: &Client, ns: &str, kind: &str, name: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (g, _) = generation(client, ns, kind, name).await;
        assert!(
            g <= want,
            "{kind} {name}: generation {g}, more restarts than the {} expected",
            want - 1
        );
        if g == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind} {name}: generation {g}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Play the workload controller: the rollout of the current template has finished (0 replicas).
async fn finish_rollout(client: &Client, ns: &str, kind: &str, name: &str) {
    let (g, _) = generation(client, ns, kind, name).await;
    let pp = PatchParams::default();
    let status = match kind {
        "DaemonSet" => {
            json!({"status": {"observedGeneration": g, "desiredNumberScheduled": 0, "currentNumberScheduled": 0,
            "numberMisscheduled": 0, "numberReady": 0, "updatedNumberScheduled": 0, "numberAvailable": 0}})
        }
        _ => {
            json!({"status": {"observedGeneration": g, "replicas": 0, "updatedReplicas": 0, "readyReplicas": 0, "availableReplicas": 0}})
        }
    };
    let patch = Patch::Merge(status);
    match kind {
        "Deployment" => drop(
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch_status(name, &pp, &patch)
                .await
                .unwrap(),
        ),
        "StatefulSet" => drop(
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch_status(name, &pp, &patch)
                .await
                .unwrap(),
        ),
        _ => drop(
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .patch_status(name, &pp, &patch)
                .await
                .unwrap(),
        ),
    }
}

fn consumers(o: Option<&TlsIdentity>) -> Vec<Consumer> {
    o.and_then(|o| o.status.as_ref())
        .map(|s| s.consumers.clone())
        .unwrap_or_default()
}

async fn renew(ids: &Api<TlsIdentity>, name: &str, token: &str) -> String {
    let before = serial(&ids.get(name).await.unwrap());
    ids.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"tlsid.dev/renew": token}}})),
    )
    .await
    .expect("annotate");
    let after = wait_identity(ids, name, "renewed", |o| {
        o.is_some_and(|o| serial(o) != before && ready(Some(o)))
    })
    .await;
    serial(&after)
}

async fn web_identity(env: &Env, name: &str) -> TlsIdentity {
    create(
        env,
        &identity(
            name,
            json!({"dnsNames": [format!("{name}.{}.svc", env.ns)]}),
        ),
    )
    .await
}

const OPTED_IN: [(&str, &str, &str); 3] = [
    ("Deployment", "dep", "volume"),
    ("StatefulSet", "sts", "envFrom"),
    ("DaemonSet", "ds", "projected"),
];

#[tokio::test]
async fn opted_in_workloads_restart_exactly_once_per_rotation() {
    let env = setup("restarts-once").await;
    let client = cluster().await.client().await;
    let ns = env.ns.clone();
    web_identity(&env, "web").await;
    for (kind, name, how) in OPTED_IN {
        create_workload(&client, &ns, kind, name, true, how, "web-tls").await;
    }
    create_workload(&client, &ns, "Deployment", "plain", false, "env", "web-tls").await;
    create_workload(
        &client,
        &ns,
        "Deployment",
        "unrelated",
        true,
        "volume",
        "not-an-identity",
    )
    .await;

    // Opting in restarts once: tlsid cannot know what the pods were started for.
    for (kind, name, _) in OPTED_IN {
        wait_generation(&client, &ns, kind, name, 2).await;
        let (_, a) = generation(&client, &ns, kind, name).await;
        assert!(a[RECORD].starts_with("web-tls="), "{a:?}");
        assert!(
            a["tlsid.dev/restart-reason"].starts_with("opted in"),
            "{a:?}"
        );
        finish_rollout(&client, &ns, kind, name).await;
    }
    // status.consumers: every consumer, the opted-in ones caught up once their rollout finished.
    let id = wait_identity(&env.ids, "web", "consumers caught up", |o| {
        let c = consumers(o);
        c.len() == 4 && c.iter().filter(|c| c.caught_up).count() == 3
    })
    .await;
    let c = consumers(Some(&id));
    assert_eq!(
        c.iter()
            .map(|c| (c.kind.as_str(), c.name.as_str(), c.reload.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("DaemonSet", "ds", "restart"),
            ("Deployment", "dep", "restart"),
            ("StatefulSet", "sts", "restart"),
            ("Deployment", "plain", "none")
        ]
    );
    assert!(c[0].last_restart.is_some() && c[3].last_restart.is_none());

    // Nothing changes: no restart, whatever else happens to the workloads (a metadata change
    // wakes every pass) — looked at over several passes (2 s each).
    for (kind, name, _) in OPTED_IN {
        finish_rollout(&client, &ns, kind, name).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (kind, name, _) in OPTED_IN {
        assert_eq!(
            generation(&client, &ns, kind, name).await.0,
            2,
            "{kind} restarted with nothing changed"
        );
    }
    assert_eq!(
        env.controller
            .metric("tlsid_writes_total{kind=\"restart\"}")
            .await,
        3.0
    );

    // A rotation: one restart each; the one not opted in, and the one mounting a foreign
    // Secret, none.
    let serial = renew(&env.ids, "web", "r1").await;
    for (kind, name, _) in OPTED_IN {
        wait_generation(&client, &ns, kind, name, 3).await;
        let (_, a) = generation(&client, &ns, kind, name).await;
        assert!(
            a[RECORD].starts_with(&format!("web-tls={serial}.")),
            "{a:?}"
        );
        assert!(
            a["tlsid.dev/restart-reason"].contains("rotated (certificate"),
            "{a:?}"
        );
    }
    // Not caught up until the rollout has finished.
    wait_identity(&env.ids, "web", "consumers rolling", |o| {
        consumers(o).iter().all(|c| !c.caught_up)
    })
    .await;
    for (kind, name, _) in OPTED_IN {
        finish_rollout(&client, &ns, kind, name).await;
    }
    wait_identity(&env.ids, "web", "consumers caught up again", |o| {
        consumers(o).iter().filter(|c| c.caught_up).count() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (kind, name, _) in OPTED_IN {
        assert_eq!(
            generation(&client, &ns, kind, name).await.0,
            3,
            "{kind} restarted twice for one rotation"
        );
    }
    assert_eq!(generation(&client, &ns, "Deployment", "plain").await.0, 1);
    assert_eq!(
        generation(&client, &ns, "Deployment", "unrelated").await.0,
        1
    );
    // A Restarted Event on each (the recorder folds a workload's later ones into a series; the
    // exact count is the generation above).
    events_at_least(&client, &ns, "Restarted", 3).await;
}

#[tokio::test]
async fn sub_path_mounts_are_warned_about_on_the_workload_and_the_identity() {
    let env = setup("restarts-subpath").await;
    let client = cluster().await.client().await;
    let ns = env.ns.clone();
    web_identity(&env, "web").await;
    create_workload(
        &client,
        &ns,
        "Deployment",
        "sub",
        false,
        "subPath",
        "web-tls",
    )
    .await;
    let id = wait_identity(&env.ids, "web", "consumer with a subPath message", |o| {
        consumers(o)
            .first()
            .is_some_and(|c| c.message.as_deref().is_some_and(|m| m.contains("subPath")))
    })
    .await;
    assert_eq!(consumers(Some(&id))[0].reload, "none");
    events_at_least(&client, &ns, "SubPathMount", 2).await;
    let kinds: Vec<String> =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SubPathMount"))
            .filter_map(|e| e.involved_object.kind)
            .collect();
    assert!(
        kinds.contains(&"Deployment".to_string()) && kinds.contains(&"TlsIdentity".to_string()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn restarts_are_paced_by_the_restart_budget() {
    // One restart at once, then one every 2 s.
    let env = setup_with(
        "restarts-rate",
        &["--restart-rate", "0.5", "--restart-burst", "1"],
    )
    .await;
    let client = cluster().await.client().await;
    let ns = env.ns.clone();
    web_identity(&env, "web").await;
    for i in 0..3 {
        create_workload(
            &client,
            &ns,
            "Deployment",
            &format!("d{i}"),
            true,
            "volume",
            "web-tls",
        )
        .await;
    }
    let mut times = Vec::new();
    for i in 0..3 {
        wait_generation(&client, &ns, "Deployment", &format!("d{i}"), 2).await;
        let (_, a) = generation(&client, &ns, "Deployment", &format!("d{i}")).await;
        times.push(
            a["tlsid.dev/restartedAt"]
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_second(),
        );
    }
    times.sort();
    // 2 s apart each (whole seconds: at least 3 s from the first to the last).
    assert!(times[2] - times[0] >= 3, "restarts not paced: {times:?}");
}

#[tokio::test]
async fn a_controller_killed_between_the_secret_write_and_the_restart_neither_skips_nor_doubles_it()
{
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "restarts-crash").await;
    let args = |restarts: &'static str| -> Vec<String> {
        [
            "--watch-namespace",
            &ns,
            "--namespace",
            &ns,
            "--restarts",
            restarts,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let start = |log: String, a: Vec<String>| async move {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        Controller::start_with(cluster, &log, &a).await
    };
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    let a = start(format!("{ns}-a"), args("true")).await;
    ids.create(
        &PostParams::default(),
        &identity("web", json!({"dnsNames": [format!("web.{ns}.svc")]})),
    )
    .await
    .unwrap();
    wait_identity(&ids, "web", "Ready", ready).await;
    create_workload(&client, &ns, "Deployment", "dep", true, "volume", "web-tls").await;
    wait_generation(&client, &ns, "Deployment", "dep", 2).await;
    let mut a = a;
    a.terminate();

    // The Secret is rotated by a controller that then dies before restarting anything (here:
    // one that does not restart at all, killed once the Secret is written).
    let mut b = start(format!("{ns}-b"), args("false")).await;
    let serial = renew(&ids, "web", "crash").await;
    b.kill();
    assert_eq!(generation(&client, &ns, "Deployment", "dep").await.0, 2);

    // The next controller restarts it exactly once...
    let mut c = start(format!("{ns}-c"), args("true")).await;
    wait_generation(&client, &ns, "Deployment", "dep", 3).await;
    let (_, a) = generation(&client, &ns, "Deployment", "dep").await;
    assert!(
        a[RECORD].starts_with(&format!("web-tls={serial}.")),
        "{a:?}"
    );
    // ...and one killed right after the restart does not lead to a second.
    c.kill();
    let d = start(format!("{ns}-d"), args("true")).await;
    d.wait_leader(true).await;
    // Several passes of the new leader (one every 2 s once its caches listed).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        generation(&client, &ns, "Deployment", "dep").await.0,
        3,
        "restarted twice for one rotation"
    );
    assert_eq!(d.metric("tlsid_writes_total{kind=\"restart\"}").await, 0.0);

    // Control: a restart that did not record what it was for (the record removed) is done
    // again; this is what the generation count above would have caught.
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch(
            "dep",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"metadata": {"annotations": {RECORD: null}}}}}),
            ),
        )
        .await
        .expect("remove the record");
    wait_generation(&client, &ns, "Deployment", "dep", 5).await;
}

fn phase(ca: &k8s_openapi::api::core::v1::Secret) -> String {
    ca.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(tlsid::plan::rollover::PHASE_ANNOTATION).cloned())
        .unwrap_or_default()
}

/// An opted-in Deployment, then `tlsid ca rotate`; returns the rollover's phase 8 s after the
/// Secret got the next root (the workload's rollout left unfinished), and the environment.
async fn rollover_with_an_unfinished_restart(test: &str, restarts: &str) -> (String, Env) {
    let cluster = cluster().await;
    let env = setup_with(
        test,
        &["--trust-propagation-delay", "1s", "--restarts", restarts],
    )
    .await;
    let client = cluster.client().await;
    let ns = env.ns.clone();
    web_identity(&env, "web").await;
    let before = env.secrets.get("web-tls").await.unwrap();
    create_workload(&client, &ns, "Deployment", "dep", true, "volume", "web-tls").await;
    if restarts == "true" {
        wait_generation(&client, &ns, "Deployment", "dep", 2).await;
    }
    finish_rollout(&client, &ns, "Deployment", "dep").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlsid"))
        .args(["ca", "rotate", "--install-namespace", &ns])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("tlsid ca rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = |s: &k8s_openapi::api::core::v1::Secret| data(s, "ca.crt").to_vec();
    let old = bundle(&before);
    wait_secret(&env.secrets, "web-tls", "the next root", |s| {
        s.is_some_and(|s| bundle(s) != old)
    })
    .await;
    // Well past the 1 s delay: several 2 s rounds of the rollover driver.
    tokio::time::sleep(Duration::from_secs(8)).await;
    (phase(&env.secrets.get("tlsid-ca").await.unwrap()), env)
}

#[tokio::test]
async fn a_ca_rollover_waits_for_opted_in_workloads_to_restart_onto_the_next_root() {
    let client = cluster().await.client().await;
    let (phase_now, env) = rollover_with_an_unfinished_restart("restarts-rollover", "true").await;
    let ns = env.ns.clone();
    // The next root reached the Secret: one restart for it, whose rollout has not finished.
    wait_generation(&client, &ns, "Deployment", "dep", 3).await;
    let (_, a) = generation(&client, &ns, "Deployment", "dep").await;
    assert!(
        a["tlsid.dev/restart-reason"].contains("trust bundle changed"),
        "{a:?}"
    );
    assert_eq!(
        phase_now, "WaitForTrust",
        "switched signers before the workload restarted"
    );
    // Once it has, the rollover goes on.
    finish_rollout(&client, &ns, "Deployment", "dep").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let p = phase(&env.secrets.get("tlsid-ca").await.unwrap());
        if p != "WaitForTrust" && p != "Publish" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Control: without restarts (nothing restarted, nothing waited for) the same 8 s see the
    // rollover past WaitForTrust, so the check above can see a rollover that did not wait.
    let (phase_off, _off) =
        rollover_with_an_unfinished_restart("restarts-rollover-off", "false").await;
    assert_ne!(
        phase_off, "WaitForTrust",
        "the control should not have waited"
    );
    assert_ne!(phase_off, "Publish");
}
