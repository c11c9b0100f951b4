//! Test support: one real control plane (etcd + kube-apiserver) per test run, one namespace and
//! one real controller process per test, so tests run in parallel without seeing each other.
//!
//! The control plane comes from `TLSID_TEST_KUBECONFIG` (set by `make test`), or is started here
//! with `hack/cluster.sh up` in a dedicated state dir (left running for the next run; `make test`
//! stops it).
#![allow(dead_code)]

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};
use tlsid::api::TlsIdentity;
use tokio::sync::OnceCell;

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cluster {
    /// Cluster-admin: what the tests themselves use.
    pub kubeconfig: PathBuf,
    /// What the controllers under test use: a ServiceAccount token bound to the chart's own
    /// ClusterRole (and its leader-election rules, granted per test namespace), never admin, so
    /// a missing or excessive permission in the chart shows up here.
    pub controller_kubeconfig: PathBuf,
}

/// Namespace and ServiceAccount the controllers under test run as.
pub const CONTROLLER_SA_NS: &str = "tlsid-tests-system";
pub const CONTROLLER_SA: &str = "tlsid-controller";
/// The chart's leader-election Role, as a ClusterRole granted per test namespace.
const LEADER_ELECTION_ROLE: &str = "tlsid-tests-leader-election";

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared control plane, with the CRD from `crds/` installed and established.
pub async fn cluster() -> &'static Cluster {
    CLUSTER
        .get_or_init(|| async {
            let kubeconfig = match std::env::var_os("TLSID_TEST_KUBECONFIG") {
                Some(p) => PathBuf::from(p),
                None => start_cluster(),
            };
            prepare(kubeconfig).await
        })
        .await
}

/// A control plane made ready for tests: the CRD from `crds/` installed and established, and the
/// controllers' least-privilege identity.
pub async fn prepare(kubeconfig: PathBuf) -> Cluster {
    let mut cluster = Cluster {
        controller_kubeconfig: kubeconfig.clone(),
        kubeconfig,
    };
    let client = cluster.client().await;
    install_crd(&client).await;
    cluster.controller_kubeconfig = controller_identity(&client, &cluster.kubeconfig).await;
    cluster
}

fn start_cluster() -> PathBuf {
    start_profile("test")
}

/// A control-plane profile of `hack/profiles.tsv`: its state dir and ports.
pub struct Profile {
    pub dir: PathBuf,
    pub apiserver_port: u16,
    pub etcd_port: u16,
}

pub fn cache_dir() -> PathBuf {
    std::env::var("TLSID_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tlsid")
        })
}

pub fn profile(name: &str) -> Profile {
    let table = read(&repo().join("hack/profiles.tsv"));
    let cols: Vec<&str> = table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|c| c.first() == Some(&name))
        .unwrap_or_else(|| panic!("no profile {name} in hack/profiles.tsv"));
    Profile {
        apiserver_port: cols[1].parse().expect("apiserver port"),
        etcd_port: cols[2].parse().expect("etcd port"),
        dir: cache_dir().join(cols[3]),
    }
}

/// `hack/cluster.sh <args>` for a profile (its state dir and ports); returns stdout.
pub fn cluster_sh(profile_name: &str, args: &[&str]) -> String {
    cluster_sh_env(profile_name, args, &[])
}

/// The same, with extra environment (e.g. `TLSID_APISERVER_APF`).
pub fn cluster_sh_env(profile_name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let p = profile(profile_name);
    let out = Command::new(repo().join("hack/cluster.sh"))
        .args(args)
        .envs(env.iter().copied())
        .env("TLSID_CLUSTER_DIR", &p.dir)
        .env("TLSID_APISERVER_PORT", p.apiserver_port.to_string())
        .env("TLSID_ETCD_PORT", p.etcd_port.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run hack/cluster.sh");
    assert!(out.status.success(), "hack/cluster.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Start (or reuse) the control plane of a profile; returns its kubeconfig.
pub fn start_profile(name: &str) -> PathBuf {
    let stdout = cluster_sh(name, &["up"]);
    PathBuf::from(stdout.lines().last().expect("kubeconfig path").trim())
}

async fn install_crd(client: &Client) {
    for file in [
        "crds/tlsid.dev_tlsidentities.yaml",
        "crds/tlsid.dev_tlsidentitypolicies.yaml",
        "crds/tlsid.dev_tlsauthorities.yaml",
    ] {
        let yaml = std::fs::read_to_string(repo().join(file)).expect("read crds/");
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(yaml.trim_start_matches("---\n")).expect("parse CRD");
        let api = Api::<CustomResourceDefinition>::all(client.clone());
        api.patch(
            &crd.name_any(),
            &PatchParams::apply("tlsid-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD from crds/");
        tokio::time::timeout(
            TIMEOUT,
            await_condition(api, &crd.name_any(), conditions::is_crd_established()),
        )
        .await
        .expect("CRD established in time")
        .expect("watch CRD");
    }
    test_grants(client).await;
}

/// Label of the namespaces [`namespace`] creates, which the [`TEST_GRANTS`] policy selects.
pub const TEST_GRANTS_LABEL: &str = "tlsid.dev/test-grants";
/// A TlsIdentityPolicy granting the names the suites use that no namespace's built-in rule
/// permits (`*.ns.svc` stands for "some Service", `localhost`/`127.0.0.1` and `*.example.com` for the interop
/// peers on this host), to the namespaces [`namespace`] creates. The tenancy suite uses
/// namespaces without the label.
pub const TEST_GRANTS: &str = "tlsid-tests";

async fn test_grants(client: &Client) {
    let policy: tlsid::api::TlsIdentityPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "tlsid.dev/v1alpha1",
        "kind": "TlsIdentityPolicy",
        "metadata": {"name": TEST_GRANTS},
        "spec": {
            "namespaceSelector": {"matchLabels": {TEST_GRANTS_LABEL: "true"}},
            "dnsNames": ["*.ns.svc", "*.ns.svc.cluster.local", "localhost", "*.example.com"],
            "ipAddresses": ["127.0.0.0/8", "10.0.0.0/8", "::1/128"],
            "uris": ["spiffe://cluster.local/*"],
        }
    }))
    .unwrap();
    Api::<tlsid::api::TlsIdentityPolicy>::all(client.clone())
        .patch(
            TEST_GRANTS,
            &PatchParams::apply("tlsid-tests").force(),
            &Patch::Apply(&policy),
        )
        .await
        .expect("apply the tests' TlsIdentityPolicy");
}

/// Apply the chart's ClusterRole, ClusterRoleBinding and leader-election rules (from
/// `deploy/tlsid.yaml`, the chart rendered with its defaults) to a ServiceAccount of our own,
/// and write a kubeconfig with a token for it.
async fn controller_identity(client: &Client, admin: &Path) -> PathBuf {
    use k8s_openapi::api::{
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role},
    };
    let apply = PatchParams::apply("tlsid-tests").force();
    let deploy = read(&repo().join("deploy/tlsid.yaml"));
    let docs: Vec<serde_json::Value> = deploy
        .split("\n---")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("deploy/tlsid.yaml has no {kind}"))
            .clone()
    };
    let cluster_role: ClusterRole = serde_json::from_value(of_kind("ClusterRole")).unwrap();
    let role: Role = serde_json::from_value(of_kind("Role")).unwrap();
    let mut binding: ClusterRoleBinding =
        serde_json::from_value(of_kind("ClusterRoleBinding")).unwrap();
    for subject in binding.subjects.iter_mut().flatten() {
        subject.name = CONTROLLER_SA.into();
        subject.namespace = Some(CONTROLLER_SA_NS.into());
    }
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": CONTROLLER_SA_NS}}))
            .unwrap();
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": CONTROLLER_SA}})).unwrap();
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), CONTROLLER_SA_NS);
    sas.patch(CONTROLLER_SA, &apply, &Patch::Apply(&sa))
        .await
        .expect("apply ServiceAccount");
    Api::<ClusterRole>::all(client.clone())
        .patch(
            &cluster_role.name_any(),
            &apply,
            &Patch::Apply(&cluster_role),
        )
        .await
        .expect("apply the chart's ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(&binding.name_any(), &apply, &Patch::Apply(&binding))
        .await
        .expect("apply the chart's ClusterRoleBinding");
    let leader_rules: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": LEADER_ELECTION_ROLE},
        "rules": role.rules,
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .patch(LEADER_ELECTION_ROLE, &apply, &Patch::Apply(&leader_rules))
        .await
        .expect("apply the leader-election rules");
    token_kubeconfig(client, admin, CONTROLLER_SA_NS, CONTROLLER_SA, "controller").await
}

/// A kubeconfig for ServiceAccount `ns/name` (a fresh token), next to the admin kubeconfig.
async fn token_kubeconfig(
    client: &Client,
    admin: &Path,
    ns: &str,
    name: &str,
    file: &str,
) -> PathBuf {
    use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
    let request: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 86400}}),
    )
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("token for a ServiceAccount")
        .status
        .expect("token")
        .token;
    // The admin kubeconfig's cluster entry, with the ServiceAccount's token as the user.
    let mut kc: serde_json::Value =
        serde_yaml_ng::from_str(&read(admin)).expect("parse the admin kubeconfig");
    let cluster_name = kc["clusters"][0]["name"].clone();
    kc["users"] = serde_json::json!([{"name": name, "user": {"token": token}}]);
    kc["contexts"] = serde_json::json!([{"name": name,
        "context": {"cluster": cluster_name, "user": name}}]);
    kc["current-context"] = name.into();
    let path = admin.with_file_name(format!("{file}.kubeconfig"));
    std::fs::write(&path, serde_yaml_ng::to_string(&kc).unwrap()).expect("write kubeconfig");
    path
}

/// A ServiceAccount `ns/name` bound to ClusterRole `role` in `ns`; returns a kubeconfig for it.
pub async fn service_account_kubeconfig(
    client: &Client,
    admin: &Path,
    ns: &str,
    name: &str,
    role: &str,
) -> PathBuf {
    use k8s_openapi::api::{core::v1::ServiceAccount, rbac::v1::RoleBinding};
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the ServiceAccount");
    token_kubeconfig(client, admin, ns, name, &format!("{ns}-{name}")).await
}

/// A client from a kubeconfig file.
pub async fn client_for(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Grant the controllers under test the chart's leader-election rules in `ns` (where their
/// Lease lives), as the chart's Role does in the release namespace.
pub async fn grant_leader_election(client: &Client, ns: &str) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tlsid-leader-election"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": LEADER_ELECTION_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER_SA, "namespace": CONTROLLER_SA_NS}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the leader-election rules");
}

impl Cluster {
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }
}

/// A fresh namespace named after the test, granted the suites' names ([`TEST_GRANTS`]).
pub async fn namespace(client: &Client, test: &str) -> String {
    namespace_labelled(client, test, &[(TEST_GRANTS_LABEL, "true")]).await
}

/// A fresh namespace named after the test, with these labels.
pub async fn namespace_labelled(client: &Client, test: &str, labels: &[(&str, &str)]) -> String {
    let suffix: u32 = rand::random::<u32>() % 1_000_000;
    let name = format!(
        "{}-{suffix}",
        test.replace('_', "-").chars().take(40).collect::<String>()
    );
    let labels: std::collections::BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))
            .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    grant_leader_election(client, &name).await;
    name
}

/// A real `tlsid controller` process watching one namespace, with its CA in that namespace.
/// Killed on drop. Its log goes to `target/test-logs/<namespace>.log`.
pub struct Controller {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

/// The TlsAuthority a test's controller writes: named after its log (the test's namespace, or
/// that plus a replica suffix), cut to a DNS label.
pub fn authority_name(log: &str) -> String {
    let mut name: String = log
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

impl Controller {
    pub async fn start(cluster: &Cluster, ns: &str) -> Self {
        Self::start_with(cluster, ns, &["--watch-namespace", ns, "--namespace", ns]).await
    }

    /// A controller with these arguments (after `controller --listen ...`), logging to
    /// `target/test-logs/<log>.log`; returns once it is ready (caches synced, CA loaded).
    pub async fn start_with(cluster: &Cluster, log: &str, args: &[&str]) -> Self {
        let c = Self::spawn(cluster, log, args);
        c.wait_ready().await;
        c
    }

    /// Start without waiting for readiness.
    pub fn spawn(cluster: &Cluster, log: &str, args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let logs = repo().join("target/test-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let authority = authority_name(log);
        let log = logs.join(format!("{log}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tlsid"))
            .arg("controller")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            // Every test's controller is an install named `tlsid` (the default, which serves
            // unlabelled identities); each keeps a TlsAuthority of its own.
            .args(["--authority", &authority])
            .args(args)
            .env("KUBECONFIG", &cluster.controller_kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("TLSID_TEST_CONTROLLER_LOG")
                    .unwrap_or_else(|_| "info,tlsid=debug".into()),
            )
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start controller");
        Self { child, port, log }
    }

    /// Wait until this replica is (`true`) or is not (`false`) the confirmed leader.
    pub async fn wait_leader(&self, leading: bool) {
        let want = if leading { 1.0 } else { 0.0 };
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.metric("tlsid_leader ").await != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tlsid_leader never became {want}; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Ok(body) = http_get(self.port, "/readyz").await
                && body.starts_with("HTTP/1.1 200")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller not ready; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .await
            .expect("scrape metrics")
    }

    /// Value of a metric line starting with `prefix` (summed over matching series).
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Wait until the controller has finished at least `n` reconciles.
    pub async fn wait_reconciled(&self, n: f64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.metric("tlsid_reconcile_duration_seconds_count").await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} reconciles"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory of the controller process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("controller process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// CPU time the controller process has used (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("controller process stat");
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// Whether the controller process is still running (it did not crash).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stop as the kubelet does: SIGTERM (the controller drains and releases its Lease), then
    /// SIGKILL if it has not exited within 10 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL: no draining, no Lease release.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Write `object` (JSON) straight into etcd under `key`, past the apiserver's admission and
/// schema: how a value the schema now rejects (written under an older, looser CRD) reaches the
/// controller. Uses etcd's JSON gateway on the test control plane's loopback port.
pub async fn etcd_put(key: &str, object: &serde_json::Value) {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let port: u16 = std::env::var("TLSID_ETCD_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| profile("test").etcd_port);
    etcd_post(
        port,
        "/v3/kv/put",
        &serde_json::json!({
            "key": b64(key.as_bytes()),
            "value": b64(object.to_string().as_bytes()),
        }),
    )
    .await;
}

/// POST to etcd's JSON gateway on the loopback `port`; returns the answer's JSON body.
pub async fn etcd_post(port: u16, path: &str, body: &serde_json::Value) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to etcd");
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "etcd {path} failed: {out}");
    let json = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(json).unwrap_or_default()
}

/// Like [`wait_identity`], with a longer bound for conditions that follow a slow clock (a CA
/// that expires in 90 s).
pub async fn wait_identity_for(
    api: &Api<TlsIdentity>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(Option<&TlsIdentity>) -> bool,
) -> TlsIdentity {
    let found = tokio::time::timeout(
        timeout,
        await_condition(api.clone(), name, move |o: Option<&TlsIdentity>| cond(o)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {name}: {what}"))
    .expect("watch");
    found.unwrap_or_else(|| panic!("{name} vanished while waiting for {what}"))
}

pub fn ready(obj: Option<&TlsIdentity>) -> bool {
    condition(obj, "Ready").is_some_and(|(s, _)| s == "True")
}

pub fn condition(obj: Option<&TlsIdentity>, type_: &str) -> Option<(String, String)> {
    let c = obj?.condition(type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

/// Wait until `cond` holds for the named identity; returns it.
pub async fn wait_identity(
    api: &Api<TlsIdentity>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&TlsIdentity>) -> bool,
) -> TlsIdentity {
    let found = tokio::time::timeout(
        TIMEOUT,
        await_condition(api.clone(), name, move |o: Option<&TlsIdentity>| cond(o)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {name}: {what}"))
    .expect("watch");
    found.unwrap_or_else(|| panic!("{name} vanished while waiting for {what}"))
}

pub async fn wait_secret(
    api: &Api<Secret>,
    name: &str,
    what: &str,
    cond: impl Fn(Option<&Secret>) -> bool,
) -> Option<Secret> {
    tokio::time::timeout(
        TIMEOUT,
        await_condition(api.clone(), name, move |o: Option<&Secret>| cond(o)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for Secret {name}: {what}"))
    .expect("watch")
}

pub fn data<'a>(secret: &'a Secret, key: &str) -> &'a [u8] {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .unwrap_or_default()
}

/// `openssl verify` the Secret's leaf against its own `ca.crt`, with the rest of `tls.crt` as
/// untrusted intermediates: what a peer does.
pub fn openssl_verify(secret: &Secret, purpose: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let certs = tlsid::pki::parse_pem_certs(data(secret, "tls.crt")).map_err(|e| e.to_string())?;
    let leaf = dir.path().join("leaf.pem");
    let chain = dir.path().join("chain.pem");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&leaf, tlsid::pki::certs_to_pem(&certs[..1])).unwrap();
    std::fs::write(&chain, tlsid::pki::certs_to_pem(&certs[1..])).unwrap();
    std::fs::write(&ca, data(secret, "ca.crt")).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg("-purpose")
        .arg(purpose);
    if certs.len() > 1 {
        cmd.arg("-untrusted").arg(&chain);
    }
    let out = cmd.arg(&leaf).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// === one test's environment: a namespace, its controller, the APIs ===

/// A `TlsIdentity` as `kubectl apply` would send it.
pub fn identity(name: &str, spec: serde_json::Value) -> TlsIdentity {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tlsid.dev/v1alpha1",
        "kind": "TlsIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("identity")
}

pub struct Env {
    pub ids: Api<TlsIdentity>,
    pub secrets: Api<Secret>,
    pub ns: String,
    pub controller: Controller,
}

/// A fresh namespace named after the test, with its own controller.
pub async fn setup(test: &str) -> Env {
    let cluster = cluster().await;
    let ns = namespace(&cluster.client().await, test).await;
    setup_in(ns).await
}

/// Like [`setup`], with more controller flags.
pub async fn setup_with(test: &str, flags: &[&str]) -> Env {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let ns = namespace(&client, test).await;
    let mut args = vec!["--watch-namespace", ns.as_str(), "--namespace", ns.as_str()];
    args.extend_from_slice(flags);
    let controller = Controller::start_with(cluster, &ns, &args).await;
    Env {
        ids: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client, &ns),
        ns,
        controller,
    }
}

/// A controller for `ns` (which the caller may have prepared, e.g. with a CA Secret).
pub async fn setup_in(ns: String) -> Env {
    let cluster = cluster().await;
    let client = cluster.client().await;
    let controller = Controller::start(cluster, &ns).await;
    Env {
        ids: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client, &ns),
        ns,
        controller,
    }
}

/// Create an identity and wait until it is Ready.
pub async fn create(env: &Env, id: &TlsIdentity) -> TlsIdentity {
    env.ids
        .create(&PostParams::default(), id)
        .await
        .expect("create identity");
    wait_identity(&env.ids, &id.name_any(), "Ready", ready).await
}

pub fn serial(id: &TlsIdentity) -> String {
    id.status
        .as_ref()
        .and_then(|s| s.serial_number.clone())
        .unwrap_or_default()
}

/// One row of the fault table: printed, and appended to `target/faults.md`, which `make test`
/// shows after the tests (cargo hides a passing test's output).
pub fn fault_row(fault: &str, outcome: &str) {
    use std::io::Write;
    println!("FAULT | {fault} | {outcome}");
    let path = repo().join("target/faults.md");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "| {fault} | {outcome} |");
    }
}

/// Create `{prefix}0..{prefix}{n-1}` (each with the DNS name `<name>.<domain>`) at once, then wait
/// until every one is Ready.
pub async fn create_ready(ids: &Api<TlsIdentity>, prefix: &str, n: usize, domain: &str) {
    for i in 0..n {
        let name = format!("{prefix}{i}");
        ids.create(
            &PostParams::default(),
            &identity(
                &name,
                serde_json::json!({"dnsNames": [format!("{name}.{domain}")]}),
            ),
        )
        .await
        .expect("create identity");
    }
    for i in 0..n {
        wait_identity(ids, &format!("{prefix}{i}"), "Ready", ready).await;
    }
}

/// Events with `reason` in `ns` (a series counts as its count).
pub async fn events(client: &Client, ns: &str, reason: &str) -> usize {
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list Events")
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.count.unwrap_or(1).max(1) as usize)
        .sum()
}

/// The count of Events with `reason`, once there are at least `at_least` (Events are published
/// after the status write a test waits for).
pub async fn events_at_least(client: &Client, ns: &str, reason: &str, at_least: usize) -> usize {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let n = events(client, ns, reason).await;
        if n >= at_least {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} {reason} Events, want at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tlsid ARGS` (the binary under test) as cluster-admin; its stdout, or a failed test with its
/// stderr.
pub fn tlsid_cli(cluster: &Cluster, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsid"))
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("run tlsid");
    assert!(
        out.status.success(),
        "tlsid {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A real ValidatingAdmissionPolicy and its binding, refusing (422, with `message`) the requests
/// `rules` match in namespace `ns` whenever `expression` is false. Policies take effect
/// asynchronously: callers wait for a probe to be refused before relying on it.
pub struct Denial {
    policies: Api<kube::api::DynamicObject>,
    bindings: Api<kube::api::DynamicObject>,
    pub name: String,
}

impl Denial {
    pub async fn install(
        client: &Client,
        name: &str,
        ns: &str,
        rules: serde_json::Value,
        expression: &str,
        message: &str,
    ) -> Self {
        let gvk = |kind: &str| {
            kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                kind,
            ))
        };
        let policies: Api<kube::api::DynamicObject> =
            Api::all_with(client.clone(), &gvk("ValidatingAdmissionPolicy"));
        let bindings: Api<kube::api::DynamicObject> =
            Api::all_with(client.clone(), &gvk("ValidatingAdmissionPolicyBinding"));
        let policy = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": rules},
                "validations": [{"expression": expression, "message": message}]
            }
        });
        let binding = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
            }
        });
        policies
            .create(
                &PostParams::default(),
                &serde_json::from_value(policy).unwrap(),
            )
            .await
            .expect("create the admission policy");
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(binding).unwrap(),
            )
            .await
            .expect("bind the admission policy");
        Self {
            policies,
            bindings,
            name: name.to_string(),
        }
    }

    /// Take the policy away (best effort: a test that ends without it cleans up here too).
    pub async fn remove(self) {
        let params = kube::api::DeleteParams::default();
        let _ = self.bindings.delete(&self.name, &params).await;
        let _ = self.policies.delete(&self.name, &params).await;
    }
}
