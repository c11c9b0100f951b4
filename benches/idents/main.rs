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
//! idents restart-mark     # before the controller is restarted (see restart.rs)
//! idents restart-measure  # after: TLSID_BENCH_STARTED_MS; adds the restart to row-<N>.json
//! idents storm-wait     # sleeps until 10 s before the first identity is due (see storm.rs)
//! idents storm          # controller stopped: waits until all are due, arms, measures the storm
//! idents unrelated      # 30,000 Secrets without tlsid's label in the namespace
//! idents ca-change      # an emergency CA rollover with N converged (see ca_change.rs)
//! idents report   # every row-*.json -> markdown tables on stdout, <out>/report.md and report.svg
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

// Aims from the scale issue (#12): all N Ready within 3x the calibration; at most 2 writes plus 1
// Event per issuance, and 4 API requests in all; no write when idle; peak RSS under 24 MiB at
// 1,000 and under 100 MiB at 10,000.
const AIM_WRITES_PER_ISSUANCE: f64 = 3.0;
const AIM_REQUESTS_PER_ISSUANCE: f64 = 4.0;
const AIM_IDLE_WRITES: u64 = 0;
const AIM_READY_RATIO: f64 = 3.0;
const AIM_RESTART_S: f64 = 15.0;

/// The peak RSS aim for a run of `n` identities, if there is one at that size.
fn aim_rss_mib(n: usize) -> Option<f64> {
    match n {
        10_000.. => Some(100.0),
        1_000.. => Some(24.0),
        _ => None,
    }
}

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
            let rt = runtime()?;
            exit_on_error(RunConfig::from_env().and_then(|cfg| rt.block_on(run(cfg))))
        }
        Some("report") => report(&out_dir()),
        Some("ca-change") => {
            let rt = runtime()?;
            let n: usize = env_req("TLSID_BENCH_N")?.parse().context("TLSID_BENCH_N")?;
            exit_on_error(rt.block_on(ca_change::measure(
                n,
                &env_req("TLSID_BENCH_NAMESPACE")?,
                &env_req("TLSID_BENCH_CA_NAMESPACE")?,
                &env_req("TLSID_BENCH_CONTROLLER_METRICS")?,
                &out_dir(),
                Duration::from_secs(env_or("TLSID_BENCH_TIMEOUT_SECS", 600u64)?),
            )))
        }
        Some(cmd @ ("storm-wait" | "storm" | "unrelated")) => {
            let rt = runtime()?;
            let n: usize = env_req("TLSID_BENCH_N")?.parse().context("TLSID_BENCH_N")?;
            let namespace = env_req("TLSID_BENCH_NAMESPACE")?;
            let result = match cmd {
                "storm-wait" => rt.block_on(storm::wait(n, &namespace, &out_dir())),
                "unrelated" => rt.block_on(storm::unrelated(
                    &namespace,
                    env_or("TLSID_BENCH_UNRELATED", 30_000usize)?,
                )),
                _ => storm_args(n, namespace).and_then(|a| rt.block_on(storm::measure(a))),
            };
            exit_on_error(result)
        }
        Some(cmd @ ("restart-mark" | "restart-measure")) => {
            let rt = runtime()?;
            let n: usize = env_req("TLSID_BENCH_N")?.parse().context("TLSID_BENCH_N")?;
            let result = if cmd == "restart-mark" {
                rt.block_on(restart::mark(n, &out_dir()))
            } else {
                let started_ms: i64 = env_req("TLSID_BENCH_STARTED_MS")?
                    .parse()
                    .context("TLSID_BENCH_STARTED_MS")?;
                rt.block_on(restart::measure(
                    n,
                    &out_dir(),
                    &env_req("TLSID_BENCH_CONTROLLER_METRICS")?,
                    std::env::var("TLSID_BENCH_CONTROLLER_PID")
                        .ok()
                        .and_then(|p| p.parse().ok()),
                    started_ms,
                    std::env::var("TLSID_BENCH_UNRELATED")
                        .ok()
                        .and_then(|u| u.parse().ok()),
                    Duration::from_secs(env_or("TLSID_BENCH_TIMEOUT_SECS", 600u64)?),
                ))
            };
            exit_on_error(result)
        }
        _ => {
            // Plain `cargo bench` lands here: the bench needs a control plane and a controller.
            eprintln!(
                "idents: needs a control plane and a controller; run `hack/bench.sh` (or `make bench`)."
            );
            eprintln!(
                "usage: idents run | restart-mark | restart-measure | storm-wait | storm | unrelated | ca-change | report   (see benches/idents/)"
            );
            Ok(())
        }
    }
}

/// The runtime of the subcommands that talk to the cluster.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// One line and exit status 1 on error, no backtrace: the cause is what matters here.
fn exit_on_error(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = result {
        eprintln!("idents: error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn storm_args(n: usize, namespace: String) -> anyhow::Result<storm::StormArgs> {
    Ok(storm::StormArgs {
        n,
        namespace,
        controller: env_req("TLSID_BENCH_CONTROLLER_METRICS")?,
        canary_kubeconfig: env_req("TLSID_BENCH_CANARY_KUBECONFIG")?,
        canary_namespace: env_req("TLSID_BENCH_CANARY_NAMESPACE")?,
        rate: env_or(
            "TLSID_BENCH_ISSUANCE_RATE",
            tlsid::plan::budget::DEFAULT_RATE,
        )?,
        burst: env_or(
            "TLSID_BENCH_ISSUANCE_BURST",
            tlsid::plan::budget::DEFAULT_BURST,
        )?,
        out: out_dir(),
        timeout: Duration::from_secs(env_or("TLSID_BENCH_TIMEOUT_SECS", 600u64)?),
    })
}

pub(crate) fn log(msg: &str) {
    eprintln!("idents: {msg}");
}

mod apiserver;
mod bulk;
mod ca_change;
mod config;
mod objects;
mod plot;
mod process;
mod report;
mod restart;
mod row;
mod storm;
mod watch;

use apiserver::*;
use bulk::*;
use ca_change::CaChange;
use config::*;
use objects::*;
use plot::*;
use process::*;
use report::*;
use restart::Restart;
use row::*;
use storm::Storm;
use watch::*;
