//! The CA change at scale: with N identities converged, an emergency rollover to a new generated
//! root (what `tlsid ca rotate --emergency` asks), with the bench's short trust-propagation delay.
//! Measured: the time until every identity holds a certificate of the new CA, the phases on the
//! way, and the writes per identity (the Publish phase's trust-bundle updates, then the re-issues
//! at the issuance budget). Ends when the rollover is back to Stable, so the next N starts clean.

use super::*;
use tlsid::plan::rollover::{PHASE_ANNOTATION, ROTATE_HANDLED_ANNOTATION};

/// What the CA change measured.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct CaChange {
    /// Seconds from the request until every identity's certificate was signed by the new CA.
    pub(crate) reissued_s: f64,
    /// Seconds from the request until the rollover was Stable again.
    pub(crate) stable_s: f64,
    /// (phase, seconds from the request it was first seen).
    pub(crate) phases: Vec<(String, f64)>,
    /// Writes from the request until Stable.
    pub(crate) writes: Writes,
    pub(crate) issuances: u64,
}

fn signer_fingerprint(ca: &Secret) -> anyhow::Result<String> {
    let crt = ca
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .context("the CA Secret has no tls.crt")?;
    let der = tlsid::pki::parse_pem_certs(&crt.0)
        .map_err(|e| anyhow!("CA tls.crt: {e}"))?
        .into_iter()
        .next()
        .context("CA tls.crt holds no certificate")?;
    Ok(tlsid::pki::fingerprint(&der))
}

/// `idents ca-change`: request the rollover, follow it, count.
pub(crate) async fn measure(
    n: usize,
    namespace: &str,
    ca_namespace: &str,
    controller: &str,
    out: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("KUBECONFIG")?;
    let cas: Api<Secret> = Api::namespaced(client.clone(), ca_namespace);
    let old = signer_fingerprint(&cas.get("tlsid-ca").await?)?;
    let before = scrape_apiserver(&client).await?;
    let ctl_before = scrape_controller(controller).await?;
    let t0 = Instant::now();
    let target = tlsid::cli::Target {
        context: None,
        install_namespace: ca_namespace.into(),
        ca_secret: "tlsid-ca".into(),
        install: tlsid::api::DEFAULT_INSTALL.into(),
        authority: None,
        output: tlsid::cli::Output::Text,
    };
    let args = tlsid::cli::RotateArgs {
        from_secret: None,
        emergency: true,
        wait: false,
    };
    let said = tlsid::cli::ca_rotate(&target, &args).await?;
    log(&format!("CA change: {said}"));

    // Follow the identities (every one on a CA other than the old one) and the CA Secret's phase.
    let ids: Api<TlsIdentity> = Api::namespaced(client.clone(), namespace);
    let deadline = t0 + timeout;
    let mut phases: Vec<(String, f64)> = vec![];
    let mut reissued_s = None;
    let mut last_log = Instant::now();
    let stable_s = loop {
        ensure!(
            Instant::now() < deadline,
            "the CA change did not finish within {timeout:?} (phases so far: {phases:?})"
        );
        let ca = cas.get("tlsid-ca").await?;
        let phase = ca.annotations().get(PHASE_ANNOTATION).cloned();
        let answered = ca.annotations().contains_key(ROTATE_HANDLED_ANNOTATION);
        let label = phase.clone().unwrap_or_else(|| "Stable".into());
        if answered && phases.last().map(|(p, _)| p) != Some(&label) {
            phases.push((label.clone(), t0.elapsed().as_secs_f64()));
            log(&format!(
                "  phase {label} at {:.1} s",
                t0.elapsed().as_secs_f64()
            ));
        }
        if reissued_s.is_none() {
            let list = ids.list(&ListParams::default()).await?;
            let on_old = list
                .items
                .iter()
                .filter(|id| {
                    id.status
                        .as_ref()
                        .and_then(|s| s.ca_fingerprint.as_deref())
                        .is_none_or(|fp| fp == old)
                })
                .count();
            if on_old == 0 && list.items.len() >= n {
                reissued_s = Some(t0.elapsed().as_secs_f64());
                log(&format!(
                    "  every identity on the new CA after {:.1} s",
                    t0.elapsed().as_secs_f64()
                ));
            } else if last_log.elapsed() >= Duration::from_secs(5) {
                log(&format!("  {on_old}/{n} still on the old CA"));
                last_log = Instant::now();
            }
        }
        if answered && phase.is_none() && reissued_s.is_some() {
            break t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let new = signer_fingerprint(&cas.get("tlsid-ca").await?)?;
    ensure!(new != old, "the rollover ended on the old signer");
    let (after, ctl_after) = settle(&client, controller, &before, &ctl_before, 0).await?;
    let writes = after.delta(&before).writes();
    let issuances = ctl_after.issuances.saturating_sub(ctl_before.issuances);
    log(&format!(
        "CA change: writes secrets {} status {} events {} ({:.2} per identity), {issuances} issuances",
        writes.secrets,
        writes.status,
        writes.events,
        writes.total() as f64 / n.max(1) as f64
    ));
    update_row(out, n, |row| {
        row.ca_change = Some(CaChange {
            reissued_s: reissued_s.unwrap_or(stable_s),
            stable_s,
            phases,
            writes,
            issuances,
        });
    })
}
