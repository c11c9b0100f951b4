//! Loading, creating and watching the cluster CA Secret.
//!
//! The CA is created with create-if-absent semantics (POST, never apply): when two replicas start
//! at once, one create wins and the other reads the winner's CA, so the cluster never has two.

use super::Context;
use crate::{
    api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    pki::{Authority, CaError},
    plan::{ca_state::CaState, rollover::Request},
};
use futures::{SinkExt, StreamExt, channel::mpsc::Sender};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ObjectReference, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::PostParams,
    runtime::{WatchStreamExt, events::EventType, watcher},
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("CA Secret {0}: {1}")]
    Invalid(String, CaError),
    #[error("CA Secret {0}: {1}")]
    Api(String, kube::Error),
    #[error("CA Secret {0} was created and deleted again while loading it")]
    Raced(String),
}

/// Parse a CA Secret.
pub fn authority_from_secret(secret: &Secret, now: jiff::Timestamp) -> Result<Authority, CaError> {
    let data = crate::resources::secret_data(secret);
    let crt = data.tls_crt.ok_or(CaError::Missing("tls.crt"))?;
    let key = data.tls_key.ok_or(CaError::Missing("tls.key"))?;
    Authority::from_pem(crt, key, data.ca_crt, now)
}

/// The CA Secret as tlsid last accepted it.
#[derive(Clone, Debug)]
pub struct SeenCa {
    /// The state tlsid holds: its `current` signs. After a hand edit this is still the state
    /// before the edit (the edit waits in `edited` to be staged as the next CA).
    pub state: CaState,
    /// An unanswered `tlsid.dev/rotate` request.
    pub request: Option<Request>,
    /// A new signer someone wrote into the Secret by hand: a rollover to it starts (never an
    /// instant swap).
    pub edited: Option<Arc<Authority>>,
    /// resourceVersion of the Secret as last seen (the precondition of the next write).
    pub resource_version: Option<String>,
    /// Its annotations as last seen (a user's own are kept on every write).
    pub annotations: BTreeMap<String, String>,
    /// Loaded with no previous state held, and its signer is not the one tlsid last wrote: it
    /// was edited while no controller ran. The previous key is gone, so it is adopted as is
    /// (said loudly), not staged.
    pub adopted_edit: bool,
}

/// Parse a CA Secret into what tlsid holds, given what it held before (`held`), to tell a hand
/// edit of the signer from tlsid's own writes.
pub fn seen_from_secret(
    secret: &Secret,
    held: Option<&SeenCa>,
    now: jiff::Timestamp,
) -> Result<SeenCa, CaError> {
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let (state, provenance) = parse_ca_secret(secret, now)?;
    let resource_version = secret.metadata.resource_version.clone();
    if let Some(held) = held
        && held.state.edited_into(&state, &provenance)
    {
        return Ok(SeenCa {
            state: held.state.clone(),
            request: None,
            edited: Some(state.current),
            resource_version,
            annotations,
            adopted_edit: false,
        });
    }
    let adopted_edit = held.is_none()
        && provenance
            .recorded_signer
            .as_deref()
            .is_some_and(|r| r != state.current.fingerprint());
    Ok(SeenCa {
        state,
        request: provenance.request,
        edited: None,
        resource_version,
        annotations,
        adopted_edit,
    })
}

/// The whole state a CA Secret holds (signer, bundle, rollover), and how it was written.
pub fn parse_ca_secret(
    secret: &Secret,
    now: jiff::Timestamp,
) -> Result<(CaState, crate::plan::ca_state::Provenance), CaError> {
    let data: BTreeMap<&str, &[u8]> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.0.as_slice()))
        .collect();
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    CaState::parse(&data, &annotations, now)
}

/// The CA Secret holding `state`; the annotations of `base` that tlsid does not own are kept.
pub fn ca_secret(name: &str, state: &CaState, base: &BTreeMap<String, String>) -> Secret {
    let mut annotations = base.clone();
    for (k, v) in state.annotations() {
        match v {
            Some(v) => annotations.insert(k.to_string(), v),
            None => annotations.remove(k),
        };
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                ("tlsid.dev/ca".to_string(), "true".to_string()),
            ])),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            state
                .data()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    }
}

pub(super) fn patch_params() -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(crate::api::FIELD_MANAGER.into()),
        ..Default::default()
    }
}

pub(super) fn create_params() -> PostParams {
    PostParams {
        field_manager: Some(crate::api::FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Load the CA Secret, or (if `may_create`) create a new self-signed root if there is none.
/// `Ok(None)`: there is none and this replica may not create one (it is not the leader).
pub async fn load_or_create(
    api: &Api<Secret>,
    name: &str,
    may_create: bool,
    lifetime: Duration,
) -> Result<Option<SeenCa>, LoadError> {
    let api_err = |e| LoadError::Api(name.to_string(), e);
    // Two rounds: a lost create race is followed by one read of the winner's Secret.
    for _ in 0..2 {
        if let Some(secret) = api.get_opt(name).await.map_err(api_err)? {
            return seen_from_secret(&secret, None, jiff::Timestamp::now())
                .map(Some)
                .map_err(|e| LoadError::Invalid(name.to_string(), e));
        }
        if !may_create {
            return Ok(None);
        }
        let ca = Authority::generate_root_for(jiff::Timestamp::now(), lifetime)
            .map_err(|e| LoadError::Invalid(name.to_string(), e))?;
        let state = CaState::stable(ca, true);
        match api
            .create(&create_params(), &ca_secret(name, &state, &BTreeMap::new()))
            .await
        {
            Ok(created) => {
                info!(secret = name, fingerprint = state.current.fingerprint(), not_after = %state.current.not_after(), "created a new self-signed cluster CA");
                return seen_from_secret(&created, None, jiff::Timestamp::now())
                    .map(Some)
                    .map_err(|e| LoadError::Invalid(name.to_string(), e));
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                info!(
                    secret = name,
                    "another replica created the CA first; using it"
                );
            }
            Err(e) => return Err(api_err(e)),
        }
    }
    Err(LoadError::Raced(name.to_string()))
}

/// How long a deleted CA Secret stays deleted before the leader restores it: time for whoever
/// deleted it to create its replacement.
pub const RESTORE_GRACE: Duration = Duration::from_secs(15);

/// Event reasons on the CA Secret.
pub const CA_RESTORED: &str = "CaSecretRestored";
pub const CA_INVALID: &str = "CaSecretInvalid";

/// Keep the shared CA current: load (or create) it, then follow changes to its Secret.
///
/// - A valid change swaps the CA and asks every identity to reconcile (Secrets get the new
///   bundle; leaves not issued by a trusted CA are re-issued, at the issuance budget).
/// - An unusable change is reported (Warning, `tlsid_ca_secret_valid` 0) and ignored: the last
///   good CA keeps signing.
/// - A deleted CA Secret (also one deleted while the watch was down: a relist that does not
///   list it) is restored by the leader from the CA it holds: same key, same certificate, so no
///   identity is re-issued and no peer loses trust.
pub async fn watch(ctx: Arc<Context>, mut changed: Sender<()>) {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let name = ctx.config.ca_secret.clone();
    let mut delay = Duration::from_secs(1);
    let mut said_waiting = false;
    loop {
        // Only the leader mints a new root: a standby starting while the CA Secret is missing
        // (deleted, or a first install) waits for the leader to restore or create it.
        match load_or_create(
            &api,
            &name,
            ctx.leadership.is_leader(),
            ctx.config.rollover.ca_lifetime,
        )
        .await
        {
            Ok(None) => {
                if !said_waiting {
                    info!(
                        secret = name,
                        "no CA Secret yet; waiting for the leader to create it"
                    );
                    said_waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Some(seen)) => {
                if seen.adopted_edit {
                    error!(
                        secret = name,
                        "the CA Secret's signer was replaced while no tlsid controller ran: the previous CA's key is gone, so the new CA signs at once, without a staged rollover; peers that trust only the previous root will refuse new certificates until they get the new bundle. Use tlsid ca rotate --from-secret to change CAs"
                    );
                }
                info!(
                    secret = name,
                    namespace = ctx.config.namespace,
                    fingerprint = seen.state.current.fingerprint(),
                    phase = seen.state.record.phase.as_str(),
                    "cluster CA loaded"
                );
                ctx.set_ca_seen(seen);
                let _ = changed.send(()).await;
                break;
            }
            Err(e) => {
                error!(error = %e, "cannot load the cluster CA; retrying in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }

    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config)
        .backoff(super::WatchBackoff::new())
        .boxed();
    // Since when the Secret has been missing, as far as the watch says; during a relist, whether
    // it was listed.
    let mut gone_since: Option<std::time::Instant> = None;
    let mut listed = false;
    let mut reported_invalid: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(e) => e,
                None => break,
            },
            _ = tick.tick() => {
                // Only the leader restores, and only once the Secret has stayed gone for
                // RESTORE_GRACE: whoever deleted it may be putting a new CA in its place
                // (delete-and-create, `kubectl replace --force`), which a restore must not
                // pre-empt. A standby that becomes leader finds it here.
                if gone_since.is_some_and(|t| t.elapsed() >= RESTORE_GRACE)
                    && ctx.leadership.is_leader()
                    && restore(&ctx, &api, &name).await
                {
                    gone_since = None;
                }
                continue;
            }
        };
        match event {
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitDone) => {
                if !listed && gone_since.is_none() {
                    warn!(
                        secret = name,
                        "the CA Secret is gone (deleted while the watch was down); restoring it in {}s unless a new one appears",
                        RESTORE_GRACE.as_secs()
                    );
                    gone_since = Some(std::time::Instant::now());
                }
            }
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                gone_since = None;
                listed = true;
                let current = ctx.ca();
                let held = ctx.ca_seen();
                match seen_from_secret(&secret, held.as_deref(), jiff::Timestamp::now()) {
                    Ok(seen) => {
                        reported_invalid = None;
                        if ctx.set_ca_secret_problem(None) {
                            // The identities' CaSecretValid condition goes.
                            let _ = changed.send(()).await;
                        }
                        if seen.edited.is_some() {
                            info!(
                                secret = name,
                                "the CA Secret's signer was replaced by hand; the previous CA keeps signing while a rollover to the new one is staged"
                            );
                        }
                        if ctx.set_ca_seen(seen) {
                            info!(
                                fingerprint = ctx
                                    .ca()
                                    .map(|c| c.fingerprint().to_string())
                                    .unwrap_or_default(),
                                roots = ctx.ca().map_or(0, |c| c.roots().len()),
                                "cluster CA changed; reconciling every identity"
                            );
                            let _ = changed.send(()).await;
                        }
                        ctx.rollover_wake.notify_one();
                        ctx.trust_wake.notify_one();
                    }
                    Err(e) => {
                        if ctx.set_ca_secret_problem(Some(e.to_string())) {
                            // Every identity says so (CaSecretValid=False).
                            let _ = changed.send(()).await;
                        }
                        let rv = secret.metadata.resource_version.clone().unwrap_or_default();
                        if reported_invalid.as_deref() != Some(rv.as_str()) {
                            reported_invalid = Some(rv);
                            error!(secret = name, error = %e, "CA Secret changed but is not usable; still signing with the previous CA");
                            if ctx.leadership.is_leader() {
                                ctx.publish_ref(
                                    &secret_ref(&secret),
                                    EventType::Warning,
                                    CA_INVALID,
                                    format!("the CA Secret is not usable ({e}); tlsid keeps signing with the last good CA (fingerprint {})", current.as_ref().map(|c| c.fingerprint().to_string()).unwrap_or_default()),
                                )
                                .await;
                            }
                        }
                    }
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                warn!(
                    secret = name,
                    "CA Secret deleted; restoring it from the CA in use in {}s unless a new one appears",
                    RESTORE_GRACE.as_secs()
                );
                gone_since = Some(std::time::Instant::now());
            }
            Err(e) => warn!(error = %e, "CA watch error"),
        }
    }
}

/// Recreate the CA Secret from the state held in memory (a rollover in progress included). True
/// if it exists again.
async fn restore(ctx: &Context, api: &Api<Secret>, name: &str) -> bool {
    let Some(seen) = ctx.ca_seen() else {
        return false;
    };
    let ca = seen.state.current.clone();
    ctx.metrics.wrote("ca_secret");
    match api
        .create(
            &create_params(),
            &ca_secret(name, &seen.state, &seen.annotations),
        )
        .await
    {
        Ok(created) => {
            warn!(
                secret = name,
                fingerprint = ca.fingerprint(),
                "CA Secret was deleted; restored it from the CA in use (same key and certificate)"
            );
            ctx.publish_ref(
                &secret_ref(&created),
                EventType::Warning,
                CA_RESTORED,
                format!(
                    "the CA Secret was deleted; tlsid restored it from the CA in use (fingerprint {}); no identity is re-issued",
                    ca.fingerprint()
                ),
            )
            .await;
            true
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => true,
        Err(e) => {
            warn!(secret = name, error = %e, "could not restore the CA Secret; retrying");
            false
        }
    }
}

pub(super) fn secret_ref(secret: &Secret) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        name: secret.metadata.name.clone(),
        namespace: secret.metadata.namespace.clone(),
        uid: secret.metadata.uid.clone(),
        resource_version: secret.metadata.resource_version.clone(),
        ..Default::default()
    }
}
