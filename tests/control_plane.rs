//! Faults of the control plane itself, on a control plane of its own (profile `faults` of
//! hack/profiles.tsv) so that restarting the apiserver and pausing etcd disturb no other test:
//! the apiserver restarted, etcd frozen (SIGSTOP) for 20 s during issuance, and every watch
//! expired (etcd compacted, then the apiserver restarted: the controller's watches resume from a
//! compacted resourceVersion, get 410 Gone and relist). One controller lives through all of them:
//! it must converge each time without a restart, issue nothing because of a relist, and not spin
//! while the apiserver is away. Prints one FAULT row per fault.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;
use tlsid::api::TlsIdentity;

const PROFILE: &str = "faults";
/// API Priority and Fairness on (for the last scenario), as on real clusters, with small
/// server-wide limits so that a priority level of one share gets a concurrency limit of 1.
const APF: &[(&str, &str)] = &[
    ("TLSID_APISERVER_APF", "true"),
    ("TLSID_APISERVER_MAX_INFLIGHT", "20"),
    ("TLSID_APISERVER_MAX_MUTATING_INFLIGHT", "10"),
];
const N: usize = 10;
const RECOVERY: Duration = Duration::from_secs(60);

fn row(fault: &str, outcome: &str) {
    fault_row(fault, outcome);
}

fn pid_of(component: &str) -> u32 {
    let path = profile(PROFILE).dir.join(format!("pids/{component}.pid"));
    read(&path)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {}", path.display()))
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Whether `pid` has exited (gone, or a zombie).
fn exited(pid: u32) -> bool {
    read(std::path::Path::new(&format!("/proc/{pid}/stat")))
        .rsplit_once(')')
        .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Stop the apiserver: SIGTERM, as a control-plane upgrade does; SIGKILL if it is still draining
/// after 5 s (its graceful shutdown waits for long requests).
fn stop_apiserver() {
    let pid = pid_of("kube-apiserver");
    signal(pid, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !exited(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !exited(pid) {
        signal(pid, "-KILL");
        while !exited(pid) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Start it again with hack/cluster.sh (which waits until it is ready), with extra environment.
fn start_apiserver(env: &[(&str, &str)]) {
    cluster_sh_env(PROFILE, &["up"], env);
}

fn revision(o: Option<&TlsIdentity>) -> i64 {
    o.and_then(|o| o.status.as_ref()?.revision).unwrap_or(0)
}

/// Ask every identity for a renewal.
async fn request_renewals(ids: &Api<TlsIdentity>, token: &str) {
    for i in 0..N {
        ids.patch(
            &format!("cp{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tlsid.dev/renew": token}}})),
        )
        .await
        .expect("annotate");
    }
}

/// Wait until every identity has answered `token`, is Ready, and its status describes its
/// Secret. Returns the revisions.
async fn converged(ids: &Api<TlsIdentity>, secrets: &Api<Secret>, token: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..N {
        let name = format!("cp{i}");
        let o = wait_identity_for(ids, &name, "converged", RECOVERY, |o| {
            ready(o)
                && o.and_then(|o| o.status.as_ref()?.last_renew_request.clone())
                    .as_deref()
                    == Some(token)
        })
        .await;
        let s = secrets.get(&o.secret_name()).await.unwrap();
        assert_eq!(
            s.annotations().get("tlsid.dev/serial"),
            Some(&serial(&o)),
            "{name}: status and Secret agree"
        );
        out.push(revision(Some(&o)));
    }
    out
}

#[tokio::test]
async fn the_controller_rides_out_apiserver_restarts_etcd_pauses_and_expired_watches() {
    // A fresh plane each run (one left by an earlier run may have APF on).
    cluster_sh(PROFILE, &["down"]);
    let kubeconfig = cluster_sh(PROFILE, &["up"]);
    let cluster = prepare(kubeconfig.lines().last().expect("kubeconfig").trim().into()).await;
    let client = cluster.client().await;
    let ns = namespace(&client, "cp-faults").await;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut c = Controller::start_with(
        &cluster,
        &ns,
        &["--watch-namespace", &ns, "--namespace", &ns],
    )
    .await;
    c.wait_leader(true).await;
    create_ready(&ids, "cp", N, &format!("{ns}.svc")).await;
    let base = c.metric("tlsid_issuances_total").await;

    // === 1. apiserver restarted (down 5 s); meanwhile the CA Secret is deleted in etcd, which
    // no watch can report: the relist must notice it ===
    let ca_before = secrets.get("tlsid-ca").await.unwrap();
    let cpu_before = c.cpu_time();
    stop_apiserver();
    let outage = Instant::now();
    let key = format!("/registry/secrets/{ns}/tlsid-ca");
    let etcd_port = profile(PROFILE).etcd_port;
    etcd_post(
        etcd_port,
        "/v3/kv/deleterange",
        &json!({"key": b64(key.as_bytes())}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(outage.elapsed())).await;
    let cpu_down = c.cpu_time() - cpu_before;
    start_apiserver(&[]);
    let back = Instant::now();
    let restored = wait_secret(&secrets, "tlsid-ca", "restored after the watch gap", |s| {
        s.is_some_and(|s| s.uid() != ca_before.uid())
    })
    .await
    .unwrap();
    assert_eq!(
        data(&restored, "tls.key"),
        data(&ca_before, "tls.key"),
        "the same CA key"
    );
    request_renewals(&ids, "after-restart").await;
    let revs = converged(&ids, &secrets, "after-restart").await;
    let took = back.elapsed();
    assert_eq!(revs, vec![2; N], "each renewed once");
    assert_eq!(c.metric("tlsid_issuances_total").await, base + N as f64);
    assert!(
        cpu_down < Duration::from_secs(2),
        "the controller used {cpu_down:?} of CPU in 5 s without an apiserver"
    );
    assert!(c.alive());
    row(
        "kube-apiserver stopped for 5 s (the CA Secret deleted in etcd meanwhile), then started",
        &format!(
            "CPU while down {:.2} s; CA Secret restored after the relist; renewals converged in {:.1} s; 0 extra issuances",
            cpu_down.as_secs_f64(),
            took.as_secs_f64()
        ),
    );

    // === 2. etcd frozen for 20 s in the middle of issuance ===
    let issued = c.metric("tlsid_issuances_total").await;
    request_renewals(&ids, "etcd-paused").await;
    let etcd = pid_of("etcd");
    signal(etcd, "-STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal(etcd, "-CONT");
    let thawed = Instant::now();
    let revs = converged(&ids, &secrets, "etcd-paused").await;
    let took = thawed.elapsed();
    let extra = c.metric("tlsid_issuances_total").await - issued - N as f64;
    // A write that timed out may have landed: then its certificate is adopted, or (if the
    // request was refused) issued again once. Never more.
    assert!(
        revs.iter().all(|r| (3..=4).contains(r)),
        "revisions after the pause: {revs:?}"
    );
    assert!(extra <= N as f64, "{extra} extra issuances");
    assert!(c.alive());
    row(
        "etcd SIGSTOPped for 20 s during issuance",
        &format!(
            "converged {:.1} s after it resumed; {extra} issuances beyond one per request",
            took.as_secs_f64()
        ),
    );

    // === 3. every watch expired: etcd compacted, apiserver restarted (410 Gone → relist) ===
    let issued = c.metric("tlsid_issuances_total").await;
    let reconciled = c.metric("tlsid_reconcile_duration_seconds_count").await;
    let port = profile(PROFILE).etcd_port;
    let range = etcd_post(port, "/v3/kv/range", &json!({"key": "Lw==", "limit": 1})).await;
    let rev: i64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("etcd revision");
    etcd_post(
        port,
        "/v3/kv/compaction",
        &json!({"revision": rev.to_string(), "physical": true}),
    )
    .await;
    stop_apiserver();
    start_apiserver(&[]);
    let back = Instant::now();
    // The relist reconciles every identity again; none of them is issued.
    let deadline = tokio::time::Instant::now() + RECOVERY;
    while c.metric("tlsid_reconcile_duration_seconds_count").await < reconciled + N as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relist after the watches expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        c.metric("tlsid_issuances_total").await,
        issued,
        "a relist issued certificates"
    );
    request_renewals(&ids, "after-compaction").await;
    converged(&ids, &secrets, "after-compaction").await;
    assert!(c.alive());
    row(
        "etcd compacted, apiserver restarted: every watch resumes from a compacted version (410)",
        &format!(
            "relisted and converged in {:.1} s; 0 issuances from the relist",
            back.elapsed().as_secs_f64()
        ),
    );

    // === 4. 429s from API Priority and Fairness: the controller's ServiceAccount gets a
    // priority level of concurrency 1 that rejects rather than queues ===
    stop_apiserver();
    start_apiserver(APF);
    let limited = format!("tlsid-limited-{ns}");
    apply_dynamic(
        &client,
        "PriorityLevelConfiguration",
        json!({"metadata": {"name": limited}, "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}}}}),
    )
    .await;
    apply_dynamic(
        &client,
        "FlowSchema",
        json!({"metadata": {"name": limited}, "spec": {
            "matchingPrecedence": 100,
            "priorityLevelConfiguration": {"name": limited},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount":
                    {"name": CONTROLLER_SA, "namespace": CONTROLLER_SA_NS}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "namespaces": ["*"], "clusterScope": true}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}}),
    )
    .await;
    let rejected_before = rejected(&client, &limited).await;
    // Another client (a ServiceAccount of its own, in the default flows) reads steadily.
    let canary = Canary::start(&cluster, &client, &ns).await;
    let issued = c.metric("tlsid_issuances_total").await;
    let started = Instant::now();
    request_renewals(&ids, "rate-limited").await;
    let revs = converged(&ids, &secrets, "rate-limited").await;
    let took = started.elapsed();
    let (canary_ok, canary_failed) = canary.stop().await;
    let rejected = rejected(&client, &limited).await - rejected_before;
    assert!(
        rejected > 0.0,
        "no request of the controller was rejected: the fault was not injected"
    );
    assert_eq!(canary_failed, 0, "another client's requests were rejected");
    assert!(canary_ok > 0);
    assert!(
        c.metric("tlsid_issuances_total").await - issued <= 2.0 * N as f64,
        "429s caused a re-issue loop"
    );
    assert!(revs.iter().all(|r| *r >= 5), "{revs:?}");
    assert!(c.alive());
    row(
        "429s from API Priority and Fairness (the controller limited to concurrency 1, Reject)",
        &format!(
            "{rejected} requests rejected; renewals converged in {:.1} s; another client: {canary_ok} requests, 0 rejected",
            took.as_secs_f64()
        ),
    );
    c.stop();
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn apply_dynamic(client: &kube::Client, kind: &str, obj: serde_json::Value) {
    let gvk = kube::api::GroupVersionKind::gvk("flowcontrol.apiserver.k8s.io", "v1", kind);
    let ar = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut obj = obj;
    obj["apiVersion"] = "flowcontrol.apiserver.k8s.io/v1".into();
    obj["kind"] = kind.into();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(
        &name,
        &PatchParams::apply("tlsid-tests").force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

/// Requests of a priority level the apiserver rejected so far (its own metric).
async fn rejected(client: &kube::Client, level: &str) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("apiserver /metrics");
    let label = format!("priority_level=\"{level}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_rejected_requests_total{"))
        .filter(|l| l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Another user of the apiserver: a ServiceAccount that lists ConfigMaps in a loop.
struct Canary {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Canary {
    async fn start(cluster: &Cluster, admin: &kube::Client, ns: &str) -> Self {
        let kubeconfig = service_account_kubeconfig(
            admin,
            &cluster.kubeconfig,
            ns,
            "canary",
            "system:aggregate-to-view",
        )
        .await;
        let client = client_for(&kubeconfig).await;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, ns);
        // Its RoleBinding takes effect asynchronously: start counting once it is allowed in.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while let Err(e) = api.list(&Default::default()).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "canary never allowed in: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !*stopped.borrow_and_update() {
                match api.list(&Default::default()).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        if failed < 3 {
                            eprintln!("canary request failed: {e}");
                        }
                        failed += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        });
        Self { stop, task }
    }

    async fn stop(self) -> (u64, u64) {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}
