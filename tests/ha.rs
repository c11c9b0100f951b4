//! High availability against the real control plane: two replicas elect one writer with a Lease,
//! a SIGKILLed leader is replaced within 15 s, a SIGTERMed one hands over at once, every due
//! identity is issued exactly once summed over the replicas, and two installs in one cluster
//! each serve only their own identities.

mod support;

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;
use tlsid::api::TlsIdentity;

const N: usize = 8;

fn revision(o: Option<&TlsIdentity>) -> i64 {
    o.and_then(|o| o.status.as_ref()?.revision).unwrap_or(0)
}

/// Ask every identity for one renewal (a new annotation value) and wait until each is at
/// `revision`. Returns how long that took.
async fn renew_all(ids: &Api<TlsIdentity>, token: &str, revision_now: i64) -> Duration {
    let started = Instant::now();
    for i in 0..N {
        ids.patch(
            &format!("id{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tlsid.dev/renew": token}}})),
        )
        .await
        .expect("annotate");
    }
    for i in 0..N {
        wait_identity(ids, &format!("id{i}"), "renewed", |o| {
            revision(o) > revision_now && ready(o)
        })
        .await;
    }
    started.elapsed()
}

async fn revisions(ids: &Api<TlsIdentity>) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..N {
        out.push(revision(ids.get(&format!("id{i}")).await.ok().as_ref()));
    }
    out
}

#[tokio::test]
async fn one_writer_a_killed_leader_is_replaced_and_each_identity_is_issued_once() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "ha-failover").await;
    let args = ["--watch-namespace", &ns, "--namespace", &ns];
    let mut a = Controller::start_with(cluster, &format!("{ns}-a"), &args).await;
    a.wait_leader(true).await;
    let mut b = Controller::start_with(cluster, &format!("{ns}-b"), &args).await;
    assert_eq!(b.metric("tlsid_leader ").await, 0.0, "one leader at a time");

    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    create_ready(&ids, "id", N, &format!("{ns}.svc")).await;

    // Both replicas see every renewal request; only the leader acts on it.
    renew_all(&ids, "both-alive", 1).await;
    assert_eq!(revisions(&ids).await, vec![2; N]);
    assert_eq!(a.metric("tlsid_issuances_total").await, (2 * N) as f64);
    assert_eq!(b.metric("tlsid_issuances_total").await, 0.0);
    assert!(
        b.metric("tlsid_reconciliations_skipped_total{reason=\"Standby\"}")
            .await
            > 0.0
    );
    assert_eq!(
        b.metric("tlsid_writes_total").await,
        0.0,
        "a standby writes nothing"
    );

    // SIGKILL the leader (no Lease release), then make every identity due: the standby takes
    // over when the Lease expires and issues each exactly once.
    a.kill();
    let killed = Instant::now();
    let took = renew_all(&ids, "leader-killed", 2).await;
    b.wait_leader(true).await;
    let first_issue = took; // every identity renewed by then; the first one earlier
    fault_row(
        "leader SIGKILLed while identities are due (2 replicas)",
        &format!(
            "all {N} due identities issued by the standby {:.1} s after the kill (aim ≤ 15 s), each exactly once; 0 errors",
            first_issue.as_secs_f64()
        ),
    );
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "failover took {:?}",
        killed.elapsed()
    );
    assert!(
        took <= Duration::from_secs(15),
        "the standby took {took:?} to issue after the leader was killed (aim: 15 s)"
    );
    assert_eq!(
        revisions(&ids).await,
        vec![3; N],
        "issued exactly once each"
    );
    assert_eq!(b.metric("tlsid_issuances_total").await, N as f64);
    assert_eq!(b.metric("tlsid_reconcile_errors_total").await, 0.0);

    // SIGTERM hands the Lease over at once: a new standby leads well before the Lease could
    // have expired.
    let c = Controller::start_with(cluster, &format!("{ns}-c"), &args).await;
    assert_eq!(c.metric("tlsid_leader ").await, 0.0);
    let stopped = Instant::now();
    b.terminate();
    c.wait_leader(true).await;
    let handover = stopped.elapsed();
    fault_row(
        "leader SIGTERMed (rolling update, drain)",
        &format!(
            "Lease released; the standby leads after {:.1} s (expiry would take 10 s); nothing re-issued",
            handover.as_secs_f64()
        ),
    );
    assert!(
        handover < Duration::from_secs(8),
        "SIGTERM must release the Lease (took {handover:?})"
    );
    // The new leader adopts everything as it is: nothing is re-issued.
    c.wait_reconciled(N as f64).await;
    assert_eq!(c.metric("tlsid_issuances_total").await, 0.0);
    assert_eq!(revisions(&ids).await, vec![3; N]);
    drop(c);
}

/// Two installs in one cluster: the default one (`tlsid`) serves identities that name no install,
/// another serves those labelled `tlsid.dev/install: <its name>`, each with its own CA, and
/// neither touches the other's. Control: an install-name collision (two `tlsid` installs whose
/// Leases live in different namespaces) does fight, and the same checks see it.
async fn skipped(c: &Controller) -> f64 {
    c.metric("tlsid_reconciliations_skipped_total{reason=\"OtherInstall\"}")
        .await
}

#[tokio::test]
async fn two_installs_each_serve_only_their_own_identities() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "two-installs").await;
    let home_a = namespace(&client, "install-a-home").await;
    let home_b = namespace(&client, "install-b-home").await;
    let a = Controller::start_with(
        cluster,
        &format!("{ns}-default"),
        &["--watch-namespace", &ns, "--namespace", &home_a],
    )
    .await;
    let b = Controller::start_with(
        cluster,
        &format!("{ns}-other"),
        &[
            "--watch-namespace",
            &ns,
            "--namespace",
            &home_b,
            "--install",
            "other",
        ],
    )
    .await;
    a.wait_leader(true).await;
    b.wait_leader(true).await;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let mut other = identity("theirs", json!({"dnsNames": [format!("theirs.{ns}.svc")]}));
    other
        .labels_mut()
        .insert("tlsid.dev/install".into(), "other".into());
    ids.create(&PostParams::default(), &other).await.unwrap();
    ids.create(
        &PostParams::default(),
        &identity("ours", json!({"dnsNames": [format!("ours.{ns}.svc")]})),
    )
    .await
    .unwrap();
    let ours = wait_identity(&ids, "ours", "Ready", ready).await;
    let theirs = wait_identity(&ids, "theirs", "Ready", ready).await;

    let ca_of = |home: &str| {
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), home);
        async move {
            String::from_utf8(data(&api.get("tlsid-ca").await.unwrap(), "ca.crt").to_vec()).unwrap()
        }
    };
    let (ca_a, ca_b) = (ca_of(&home_a).await, ca_of(&home_b).await);
    assert_ne!(ca_a, ca_b, "two installs, two CAs");
    let bundle = |name: &str| {
        let secrets = secrets.clone();
        let name = name.to_string();
        async move {
            String::from_utf8(data(&secrets.get(&name).await.unwrap(), "ca.crt").to_vec()).unwrap()
        }
    };
    assert_eq!(bundle(&ours.secret_name()).await, ca_a);
    assert_eq!(bundle(&theirs.secret_name()).await, ca_b);

    // The default install sees the other's identity change and leaves it alone (the other install
    // watches only identities labelled with its name: it never sees ours).
    let skips_a = skipped(&a).await;
    for name in ["ours", "theirs"] {
        ids.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touched": "1"}}})),
        )
        .await
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while skipped(&a).await <= skips_a {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the default install saw the other's identity"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unchanged = |o: Option<&TlsIdentity>| revision(o) == 1;
    assert!(unchanged(ids.get("ours").await.ok().as_ref()));
    assert!(unchanged(ids.get("theirs").await.ok().as_ref()));
    assert_eq!(a.metric("tlsid_issuances_total").await, 1.0);
    assert_eq!(b.metric("tlsid_issuances_total").await, 1.0);
    assert_eq!(bundle(&theirs.secret_name()).await, ca_b);

    // Control: a second install that is also called `tlsid` (a name collision: its Lease lives in
    // another namespace, so both lead) re-issues "ours" under its own CA: the checks above
    // would have caught a fight.
    let home_c = namespace(&client, "install-c-home").await;
    let c = Controller::start_with(
        cluster,
        &format!("{ns}-collision"),
        &["--watch-namespace", &ns, "--namespace", &home_c],
    )
    .await;
    c.wait_leader(true).await;
    let ca_c = ca_of(&home_c).await;
    let fought = wait_identity(&ids, "ours", "re-issued by the colliding install", |o| {
        revision(o) > 1
    })
    .await;
    assert!(revision(Some(&fought)) > 1);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while bundle(&ours.secret_name()).await != ca_c {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collision is visible in ca.crt"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);
    assert_eq!(
        bundle(&theirs.secret_name()).await,
        ca_b,
        "the other install's identity is untouched"
    );
}

/// An idle install writes nothing but its Lease renewals, and reports them apart.
#[tokio::test]
async fn an_idle_install_writes_only_lease_renewals() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "idle-writes").await;
    // A short Lease (renewed every 2 s) so that a few renewals fit in a short window.
    let c = Controller::start_with(
        cluster,
        &ns,
        &[
            "--watch-namespace",
            &ns,
            "--namespace",
            &ns,
            "--lease-duration",
            "3",
            "--lease-renew-grace",
            "1",
        ],
    )
    .await;
    c.wait_leader(true).await;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    create_ready(&ids, "idle", 3, &format!("{ns}.svc")).await;
    // Settle for three renewals (the Events of the issuances are published right after the
    // status the test waited for), then watch three more.
    async fn renewals_reach(c: &Controller, n: f64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while c.metric("tlsid_lease_renewals_total").await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Lease is not renewed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let start = c.metric("tlsid_lease_renewals_total").await;
    renewals_reach(&c, start + 3.0).await;
    let writes = c.metric("tlsid_writes_total").await;
    let versions: Vec<String> = ids
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.resource_version().unwrap_or_default())
        .collect();
    renewals_reach(&c, start + 6.0).await;
    assert_eq!(
        c.metric("tlsid_writes_total").await,
        writes,
        "writes to identities, Secrets, Events or workloads while idle"
    );
    let after: Vec<String> = ids
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.resource_version().unwrap_or_default())
        .collect();
    assert_eq!(after, versions);
    fault_row(
        "no fault: an idle install",
        &format!(
            "{} Lease renewals, 0 writes to identities, Secrets, Events or workloads",
            c.metric("tlsid_lease_renewals_total").await - start
        ),
    );
}

/// Someone deletes the leader Lease: the crate would keep retrying the missing object while still
/// calling itself leader; instead every replica stands again and a leader writes within seconds.
#[tokio::test]
async fn a_deleted_lease_is_recreated_and_a_leader_writes_again() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "lease-deleted").await;
    let c = Controller::start_with(
        cluster,
        &ns,
        &["--watch-namespace", &ns, "--namespace", &ns],
    )
    .await;
    c.wait_leader(true).await;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    ids.create(
        &PostParams::default(),
        &identity("l0", json!({"dnsNames": [format!("l0.{ns}.svc")]})),
    )
    .await
    .unwrap();
    wait_identity(&ids, "l0", "Ready", ready).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    let deleted = Instant::now();
    leases
        .delete("tlsid-leader", &Default::default())
        .await
        .unwrap();
    ids.patch(
        "l0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"tlsid.dev/renew": "after-delete"}}})),
    )
    .await
    .unwrap();
    wait_identity_for(
        &ids,
        "l0",
        "renewed after the Lease was deleted",
        Duration::from_secs(60),
        |o| revision(o) == 2 && ready(o),
    )
    .await;
    let took = deleted.elapsed();
    assert!(
        leases.get("tlsid-leader").await.is_ok(),
        "the Lease is back"
    );
    fault_row(
        "the leader Lease deleted by hand",
        &format!(
            "a new term at once; the renewal requested meanwhile done {:.1} s later",
            took.as_secs_f64()
        ),
    );
}
