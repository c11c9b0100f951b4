//! Reconciling the demo workload of identities with `spec.demo`.

use super::{Context, Error, status::set_condition};
use crate::{
    api::{DemoRole, FIELD_MANAGER, TlsIdentity, TlsIdentityStatus},
    resources::{controlled_by, demo as build},
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use std::{fmt::Debug, time::Duration};
use tracing::info;

pub const DEMO: &str = "Demo";
/// A client waits for its server identity; no watch links the two, so look again soon.
const SERVER_RECHECK: Duration = Duration::from_secs(10);

/// Apply (or remove) the demo workload and set the `Demo` condition. Returns a requeue delay when
/// the workload is waiting on something no watch will report.
pub async fn reconcile(
    obj: &TlsIdentity,
    ctx: &Context,
    status: &mut TlsIdentityStatus,
    now: jiff::Timestamp,
) -> Result<Option<Duration>, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let services = Api::<Service>::namespaced(ctx.client.clone(), &ns);
    let generation = obj.metadata.generation;

    let Some(demo) = &obj.spec.demo else {
        // Only identities that had a demo pay for the look-ups.
        if status.conditions.iter().any(|c| c.type_ == DEMO) {
            delete_owned(&deployments, &build::demo_name(obj), &uid).await?;
            delete_owned(&services, &obj.name_any(), &uid).await?;
            status.conditions.retain(|c| c.type_ != DEMO);
        }
        return Ok(None);
    };

    let target = match demo.role {
        DemoRole::Server => None,
        DemoRole::Client => {
            let server_name = demo.server.clone().unwrap_or_default();
            let ids = Api::<TlsIdentity>::namespaced(ctx.client.clone(), &ns);
            let server = ids.get_opt(&server_name).await.map_err(Error::Read)?;
            let port = server
                .as_ref()
                .and_then(|s| s.spec.demo.as_ref()?.port)
                .or(demo.port)
                .unwrap_or(build::DEFAULT_PORT);
            match server.as_ref().and_then(|s| build::server_target(s, port)) {
                Some(t) => Some(t),
                None => {
                    let msg = match server {
                        None => format!(
                            "server TlsIdentity {server_name:?} does not exist in namespace {ns}"
                        ),
                        Some(_) => {
                            format!("server TlsIdentity {server_name:?} has no dnsNames to verify")
                        }
                    };
                    set_condition(
                        &mut status.conditions,
                        DEMO,
                        false,
                        "ServerNotFound",
                        msg,
                        generation,
                        now,
                    );
                    return Ok(Some(SERVER_RECHECK));
                }
            }
        }
    };

    let deployment = build::desired_deployment(obj, demo, &ctx.config.demo_image, target.as_ref());
    apply_owned(&deployments, deployment, &uid).await?;
    if demo.role == DemoRole::Server {
        apply_owned(&services, build::desired_service(obj, demo), &uid).await?;
    } else {
        delete_owned(&services, &obj.name_any(), &uid).await?;
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
    set_condition(
        &mut status.conditions,
        DEMO,
        true,
        "Applied",
        msg,
        generation,
        now,
    );
    Ok(None)
}

/// Apply `desired` unless the live object already carries its hash. Never takes over an object
/// someone else controls.
async fn apply_owned<K>(api: &Api<K>, desired: K, uid: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    if let Some(live) = api.get_opt(&name).await.map_err(Error::Read)? {
        if !controlled_by(&live, uid) {
            return Err(Error::DemoWrite(kube::Error::Api(Box::new(
                kube::core::Status::failure(
                    &format!(
                        "{} {name} exists and is not controlled by this TlsIdentity",
                        K::kind(&())
                    ),
                    "AlreadyExists",
                ),
            ))));
        }
        if build::up_to_date(&live, &desired) {
            return Ok(());
        }
    }
    info!(kind = %K::kind(&()), name, "applying demo workload");
    let mut value = serde_json::to_value(&desired).unwrap_or_default();
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map_err(Error::DemoWrite)?;
    Ok(())
}

async fn delete_owned<K>(api: &Api<K>, name: &str, uid: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    if let Some(live) = api.get_opt(name).await.map_err(Error::Read)?
        && controlled_by(&live, uid)
    {
        info!(kind = %K::kind(&()), name, "removing demo workload");
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(Error::DemoWrite)?;
    }
    Ok(())
}
