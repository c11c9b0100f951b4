//! The run's settings, from the environment `hack/bench.sh` sets.

use super::*;

// ---------------------------------------------------------------------------------------------
// Configuration

pub(crate) struct RunConfig {
    pub(crate) n: usize,
    pub(crate) namespace: String,
    pub(crate) controller_pid: u32,
    /// For CPU figures only.
    pub(crate) apiserver_pid: Option<u32>,
    pub(crate) etcd_pid: Option<u32>,
    pub(crate) controller_metrics: String,
    pub(crate) controller_concurrency: Option<u32>,
    pub(crate) idle: Duration,
    pub(crate) parallelism: usize,
    pub(crate) timeout: Duration,
    pub(crate) out: PathBuf,
}

pub(crate) fn env_req(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set (run through hack/bench.sh)"))
}

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| anyhow!("{name}={v}: {e}")),
        _ => Ok(default),
    }
}

pub(crate) fn out_dir() -> PathBuf {
    std::env::var_os("TLSID_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

impl RunConfig {
    pub(crate) fn from_env() -> anyhow::Result<Self> {
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
