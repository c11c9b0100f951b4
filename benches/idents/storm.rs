//! The renewal storm: every one of N identities due at the same moment.
//!
//! `hack/bench.sh` creates the bulk identities with a lifetime that makes them due a few minutes
//! after issuance (`TLSID_BENCH_DURATION`, `TLSID_BENCH_RENEW_BEFORE`), after the idle window and
//! the restart. Before the first is due it stops the controller (`idents storm-wait` says when),
//! `idents storm` waits until the last one is due, and the controller starts again: the whole
//! install is due at once, as after an outage of the controller or a restore.
//!
//! Measured, with a canary (another user's ServiceAccount doing one GET every 50 ms, in API
//! Priority and Fairness' default flows like the controller's own ServiceAccount):
//! - every identity renewed before its certificate expired (the smallest margin left);
//! - the issuance pace against the install's budget: over every interval of the storm, renewals
//!   seen minus `rate × interval` must stay within the burst (plus one second of `rate` for the
//!   watch's delivery jitter);
//! - the canary's p50/p99/max latency and any rejected (429) or failed request;
//! - writes per renewal, and the controller's issuances.

use super::*;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The canary's request interval.
const CANARY_EVERY: Duration = Duration::from_millis(50);
/// Aim: the canary's p99 latency during the storm.
pub(crate) const AIM_CANARY_P99_MS: f64 = 1000.0;

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct Storm {
    /// Seconds between the first and the last renewal time of the N (all passed at the start).
    pub(crate) due_spread_s: f64,
    /// Seconds the controller was down with identities due (the last due time to its start).
    pub(crate) overdue_s: f64,
    /// Seconds from the controller's start until half / all were renewed (Ready, new serial).
    pub(crate) renewed_50_s: f64,
    pub(crate) renewed_s: f64,
    /// Identities whose old certificate expired before the renewal was seen.
    pub(crate) expired: u64,
    /// The smallest `notAfter - renewed at` over the N, seconds.
    pub(crate) min_margin_s: f64,
    pub(crate) rate: f64,
    pub(crate) burst: u32,
    /// Over every interval [a, b] of the storm: renewals seen in it minus `rate × (b - a)`, maximum.
    pub(crate) max_excess: f64,
    pub(crate) held: bool,
    pub(crate) writes: Writes,
    pub(crate) issuances: u64,
    pub(crate) canary: CanaryFigures,
    /// Renewed over time (seconds from the controller's start, how many), for the plot.
    #[serde(default)]
    pub(crate) curve: Vec<(f64, usize)>,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct CanaryFigures {
    pub(crate) requests: u64,
    pub(crate) rejected: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// What an identity looked like before the storm.
struct Before {
    serial: String,
    not_after: jiff::Timestamp,
    renewal: jiff::Timestamp,
    revision: i64,
}

async fn before_storm(ids: &Api<TlsIdentity>, n: usize) -> anyhow::Result<HashMap<String, Before>> {
    let list = ids.list(&ListParams::default()).await?;
    ensure!(
        list.items.len() == n,
        "{} identities listed, want {n}",
        list.items.len()
    );
    let mut out = HashMap::new();
    for id in &list.items {
        let st = id
            .status
            .as_ref()
            .with_context(|| format!("{} has no status", id.name_any()))?;
        let ts = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, what: &str| {
            t.map(|t| t.0)
                .with_context(|| format!("{} has no status.{what}", id.name_any()))
        };
        out.insert(
            id.name_any(),
            Before {
                serial: st.serial_number.clone().unwrap_or_default(),
                not_after: ts(st.not_after.as_ref(), "notAfter")?,
                renewal: ts(st.renewal_time.as_ref(), "renewalTime")?,
                revision: st.revision.unwrap_or(0),
            },
        );
    }
    Ok(out)
}

async fn client_from(path: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {path}"))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn until(t: jiff::Timestamp) -> Duration {
    let ms = t.as_millisecond() - jiff::Timestamp::now().as_millisecond();
    Duration::from_millis(ms.max(0) as u64)
}

/// `idents storm-wait`: sleep until 10 s before the first identity is due (the controller is then
/// stopped); fail if that moment has passed (the phases before took longer than the lifetime
/// `hack/bench.sh` chose). The controller idles meanwhile: the writes of that window are the
/// second idle figure.
pub(crate) async fn wait(n: usize, namespace: &str, out: &Path) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), namespace);
    let before = before_storm(&ids, n).await?;
    let first = before
        .values()
        .map(|b| b.renewal)
        .min()
        .context("no identities")?;
    let revisions: HashSet<i64> = before.values().map(|b| b.revision).collect();
    ensure!(
        revisions.len() == 1,
        "identities at several revisions {revisions:?}: some renewed before the storm"
    );
    let stop_at = first - jiff::SignedDuration::from_secs(10);
    ensure!(
        stop_at > jiff::Timestamp::now(),
        "the first identity is due at {first}, too soon to stop the controller before it: \
         raise TLSID_BENCH_STORM_AFTER"
    );
    log(&format!(
        "storm: the first identity is due at {first}; stopping the controller in {:.0} s",
        until(stop_at).as_secs_f64()
    ));
    // The controller idles meanwhile: a second, longer idle window.
    let counts = scrape_apiserver(&client).await?;
    let t = Instant::now();
    tokio::time::sleep(until(stop_at)).await;
    let writes = scrape_apiserver(&client).await?.delta(&counts).writes();
    let idle_s = t.elapsed().as_secs_f64();
    log(&format!(
        "storm: {} writes to identities, Secrets and Events while idle for {idle_s:.0} s before it",
        writes.total()
    ));
    update_row(out, n, |row| row.idle_before_storm = Some((idle_s, writes)))
}

/// `idents unrelated`: `count` Secrets without tlsid's label in the namespace.
pub(crate) async fn unrelated(namespace: &str, count: usize) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let took = create_secrets(&client, namespace, "unrelated", count, 64).await?;
    log(&format!(
        "{count} unrelated Secrets created in {namespace} in {:.1} s",
        took.as_secs_f64()
    ));
    Ok(())
}

pub(crate) struct StormArgs {
    pub(crate) n: usize,
    pub(crate) namespace: String,
    pub(crate) controller: String,
    pub(crate) canary_kubeconfig: String,
    pub(crate) canary_namespace: String,
    pub(crate) rate: f64,
    pub(crate) burst: u32,
    pub(crate) out: PathBuf,
    pub(crate) timeout: Duration,
}

/// `idents storm`: with the controller stopped, wait until every identity is due, start the
/// canary, write `storm-<N>.armed` (`hack/bench.sh` then starts the controller), follow the
/// renewals until all are done, and add the figures to `row-<N>.json`.
pub(crate) async fn measure(a: StormArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), &a.namespace);
    let before = before_storm(&ids, a.n).await?;
    let first = before
        .values()
        .map(|b| b.renewal)
        .min()
        .context("no identities")?;
    let last = before
        .values()
        .map(|b| b.renewal)
        .max()
        .context("no identities")?;
    let due_spread_s = (last.as_millisecond() - first.as_millisecond()) as f64 / 1000.0;
    log(&format!(
        "storm: {} identities due between {first} and {last} ({due_spread_s:.0} s); waiting for the last",
        a.n
    ));
    tokio::time::sleep(until(last + jiff::SignedDuration::from_secs(1))).await;

    // The canary: another user, steady GETs, from before the controller starts.
    let canary_client = client_from(&a.canary_kubeconfig).await?;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(canary_client, &a.canary_namespace);
    // Its RoleBinding takes effect once the apiserver's authorizer has seen it.
    let allowed_by = Instant::now() + Duration::from_secs(30);
    while let Err(e) = cms.get("canary").await {
        ensure!(
            Instant::now() < allowed_by,
            "the canary's GET (its ServiceAccount, RoleBinding and ConfigMap): {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (canary_stop, mut canary_stopped) = tokio::sync::watch::channel(false);
    let canary = tokio::spawn(async move {
        let mut figures = (Vec::<f64>::new(), 0u64, 0u64);
        let mut tick = tokio::time::interval(CANARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*canary_stopped.borrow_and_update() {
            tick.tick().await;
            let t = Instant::now();
            match cms.get("canary").await {
                Ok(_) => figures.0.push(t.elapsed().as_secs_f64() * 1000.0),
                Err(kube::Error::Api(s)) if s.code == 429 => figures.1 += 1,
                Err(e) => {
                    if figures.2 < 3 {
                        log(&format!("canary request failed: {e}"));
                    }
                    figures.2 += 1;
                }
            }
        }
        figures
    });

    // Watch first (its initial list is the state before), then arm.
    let (renewed_tx, mut renewed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let old: HashMap<String, String> = before
        .iter()
        .map(|(k, b)| (k.clone(), b.serial.clone()))
        .collect();
    let watch = tokio::spawn(watch_renewals(ids.clone(), old, renewed_tx, synced_tx));
    synced_rx
        .await
        .map_err(|_| anyhow!("identity watch ended before its initial list"))?;
    let counts_before = scrape_apiserver(&client).await?;
    let armed = out_armed(&a.out, a.n);
    std::fs::write(&armed, b"armed\n")?;
    let t0 = Instant::now();
    let overdue_s =
        (jiff::Timestamp::now().as_millisecond() - last.as_millisecond()) as f64 / 1000.0;
    log("storm: armed; the controller starts now");

    let deadline = t0 + a.timeout;
    let mut renewed: HashMap<String, (f64, jiff::Timestamp)> = HashMap::new();
    let mut last_log = Instant::now();
    while renewed.len() < a.n {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "{} of {} renewed within {:?}",
            renewed.len(),
            a.n,
            a.timeout
        );
        match tokio::time::timeout(left.min(Duration::from_secs(1)), renewed_rx.recv()).await {
            Ok(Some(name)) => {
                renewed
                    .entry(name)
                    .or_insert((t0.elapsed().as_secs_f64(), jiff::Timestamp::now()));
            }
            Ok(None) => bail!("the identity watch ended"),
            Err(_) => {}
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            log(&format!("storm: {}/{} renewed", renewed.len(), a.n));
            last_log = Instant::now();
        }
    }
    watch.abort();
    let renewed_s = t0.elapsed().as_secs_f64();
    log(&format!("storm: all {} renewed in {renewed_s:.1} s", a.n));
    // A little after the end, so the canary also sees the tail of the writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = canary_stop.send(true);
    let (mut latencies, rejected, failed) = canary.await?;

    let ctl = scrape_controller(&a.controller).await?;
    let (after, _) = settle(
        &client,
        &a.controller,
        &counts_before,
        &ControllerCounts::default(),
        0,
    )
    .await?;
    let writes = after.delta(&counts_before).writes();
    verify_secrets(&client, &a.namespace, a.n).await?;

    // Expiry and margins.
    let mut expired = 0u64;
    let mut min_margin_s = f64::INFINITY;
    for (name, (_, at)) in &renewed {
        let b = &before[name];
        let margin = (b.not_after.as_millisecond() - at.as_millisecond()) as f64 / 1000.0;
        if margin <= 0.0 {
            expired += 1;
        }
        min_margin_s = min_margin_s.min(margin);
    }

    // The pace against the budget.
    let mut times: Vec<f64> = renewed.values().map(|(t, _)| *t).collect();
    times.sort_by(f64::total_cmp);
    let max_excess = max_excess(&times, a.rate);
    let held = max_excess <= f64::from(a.burst) + a.rate;
    let renewed_50_s = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let step = times.len().div_ceil(200).max(1);
    let mut curve = vec![(0.0, 0)];
    for (i, t) in times.iter().enumerate() {
        if (i + 1) % step == 0 || i + 1 == times.len() {
            curve.push((*t, i + 1));
        }
    }

    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() - 1) as f64 * p).round() as usize]
        }
    };
    let canary = CanaryFigures {
        requests: latencies.len() as u64 + rejected + failed,
        rejected,
        failed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    };
    log(&format!(
        "storm: {expired} expired first, smallest margin {min_margin_s:.0} s; max excess over the budget {max_excess:.0} (burst {}); canary {} requests p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {rejected} rejected, {failed} failed; writes secrets {} status {} events {}",
        a.burst,
        canary.requests,
        canary.p50_ms,
        canary.p99_ms,
        canary.max_ms,
        writes.secrets,
        writes.status,
        writes.events
    ));
    let storm = Storm {
        due_spread_s,
        overdue_s,
        renewed_50_s,
        renewed_s,
        expired,
        min_margin_s,
        rate: a.rate,
        burst: a.burst,
        max_excess,
        held,
        writes,
        issuances: ctl.issuances,
        canary,
        curve,
    };
    update_row(&a.out, a.n, |row| row.storm = Some(storm))?;
    let _ = std::fs::remove_file(armed);
    Ok(())
}

pub(crate) fn out_armed(out: &Path, n: usize) -> PathBuf {
    out.join(format!("storm-{n}.armed"))
}

/// Over every interval [t_i, t_j] of the sorted times: (j - i + 1) - rate × (t_j - t_i), maximum.
/// A token bucket of `rate` and burst B never lets this exceed B.
pub(crate) fn max_excess(sorted: &[f64], rate: f64) -> f64 {
    let mut best = 0.0f64;
    let mut best_start = f64::NEG_INFINITY; // max over i ≤ j of (rate × t_i - i)
    for (j, t) in sorted.iter().enumerate() {
        best_start = best_start.max(rate * t - j as f64);
        best = best.max((j + 1) as f64 - rate * t + best_start);
    }
    best
}

/// Send each identity's name once, when it is Ready with a serial other than its old one.
async fn watch_renewals(
    api: Api<TlsIdentity>,
    old: HashMap<String, String>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    synced_tx: tokio::sync::oneshot::Sender<()>,
) {
    let mut synced = Some(synced_tx);
    let mut seen = HashSet::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        let obj = match ev {
            Ok(watcher::Event::InitDone) => {
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
                continue;
            }
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
            Ok(_) => continue,
            Err(e) => {
                log(&format!("identity watch error (retrying): {e}"));
                continue;
            }
        };
        let name = obj.name_any();
        let serial = obj.status.as_ref().and_then(|s| s.serial_number.as_deref());
        let ready = obj.condition("Ready").is_some_and(|c| c.status == "True");
        if ready
            && serial.is_some_and(|s| old.get(&name).is_some_and(|o| o != s))
            && seen.insert(name.clone())
            && tx.send(name).is_err()
        {
            return;
        }
    }
}
