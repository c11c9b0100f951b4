//! `tlsid ca status` and `tlsid ca rotate`.

use super::{Target, client};
use crate::{
    api::TlsIdentity,
    plan::rollover::{
        ROTATE_ANNOTATION, ROTATE_FROM_ANNOTATION, ROTATE_HANDLED_ANNOTATION,
        ROTATE_MODE_ANNOTATION,
    },
};
use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde::Serialize;

/// What `tlsid ca status` shows: the CA Secret's state (the fields of a TlsAuthority's status),
/// counted from the identities, and the CA Secret's recent Events.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    pub secret: String,
    #[serde(flatten)]
    pub state: crate::api::TlsAuthorityStatus,
    /// Identities by the CA that signed their current certificate.
    pub leaves_on_signer: u64,
    pub leaves_on_other: u64,
    pub pending_request: Option<String>,
    pub recent_events: Vec<String>,
}

/// `tlsid ca status`.
pub async fn ca_status(target: &Target) -> anyhow::Result<CaStatus> {
    let client = client(target).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.install_namespace);
    let secret = secrets.get_opt(&target.ca_secret).await?.with_context(|| {
        format!(
            "no CA Secret {} in namespace {} (is tlsid installed there? see --install-namespace)",
            target.ca_secret, target.install_namespace
        )
    })?;
    let (state, provenance) =
        crate::controller::ca::parse_ca_secret(&secret, jiff::Timestamp::now())
            .map_err(|e| anyhow::anyhow!("the CA Secret is not usable: {e}"))?;
    // Untyped: one object the controller cannot read either must not stop the count.
    let ar = kube::api::ApiResource::erase::<TlsIdentity>(&());
    let identities: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    let (mut on_signer, mut on_previous, mut on_other) = (0, 0, 0);
    for id in identities.list(&ListParams::default()).await? {
        if crate::api::install_of(id.labels()) != target.install {
            continue;
        }
        let Some(fp) = id
            .data
            .get("status")
            .and_then(|s| s.get("caFingerprint"))
            .and_then(|f| f.as_str())
        else {
            continue;
        };
        if fp == state.current.fingerprint() {
            on_signer += 1;
        } else if state.previous.as_ref().is_some_and(|p| p.fingerprint == fp) {
            on_previous += 1;
        } else {
            on_other += 1;
        }
    }
    let recent_events = super::recent_events(
        &client,
        &target.install_namespace,
        "Secret",
        &target.ca_secret,
        5,
    )
    .await
    .into_iter()
    .map(|e| format!("{} {}: {}", e.type_, e.reason, e.message))
    .collect();
    Ok(CaStatus {
        secret: format!("{}/{}", target.install_namespace, target.ca_secret),
        state: crate::api::TlsAuthorityStatus {
            leaves_on_previous: Some(on_previous),
            ..state.summary()
        },
        leaves_on_signer: on_signer,
        leaves_on_other: on_other,
        pending_request: provenance.request.map(|r| r.token),
        recent_events,
    })
}

/// The human format of `tlsid ca status`.
pub fn render_status(s: &CaStatus) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let st = &s.state;
    let cert = |c: &crate::api::CaCertificate| {
        format!(
            "{} (sha256 {}…), expires {}",
            c.subject,
            &c.fingerprint[..16.min(c.fingerprint.len())],
            c.not_after
        )
    };
    let _ = writeln!(o, "CA Secret:  {}", s.secret);
    let mut phase = st.phase.clone().unwrap_or_default();
    if let (Some(mode), Some(trigger)) = (&st.mode, &st.trigger) {
        let _ = write!(phase, " ({mode}, {trigger}");
        if let Some(since) = &st.phase_since {
            let _ = write!(phase, ", since {since}");
        }
        phase.push(')');
    }
    let _ = writeln!(o, "Phase:      {phase}");
    if let Some(signer) = &st.signer {
        let _ = writeln!(
            o,
            "Signer:     {}{}",
            cert(signer),
            if st.generated == Some(true) {
                " [generated]"
            } else {
                ""
            }
        );
    }
    if let Some(n) = &st.next {
        let _ = writeln!(o, "Next:       {}", cert(n));
    }
    if let Some(p) = &st.previous {
        let _ = writeln!(o, "Previous:   {}", cert(p));
    }
    let _ = writeln!(o, "Trust bundle ({} root(s)):", st.roots.len());
    for r in &st.roots {
        let _ = writeln!(o, "  - {}", cert(r));
    }
    let _ = writeln!(
        o,
        "Leaves:     {} on the signer, {} on the previous CA, {} on another CA",
        s.leaves_on_signer,
        st.leaves_on_previous.unwrap_or_default(),
        s.leaves_on_other
    );
    if let Some(r) = &s.pending_request {
        let _ = writeln!(
            o,
            "Requested:  rollover {r} (not yet taken up by the controller)"
        );
    }
    if !s.recent_events.is_empty() {
        let _ = writeln!(o, "Events (newest first):");
        for e in &s.recent_events {
            let _ = writeln!(o, "  {e}");
        }
    }
    o
}

/// What `tlsid ca rotate` asks for.
#[derive(Clone, Debug, clap::Args)]
pub struct RotateArgs {
    /// A `kubernetes.io/tls` Secret in the install's namespace holding your next CA: `tls.crt`
    /// (the signer, then any intermediates), `tls.key`, `ca.crt` (its root; optional for a root).
    /// Default: tlsid generates a new root.
    #[arg(long)]
    pub from_secret: Option<String>,
    /// The current CA is compromised: retire its root as soon as no identity holds a certificate
    /// it signed, instead of waiting for those certificates to expire.
    #[arg(long)]
    pub emergency: bool,
    /// Wait until the controller has taken the request up (not for the whole rollover).
    #[arg(long)]
    pub wait: bool,
}

/// `tlsid ca rotate`: annotate the CA Secret; the leader starts the rollover.
pub async fn ca_rotate(target: &Target, args: &RotateArgs) -> anyhow::Result<String> {
    let client = client(target).await?;
    let secrets: Api<Secret> = Api::namespaced(client, &target.install_namespace);
    let secret = secrets.get_opt(&target.ca_secret).await?.with_context(|| {
        format!(
            "no CA Secret {} in namespace {} (see --install-namespace)",
            target.ca_secret, target.install_namespace
        )
    })?;
    let phase_before = secret
        .annotations()
        .get(crate::plan::rollover::PHASE_ANNOTATION)
        .cloned();
    // During a rollover only an emergency request does something: it escalates it.
    if let Some(phase) = &phase_before
        && !args.emergency
    {
        bail!(
            "a CA rollover is already in progress (phase {phase}); see tlsid ca status (--emergency would make it an emergency one)"
        );
    }
    if let Some(from) = &args.from_secret {
        let next = secrets.get_opt(from).await?.with_context(|| {
            format!(
                "no Secret {from} in namespace {} to roll over to",
                target.install_namespace
            )
        })?;
        crate::controller::ca::authority_from_secret(&next, jiff::Timestamp::now())
            .map_err(|e| anyhow::anyhow!("Secret {from} cannot be the next CA: {e}"))?;
    }
    let token = format!(
        "{}-{:08x}",
        jiff::Timestamp::now().as_second(),
        rand::random::<u32>()
    );
    let patch = serde_json::json!({
        "metadata": {"annotations": {
            ROTATE_ANNOTATION: token,
            ROTATE_FROM_ANNOTATION: args.from_secret,
            ROTATE_MODE_ANNOTATION: if args.emergency { "Emergency" } else { "Normal" },
        }}
    });
    secrets
        .patch(
            &target.ca_secret,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context("annotating the CA Secret")?;
    if !args.wait {
        return Ok(format!(
            "CA rollover requested ({token}); follow it with: tlsid ca status --install-namespace {}",
            target.install_namespace
        ));
    }
    for _ in 0..120 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let s = secrets.get(&target.ca_secret).await?;
        if s.annotations().get(ROTATE_HANDLED_ANNOTATION) == Some(&token) {
            let Some(phase) = s
                .annotations()
                .get(crate::plan::rollover::PHASE_ANNOTATION)
                .cloned()
            else {
                // Answered, and nothing started: the controller declined it (its Event says why).
                bail!(
                    "the controller declined the rollover {token}; see the CaRolloverDeclined Event: kubectl describe secret {} -n {}",
                    target.ca_secret,
                    target.install_namespace
                );
            };
            let mode = s
                .annotations()
                .get(crate::plan::rollover::MODE_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            return Ok(format!(
                "CA rollover {token} taken up by the controller: phase {phase}, {mode} mode"
            ));
        }
    }
    bail!("the controller has not taken the request up within 60 s: is tlsid running and leading?")
}
