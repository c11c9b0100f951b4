//! The demo workload of identities with `spec.demo`: apiserver I/O only. Every failure becomes the
//! `Demo` condition of a [`DemoOutcome`]; none of them delays or blocks the certificate.

use super::{Context, error::api_message, error::is_persistent};
use crate::{
    api::{DemoRole, FIELD_MANAGER, TlsIdentity, conditions::DEMO, conditions::Reason},
    plan::{CONFLICT_RECHECK, DemoOutcome, SERVER_RECHECK, status::BACKOFF_CAP},
    resources::{controlled_by, demo as build},
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use std::{fmt::Debug, time::Duration};
use tracing::{info, warn};

/// A failed apply that may pass (a timeout, a 5xx) is retried this soon.
const RETRY: Duration = Duration::from_secs(30);

enum DemoError {
    /// An object of that name belongs to someone else.
    Conflict(String),
    Api(kube::Error),
}

/// Apply (or remove) the demo workload of `obj`.
pub async fn reconcile(obj: &TlsIdentity, ctx: &Context) -> DemoOutcome {
    let had_demo = obj
        .status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == DEMO));
    // Only identities that had a demo pay for the look-ups.
    if obj.spec.demo.is_none() && !had_demo {
        return DemoOutcome::default();
    }
    if !ctx.config.demo_workloads {
        // No RBAC for Deployments and Services in this install: say so, touch nothing.
        return DemoOutcome {
            condition: obj.spec.demo.as_ref().map(|_| {
                (
                    false,
                    Reason::DemoDisabled,
                    "this install runs no demo workloads (chart value demo.enabled=false)".into(),
                )
            }),
            recheck: None,
        };
    }
    match apply(obj, ctx).await {
        Ok(outcome) => outcome,
        Err(DemoError::Conflict(msg)) => DemoOutcome {
            condition: Some((false, Reason::DemoConflict, msg)),
            recheck: Some(CONFLICT_RECHECK),
        },
        Err(DemoError::Api(e)) => {
            warn!(error = %e, "demo workload not applied");
            DemoOutcome {
                condition: Some((false, Reason::DemoFailed, api_message(&e))),
                recheck: Some(if is_persistent(&e) {
                    BACKOFF_CAP
                } else {
                    RETRY
                }),
            }
        }
    }
}

async fn apply(obj: &TlsIdentity, ctx: &Context) -> Result<DemoOutcome, DemoError> {
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let services = Api::<Service>::namespaced(ctx.client.clone(), &ns);

    let Some(demo) = &obj.spec.demo else {
        delete_owned(&ctx.metrics, &deployments, &build::demo_name(obj), &uid).await?;
        delete_owned(&ctx.metrics, &services, &obj.name_any(), &uid).await?;
        return Ok(DemoOutcome::default());
    };

    let target = match demo.role {
        DemoRole::Server => None,
        DemoRole::Client => {
            let server_name = demo.server.clone().unwrap_or_default();
            let server_ns = demo.server_namespace.clone().unwrap_or_else(|| ns.clone());
            // The schema allows only a namespace name; re-checked because it goes into a URL.
            if !crate::api::is_dns_label(&server_ns) {
                return Ok(DemoOutcome {
                    condition: Some((
                        false,
                        Reason::ServerNotFound,
                        format!("demo.serverNamespace {server_ns:?} is not a namespace name"),
                    )),
                    recheck: None,
                });
            }
            let ids = Api::<TlsIdentity>::namespaced(ctx.client.clone(), &server_ns);
            let server = ids.get_opt(&server_name).await.map_err(DemoError::Api)?;
            let port = server
                .as_ref()
                .and_then(|s| s.spec.demo.as_ref()?.port)
                .or(demo.port)
                .unwrap_or(build::DEFAULT_PORT);
            match server
                .as_ref()
                .and_then(|s| build::server_target(s, port, &ctx.config.names.cluster_domain))
            {
                Some(t) => Some(t),
                None => {
                    let msg = match server {
                        None => format!(
                            "server TlsIdentity {server_name:?} does not exist in namespace {server_ns}"
                        ),
                        Some(_) => {
                            format!("server TlsIdentity {server_name:?} has no dnsNames to verify")
                        }
                    };
                    return Ok(DemoOutcome {
                        condition: Some((false, Reason::ServerNotFound, msg)),
                        recheck: Some(SERVER_RECHECK),
                    });
                }
            }
        }
    };

    let deployment = build::desired_deployment(
        obj,
        demo,
        &ctx.config.demo_image,
        target.as_ref(),
        &ctx.config.names,
    );
    apply_owned(&ctx.metrics, &deployments, deployment, &uid).await?;
    if demo.role == DemoRole::Server {
        apply_owned(
            &ctx.metrics,
            &services,
            build::desired_service(obj, demo),
            &uid,
        )
        .await?;
    } else {
        delete_owned(&ctx.metrics, &services, &obj.name_any(), &uid).await?;
    }
    let msg = match &target {
        Some(t) => format!(
            "client Deployment {} connects to {} as {}",
            build::demo_name(obj),
            t.address,
            t.server_name
        ),
        None => format!(
            "server Deployment {} behind Service {}",
            build::demo_name(obj),
            obj.name_any()
        ),
    };
    Ok(DemoOutcome {
        condition: Some((true, Reason::Applied, msg)),
        recheck: None,
    })
}

/// Apply `desired` unless the live object already carries its hash. Never takes over an object
/// someone else controls.
async fn apply_owned<K>(
    metrics: &super::metrics::Metrics,
    api: &Api<K>,
    desired: K,
    uid: &str,
) -> Result<(), DemoError>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    if let Some(live) = api.get_opt(&name).await.map_err(DemoError::Api)? {
        if !controlled_by(&live, uid) {
            return Err(DemoError::Conflict(format!(
                "{} {name} exists and is not controlled by this TlsIdentity; tlsid will not modify it",
                K::kind(&())
            )));
        }
        if build::up_to_date(&live, &desired) {
            return Ok(());
        }
    }
    info!(kind = %K::kind(&()), name, "applying demo workload");
    let mut value = serde_json::to_value(&desired).unwrap_or_default();
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    metrics.wrote(&K::kind(&()).to_lowercase());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map_err(DemoError::Api)?;
    Ok(())
}

async fn delete_owned<K>(
    metrics: &super::metrics::Metrics,
    api: &Api<K>,
    name: &str,
    uid: &str,
) -> Result<(), DemoError>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    if let Some(live) = api.get_opt(name).await.map_err(DemoError::Api)?
        && controlled_by(&live, uid)
    {
        info!(kind = %K::kind(&()), name, "removing demo workload");
        metrics.wrote(&K::kind(&()).to_lowercase());
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(DemoError::Api)?;
    }
    Ok(())
}
