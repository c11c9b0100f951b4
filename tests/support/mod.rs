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
    pub kubeconfig: PathBuf,
}

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
            let cluster = Cluster { kubeconfig };
            install_crd(&cluster.client().await).await;
            cluster
        })
        .await
}

fn start_cluster() -> PathBuf {
    let cache = std::env::var("TLSID_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tlsid")
        });
    let out = Command::new(repo().join("hack/cluster.sh"))
        .arg("up")
        .env("TLSID_CLUSTER_DIR", cache.join("test-cluster"))
        .env("TLSID_APISERVER_PORT", "16443")
        .env("TLSID_ETCD_PORT", "12379")
        .stderr(Stdio::inherit())
        .output()
        .expect("run hack/cluster.sh up");
    assert!(out.status.success(), "hack/cluster.sh up failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("kubeconfig path").trim())
}

async fn install_crd(client: &Client) {
    let path = repo().join("crds/tlsid.dev_tlsidentities.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read crds/");
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

impl Cluster {
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }
}

/// A fresh namespace named after the test.
pub async fn namespace(client: &Client, test: &str) -> String {
    let suffix: u32 = rand::random::<u32>() % 1_000_000;
    let name = format!(
        "{}-{suffix}",
        test.replace('_', "-").chars().take(40).collect::<String>()
    );
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// A real `tlsid controller` process watching one namespace, with its CA in that namespace.
/// Killed on drop. Its log goes to `target/test-logs/<namespace>.log`.
pub struct Controller {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
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
        let log = logs.join(format!("{log}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tlsid"))
            .arg("controller")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "info,tlsid=debug")
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let port: u16 = std::env::var("TLSID_ETCD_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(12379);
    let body = serde_json::json!({
        "key": b64(key.as_bytes()),
        "value": b64(object.to_string().as_bytes()),
    })
    .to_string();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to etcd");
    s.write_all(
        format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "etcd put failed: {out}");
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
