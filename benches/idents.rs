//! `make bench` / `hack/bench.sh`: tlsid against a real control plane.
//!
//! Not a micro-benchmark (harness = false): one run per N measures, against the apiserver that
//! `hack/bench.sh` starts and a controller process it runs for this N,
//!
//! - calibration: the time the apiserver takes to create N plain `kubernetes.io/tls` Secrets of
//!   the size tlsid writes, with the same client concurrency, no controller involved;
//! - the time from the first of N `TlsIdentity` creates until all N are Ready (each Secret is then
//!   checked: `tls.crt` parses and is signed by a certificate in `ca.crt`, `tls.key` is a key);
//! - mutating API requests per issuance, from the apiserver's `apiserver_request_total`, by
//!   resource (Secrets, identity status, Events), minus the bench's own N creates;
//! - mutating API requests during an idle window after convergence;
//! - the controller's peak RSS (`VmHWM`).
//!
//! Usage (normally through `hack/bench.sh`):
//!
//! ```text
//! idents run      # one N; environment below; writes <out>/row-<N>.json
//! idents report   # every row-*.json -> markdown table on stdout and <out>/report.md
//! ```
//!
//! `run` reads KUBECONFIG and
//! `TLSID_BENCH_N`, `TLSID_BENCH_NAMESPACE` (identities; calibration uses `<ns>-cal`),
//! `TLSID_BENCH_CONTROLLER_PID`, `TLSID_BENCH_CONTROLLER_METRICS` (host:port of its /metrics),
//! `TLSID_BENCH_CONTROLLER_CONCURRENCY` (only reported), `TLSID_BENCH_IDLE_SECS` (default 60),
//! `TLSID_BENCH_PARALLELISM` (client in-flight creates, default 32),
//! `TLSID_BENCH_TIMEOUT_SECS` (default 600), `TLSID_BENCH_OUT` (default target/bench).
//!
//! Exit status: 0 when the figures were measured (aims met or not), non-zero when something broke
//! (identities not Ready within the timeout, an invalid Secret, an API error).

use anyhow::{Context as _, anyhow, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, PostParams},
    runtime::watcher,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tlsid::api::{TlsIdentity, TlsIdentitySpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Aims from the issue.
const AIM_WRITES_PER_ISSUANCE: f64 = 3.0;
const AIM_IDLE_WRITES: u64 = 0;
const AIM_READY_RATIO: f64 = 2.0;
const AIM_RSS_MIB: f64 = 50.0;
const AIM_RSS_AT_N: usize = 1000;

/// Sizes of the values in a tlsid Secret with the default key (ECDSA P-256) and a one-name spec,
/// as measured on a real run (`secret bytes` in the report shows the actual mean next to this).
const CAL_TLS_CRT: usize = 700;
const CAL_TLS_KEY: usize = 241;
const CAL_CA_CRT: usize = 570;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("run") => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(RunConfig::from_env()?))
        }
        Some("report") => report(&out_dir()),
        _ => {
            // Plain `cargo bench` lands here: the bench needs a control plane and a controller.
            eprintln!(
                "idents: needs a control plane and a controller; run `hack/bench.sh` (or `make bench`)."
            );
            eprintln!("usage: idents run | idents report   (see benches/idents.rs)");
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

struct RunConfig {
    n: usize,
    namespace: String,
    controller_pid: u32,
    controller_metrics: String,
    controller_concurrency: Option<u32>,
    idle: Duration,
    parallelism: usize,
    timeout: Duration,
    out: PathBuf,
}

fn env_req(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set (run through hack/bench.sh)"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| anyhow!("{name}={v}: {e}")),
        _ => Ok(default),
    }
}

fn out_dir() -> PathBuf {
    std::env::var_os("TLSID_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

impl RunConfig {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            n: env_req("TLSID_BENCH_N")?.parse().context("TLSID_BENCH_N")?,
            namespace: env_req("TLSID_BENCH_NAMESPACE")?,
            controller_pid: env_req("TLSID_BENCH_CONTROLLER_PID")?
                .parse()
                .context("TLSID_BENCH_CONTROLLER_PID")?,
            controller_metrics: env_req("TLSID_BENCH_CONTROLLER_METRICS")?,
            controller_concurrency: std::env::var("TLSID_BENCH_CONTROLLER_CONCURRENCY")
                .ok()
                .and_then(|v| v.parse().ok()),
            idle: Duration::from_secs(env_or("TLSID_BENCH_IDLE_SECS", 60u64)?),
            parallelism: env_or("TLSID_BENCH_PARALLELISM", 32usize)?.max(1),
            timeout: Duration::from_secs(env_or("TLSID_BENCH_TIMEOUT_SECS", 600u64)?),
            out: out_dir(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// One row of the report

#[derive(Serialize, Deserialize, Debug, Default)]
struct Row {
    n: usize,
    parallelism: usize,
    controller_concurrency: Option<u32>,
    /// Seconds to create N plain Secrets.
    calibration_s: f64,
    /// Seconds from the first identity create until every create call returned.
    creates_s: f64,
    /// Seconds from the first identity create until the 50% / 90% / 100%-th was seen Ready.
    ready_50_s: f64,
    ready_90_s: f64,
    ready_s: f64,
    /// Seconds to list and verify the N Secrets afterwards (not part of `ready_s`).
    verify_s: f64,
    /// Controller mutating requests during convergence, by bucket (bench creates subtracted).
    writes: Writes,
    /// Requests of the convergence window answered with a non-2xx code (conflicts, throttling...).
    writes_non_2xx: u64,
    /// 429 answers to anyone during convergence (apiserver max-in-flight throttling).
    throttled_429: u64,
    idle_s: f64,
    idle_writes: Writes,
    /// Mutating requests to other resources (the apiserver's own leases...) during the idle window.
    idle_other_writes: u64,
    idle_reconciliations: u64,
    reconciliations: u64,
    issuances: u64,
    reconcile_errors: u64,
    reconcile_mean_s: f64,
    rss_peak_mib: f64,
    rss_end_mib: f64,
    cal_secret_bytes: usize,
    secret_bytes_mean: usize,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
struct Writes {
    secrets: u64,
    status: u64,
    /// Writes to the identity object itself (not its status), other than the bench's creates.
    identities: u64,
    events: u64,
}

impl Writes {
    fn total(&self) -> u64 {
        self.secrets + self.status + self.identities + self.events
    }
}

// ---------------------------------------------------------------------------------------------
// run

async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the apiserver (KUBECONFIG)")?;
    let n = cfg.n;
    let ns = cfg.namespace.clone();
    let cal_ns = format!("{ns}-cal");
    log(&format!(
        "N={n}: namespaces {ns}, {cal_ns}; {} in-flight creates",
        cfg.parallelism
    ));
    for name in [&ns, &cal_ns] {
        create_namespace(&client, name).await?;
    }

    // --- calibration: N plain Secrets of the same size, same client concurrency.
    let cal_secret_bytes = CAL_TLS_CRT + CAL_TLS_KEY + CAL_CA_CRT;
    let calibration = calibrate(&client, &cal_ns, n, cfg.parallelism).await?;
    log(&format!(
        "calibration: {n} Secrets ({cal_secret_bytes} B of data each) created in {calibration:.2?}"
    ));

    // --- identities: watch first, then create all N at once (bounded in flight).
    let identities: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    let before = scrape_apiserver(&client).await?;
    let ctl_before = scrape_controller(&cfg.controller_metrics).await?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let watch_api = identities.clone();
    let watch_task = tokio::spawn(async move {
        let mut synced = Some(synced_tx);
        let mut seen = HashSet::new();
        let mut events = watcher(watch_api, watcher::Config::default()).boxed();
        while let Some(ev) = events.try_next().await? {
            match ev {
                watcher::Event::InitDone => {
                    if let Some(tx) = synced.take() {
                        let _ = tx.send(());
                    }
                }
                watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                    let ready = obj.condition("Ready").is_some_and(|c| c.status == "True");
                    let name = obj.name_any();
                    if ready && seen.insert(name.clone()) && ready_tx.send(name).is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    });
    synced_rx
        .await
        .map_err(|_| anyhow!("identity watch ended before its initial list"))?;

    let t0 = Instant::now();
    let create_api = identities.clone();
    let creates = tokio::spawn(async move {
        stream::iter(0..n)
            .map(|i| {
                let api = create_api.clone();
                async move { api.create(&PostParams::default(), &identity(i)).await }
            })
            .buffer_unordered(cfg.parallelism)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        anyhow::Ok(t0.elapsed())
    });

    let deadline = t0 + cfg.timeout;
    let (mut ready, mut ready_50, mut ready_90) = (0usize, Duration::ZERO, Duration::ZERO);
    let mut last_progress = Instant::now();
    while ready < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_secs(10)), ready_rx.recv()).await {
            Ok(Some(_)) => {
                ready += 1;
                if ready * 2 >= n && ready_50.is_zero() {
                    ready_50 = t0.elapsed();
                }
                if ready * 10 >= n * 9 && ready_90.is_zero() {
                    ready_90 = t0.elapsed();
                }
            }
            Ok(None) => {
                let err = watch_task
                    .await?
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                bail!("identity watch ended after {ready}/{n} Ready: {err}");
            }
            Err(_) => {
                if Instant::now() >= deadline {
                    bail!(
                        "only {ready}/{n} identities Ready after {:?} (TLSID_BENCH_TIMEOUT_SECS)",
                        cfg.timeout
                    );
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            log(&format!("  {ready}/{n} Ready after {:.1?}", t0.elapsed()));
            last_progress = Instant::now();
        }
    }
    let ready_all = t0.elapsed();
    watch_task.abort();
    let creates_s = creates.await?.context("creating identities")?;
    log(&format!(
        "all {n} Ready after {ready_all:.2?} (creates returned after {creates_s:.2?})"
    ));

    // --- every Secret valid.
    let tv = Instant::now();
    let secret_bytes_mean = verify_secrets(&client, &ns, n).await?;
    let verify = tv.elapsed();
    log(&format!(
        "verified {n} Secrets in {verify:.2?} (mean data {secret_bytes_mean} B)"
    ));

    // --- writes: wait for the trailing Events of the last issuances, then count.
    let (after, ctl_after) =
        settle(&client, &cfg.controller_metrics, &before, &ctl_before, n).await?;
    let delta = after.delta(&before);
    let mut writes = delta.writes();
    writes.identities = writes.identities.saturating_sub(n as u64); // the bench's own creates
    let writes_non_2xx = delta.non_2xx();
    let throttled_429 = delta.code_total("429");
    let issuances = ctl_after.issuances.saturating_sub(ctl_before.issuances);
    let reconciliations = ctl_after
        .reconciliations
        .saturating_sub(ctl_before.reconciliations);
    let reconcile_errors = ctl_after.errors.saturating_sub(ctl_before.errors);
    let d_count = ctl_after.duration_count - ctl_before.duration_count;
    let reconcile_mean_s = if d_count > 0.0 {
        (ctl_after.duration_sum - ctl_before.duration_sum) / d_count
    } else {
        0.0
    };
    log(&format!(
        "writes: secrets {} status {} identities {} events {} (non-2xx {writes_non_2xx}, 429s {throttled_429}); issuances {issuances}, reconciliations {reconciliations}, errors {reconcile_errors}",
        writes.secrets, writes.status, writes.identities, writes.events
    ));

    // --- idle.
    log(&format!("idle window {:?}", cfg.idle));
    let ti = Instant::now();
    tokio::time::sleep(cfg.idle).await;
    let idle_s = ti.elapsed().as_secs_f64();
    let idle_end = scrape_apiserver(&client).await?;
    let ctl_idle_end = scrape_controller(&cfg.controller_metrics).await?;
    let idle_delta = idle_end.delta(&after);
    let idle_writes = idle_delta.writes();
    let idle_other_writes = idle_delta.other_writes();
    let idle_reconciliations = ctl_idle_end
        .reconciliations
        .saturating_sub(ctl_after.reconciliations);
    log(&format!(
        "idle: {} controller writes, {idle_other_writes} other (apiserver-internal) writes, {idle_reconciliations} reconciliations",
        idle_writes.total()
    ));
    if !idle_delta.by_key.is_empty() {
        for (k, v) in idle_delta.mutating_by_resource() {
            log(&format!("  idle {k}: {v}"));
        }
    }

    let (rss_peak_mib, rss_end_mib) = rss(cfg.controller_pid)?;
    log(&format!(
        "controller pid {}: VmHWM {rss_peak_mib:.1} MiB, VmRSS {rss_end_mib:.1} MiB",
        cfg.controller_pid
    ));

    let row = Row {
        n,
        parallelism: cfg.parallelism,
        controller_concurrency: cfg.controller_concurrency,
        calibration_s: calibration.as_secs_f64(),
        creates_s: creates_s.as_secs_f64(),
        ready_50_s: ready_50.as_secs_f64(),
        ready_90_s: ready_90.as_secs_f64(),
        ready_s: ready_all.as_secs_f64(),
        verify_s: verify.as_secs_f64(),
        writes,
        writes_non_2xx,
        throttled_429,
        idle_s,
        idle_writes,
        idle_other_writes,
        idle_reconciliations,
        reconciliations,
        issuances,
        reconcile_errors,
        reconcile_mean_s,
        rss_peak_mib,
        rss_end_mib,
        cal_secret_bytes,
        secret_bytes_mean,
    };
    std::fs::create_dir_all(&cfg.out)?;
    let path = cfg.out.join(format!("row-{n}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&row)?)?;
    log(&format!("wrote {}", path.display()));
    Ok(())
}

fn log(msg: &str) {
    eprintln!("idents: {msg}");
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            bail!("namespace {name} already exists: the bench wants a fresh one")
        }
        Err(e) => Err(e).context(format!("creating namespace {name}")),
    }
}

fn identity(i: usize) -> TlsIdentity {
    let name = format!("id-{i:05}");
    let spec = TlsIdentitySpec {
        dns_names: vec![format!("{name}.bench.svc")],
        ..Default::default()
    };
    TlsIdentity::new(&name, spec)
}

/// Deterministic filler shaped like PEM (base64 alphabet, 64-column lines).
fn pem_like(tag: &str, len: usize, seed: usize) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let head = format!("-----BEGIN {tag}-----\n");
    let tail = format!("-----END {tag}-----\n");
    let body = len.saturating_sub(head.len() + tail.len());
    let mut out = head.into_bytes();
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..body {
        if i % 65 == 64 {
            out.push(b'\n');
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(B64[(x % 64) as usize]);
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

async fn calibrate(
    client: &Client,
    ns: &str,
    n: usize,
    parallelism: usize,
) -> anyhow::Result<Duration> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secrets: Vec<Secret> = (0..n)
        .map(|i| {
            let name = format!("cal-{i:05}-tls");
            Secret {
                metadata: ObjectMeta {
                    name: Some(name),
                    // Same shape as tlsid's labels/annotation, other keys (nothing watches these).
                    labels: Some(BTreeMap::from([
                        ("bench.tlsid.dev/managed-by".into(), "idents".into()),
                        ("bench.tlsid.dev/identity".into(), format!("id-{i:05}")),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        "bench.tlsid.dev/serial".into(),
                        format!("{:032x}", i as u128 * 7919),
                    )])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(BTreeMap::from([
                    (
                        "tls.crt".into(),
                        ByteString(pem_like("CERTIFICATE", CAL_TLS_CRT, i)),
                    ),
                    (
                        "tls.key".into(),
                        ByteString(pem_like("PRIVATE KEY", CAL_TLS_KEY, i + n)),
                    ),
                    (
                        "ca.crt".into(),
                        ByteString(pem_like("CERTIFICATE", CAL_CA_CRT, 0)),
                    ),
                ])),
                ..Default::default()
            }
        })
        .collect();
    let t0 = Instant::now();
    stream::iter(secrets)
        .map(|s| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &s).await }
        })
        .buffer_unordered(parallelism)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("creating calibration Secrets")?;
    Ok(t0.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Secret verification

/// Every identity's Secret exists and holds a certificate signed by a CA in its `ca.crt` and a
/// private key. Returns the mean size of the Secrets' data.
async fn verify_secrets(client: &Client, ns: &str, n: usize) -> anyhow::Result<usize> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let identities: Api<TlsIdentity> = Api::namespaced(client.clone(), ns);
    let secrets = api
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            tlsid::api::MANAGED_BY_LABEL,
            tlsid::api::MANAGED_BY_VALUE
        )))
        .await?;
    let by_name: HashMap<String, &Secret> =
        secrets.items.iter().map(|s| (s.name_any(), s)).collect();
    let idents = identities.list(&ListParams::default()).await?;
    ensure!(
        idents.items.len() == n,
        "{} identities listed, want {n}",
        idents.items.len()
    );
    let mut bytes = 0usize;
    let mut failures = Vec::new();
    for id in &idents.items {
        let secret_name = id.secret_name();
        let Some(secret) = by_name.get(&secret_name) else {
            failures.push(format!("{secret_name}: missing"));
            continue;
        };
        let serial = id
            .status
            .as_ref()
            .and_then(|s| s.serial_number.clone())
            .unwrap_or_default();
        match check_secret(secret, &serial) {
            Ok(b) => bytes += b,
            Err(e) => failures.push(format!("{secret_name}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {n} Secrets invalid, e.g. {}",
            failures.len(),
            failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(bytes / n.max(1))
}

fn check_secret(secret: &Secret, status_serial: &str) -> anyhow::Result<usize> {
    use x509_parser::pem::Pem;
    ensure!(
        secret.type_.as_deref() == Some("kubernetes.io/tls"),
        "type {:?}",
        secret.type_
    );
    let data = secret.data.as_ref().ok_or_else(|| anyhow!("no data"))?;
    let get = |k: &str| {
        data.get(k)
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| anyhow!("{k} missing"))
    };
    let (crt, key, ca) = (get("tls.crt")?, get("tls.key")?, get("ca.crt")?);

    let key_pem = Pem::iter_from_buffer(key)
        .next()
        .ok_or_else(|| anyhow!("tls.key: no PEM block"))?
        .context("tls.key")?;
    ensure!(
        key_pem.label.ends_with("PRIVATE KEY") && !key_pem.contents.is_empty(),
        "tls.key: a {} block",
        key_pem.label
    );

    let leaf_pem = Pem::iter_from_buffer(crt)
        .next()
        .ok_or_else(|| anyhow!("tls.crt: no PEM block"))?
        .context("tls.crt")?;
    let leaf = leaf_pem.parse_x509().map_err(|e| anyhow!("tls.crt: {e}"))?;
    let roots: Vec<Pem> = Pem::iter_from_buffer(ca)
        .collect::<Result<_, _>>()
        .context("ca.crt")?;
    ensure!(!roots.is_empty(), "ca.crt: no certificate");
    let mut issuer_found = false;
    for root in &roots {
        let root = root.parse_x509().map_err(|e| anyhow!("ca.crt: {e}"))?;
        if root.subject() == leaf.issuer() {
            issuer_found = true;
            if leaf.verify_signature(Some(root.public_key())).is_ok() {
                let serial = leaf.raw_serial_as_string().replace(':', "");
                let norm = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
                ensure!(
                    norm(&serial) == norm(status_serial),
                    "serial {serial} in the Secret, {status_serial} in status"
                );
                return Ok(data.values().map(|v| v.0.len()).sum());
            }
        }
    }
    bail!(if issuer_found {
        "tls.crt: signature does not verify with ca.crt"
    } else {
        "tls.crt: issuer not in ca.crt"
    })
}

// ---------------------------------------------------------------------------------------------
// apiserver metrics

const MUTATING: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

/// `apiserver_request_total` by (verb, group, resource, subresource, code).
#[derive(Default, Clone)]
struct RequestCounts {
    by_key: BTreeMap<(String, String, String, String, String), u64>,
}

impl RequestCounts {
    fn parse(text: &str) -> Self {
        let mut by_key = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let labels = parse_labels(labels);
            let value: f64 = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let key = (
                get("verb"),
                get("group"),
                get("resource"),
                get("subresource"),
                get("code"),
            );
            *by_key.entry(key).or_insert(0) += value as u64;
        }
        Self { by_key }
    }

    fn delta(&self, before: &Self) -> Self {
        let mut by_key = BTreeMap::new();
        for (k, v) in &self.by_key {
            let d = v.saturating_sub(before.by_key.get(k).copied().unwrap_or(0));
            if d > 0 {
                by_key.insert(k.clone(), d);
            }
        }
        Self { by_key }
    }

    fn mutating(&self) -> impl Iterator<Item = (&(String, String, String, String, String), u64)> {
        self.by_key
            .iter()
            .filter(|((verb, ..), _)| MUTATING.contains(&verb.as_str()))
            .map(|(k, v)| (k, *v))
    }

    /// Mutating requests to what the controller writes.
    fn writes(&self) -> Writes {
        let mut w = Writes::default();
        for ((_, group, resource, sub, _), v) in self.mutating() {
            match (group.as_str(), resource.as_str(), sub.as_str()) {
                ("", "secrets", _) => w.secrets += v,
                ("tlsid.dev", "tlsidentities", "status") => w.status += v,
                ("tlsid.dev", "tlsidentities", _) => w.identities += v,
                (_, "events", _) => w.events += v,
                _ => {}
            }
        }
        w
    }

    fn other_writes(&self) -> u64 {
        self.mutating()
            .filter(|((_, group, resource, ..), _)| {
                !matches!(
                    (group.as_str(), resource.as_str()),
                    ("", "secrets") | ("tlsid.dev", "tlsidentities") | (_, "events")
                )
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Non-2xx answers to mutating requests on what the controller writes.
    fn non_2xx(&self) -> u64 {
        self.mutating()
            .filter(|((_, group, resource, _, code), _)| {
                !code.starts_with('2')
                    && matches!(
                        (group.as_str(), resource.as_str()),
                        ("", "secrets") | ("tlsid.dev", "tlsidentities") | (_, "events")
                    )
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn code_total(&self, code: &str) -> u64 {
        self.by_key
            .iter()
            .filter(|((.., c), _)| c == code)
            .map(|(_, v)| *v)
            .sum()
    }

    fn mutating_by_resource(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((verb, group, resource, sub, code), v) in self.mutating() {
            let g = if group.is_empty() { "core" } else { group };
            let r = if sub.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{sub}")
            };
            *out.entry(format!("{verb} {g}/{r} {code}")).or_insert(0) += v;
        }
        out
    }
}

fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut val = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len() - eq - 2;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(key, val);
        rest = &rest[(eq + 2 + end + 1).min(rest.len())..];
    }
    out
}

async fn scrape_apiserver(client: &Client) -> anyhow::Result<RequestCounts> {
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("reading the apiserver's /metrics")?;
    let counts = RequestCounts::parse(&text);
    ensure!(
        !counts.by_key.is_empty(),
        "no apiserver_request_total in the apiserver's /metrics"
    );
    Ok(counts)
}

/// After convergence the controller may still be publishing the last Events: wait until it has
/// counted N issuances and the apiserver's write counters stop moving (1 s unchanged), at most 30 s.
async fn settle(
    client: &Client,
    controller: &str,
    before: &RequestCounts,
    ctl_before: &ControllerCounts,
    n: usize,
) -> anyhow::Result<(RequestCounts, ControllerCounts)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = scrape_apiserver(client).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = scrape_apiserver(client).await?;
        let ctl = scrape_controller(controller).await?;
        let stable = now.delta(before).writes().total() == last.delta(before).writes().total();
        let issued = ctl.issuances.saturating_sub(ctl_before.issuances) >= n as u64;
        if (stable && issued) || Instant::now() >= deadline {
            if !(stable && issued) {
                log("write counters still moving after 30 s; counting what there is");
            }
            return Ok((now, ctl));
        }
        last = now;
    }
}

// ---------------------------------------------------------------------------------------------
// controller metrics and memory

#[derive(Default, Debug)]
struct ControllerCounts {
    reconciliations: u64,
    issuances: u64,
    errors: u64,
    duration_sum: f64,
    duration_count: f64,
}

async fn scrape_controller(addr: &str) -> anyhow::Result<ControllerCounts> {
    let text = http_get(addr, "/metrics")
        .await
        .with_context(|| format!("reading the controller's /metrics at {addr}"))?;
    let mut c = ControllerCounts::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = match line.rsplit_once(' ') {
            Some((n, v)) => (n, v.parse::<f64>().unwrap_or(0.0)),
            None => continue,
        };
        let base = name.split('{').next().unwrap_or(name);
        match base {
            "tlsid_reconciliations_total" => c.reconciliations += value as u64,
            "tlsid_issuances_total" => c.issuances += value as u64,
            "tlsid_reconcile_errors_total" => c.errors += value as u64,
            "tlsid_reconcile_duration_seconds_sum" => c.duration_sum += value,
            "tlsid_reconcile_duration_seconds_count" => c.duration_count += value,
            _ => {}
        }
    }
    Ok(c)
}

/// A minimal HTTP/1.0 GET (the controller's metrics listener is plain HTTP on loopback).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"),
        "{}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}

/// (VmHWM, VmRSS) of a process, MiB.
fn rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("controller pid {pid} is gone"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("bad {line}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

// ---------------------------------------------------------------------------------------------
// report

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn report(out: &Path) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("row-") && name.ends_with(".json") {
            rows.push(
                serde_json::from_slice(&std::fs::read(&path)?)
                    .with_context(|| format!("{}", path.display()))?,
            );
        }
    }
    ensure!(!rows.is_empty(), "no row-*.json in {}", out.display());
    rows.sort_by_key(|r| r.n);

    let mut md = String::new();
    md.push_str("## tlsid bench\n\n");
    md.push_str(&format!(
        "Aims: all N Ready within {AIM_READY_RATIO}x calibration; at most {AIM_WRITES_PER_ISSUANCE} writes per issuance; {AIM_IDLE_WRITES} idle writes; peak RSS under {AIM_RSS_MIB} MiB at N={AIM_RSS_AT_N}.\n\n"
    ));
    md.push_str("| N | calibration s | all-Ready s | ratio | aim ≤2x | writes/issuance (secrets/status/events) | aim ≤3 | idle writes | aim 0 | peak RSS MiB | aim <50 |\n");
    md.push_str("|---:|---:|---:|---:|:---:|---|:---:|---:|:---:|---:|:---:|\n");
    for r in &rows {
        let ratio = r.ready_s / r.calibration_s.max(1e-9);
        let n = r.n.max(1) as f64;
        let w = r.writes;
        let per = w.total() as f64 / n;
        let rss_aim = if r.n >= AIM_RSS_AT_N {
            yes_no(r.rss_peak_mib < AIM_RSS_MIB)
        } else {
            "—"
        };
        let extra = if w.identities > 0 {
            format!(" + {:.2} identity", w.identities as f64 / n)
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {} | {:.2} ({:.2}/{:.2}/{:.2}{extra}) | {} | {} | {} | {:.1} | {} |\n",
            r.n,
            r.calibration_s,
            r.ready_s,
            ratio,
            yes_no(ratio <= AIM_READY_RATIO),
            per,
            w.secrets as f64 / n,
            w.status as f64 / n,
            w.events as f64 / n,
            yes_no(per <= AIM_WRITES_PER_ISSUANCE),
            r.idle_writes.total(),
            yes_no(r.idle_writes.total() == AIM_IDLE_WRITES),
            r.rss_peak_mib,
            rss_aim,
        ));
    }
    md.push_str("\nDetails:\n\n");
    md.push_str("| N | creates returned s | 50% Ready s | 90% Ready s | Ready/s | controller concurrency | client in-flight | issuances | reconciles | reconcile errors | mean reconcile ms | non-2xx writes | 429s | idle s | idle reconciles | idle other writes | RSS at end MiB | Secret data B (calibration / actual) | verify s |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {:.0} | {} | {} | {:.1} | {} / {} | {:.2} |\n",
            r.n,
            r.creates_s,
            r.ready_50_s,
            r.ready_90_s,
            r.n as f64 / r.ready_s.max(1e-9),
            r.controller_concurrency.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
            r.parallelism,
            r.issuances,
            r.reconciliations,
            r.reconcile_errors,
            r.reconcile_mean_s * 1000.0,
            r.writes_non_2xx,
            r.throttled_429,
            r.idle_s,
            r.idle_reconciliations,
            r.idle_other_writes,
            r.rss_end_mib,
            r.cal_secret_bytes,
            r.secret_bytes_mean,
            r.verify_s,
        ));
    }
    md.push_str(
        "\nWrites are `apiserver_request_total` deltas for POST/PUT/PATCH/APPLY/DELETE on Secrets, TlsIdentities (+status) and Events, \
         from just before the first identity create until the counters settle after the last Ready, minus the bench's N creates. \
         Idle writes: the same resources during the idle window; \"idle other writes\" are other resources (the apiserver's own Leases), not counted. \
         Calibration: N plain `kubernetes.io/tls` Secrets of about the same size, same client in-flight limit, no controller involved.\n",
    );
    print!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), &md)?;
    eprintln!("idents: wrote {}", out.join("report.md").display());
    Ok(())
}
