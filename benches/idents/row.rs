//! One row of the report: every figure of one run, as `row-<N>.json`.

use super::*;

#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct Row {
    pub(crate) n: usize,
    pub(crate) parallelism: usize,
    pub(crate) controller_concurrency: Option<u32>,
    /// Seconds to create N plain Secrets.
    pub(crate) calibration_s: f64,
    /// Seconds to create N TlsIdentities where no controller watches (reference only).
    #[serde(default)]
    pub(crate) cal_identities_s: f64,
    /// Seconds from the first identity create until every create call returned.
    pub(crate) creates_s: f64,
    /// Seconds from the first identity create until the 50% / 90% / 100%-th was seen Ready.
    pub(crate) ready_50_s: f64,
    pub(crate) ready_90_s: f64,
    pub(crate) ready_s: f64,
    /// Seconds to list and verify the N Secrets afterwards (not part of `ready_s`).
    pub(crate) verify_s: f64,
    /// Controller mutating requests during convergence, by bucket (bench creates subtracted).
    pub(crate) writes: Writes,
    /// Requests of the convergence window answered with a non-2xx code (conflicts, throttling...).
    pub(crate) writes_non_2xx: u64,
    /// 429 answers to anyone during convergence (apiserver max-in-flight throttling).
    pub(crate) throttled_429: u64,
    /// Changes to identities after they were first seen Ready (during convergence).
    #[serde(default)]
    pub(crate) changes_after_ready: u64,
    pub(crate) idle_s: f64,
    pub(crate) idle_writes: Writes,
    /// A second idle window: while the bench waits for the storm's certificates to come due
    /// (after the restarts), seconds and writes.
    #[serde(default)]
    pub(crate) idle_before_storm: Option<(f64, Writes)>,
    /// Mutating requests to other resources (the apiserver's own leases...) during the idle window.
    pub(crate) idle_other_writes: u64,
    pub(crate) idle_reconciliations: u64,
    pub(crate) reconciliations: u64,
    pub(crate) issuances: u64,
    pub(crate) reconcile_errors: u64,
    pub(crate) reconcile_mean_s: f64,
    pub(crate) rss_peak_mib: f64,
    pub(crate) rss_end_mib: f64,
    pub(crate) cal_secret_bytes: usize,
    pub(crate) secret_bytes_mean: usize,
    /// CPU used (in cores: CPU seconds per second) by the apiserver during calibration and by the
    /// apiserver and the controller from the first create until all Ready.
    #[serde(default)]
    pub(crate) apiserver_cores_cal: Option<f64>,
    #[serde(default)]
    pub(crate) cpu: CpuCores,
    /// Every non-WATCH apiserver request from the first create until settled (the bench's
    /// creates and list included).
    #[serde(default)]
    pub(crate) requests: u64,
    /// 1/5/15-minute load average of the machine before the run (other work skews the figures).
    #[serde(default)]
    pub(crate) loadavg: String,
    /// Identities Ready over time: (seconds from the first create, how many), at most about
    /// 200 points (for the plot).
    #[serde(default)]
    pub(crate) ready_curve: Vec<(f64, usize)>,
    /// The restart scenario, when run.
    #[serde(default)]
    pub(crate) restart: Option<Restart>,
    /// The restart again, with unrelated Secrets in the namespace (the largest N only).
    #[serde(default)]
    pub(crate) unrelated: Option<Restart>,
    /// The renewal storm, when run.
    #[serde(default)]
    pub(crate) storm: Option<Storm>,
    /// The CA change at scale, when run.
    #[serde(default)]
    pub(crate) ca_change: Option<CaChange>,
}

/// Add what a later scenario measured to `row-<n>.json` (written by `idents run`).
pub(crate) fn update_row(out: &Path, n: usize, f: impl FnOnce(&mut Row)) -> anyhow::Result<()> {
    let path = out.join(format!("row-{n}.json"));
    let mut row: Row = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("{} (run `idents run` first)", path.display()))?;
    f(&mut row);
    std::fs::write(&path, serde_json::to_vec_pretty(&row)?)?;
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub(crate) struct Writes {
    pub(crate) secrets: u64,
    pub(crate) status: u64,
    /// Writes to the identity object itself (not its status), other than the bench's creates.
    pub(crate) identities: u64,
    pub(crate) events: u64,
}

impl Writes {
    pub(crate) fn total(&self) -> u64 {
        self.secrets + self.status + self.identities + self.events
    }
}
