//! CA rollover against a real kube-apiserver: every identity Secret is sampled through a whole
//! rollover, and every leaf is verified with `openssl verify` against every bundle any identity
//! held then or up to one propagation delay before. Once to a new generated root (started with
//! `tlsid ca rotate`), once to a user-supplied intermediate (`--from-secret`, emergency mode).
//! A control verifies that the same check fails for a leaf of the new CA against the old bundle.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};
use support::*;
use tlsid::{
    api::TlsIdentity,
    pki::{Authority, fingerprint, parse_pem_certs},
};

/// How long after a Secret changes its pods may still use what it held before (the kubelet and the
/// app's reload, in this model). The controllers under test wait one second more
/// (`--trust-propagation-delay 4s`): the sampler sees each change up to a few hundred
/// milliseconds late, and the margin keeps that from reading as a violation.
const DELAY: Duration = Duration::from_secs(3);
const CONTROLLER_DELAY: &str = "4s";
const IDENTITIES: usize = 4;

/// One observed version of an identity Secret.
#[derive(Clone, Debug)]
struct Sample {
    at: std::time::Instant,
    /// Unix seconds of `at`: leaves are verified as of then (a 60 s leaf has expired by the end).
    unix: i64,
    name: String,
    tls_crt: Vec<u8>,
    ca_crt: Vec<u8>,
}

/// Sample every identity Secret of `ns` until `stop`; keep each change.
fn sampler(
    secrets: Api<Secret>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sink = out.clone();
    let task = tokio::spawn(async move {
        let mut last: BTreeMap<String, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let list = secrets
                .list(&ListParams::default().labels("tlsid.dev/identity"))
                .await
                .expect("list Secrets");
            let at = std::time::Instant::now();
            let unix = jiff::Timestamp::now().as_second();
            for s in list {
                let crt = data(&s, "tls.crt").to_vec();
                let ca = data(&s, "ca.crt").to_vec();
                let name = s.name_any();
                if last.get(&name) != Some(&(crt.clone(), ca.clone())) {
                    last.insert(name.clone(), (crt.clone(), ca.clone()));
                    sink.lock().unwrap().push(Sample {
                        at,
                        unix,
                        name,
                        tls_crt: crt,
                        ca_crt: ca,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (out, task)
}

/// `openssl verify` of the leaf in `tls_crt` (its intermediates untrusted) against `bundle`.
fn verifies(dir: &Path, tls_crt: &[u8], bundle: &[u8], at: Option<i64>) -> Result<(), String> {
    let certs = parse_pem_certs(tls_crt).expect("tls.crt");
    let name = fingerprint(&certs[0]);
    let leaf = dir.join(format!("{name}.leaf.pem"));
    let chain = dir.join(format!("{name}.chain.pem"));
    let ca = dir.join(format!("{}.bundle.pem", fingerprint(bundle)));
    std::fs::write(&leaf, tlsid::pki::certs_to_pem([&certs[0]])).unwrap();
    std::fs::write(&chain, tlsid::pki::certs_to_pem(certs[1..].iter())).unwrap();
    std::fs::write(&ca, bundle).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&ca);
    if let Some(at) = at {
        cmd.arg("-attime").arg(at.to_string());
    }
    if certs.len() > 1 {
        cmd.arg("-untrusted").arg(&chain);
    }
    let out = cmd.arg(&leaf).output().expect("run openssl");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr))
    }
}

/// Every leaf any identity held at some instant, against every bundle any identity held within
/// one propagation delay before that instant (what its pods may still use). Returns how many
/// distinct (leaf, bundle) pairs were checked.
fn cross_verify(samples: &[Sample]) -> usize {
    let dir = tempfile::tempdir().unwrap();
    // Each distinct (leaf, bundle) pair, with the first instant it had to hold.
    let mut pairs: BTreeMap<(Vec<u8>, Vec<u8>), i64> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        // Everything current at s.at: the latest sample per identity up to i.
        let mut current: BTreeMap<&str, &Sample> = BTreeMap::new();
        for t in &samples[..=i] {
            current.insert(&t.name, t);
        }
        // Bundles held within DELAY before s.at: current ones and any replaced in that window.
        let mut bundles: BTreeSet<&[u8]> = current.values().map(|t| t.ca_crt.as_slice()).collect();
        for (j, t) in samples[..=i].iter().enumerate() {
            let replaced_at = samples[j + 1..=i]
                .iter()
                .find(|u| u.name == t.name)
                .map(|u| u.at);
            if replaced_at.is_some_and(|r| s.at.duration_since(r) <= DELAY) {
                bundles.insert(&t.ca_crt);
            }
        }
        for leaf in current.values() {
            for b in &bundles {
                pairs
                    .entry((leaf.tls_crt.clone(), b.to_vec()))
                    .or_insert(s.unix);
            }
        }
    }
    for ((leaf, bundle), at) in &pairs {
        if let Err(e) = verifies(dir.path(), leaf, bundle, Some(*at)) {
            panic!(
                "a leaf did not verify against a bundle a peer could hold:\n{e}\nbundle:\n{}",
                String::from_utf8_lossy(bundle)
            );
        }
    }
    pairs.len()
}

/// Wait (up to `limit`) until the CA Secret says the rollover is over: Stable, nothing staged or
/// kept from the previous CA.
async fn wait_stable(secrets: &Api<Secret>, limit: Duration) -> Secret {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let s = secrets.get("tlsid-ca").await.unwrap();
        let a = s.annotations();
        let keys = s.data.as_ref().map(|d| d.len()).unwrap_or_default();
        if a.contains_key("tlsid.dev/rotate-handled")
            && !a.contains_key("tlsid.dev/rollover-phase")
            && keys == 3
        {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollover did not complete within {limit:?}: {:?}",
            a
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn identities(ids: &Api<TlsIdentity>, ns: &str, duration: &str) {
    for i in 0..IDENTITIES {
        ids.create(
            &PostParams::default(),
            &identity(
                &format!("r{i}"),
                serde_json::json!({"dnsNames": [format!("r{i}.{ns}.svc")], "duration": duration}),
            ),
        )
        .await
        .expect("create identity");
    }
    for i in 0..IDENTITIES {
        wait_identity(ids, &format!("r{i}"), "Ready", ready).await;
    }
}

fn roots(secret: &Secret) -> BTreeSet<String> {
    parse_pem_certs(data(secret, "ca.crt"))
        .unwrap()
        .iter()
        .map(|c| fingerprint(c))
        .collect()
}

/// To a new generated root, in normal mode: old leaves are re-issued at the switch, and the old
/// root stays trusted until every leaf it signed has expired (60 s leaves keep this short).
#[tokio::test]
async fn rollover_to_a_new_root_keeps_every_leaf_trusted_by_every_peer() {
    let cluster = cluster().await;
    let env = setup_with(
        "rollover-root",
        &["--trust-propagation-delay", CONTROLLER_DELAY],
    )
    .await;
    identities(&env.ids, &env.ns, "60s").await;
    let before = env.secrets.get("tlsid-ca").await.unwrap();
    let old_roots = roots(&before);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (samples, task) = sampler(env.secrets.clone(), stop.clone());

    let said = tlsid_cli(
        cluster,
        &["ca", "rotate", "--install-namespace", &env.ns, "--wait"],
    );
    assert!(said.contains("taken up by the controller"), "{said}");
    // Mid-rollover, `tlsid ca status` shows the phase and both roots.
    let status: serde_json::Value = serde_json::from_str(&tlsid_cli(
        cluster,
        &["ca", "status", "--install-namespace", &env.ns, "-o", "json"],
    ))
    .unwrap();
    assert_ne!(status["phase"], "Stable", "{status}");
    assert_eq!(status["roots"].as_array().unwrap().len(), 2, "{status}");
    let text = tlsid_cli(cluster, &["ca", "status", "--install-namespace", &env.ns]);
    assert!(
        text.contains("Phase:") && text.contains("Trust bundle (2 root(s))"),
        "{text}"
    );

    let after = wait_stable(&env.secrets, Duration::from_secs(240)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();
    let new_roots = roots(&after);
    assert_eq!(new_roots.len(), 1);
    assert!(new_roots.is_disjoint(&old_roots), "the old root retired");
    // Every identity ends on the new CA with the new bundle only.
    let signer = fingerprint(&parse_pem_certs(data(&after, "tls.crt")).unwrap()[0]);
    for i in 0..IDENTITIES {
        let id = wait_identity(&env.ids, &format!("r{i}"), "on the new CA", |o| {
            ready(o)
                && o.and_then(|o| o.status.as_ref()?.ca_fingerprint.clone()) == Some(signer.clone())
        })
        .await;
        // The retired root leaves each Secret's bundle after the CA Secret says Stable: wait for
        // it (a race with that write, not a result, if read at once).
        wait_secret(
            &env.secrets,
            &format!("{}-tls", id.name_any()),
            "the new root alone",
            |s| s.is_some_and(|s| roots(s) == new_roots),
        )
        .await;
    }
    let samples = samples.lock().unwrap().clone();
    let checked = cross_verify(&samples);

    // Control: the check can fail. A leaf of the new CA against the bundle before the rollover.
    let dir = tempfile::tempdir().unwrap();
    let new_leaf = samples.last().unwrap().tls_crt.clone();
    let err = verifies(dir.path(), &new_leaf, data(&before, "ca.crt"), None)
        .expect_err("a new leaf must not verify against the old bundle");
    assert!(err.contains("unable to get local issuer"), "{err}");
    let client = env.ids.clone().into_client();
    for reason in ["CaRolloverStarted", "CaRolloverCompleted"] {
        assert_eq!(events(&client, &env.ns, reason).await, 1, "{reason}");
    }
    fault_row(
        "CA rollover to a new root (tlsid ca rotate), 4 identities sampled throughout",
        &format!(
            "{} Secret versions; {checked} (leaf, bundle) pairs verified by openssl, 0 untrusted; control refused",
            samples.len()
        ),
    );
}

/// A user's own CA: root C → intermediate, in a Secret named by `--from-secret`.
fn user_intermediate(now: jiff::Timestamp) -> Authority {
    let root = Authority::generate_root(now - jiff::SignedDuration::from_hours(4)).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "example corp intermediate CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now.as_second() - 3600).unwrap();
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(now.as_second() + 30 * 86400).unwrap();
    let cert = params.signed_by(&key, &root.issuer().unwrap()).unwrap();
    Authority::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        Some(root.bundle_pem().as_bytes()),
        now,
    )
    .unwrap()
}

/// To a user-supplied intermediate, in emergency mode: the old root is retired as soon as no
/// identity holds a leaf it signed (plus the delay), without waiting for old leaves to expire.
#[tokio::test]
async fn rollover_to_a_user_intermediate_in_emergency_mode() {
    let cluster = cluster().await;
    let env = setup_with(
        "rollover-intermediate",
        &["--trust-propagation-delay", CONTROLLER_DELAY],
    )
    .await;
    identities(&env.ids, &env.ns, "24h").await;
    let next = user_intermediate(jiff::Timestamp::now());
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "next-ca"},
        "type": "kubernetes.io/tls",
        "stringData": next.to_secret_data().into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap();
    env.secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (samples, task) = sampler(env.secrets.clone(), stop.clone());
    tlsid_cli(
        cluster,
        &[
            "ca",
            "rotate",
            "--install-namespace",
            &env.ns,
            "--from-secret",
            "next-ca",
            "--emergency",
        ],
    );
    // Emergency mode does not wait for 24 h leaves to expire.
    let after = wait_stable(&env.secrets, Duration::from_secs(90)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        fingerprint(&parse_pem_certs(data(&after, "tls.crt")).unwrap()[0]),
        next.fingerprint(),
        "the intermediate signs"
    );
    assert_eq!(
        roots(&after),
        roots_of(&next),
        "only the user's root is trusted"
    );
    for i in 0..IDENTITIES {
        let s = env.secrets.get(&format!("r{i}-tls")).await.unwrap();
        let chain = parse_pem_certs(data(&s, "tls.crt")).unwrap();
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        assert_eq!(fingerprint(&chain[1]), next.fingerprint());
    }
    let samples = samples.lock().unwrap().clone();
    let checked = cross_verify(&samples);
    fault_row(
        "CA rollover to a user-supplied intermediate (--from-secret, --emergency)",
        &format!(
            "{} Secret versions; {checked} (leaf, bundle) pairs verified by openssl, 0 untrusted",
            samples.len()
        ),
    );
}

fn roots_of(ca: &Authority) -> BTreeSet<String> {
    ca.roots().iter().map(|r| fingerprint(r)).collect()
}

/// A root tlsid generated rolls over by itself at its rotation point (a 10-minute root, backdated
/// a minute, rotated at a tenth of its life: within seconds), and the TlsAuthority shows it.
#[tokio::test]
async fn a_generated_root_rolls_over_by_itself() {
    let env = setup_with(
        "rollover-auto",
        &[
            "--ca-lifetime",
            "10m",
            "--ca-rotate-at",
            "0.1",
            "--trust-propagation-delay",
            "1s",
        ],
    )
    .await;
    identities(&env.ids, &env.ns, "60s").await;
    let started = wait_secret(&env.secrets, "tlsid-ca", "an automatic rollover", |s| {
        s.and_then(|s| s.metadata.annotations.as_ref())
            .is_some_and(|a| {
                a.get("tlsid.dev/rollover-trigger").map(String::as_str) == Some("Automatic")
            })
    })
    .await
    .unwrap();
    assert_eq!(
        started
            .annotations()
            .get("tlsid.dev/ca-generated")
            .map(String::as_str),
        Some("true")
    );
    // The switch happens and every identity moves to the new root.
    let switched = wait_secret(&env.secrets, "tlsid-ca", "the switch", |s| {
        s.is_some_and(|s| data(s, "previous.crt").starts_with(b"-----BEGIN"))
    })
    .await
    .unwrap();
    let signer = fingerprint(&parse_pem_certs(data(&switched, "tls.crt")).unwrap()[0]);
    for i in 0..IDENTITIES {
        wait_identity(&env.ids, &format!("r{i}"), "on the new root", |o| {
            ready(o)
                && o.and_then(|o| o.status.as_ref()?.ca_fingerprint.clone()) == Some(signer.clone())
        })
        .await;
    }
    let client = env.ids.clone().into_client();
    let authorities: Api<tlsid::api::TlsAuthority> = Api::all(client);
    let name = authority_name(&env.ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = authorities.get_opt(&name).await.unwrap();
        let status = a.and_then(|a| a.status).unwrap_or_default();
        if status.signer.as_ref().map(|s| s.fingerprint.as_str()) == Some(signer.as_str()) {
            assert_eq!(status.trigger.as_deref(), Some("Automatic"), "{status:?}");
            assert_eq!(status.root_count, Some(2), "{status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the TlsAuthority does not show the new signer: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    fault_row(
        "a generated root at its rotation point (--ca-lifetime 10m --ca-rotate-at 0.1)",
        "rolled over by itself (trigger Automatic); every identity re-issued under the new root",
    );
}

/// A CA the user supplied is never replaced: past its rotation point tlsid warns (an Event on the
/// CA Secret, the TlsAuthority's CaExpiring condition, `tlsid_ca_expiring` 1) and starts nothing.
#[tokio::test]
async fn a_users_ca_past_its_rotation_point_only_warns() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, "rollover-user-ca").await;
    let now = jiff::Timestamp::now();
    // Valid from 18 minutes ago to 4 minutes from now: past two thirds of its life.
    let ca = Authority::generate_root_for(
        now - jiff::SignedDuration::from_mins(16),
        Duration::from_secs(20 * 60),
    )
    .unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tlsid-ca"},
        "type": "kubernetes.io/tls",
        "stringData": ca.to_secret_data().into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let env = setup_in(ns.clone()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while events(&client, &ns, "CaExpiringSoon").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no CaExpiringSoon Event"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(env.controller.metric("tlsid_ca_expiring").await, 1.0);
    let s = secrets.get("tlsid-ca").await.unwrap();
    assert!(
        !s.annotations().contains_key("tlsid.dev/rollover-phase"),
        "a user's CA is not rolled over by itself"
    );
    assert_eq!(
        fingerprint(&parse_pem_certs(data(&s, "tls.crt")).unwrap()[0]),
        ca.fingerprint()
    );
    let authorities: Api<tlsid::api::TlsAuthority> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = authorities
            .get_opt(&authority_name(&ns))
            .await
            .unwrap()
            .and_then(|a| a.status)
            .unwrap_or_default();
        if let Some(c) = status.conditions.iter().find(|c| c.type_ == "CaExpiring") {
            assert_eq!(c.status, "True");
            assert!(c.message.contains("never replaces it"), "{}", c.message);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no CaExpiring condition: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One warning, not one per step.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(events(&client, &ns, "CaExpiringSoon").await, 1);
    fault_row(
        "a CA the user supplied, past its rotation point",
        "never replaced; one Warning CaExpiringSoon, TlsAuthority condition CaExpiring, tlsid_ca_expiring 1",
    );
}
