//! The restart scenario: with N identities converged, the controller is stopped (SIGTERM) and
//! started again by `hack/bench.sh`, between `idents restart-mark` and `idents restart-measure`.
//! Aim: no write to identities, Secrets or Events, and caught up (ready, every identity
//! reconciled once) within 15 s of the start.
//!
//! The same measurement, run again at the end with 30,000 unrelated Secrets (no tlsid label)
//! created in the watched namespace while the controller was down (`idents unrelated`), shows the
//! memory figure unchanged by them: its peak RSS is compared with the first restart's.

use super::*;

/// The apiserver's counters before the stop, kept in a file between the two commands.
fn mark_path(cfg_out: &Path, n: usize) -> PathBuf {
    cfg_out.join(format!("restart-{n}.metrics"))
}

/// `idents restart-mark`: keep the apiserver's request counters (the controller still runs).
pub(crate) async fn mark(n: usize, out: &Path) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    std::fs::write(mark_path(out, n), text)?;
    Ok(())
}

/// `idents restart-measure`: the new controller started at `started_ms` (Unix ms); wait until it
/// is ready and has reconciled every identity, then count what was written since the mark.
pub(crate) async fn measure(
    n: usize,
    out: &Path,
    controller: &str,
    controller_pid: Option<u32>,
    started_ms: i64,
    unrelated: Option<usize>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let before = RequestCounts::parse(&std::fs::read_to_string(mark_path(out, n))?);
    let started = std::time::UNIX_EPOCH + Duration::from_millis(started_ms.max(0) as u64);
    let deadline = Instant::now() + timeout;
    let (ready_s, reconciled) = loop {
        let ready = http_get(controller, "/readyz")
            .await
            .is_ok_and(|b| b.trim() == "ready");
        let counts = scrape_controller(controller).await.unwrap_or_default();
        if ready && counts.reconciliations >= n as u64 {
            let since = std::time::SystemTime::now()
                .duration_since(started)
                .unwrap_or_default();
            break (since.as_secs_f64(), counts.reconciliations);
        }
        ensure!(
            Instant::now() < deadline,
            "the restarted controller did not catch up within {timeout:?} ({} reconciliations of {n})",
            counts.reconciliations
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    log(&format!(
        "restart: ready with {reconciled} reconciliations {ready_s:.2} s after the start"
    ));
    // Writes arrive after the reconcile that decides them: give them a few seconds to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = scrape_apiserver(&client).await?;
    let delta = after.delta(&before);
    let writes = delta.writes();
    let rss_peak_mib = match controller_pid.map(rss) {
        Some(Ok((peak, _))) => Some(peak),
        Some(Err(e)) => {
            log(&format!("restart: no RSS of the new controller: {e:#}"));
            None
        }
        None => None,
    };
    log(&format!(
        "restart: peak RSS {} MiB",
        rss_peak_mib.map_or("?".into(), |m| format!("{m:.1}"))
    ));
    log(&format!(
        "restart: writes secrets {} status {} identities {} events {}",
        writes.secrets, writes.status, writes.identities, writes.events
    ));
    for (k, v) in delta.mutating_by_resource() {
        log(&format!("  restart {k}: {v}"));
    }
    let measured = Restart {
        caught_up_s: ready_s,
        writes,
        reconciliations: reconciled,
        rss_peak_mib,
        unrelated_secrets: unrelated.unwrap_or(0),
    };
    update_row(out, n, |row| {
        if unrelated.is_some() {
            row.unrelated = Some(measured);
        } else {
            row.restart = Some(measured);
        }
    })
}

/// What the restart scenario measured.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct Restart {
    /// Seconds from starting the new process until it was ready and had reconciled every identity.
    pub(crate) caught_up_s: f64,
    /// Writes from before the stop until a few seconds after catching up.
    pub(crate) writes: Writes,
    pub(crate) reconciliations: u64,
    /// Peak RSS of the new process once caught up (and a few seconds more).
    #[serde(default)]
    pub(crate) rss_peak_mib: Option<f64>,
    /// Unrelated Secrets (no tlsid label) in the watched namespace at the time.
    #[serde(default)]
    pub(crate) unrelated_secrets: usize,
}
