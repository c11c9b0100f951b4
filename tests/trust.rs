//! Trust bundles for workloads without an identity, against a real kube-apiserver: the trust
//! ConfigMaps of selected namespaces (created, kept in step with a CA rollover, which waits for
//! them, removed when deselected, kept when the controller goes, a foreign one untouched) and the
//! ClusterTrustBundle (created, updated through a rollover, a foreign one untouched).
//!
//! Each test's controller is an install of its own (`--install trust-...`) watching every
//! namespace, so other tests' controllers (the default install) never see its objects.

mod support;

use k8s_openapi::api::{
    certificates::v1beta1::ClusterTrustBundle,
    core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    runtime::wait::await_condition,
};
use serde_json::json;
use std::{collections::BTreeSet, process::Command, time::Duration};
use support::*;
use tlsid::{
    api::TlsIdentity,
    pki::{fingerprint, parse_pem_certs},
};

const SELECT: &str = "tlsid-tests/trust";

fn ca_crt(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .cloned()
        .unwrap_or_default()
}

fn roots(pem: &[u8]) -> BTreeSet<String> {
    parse_pem_certs(pem)
        .unwrap()
        .iter()
        .map(|c| fingerprint(c))
        .collect()
}

/// Wait until the ConfigMap `name` in `api`'s namespace satisfies `cond` (a watch).
async fn wait_cm(
    api: &Api<ConfigMap>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&ConfigMap>) -> bool,
) -> Option<ConfigMap> {
    tokio::time::timeout(
        TIMEOUT,
        await_condition(api.clone(), name, move |o: Option<&ConfigMap>| cond(o)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for ConfigMap {name}: {what}"))
    .expect("watch")
}

/// The identity `app` of `install` in `ns`, Ready; returns its Secret's `ca.crt`.
async fn identity_bundle(client: &Client, ns: &str, install: &str) -> Vec<u8> {
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), ns);
    let mut id = identity("app", json!({"dnsNames": [format!("app.{ns}.svc")]}));
    id.labels_mut()
        .insert("tlsid.dev/install".into(), install.into());
    ids.create(&PostParams::default(), &id).await.unwrap();
    wait_identity(&ids, "app", "Ready", ready).await;
    secret_bundle(client, ns).await
}

async fn secret_bundle(client: &Client, ns: &str) -> Vec<u8> {
    let s: Secret = Api::namespaced(client.clone(), ns)
        .get("app-tls")
        .await
        .unwrap();
    data(&s, "ca.crt").to_vec()
}

/// Wait until the identity Secret's `ca.crt` holds `n` roots; returns it.
async fn wait_secret_roots(client: &Client, ns: &str, n: usize) -> Vec<u8> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = wait_secret(&api, "app-tls", "the bundle's roots", |s| {
        s.is_some_and(|s| roots(data(s, "ca.crt")).len() == n)
    })
    .await
    .unwrap();
    data(&s, "ca.crt").to_vec()
}

/// The rollover phase recorded in the CA Secret (`Stable` when none).
async fn phase(client: &Client, ns: &str) -> String {
    let s: Secret = Api::namespaced(client.clone(), ns)
        .get("tlsid-ca")
        .await
        .unwrap();
    s.annotations()
        .get("tlsid.dev/rollover-phase")
        .cloned()
        .unwrap_or_else(|| "Stable".into())
}

/// Refuse UPDATEs of ConfigMaps in `ns` (a ValidatingAdmissionPolicy); returns a guard-like
/// handle to remove it.
struct DenyUpdates;

impl DenyUpdates {
    async fn install(client: &Client, ns: &str, probe: &str) -> Denial {
        let denial = Denial::install(
            client,
            &format!("deny-configmaps-{ns}"),
            ns,
            json!([{
                "apiGroups": [""], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["configmaps"]}]),
            "false",
            "ConfigMap updates are switched off for this test",
        )
        .await;
        // Policies take effect asynchronously: wait until an update of a probe is refused.
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": probe}, "data": {"n": "0"}}))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut n = 0;
        loop {
            n += 1;
            let refused = cms
                .patch(
                    probe,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"n": n.to_string()}})),
                )
                .await
                .is_err();
            if refused {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "policy never took effect"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        denial
    }
}

/// Set (or remove, `None`) the selecting label of namespace `ns`.
async fn select(client: &Client, ns: &str, value: Option<&str>) {
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {SELECT: value}}})),
        )
        .await
        .unwrap();
}

fn resource_versions(cms: &[&ConfigMap]) -> Vec<String> {
    cms.iter()
        .map(|c| c.resource_version().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn trust_configmaps_follow_the_bundle_and_hold_the_rollover() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let tag = format!("t{}", rand::random::<u32>() % 1_000_000);
    let install = format!("trust-{tag}");
    let home = namespace_labelled(&client, "trust-home", &[(SELECT, &tag)]).await;
    let a = namespace_labelled(&client, "trust-a", &[(SELECT, &tag)]).await;
    let b = namespace_labelled(&client, "trust-b", &[(SELECT, &tag)]).await;
    let c = namespace_labelled(&client, "trust-c", &[]).await;
    let name = format!("{install}-ca-bundle");
    let cms = |ns: &str| Api::<ConfigMap>::namespaced(client.clone(), ns);

    // A ConfigMap of that name in c that is not tlsid's, before c is selected.
    let foreign: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": name}, "data": {"ca.crt": "not tlsid's"}}),
    )
    .unwrap();
    let foreign = cms(&c)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    let selector = format!("{SELECT}={tag}");
    let args = [
        "--namespace",
        &home,
        "--install",
        &install,
        "--trust-bundle-namespaces",
        &selector,
        "--trust-bundle-truststore",
        "true",
        "--trust-propagation-delay",
        "4s",
    ];
    let controller = Controller::start_with(cluster, &home, &args).await;
    controller.wait_leader(true).await;
    let bundle = identity_bundle(&client, &home, &install).await;
    assert_eq!(roots(&bundle).len(), 1);

    // Every selected namespace gets the identity's ca.crt, and a truststore of the same roots.
    let has = |pem: Vec<u8>| {
        move |o: Option<&ConfigMap>| o.is_some_and(|c| ca_crt(c).as_bytes() == pem.as_slice())
    };
    let mut first = Vec::new();
    for ns in [&home, &a, &b] {
        let cm = wait_cm(&cms(ns), &name, "the bundle", has(bundle.clone()))
            .await
            .unwrap();
        assert_eq!(cm.labels()["app.kubernetes.io/managed-by"], "tlsid");
        assert_eq!(cm.labels()["tlsid.dev/install"], install);
        assert!(cm.metadata.owner_references.is_none());
        let p12 = &cm.binary_data.as_ref().unwrap()["truststore.p12"].0;
        let store = p12_keystore::KeyStore::from_pkcs12(
            p12,
            "changeit",
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .expect("truststore.p12");
        let trusted: BTreeSet<String> = store
            .entries()
            .map(|(_, e)| match e {
                p12_keystore::KeyStoreEntry::Certificate(c) => fingerprint(c.as_der()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(trusted, roots(&bundle));
        first.push(cm);
    }

    // Selecting c: its foreign ConfigMap is left alone, with a Warning and a metric.
    select(&client, &c, Some(&tag)).await;
    events_at_least(&client, &c, "TrustBundleConflict", 1).await;
    assert_eq!(controller.metric("tlsid_trust_bundle_conflicts").await, 1.0);
    let still = cms(&c).get(&name).await.unwrap();
    assert_eq!(still.resource_version(), foreign.resource_version());
    assert_eq!(ca_crt(&still), "not tlsid's");

    // Stopping the controller keeps the ConfigMaps; a new one (a fresh list of everything)
    // writes nothing: every resourceVersion stays, and it counts no trust write.
    controller.stop();
    let before = resource_versions(&first.iter().collect::<Vec<_>>());
    for ns in [&home, &a, &b] {
        assert!(
            cms(ns).get_opt(&name).await.unwrap().is_some(),
            "kept in {ns}"
        );
    }
    let controller = Controller::start_with(cluster, &home, &args).await;
    controller.wait_leader(true).await;
    // Five passes of the writer (2 s each) over the same state.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut now = Vec::new();
    for ns in [&home, &a, &b] {
        now.push(cms(ns).get(&name).await.unwrap());
    }
    assert_eq!(resource_versions(&now.iter().collect::<Vec<_>>()), before);
    assert_eq!(
        controller
            .metric("tlsid_writes_total{kind=\"trust_configmap\"}")
            .await,
        0.0
    );
    // The conflict is reported once per leader term: the new leader's one Event.
    assert_eq!(controller.metric("tlsid_trust_bundle_conflicts").await, 1.0);

    // A rollover, with ConfigMap updates refused in b: Publish waits for b.
    let deny = DenyUpdates::install(&client, &b, &format!("{name}-probe")).await;
    let said = tlsid_cli(
        cluster,
        &[
            "ca",
            "rotate",
            "--install-namespace",
            &home,
            "--emergency",
            "--wait",
        ],
    );
    assert!(said.contains("taken up by the controller"), "{said}");
    let overlap = wait_secret_roots(&client, &home, 2).await;
    for ns in [&home, &a] {
        wait_cm(&cms(ns), &name, "the overlap bundle", has(overlap.clone())).await;
    }
    // Well past the propagation delay (4 s) the rollover still waits in Publish, for b.
    let authorities: Api<tlsid::api::TlsAuthority> = Api::all(client.clone());
    let authority = authority_name(&home);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut said_why = false;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(phase(&client, &home).await, "Publish");
        let waiting = authorities
            .get_opt(&authority)
            .await
            .unwrap()
            .and_then(|a| a.status?.waiting_for)
            .unwrap_or_default();
        said_why |= waiting.contains("1 trust ConfigMap(s) or ClusterTrustBundle");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        said_why,
        "the TlsAuthority never said it waits for a trust ConfigMap"
    );
    assert_eq!(
        ca_crt(&cms(&b).get(&name).await.unwrap()).as_bytes(),
        bundle
    );

    // Control: once b takes the bundle the rollover goes on, through to the end.
    deny.remove().await;
    wait_cm(&cms(&b), &name, "the overlap bundle", has(overlap.clone())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while phase(&client, &home).await != "Stable" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollover did not complete"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let last = wait_secret_roots(&client, &home, 1).await;
    assert!(
        roots(&last).is_disjoint(&roots(&bundle)),
        "the old root retired"
    );
    for ns in [&home, &a, &b] {
        wait_cm(&cms(ns), &name, "the final bundle", has(last.clone())).await;
    }

    // Deselecting a deletes its ConfigMap; the foreign one in c is still untouched.
    select(&client, &a, None).await;
    wait_cm(&cms(&a), &name, "deleted", |o| o.is_none()).await;
    let still = cms(&c).get(&name).await.unwrap();
    assert_eq!(still.resource_version(), foreign.resource_version());
    // Deselecting c leaves the foreign one too.
    select(&client, &c, None).await;
    controller.stop();
    for ns in [&home, &b] {
        assert!(
            cms(ns).get_opt(&name).await.unwrap().is_some(),
            "kept in {ns}"
        );
    }
    assert_eq!(
        cms(&c).get(&name).await.unwrap().resource_version(),
        foreign.resource_version()
    );
    fault_row(
        "trust ConfigMaps through a CA rollover, updates refused in one namespace",
        "Publish held until it took the bundle; deselected one deleted; foreign one untouched (1 Warning); 0 writes after a restart",
    );
}

/// The chart's ClusterRole as rendered with `trustBundle.clusterTrustBundle.enabled` for
/// `install`, bound to the controllers' ServiceAccount (the tests' default RBAC is the chart's
/// defaults, where it is off).
async fn grant_cluster_trust_bundles(client: &Client, install: &str) -> String {
    let helm = cache_dir().join("bin/helm-v3.22.0/helm");
    let out = Command::new(&helm)
        .args(["template", "tlsid"])
        .arg(repo().join("charts/tlsid"))
        .args([
            "--namespace",
            "tlsid-system",
            "--kube-version",
            "1.34.0",
            "--show-only",
            "templates/controller-rbac.yaml",
            "--set",
            &format!("install.name={install}"),
            "--set",
            "trustBundle.clusterTrustBundle.enabled=true",
        ])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", helm.display()));
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let role = text
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let name = format!("tlsid-tests-{install}");
    let apply = PatchParams::apply("tlsid-tests").force();
    let roles: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
        )),
    );
    roles
        .patch(
            &name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name}, "rules": role["rules"],
            })),
        )
        .await
        .unwrap();
    let bindings: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
        )),
    );
    bindings
        .patch(
            &name,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": CONTROLLER_SA_NS}],
            })),
        )
        .await
        .unwrap();
    name
}

/// Wait until tlsid's ClusterTrustBundle `name` holds `pem`.
async fn wait_ctb(
    ctbs: &Api<ClusterTrustBundle>,
    name: &str,
    install: &str,
    pem: Vec<u8>,
    what: &str,
) -> ClusterTrustBundle {
    let install = install.to_string();
    let cond = move |o: Option<&ClusterTrustBundle>| {
        o.is_some_and(|c| {
            c.spec.trust_bundle.as_bytes() == pem.as_slice()
                && c.labels().get("tlsid.dev/install") == Some(&install)
        })
    };
    tokio::time::timeout(TIMEOUT, await_condition(ctbs.clone(), name, cond))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the ClusterTrustBundle: {what}"))
        .expect("watch")
        .expect("the ClusterTrustBundle exists")
}

#[tokio::test]
async fn cluster_trust_bundle_follows_the_bundle() {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let served = client
        .list_api_group_resources("certificates.k8s.io/v1beta1")
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.name == "clustertrustbundles"));
    assert!(
        served,
        "the test control plane does not serve ClusterTrustBundles: restart it (hack/cluster.sh down; up) so it runs with the flags hack/cluster.sh now gives"
    );
    let tag = format!("t{}", rand::random::<u32>() % 1_000_000);
    let install = format!("trust-{tag}");
    let home = namespace_labelled(&client, "trust-ctb", &[]).await;
    let rbac = grant_cluster_trust_bundles(&client, &install).await;
    let ctbs: Api<ClusterTrustBundle> = Api::all(client.clone());
    let name = format!("tlsid.dev:{install}:ca-bundle");

    // A ClusterTrustBundle of that name that is not tlsid's.
    let other = tlsid::pki::Authority::generate_root(jiff::Timestamp::now()).unwrap();
    let foreign: ClusterTrustBundle = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"signerName": format!("tlsid.dev/{install}"), "trustBundle": other.bundle_pem()},
    }))
    .unwrap();
    let foreign = ctbs.create(&PostParams::default(), &foreign).await.unwrap();

    let args = [
        "--namespace",
        &home,
        "--install",
        &install,
        "--trust-bundle-configmaps",
        "false",
        "--cluster-trust-bundle",
        "true",
    ];
    let controller = Controller::start_with(cluster, &home, &args).await;
    controller.wait_leader(true).await;
    let bundle = identity_bundle(&client, &home, &install).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while controller.metric("tlsid_trust_bundle_conflicts").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no conflict reported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // On the install's TlsAuthority (cluster-scoped: its Events are in `default`).
    let authority = authority_name(&home);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let found = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("TrustBundleConflict")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some(authority.as_str())
                    && e.note.as_deref().is_some_and(|n| n.contains(&name))
            });
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no TrustBundleConflict Event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = ctbs.get(&name).await.unwrap();
    assert_eq!(still.resource_version(), foreign.resource_version());

    // Once it is gone, tlsid publishes its own, with the identity's ca.crt.
    ctbs.delete(&name, &DeleteParams::default()).await.unwrap();
    let ours = wait_ctb(&ctbs, &name, &install, bundle.clone(), "created").await;
    assert_eq!(
        ours.spec.signer_name.as_deref(),
        Some(format!("tlsid.dev/{install}").as_str())
    );
    // The gauge follows on the writer's next pass.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while controller.metric("tlsid_trust_bundle_conflicts").await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the conflict stayed counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A rollover adds the next root: the ClusterTrustBundle follows.
    tlsid_cli(
        cluster,
        &["ca", "rotate", "--install-namespace", &home, "--wait"],
    );
    let overlap = wait_secret_roots(&client, &home, 2).await;
    let updated = wait_ctb(
        &ctbs,
        &name,
        &install,
        overlap.clone(),
        "updated to the overlap bundle",
    )
    .await;
    assert_eq!(roots(updated.spec.trust_bundle.as_bytes()), roots(&overlap));
    let writes = controller
        .metric("tlsid_writes_total{kind=\"cluster_trust_bundle\"}")
        .await;
    assert_eq!(writes, 2.0, "one create, one update");

    controller.stop();
    let _ = ctbs.delete(&name, &DeleteParams::default()).await;
    let _ = Api::<DynamicObject>::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
        )),
    )
    .delete(&rbac, &DeleteParams::default())
    .await;
}
