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
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;
use tlsid::api::TlsIdentity;

const PROFILE: &str = "faults";
const N: usize = 10;
const RECOVERY: Duration = Duration::from_secs(60);

fn row(fault: &str, outcome: &str) {
    println!("FAULT | {fault} | {outcome}");
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
/// after 5 s (its graceful shutdown waits for long requests). Keep it down for `down`, then start
/// it again with hack/cluster.sh (which waits until it is ready).
fn restart_apiserver(down: Duration, during: impl FnOnce()) {
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
    std::thread::sleep(down);
    during();
    cluster_sh(PROFILE, &["up"]);
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
    let cluster = prepare(start_profile(PROFILE)).await;
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
    for i in 0..N {
        ids.create(
            &PostParams::default(),
            &identity(
                &format!("cp{i}"),
                json!({"dnsNames": [format!("cp{i}.{ns}.svc")]}),
            ),
        )
        .await
        .unwrap();
    }
    for i in 0..N {
        wait_identity(&ids, &format!("cp{i}"), "Ready", ready).await;
    }
    let base = c.metric("tlsid_issuances_total").await;

    // === 1. apiserver restarted (down 5 s) ===
    let cpu_before = c.cpu_time();
    let mut cpu_down = Duration::ZERO;
    restart_apiserver(Duration::from_secs(5), || {
        cpu_down = c.cpu_time() - cpu_before
    });
    let back = Instant::now();
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
        "kube-apiserver stopped for 5 s, then started",
        &format!(
            "CPU while down {:.2} s; renewals after it converged in {:.1} s; 0 extra issuances",
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
    restart_apiserver(Duration::from_secs(1), || {});
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
    c.stop();
}
