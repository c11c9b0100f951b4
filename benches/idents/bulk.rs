//! The bulk scenario: N identities created at once → all Ready with valid Secrets; the
//! calibration beside it; writes and requests per issuance; the idle window; memory.

use super::*;

// ---------------------------------------------------------------------------------------------
// run

pub(crate) async fn run(cfg: RunConfig) -> anyhow::Result<()> {
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
    let curve_step = n.div_ceil(200).max(1);
    let mut ready_curve = vec![(0.0, 0)];
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
                if ready % curve_step == 0 || ready == n {
                    ready_curve.push((t0.elapsed().as_secs_f64(), ready));
                }
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
        ready_curve,
        restart: None,
        unrelated: None,
        idle_before_storm: None,
        storm: None,
        ca_change: None,
    };
    std::fs::create_dir_all(&cfg.out)?;
    let path = cfg.out.join(format!("row-{n}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&row)?)?;
    log(&format!("wrote {}", path.display()));
    Ok(())
}
