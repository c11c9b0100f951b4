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
//! `TLSID_BENCH_TIMEOUT_SECS` (default 600), `TLSID_BENCH_OUT` (default target/bench), and for
//! the CPU figures `TLSID_BENCH_APISERVER_PID`, `TLSID_BENCH_ETCD_PID`.
//!
//! Besides the table, the log shows every apiserver request made while converging (by verb,
//! resource and code), their mean latencies, CPU used by each process, and any change made to an
//! identity after it was first seen Ready (with a diff of a few): the evidence for the figures.
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
    runtime::{WatchStreamExt, watcher},
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
const CAL_TLS_CRT: usize = 734;
const CAL_TLS_KEY: usize = 241;
const CAL_CA_CRT: usize = 650;

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
            if let Err(e) = RunConfig::from_env().and_then(|cfg| rt.block_on(run(cfg))) {
                // One line, no backtrace: the cause is what matters here.
                eprintln!("idents: error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
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
    /// For CPU figures only.
    apiserver_pid: Option<u32>,
    etcd_pid: Option<u32>,
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
            apiserver_pid: std::env::var("TLSID_BENCH_APISERVER_PID")
                .ok()
                .and_then(|v| v.parse().ok()),
            etcd_pid: std::env::var("TLSID_BENCH_ETCD_PID")
                .ok()
                .and_then(|v| v.parse().ok()),
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
    /// Seconds to create N TlsIdentities where no controller watches (reference only).
    #[serde(default)]
    cal_identities_s: f64,
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
    /// Changes to identities after they were first seen Ready (during convergence).
    #[serde(default)]
    changes_after_ready: u64,
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
    /// CPU used (in cores: CPU seconds per second) by the apiserver during calibration and by the
    /// apiserver and the controller from the first create until all Ready.
    #[serde(default)]
    apiserver_cores_cal: Option<f64>,
    #[serde(default)]
    cpu: CpuCores,
    /// Every non-WATCH apiserver request from the first create until settled (the bench's
    /// creates and list included).
    #[serde(default)]
    requests: u64,
    /// 1/5/15-minute load average of the machine before the run (other work skews the figures).
    #[serde(default)]
    loadavg: String,
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
    // The controller watches only `ns`: calibration objects go to `<ns>-cal`.
    let cal_ns = format!("{ns}-cal");
    log(&format!(
        "N={n}: namespaces {ns}, {cal_ns}; {} in-flight creates",
        cfg.parallelism
    ));
    for name in [&ns, &cal_ns] {
        create_namespace(&client, name).await?;
    }

    // --- warm-up: the first request for a resource pays one-off costs in the apiserver (the
    // custom resource handler and its CEL rules are set up lazily) and the client (connections).
    let warm = Instant::now();
    create_secrets(&client, &cal_ns, "warm", 1, 1).await?;
    create_identities(
        Api::namespaced(client.clone(), &cal_ns),
        "warm",
        1,
        1,
        Instant::now(),
    )
    .await?;
    log(&format!(
        "warm-up (1 Secret, 1 TlsIdentity) took {:.2?}",
        warm.elapsed()
    ));

    // --- calibration: N plain Secrets of the same size, same client concurrency. Then, for the
    // analysis only, N TlsIdentities where no controller watches.
    let cal_secret_bytes = CAL_TLS_CRT + CAL_TLS_KEY + CAL_CA_CRT;
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let api_cpu = CpuMeter::start(cfg.apiserver_pid);
    let calibration = create_secrets(&client, &cal_ns, "cal", n, cfg.parallelism).await?;
    let apiserver_cores_cal = api_cpu.cores();
    log(&format!(
        "calibration: {n} Secrets ({cal_secret_bytes} B of data each) created in {calibration:.2?}"
    ));
    let cal_identities = create_identities(
        Api::namespaced(client.clone(), &cal_ns),
        "cal",
        n,
        cfg.parallelism,
        Instant::now(),
    )
    .await?;
    log(&format!(
        "reference: {n} TlsIdentities created where no controller watches in {cal_identities:.2?}"
    ));

    // --- identities: watch first, then create all N at once (bounded in flight).
    let identities: Api<TlsIdentity> = Api::namespaced(client.clone(), &ns);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watch_task = tokio::spawn(watch_identities(
        identities.clone(),
        ready_tx,
        synced_tx,
        stop_rx,
    ));
    synced_rx
        .await
        .map_err(|_| anyhow!("identity watch ended before its initial list"))?;
    let before = scrape_apiserver(&client).await?;
    let ctl_before = scrape_controller(&cfg.controller_metrics).await?;

    let api_cpu = CpuMeter::start(cfg.apiserver_pid);
    let etcd_cpu = CpuMeter::start(cfg.etcd_pid);
    let ctl_cpu = CpuMeter::start(Some(cfg.controller_pid));
    let self_cpu = CpuMeter::start(Some(std::process::id()));
    let machine_cpu = MachineCpu::start();
    let t0 = Instant::now();
    let creates = tokio::spawn(create_identities(
        identities.clone(),
        "id",
        n,
        cfg.parallelism,
        t0,
    ));

    let deadline = t0 + cfg.timeout;
    let (mut ready, mut ready_50, mut ready_90) = (0usize, Duration::ZERO, Duration::ZERO);
    let mut last_progress = Instant::now();
    let mut creates = Some(creates);
    let mut creates_s = None;
    while ready < n {
        // A failed create would otherwise only show as a timeout.
        if let Some(task) = creates.take_if(|t| t.is_finished()) {
            creates_s = Some(task.await?.context("creating identities")?);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_secs(1)), ready_rx.recv()).await {
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
                let err = match watch_task.await? {
                    Err(e) => e.to_string(),
                    Ok(_) => "stopped".into(),
                };
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
    let cpu = CpuCores {
        apiserver: api_cpu.cores(),
        etcd: etcd_cpu.cores(),
        controller: ctl_cpu.cores(),
        bench: self_cpu.cores(),
        machine: machine_cpu.cores(),
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    };
    log(&format!(
        "CPU cores while converging: {} (calibration: apiserver {}; load average before: {loadavg})",
        cpu.describe(),
        fmt_cores(apiserver_cores_cal)
    ));
    let creates_s = match (creates, creates_s) {
        (Some(task), _) => task.await?.context("creating identities")?,
        (None, Some(d)) => d,
        (None, None) => unreachable!("the create task is either pending or done"),
    };
    log(&format!(
        "all {n} Ready after {ready_all:.2?} (creates returned after {creates_s:.2?})"
    ));

    // --- every Secret valid.
    let tv = Instant::now();
    let (secret_bytes_mean, key_sizes) = verify_secrets(&client, &ns, n).await?;
    let verify = tv.elapsed();
    log(&format!(
        "verified {n} Secrets in {verify:.2?} (mean data {secret_bytes_mean} B: {key_sizes})"
    ));

    // --- writes: wait for the trailing Events of the last issuances, then count.
    let (after, ctl_after) =
        settle(&client, &cfg.controller_metrics, &before, &ctl_before, n).await?;
    let _ = stop_tx.send(());
    let watch_stats = watch_task.await?.context("identity watch")?;
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
    let requests: u64 = delta.by_resource(false).values().sum();
    log(&format!(
        "apiserver requests during convergence (all clients, WATCH left out): {requests}"
    ));
    for (k, v) in delta.by_resource(false) {
        log(&format!("  {k}: {v}"));
    }
    log("mean apiserver latency during convergence:");
    for (k, ms, count) in delta.latencies() {
        log(&format!("  {k}: {ms:.1} ms ({count:.0} requests)"));
    }
    log(&format!(
        "identity changes seen after Ready: {} on {} identities{}",
        watch_stats.changes_after_ready,
        watch_stats.changed_after_ready,
        if watch_stats.examples.is_empty() {
            String::new()
        } else {
            format!("; e.g. {}", watch_stats.examples.join(" | "))
        }
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
    for (k, v) in idle_delta.mutating_by_resource() {
        log(&format!("  idle {k}: {v}"));
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
        cal_identities_s: cal_identities.as_secs_f64(),
        creates_s: creates_s.as_secs_f64(),
        ready_50_s: ready_50.as_secs_f64(),
        ready_90_s: ready_90.as_secs_f64(),
        ready_s: ready_all.as_secs_f64(),
        verify_s: verify.as_secs_f64(),
        writes,
        writes_non_2xx,
        throttled_429,
        changes_after_ready: watch_stats.changes_after_ready,
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
        requests,
        apiserver_cores_cal,
        cpu,
        loadavg,
    };
    std::fs::create_dir_all(&cfg.out)?;
    let path = cfg.out.join(format!("row-{n}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&row)?)?;
    log(&format!("wrote {}", path.display()));
    Ok(())
}

#[derive(Default)]
struct WatchStats {
    /// Modifications of identities already seen Ready.
    changes_after_ready: u64,
    /// How many identities had any.
    changed_after_ready: u64,
    /// A few of them: what changed.
    examples: Vec<String>,
}

/// Report each identity once when it is first seen Ready; count (and describe a few of) the
/// changes made to identities after that, until `stop`.
async fn watch_identities(
    api: Api<TlsIdentity>,
    ready_tx: tokio::sync::mpsc::UnboundedSender<String>,
    synced_tx: tokio::sync::oneshot::Sender<()>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<WatchStats> {
    let mut synced = Some(synced_tx);
    let mut ready_seen: HashMap<String, serde_json::Value> = HashMap::new();
    let mut changed = HashSet::new();
    let mut stats = WatchStats::default();
    // Transient watch errors are retried with backoff (and logged) rather than end the run.
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = &mut stop => break,
        };
        let ev = match ev {
            None => break,
            Some(Err(e)) => {
                log(&format!("identity watch error (retrying): {e}"));
                continue;
            }
            Some(Ok(ev)) => ev,
        };
        match ev {
            watcher::Event::InitDone => {
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let name = obj.name_any();
                let value = comparable(&obj);
                if let Some(prev) = ready_seen.get(&name) {
                    if *prev != value {
                        stats.changes_after_ready += 1;
                        changed.insert(name.clone());
                        if stats.examples.len() < 3 {
                            let mut d = Vec::new();
                            json_diff("", prev, &value, &mut d);
                            stats.examples.push(format!("{name}: {}", d.join(", ")));
                        }
                    }
                    ready_seen.insert(name, value);
                } else if obj.condition("Ready").is_some_and(|c| c.status == "True") {
                    ready_seen.insert(name.clone(), value);
                    let _ = ready_tx.send(name);
                }
            }
            _ => {}
        }
    }
    stats.changed_after_ready = changed.len() as u64;
    Ok(stats)
}

/// The object without what changes on every write.
fn comparable(obj: &TlsIdentity) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    v
}

fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                json_diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
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

/// A one-name identity: a Service name of its own namespace, which the built-in name rule permits.
fn identity(prefix: &str, i: usize, ns: &str) -> TlsIdentity {
    let name = format!("{prefix}-{i:05}");
    let spec = TlsIdentitySpec {
        dns_names: vec![format!("{name}.{ns}.svc")],
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

/// Create N TlsIdentities, at most `parallelism` in flight; the time from `t0` until all returned.
async fn create_identities(
    api: Api<TlsIdentity>,
    prefix: &'static str,
    n: usize,
    parallelism: usize,
    t0: Instant,
) -> anyhow::Result<Duration> {
    stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let ns = api.namespace().unwrap_or("default").to_string();
                api.create(&PostParams::default(), &identity(prefix, i, &ns))
                    .await
            }
        })
        .buffer_unordered(parallelism)
        .try_for_each(|_| async { Ok(()) })
        .await
        .with_context(|| {
            format!(
                "creating TlsIdentities in {}",
                api.namespace().unwrap_or_default()
            )
        })?;
    Ok(t0.elapsed())
}

/// Create N Secrets shaped like tlsid's, at most `parallelism` in flight; the time taken.
async fn create_secrets(
    client: &Client,
    ns: &str,
    prefix: &str,
    n: usize,
    parallelism: usize,
) -> anyhow::Result<Duration> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secrets: Vec<Secret> = (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i:05}-tls");
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
/// private key. Returns the mean size of the Secrets' data, total and by key.
async fn verify_secrets(client: &Client, ns: &str, n: usize) -> anyhow::Result<(usize, String)> {
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
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
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
            Ok(b) => {
                bytes += b;
                for (k, v) in secret.data.iter().flatten() {
                    *by_key.entry(k.clone()).or_default() += v.0.len();
                }
            }
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
    let n = n.max(1);
    let keys = by_key
        .iter()
        .map(|(k, v)| format!("{k} {}", v / n))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((bytes / n, keys))
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
    /// `apiserver_request_duration_seconds` (sum, count) by "VERB group/resource[/sub]".
    latency: BTreeMap<String, (f64, f64)>,
}

impl RequestCounts {
    fn parse(text: &str) -> Self {
        let mut by_key = BTreeMap::new();
        let mut latency: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for line in text.lines() {
            for (prefix, is_sum) in [
                ("apiserver_request_duration_seconds_sum{", true),
                ("apiserver_request_duration_seconds_count{", false),
            ] {
                let Some((labels, value)) =
                    line.strip_prefix(prefix).and_then(|r| r.rsplit_once('}'))
                else {
                    continue;
                };
                let labels = parse_labels(labels);
                let value: f64 = value.trim().parse().unwrap_or(0.0);
                let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let entry = latency
                    .entry(request_name(
                        &get("verb"),
                        &get("group"),
                        &get("resource"),
                        &get("subresource"),
                    ))
                    .or_default();
                if is_sum {
                    entry.0 += value;
                } else {
                    entry.1 += value;
                }
            }
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
        Self { by_key, latency }
    }

    /// Mean latency (ms) and count of each kind of request in this delta; WATCH left out.
    fn latencies(&self) -> Vec<(String, f64, f64)> {
        self.latency
            .iter()
            .filter(|(k, (_, count))| *count > 0.0 && !k.starts_with("WATCH"))
            .map(|(k, (sum, count))| (k.clone(), sum / count * 1000.0, *count))
            .collect()
    }

    fn delta(&self, before: &Self) -> Self {
        let mut by_key = BTreeMap::new();
        for (k, v) in &self.by_key {
            let d = v.saturating_sub(before.by_key.get(k).copied().unwrap_or(0));
            if d > 0 {
                by_key.insert(k.clone(), d);
            }
        }
        let mut latency = BTreeMap::new();
        for (k, (sum, count)) in &self.latency {
            let (s0, c0) = before.latency.get(k).copied().unwrap_or_default();
            if count - c0 > 0.0 {
                latency.insert(k.clone(), (sum - s0, count - c0));
            }
        }
        Self { by_key, latency }
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
        self.by_resource(true)
    }

    /// Request counts by "VERB group/resource[/subresource] code"; WATCH left out.
    fn by_resource(&self, mutating_only: bool) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let requests = self.by_key.iter().filter(|((verb, ..), _)| {
            verb != "WATCH" && (!mutating_only || MUTATING.contains(&verb.as_str()))
        });
        for ((verb, group, resource, sub, code), v) in requests {
            *out.entry(format!(
                "{} {code}",
                request_name(verb, group, resource, sub)
            ))
            .or_insert(0) += *v;
        }
        out
    }
}

fn request_name(verb: &str, group: &str, resource: &str, sub: &str) -> String {
    let g = if group.is_empty() { "core" } else { group };
    if sub.is_empty() {
        format!("{verb} {g}/{resource}")
    } else {
        format!("{verb} {g}/{resource}/{sub}")
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

/// CPU seconds (user + system) a process has used. /proc reports clock ticks of USER_HZ = 100.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU used from the first identity create until all Ready, in cores (CPU seconds per second).
#[derive(Serialize, Deserialize, Debug, Default)]
struct CpuCores {
    apiserver: Option<f64>,
    etcd: Option<f64>,
    controller: Option<f64>,
    bench: Option<f64>,
    /// Every process on the machine (other work included).
    machine: Option<f64>,
    nproc: usize,
}

impl CpuCores {
    fn describe(&self) -> String {
        format!(
            "apiserver {} / etcd {} / controller {} / bench {} / whole machine {} of {}",
            fmt_cores(self.apiserver),
            fmt_cores(self.etcd),
            fmt_cores(self.controller),
            fmt_cores(self.bench),
            fmt_cores(self.machine),
            self.nproc
        )
    }
}

/// Busy (non-idle, non-iowait) CPU of the whole machine, from /proc/stat.
struct MachineCpu {
    busy0: Option<f64>,
    t0: Instant,
}

impl MachineCpu {
    fn busy() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let f: Vec<f64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        let total: f64 = f.iter().take(8).sum();
        Some((total - f.get(3)? - f.get(4)?) / 100.0)
    }

    fn start() -> Self {
        Self {
            busy0: Self::busy(),
            t0: Instant::now(),
        }
    }

    fn cores(&self) -> Option<f64> {
        Some((Self::busy()? - self.busy0?) / self.t0.elapsed().as_secs_f64().max(1e-9))
    }
}

/// Cores a process used over an interval.
struct CpuMeter {
    pid: Option<u32>,
    cpu0: Option<f64>,
    t0: Instant,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            cpu0: pid.and_then(cpu_secs),
            t0: Instant::now(),
        }
    }

    fn cores(&self) -> Option<f64> {
        let used = cpu_secs(self.pid?)? - self.cpu0?;
        Some(used / self.t0.elapsed().as_secs_f64().max(1e-9))
    }
}

fn fmt_cores(c: Option<f64>) -> String {
    c.map(|c| format!("{c:.2}")).unwrap_or_else(|| "?".into())
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
    md.push_str("\nTiming (seconds from the first identity create unless noted):\n\n");
    md.push_str("| N | N identities created, no controller (s) | identity creates returned | 50% Ready | 90% Ready | 100% Ready | Ready/s | controller concurrency | client in-flight | reconciles/identity | mean reconcile ms | apiserver CPU cores in calibration | CPU cores while converging: apiserver / etcd / controller / bench / machine | load avg before |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {:.2} | {:.1} | {} | {} / {} / {} / {} / {} of {} | {} |\n",
            r.n,
            r.cal_identities_s,
            r.creates_s,
            r.ready_50_s,
            r.ready_90_s,
            r.ready_s,
            r.n as f64 / r.ready_s.max(1e-9),
            r.controller_concurrency
                .map(|c| c.to_string())
                .unwrap_or_else(|| "?".into()),
            r.parallelism,
            r.reconciliations as f64 / r.n.max(1) as f64,
            r.reconcile_mean_s * 1000.0,
            fmt_cores(r.apiserver_cores_cal),
            fmt_cores(r.cpu.apiserver),
            fmt_cores(r.cpu.etcd),
            fmt_cores(r.cpu.controller),
            fmt_cores(r.cpu.bench),
            fmt_cores(r.cpu.machine),
            r.cpu.nproc,
            r.loadavg,
        ));
    }
    md.push_str("\nCost on the apiserver (CPU time is what the apiserver process used; the bench's own creates are part of the identity workload):\n\n");
    md.push_str("| N | apiserver CPU ms per calibration Secret | apiserver CPU ms per identity | ratio | apiserver requests per identity (non-WATCH) |\n");
    md.push_str("|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        let n = r.n.max(1) as f64;
        let per_secret = r
            .apiserver_cores_cal
            .map(|c| c * r.calibration_s * 1000.0 / n);
        let per_identity = r.cpu.apiserver.map(|c| c * r.ready_s * 1000.0 / n);
        let ratio = match (per_secret, per_identity) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.1}", b / a),
            _ => "?".into(),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {ratio} | {:.2} |\n",
            r.n,
            per_secret
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "?".into()),
            per_identity
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "?".into()),
            r.requests as f64 / n,
        ));
    }
    md.push_str("\nCounters:\n\n");
    md.push_str("| N | issuances | reconcile errors | non-2xx writes | 429s | identity changes after Ready | idle s | idle reconciles | idle other writes | RSS at end MiB | Secret data B (calibration / actual) | verify s |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.1} | {} / {} | {:.2} |\n",
            r.n,
            r.issuances,
            r.reconcile_errors,
            r.writes_non_2xx,
            r.throttled_429,
            r.changes_after_ready,
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
         Calibration: N plain `kubernetes.io/tls` Secrets of about the same size, same client in-flight limit, no controller involved, \
         after a one-object warm-up of Secrets and TlsIdentities.\n",
    );
    print!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), &md)?;
    eprintln!("idents: wrote {}", out.join("report.md").display());
    Ok(())
}
