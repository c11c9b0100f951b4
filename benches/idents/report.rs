//! `idents report`: every `row-*.json` → the Markdown tables.

use super::*;

// ---------------------------------------------------------------------------------------------
// report

pub(crate) fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

pub(crate) fn report(out: &Path) -> anyhow::Result<()> {
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
        "Aims: all N Ready within {AIM_READY_RATIO}x calibration; at most {AIM_WRITES_PER_ISSUANCE} writes per issuance (2 writes + 1 Event) and {AIM_REQUESTS_PER_ISSUANCE} API requests in all; {AIM_IDLE_WRITES} idle writes; peak RSS under 24 MiB at N=1,000 and under 100 MiB at N=10,000, unchanged by unrelated Secrets; a restart writes nothing and catches up within {AIM_RESTART_S} s; a renewal storm renews every identity before expiry at the issuance budget while another client's p99 stays under 1 s with no request rejected.\n\n"
    ));
    if let Some(storm) = rows.iter().find_map(|r| r.storm.as_ref()) {
        md.push_str(&format!(
            "Every issuance passes the install's issuance budget ({:.0}/s, burst {}), first issuances included: N identities cannot all be Ready sooner than (N − {}) / {:.0} s after the first create ({:.0} s at N=10,000).\n\n",
            storm.rate,
            storm.burst,
            storm.burst,
            storm.rate,
            (10_000.0 - f64::from(storm.burst)).max(0.0) / storm.rate.max(1e-9),
        ));
    }
    md.push_str("![Identities Ready over time, per run, with the calibration of each run dashed and its renewal storm dotted](report.svg)\n\n");
    md.push_str("| N | calibration s | all-Ready s | ratio | aim ≤3x | writes/issuance (secrets/status/events) | aim ≤3 | requests/issuance | aim ≤4 | idle writes (per hour) | aim 0 | peak RSS MiB | aim |\n");
    md.push_str("|---:|---:|---:|---:|:---:|---|:---:|---:|:---:|---|:---:|---:|:---:|\n");
    for r in &rows {
        let ratio = r.ready_s / r.calibration_s.max(1e-9);
        let n = r.n.max(1) as f64;
        let w = r.writes;
        let per = w.total() as f64 / n;
        let rss_aim = match aim_rss_mib(r.n) {
            Some(aim) => format!("<{aim:.0}: {}", yes_no(r.rss_peak_mib < aim)),
            None => "—".into(),
        };
        let requests = r.requests.saturating_sub(r.n as u64) as f64 / n;
        // Both idle windows: after convergence, and while waiting for the storm.
        let (idle_s, idle_writes) = match &r.idle_before_storm {
            Some((s, w)) => (r.idle_s + s, r.idle_writes.total() + w.total()),
            None => (r.idle_s, r.idle_writes.total()),
        };
        let extra = if w.identities > 0 {
            format!(" + {:.2} identity", w.identities as f64 / n)
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {} | {:.2} ({:.2}/{:.2}/{:.2}{extra}) | {} | {requests:.2} | {} | {} ({:.0}) | {} | {:.1} | {} |\n",
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
            yes_no(requests <= AIM_REQUESTS_PER_ISSUANCE),
            idle_writes,
            idle_writes as f64 * 3600.0 / idle_s.max(1.0),
            yes_no(idle_writes == AIM_IDLE_WRITES),
            r.rss_peak_mib,
            rss_aim,
        ));
    }
    if rows.iter().any(|r| r.restart.is_some()) {
        md.push_str(
            "\nRestart: with N converged, the controller stopped (SIGTERM) and started again.\n\n",
        );
        md.push_str("| N | caught up s (ready, every identity reconciled) | aim ≤15 | writes (secrets/status/events) | aim 0 | reconciliations |\n");
        md.push_str("|---:|---:|:---:|---|:---:|---:|\n");
        for r in &rows {
            let Some(x) = &r.restart else { continue };
            md.push_str(&format!(
                "| {} | {:.2} | {} | {} ({}/{}/{}) | {} | {} |\n",
                r.n,
                x.caught_up_s,
                yes_no(x.caught_up_s <= AIM_RESTART_S),
                x.writes.total(),
                x.writes.secrets,
                x.writes.status,
                x.writes.events,
                yes_no(x.writes.total() == 0),
                x.reconciliations,
            ));
        }
    }
    if rows.iter().any(|r| r.storm.is_some()) {
        md.push_str("\nRenewal storm: the controller stopped before the first certificate was due and started once the last was, so all N are due at once. API Priority and Fairness on; the controller and a canary (another ServiceAccount, one GET every 50 ms) in its default flows. The pace is held when, over every interval of the storm, renewals minus rate × interval stay within the burst (+1 s of rate for the watch's delivery).\n\n");
        md.push_str("| N | due spread s | all renewed s (50%) | expired first | aim 0 | smallest margin s | budget (rate/s, burst) | max excess | held | writes per renewal (secrets/status/events) | canary requests | p50 / p99 / max ms | aim p99 <1000 | rejected / failed | aim 0 |\n");
        md.push_str(
            "|---:|---:|---|---:|:---:|---:|---|---:|:---:|---|---:|---|:---:|---|:---:|\n",
        );
        for r in &rows {
            let Some(s) = &r.storm else { continue };
            let n = r.n.max(1) as f64;
            let c = &s.canary;
            md.push_str(&format!(
                "| {} | {:.0} | {:.1} ({:.1}) | {} | {} | {:.0} | {:.0}, {} | {:.0} | {} | {:.2} ({:.2}/{:.2}/{:.2}) | {} | {:.1} / {:.1} / {:.1} | {} | {} / {} | {} |\n",
                r.n,
                s.due_spread_s,
                s.renewed_s,
                s.renewed_50_s,
                s.expired,
                yes_no(s.expired == 0),
                s.min_margin_s,
                s.rate,
                s.burst,
                s.max_excess,
                yes_no(s.held),
                s.writes.total() as f64 / n,
                s.writes.secrets as f64 / n,
                s.writes.status as f64 / n,
                s.writes.events as f64 / n,
                c.requests,
                c.p50_ms,
                c.p99_ms,
                c.max_ms,
                yes_no(c.p99_ms < storm::AIM_CANARY_P99_MS),
                c.rejected,
                c.failed,
                yes_no(c.rejected + c.failed == 0),
            ));
        }
    }
    if rows.iter().any(|r| r.unrelated.is_some()) {
        md.push_str("\nUnrelated Secrets: created (without tlsid's label) in the watched namespace while the controller was down, then the controller started again: its peak RSS against the first restart's.\n\n");
        md.push_str("| N | unrelated Secrets | peak RSS MiB (first restart) | peak RSS MiB (with them) | aim unchanged (growth ≤ 2 MiB or 5%) | caught up s | writes |\n");
        md.push_str("|---:|---:|---:|---:|:---:|---:|---:|\n");
        for r in &rows {
            let Some(u) = &r.unrelated else { continue };
            let base = r.restart.as_ref().and_then(|x| x.rss_peak_mib);
            let fmt = |m: Option<f64>| m.map_or("?".into(), |m| format!("{m:.1}"));
            // Unchanged: no growth beyond the noise of two runs (2 MiB or 5%, whichever is more).
            let same = match (base, u.rss_peak_mib) {
                (Some(a), Some(b)) => yes_no(b - a <= (a * 0.05).max(2.0)),
                _ => "?",
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {same} | {:.2} | {} |\n",
                r.n,
                u.unrelated_secrets,
                fmt(base),
                fmt(u.rss_peak_mib),
                u.caught_up_s,
                u.writes.total(),
            ));
        }
    }
    if rows.iter().any(|r| r.ca_change.is_some()) {
        md.push_str("\nCA change: with N converged, an emergency rollover to a new root (`tlsid ca rotate --emergency`; trust-propagation delay of the bench's controller: 5 s unless set). Re-issues go at the install's issuance budget.\n\n");
        md.push_str("| N | every leaf on the new CA s | back to Stable s | phases (s from the request) | writes per identity (secrets/status/events) | issuances |\n");
        md.push_str("|---:|---:|---:|---|---|---:|\n");
        for r in &rows {
            let Some(c) = &r.ca_change else { continue };
            let n = r.n.max(1) as f64;
            let phases: Vec<String> = c
                .phases
                .iter()
                .map(|(p, t)| format!("{p} {t:.1}"))
                .collect();
            md.push_str(&format!(
                "| {} | {:.1} | {:.1} | {} | {:.2} ({:.2}/{:.2}/{:.2}) | {} |\n",
                r.n,
                c.reissued_s,
                c.stable_s,
                phases.join(", "),
                c.writes.total() as f64 / n,
                c.writes.secrets as f64 / n,
                c.writes.status as f64 / n,
                c.writes.events as f64 / n,
                c.issuances,
            ));
        }
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
    md.push_str("| N | issuances | reconcile errors | non-2xx writes | 429s | identity changes after Ready | idle s (after convergence) | idle reconciles | idle other writes | RSS at end MiB | Secret data B (calibration / actual) | verify s |\n");
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
         Idle writes: the same resources during the idle windows, after convergence and while the bench waits for the storm's certificates to come due (per hour: extrapolated from their length; a full pass over every identity without a write is the restart figure); \"idle other writes\" are other resources (the apiserver's own Leases), not counted. \
         Calibration: N plain `kubernetes.io/tls` Secrets of about the same size, same client in-flight limit, no controller involved, \
         after a one-object warm-up of Secrets and TlsIdentities.\n",
    );
    print!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), &md)?;
    let title = format!(
        "tlsid: identities Ready after N created at once ({} cores)",
        rows.first().map_or(0, |r| r.cpu.nproc)
    );
    std::fs::write(out.join("report.svg"), ready_over_time(&rows, &title))?;
    eprintln!("idents: wrote {}", out.join("report.svg").display());
    eprintln!("idents: wrote {}", out.join("report.md").display());
    Ok(())
}
