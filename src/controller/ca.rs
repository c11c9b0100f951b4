//! Loading, creating and watching the cluster CA Secret.
//!
//! The CA is created with create-if-absent semantics (POST, never apply): when two replicas start
//! at once, one create wins and the other reads the winner's CA, so the cluster never has two.

use super::Context;
use crate::{
    api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    pki::{Authority, CaError},
};
use futures::{SinkExt, StreamExt, channel::mpsc::Sender};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
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

/// Load the CA Secret, or create a new self-signed root if there is none.
pub async fn load_or_create(api: &Api<Secret>, name: &str) -> Result<Authority, LoadError> {
    let api_err = |e| LoadError::Api(name.to_string(), e);
    // Two rounds: a lost create race is followed by one read of the winner's Secret.
    for _ in 0..2 {
        if let Some(secret) = api.get_opt(name).await.map_err(api_err)? {
            return authority_from_secret(&secret, jiff::Timestamp::now())
                .map_err(|e| LoadError::Invalid(name.to_string(), e));
        }
        let ca = Authority::generate_root(jiff::Timestamp::now())
            .map_err(|e| LoadError::Invalid(name.to_string(), e))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                    ("tlsid.dev/ca".to_string(), "true".to_string()),
                ])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                ca.to_secret_data()
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v)))
                    .collect(),
            ),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some(crate::api::FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &secret).await {
            Ok(_) => {
                info!(secret = name, fingerprint = ca.fingerprint(), not_after = %ca.not_after(), "created a new self-signed cluster CA");
                return Ok(ca);
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

/// Keep the shared CA current: load (or create) it, then follow changes to its Secret. A valid
/// change swaps the CA and asks every identity to reconcile (so Secrets get the new bundle, and
/// leaves not issued by a trusted CA are re-issued). An invalid change is reported and ignored:
/// the last good CA keeps signing.
pub async fn watch(ctx: Arc<Context>, mut changed: Sender<()>) {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let name = ctx.config.ca_secret.clone();
    let mut delay = Duration::from_secs(1);
    loop {
        match load_or_create(&api, &name).await {
            Ok(ca) => {
                info!(
                    secret = name,
                    namespace = ctx.config.namespace,
                    fingerprint = ca.fingerprint(),
                    "cluster CA loaded"
                );
                ctx.set_ca(Arc::new(ca));
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
    let mut events = watcher(api.clone(), config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                let current = ctx.ca();
                match authority_from_secret(&secret, jiff::Timestamp::now()) {
                    Ok(ca) => {
                        let same = current.as_ref().is_some_and(|c| {
                            c.fingerprint() == ca.fingerprint() && c.bundle_pem() == ca.bundle_pem()
                        });
                        if !same {
                            info!(
                                fingerprint = ca.fingerprint(),
                                roots = ca.roots().len(),
                                "cluster CA changed; reconciling every identity"
                            );
                            ctx.set_ca(Arc::new(ca));
                            let _ = changed.send(()).await;
                        }
                    }
                    Err(e) => {
                        error!(secret = name, error = %e, "CA Secret changed but is not usable; still signing with the previous CA")
                    }
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                warn!(secret = name, "CA Secret deleted; creating a new CA");
                match load_or_create(&api, &name).await {
                    Ok(ca) => {
                        ctx.set_ca(Arc::new(ca));
                        let _ = changed.send(()).await;
                    }
                    Err(e) => {
                        error!(error = %e, "could not recreate the CA; still signing with the previous CA")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "CA watch error"),
        }
    }
}
