//! Writes: the only functions that change objects in the apiserver for an identity.

use super::{Context, identity::object_ref};
use crate::{
    api::{FIELD_MANAGER, TlsIdentity, TlsIdentityStatus, conditions::READY, conditions::Reason},
    resources,
};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Resource, ResourceExt,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    runtime::{controller::Action, events::EventType},
};
use tracing::{info, warn};

pub enum Written {
    Ok,
    Failed(kube::Error),
}

/// Create the Secret if tlsid has none (fails if someone created it meanwhile, rather than
/// overwrite it), else server-side apply with the observed resourceVersion as a precondition, so
/// a write based on a stale read is refused rather than applied.
pub async fn secret(
    ctx: &Context,
    identity: &TlsIdentity,
    mut desired: Secret,
    existing: Option<&Secret>,
) -> Written {
    let api = Api::<Secret>::namespaced(
        ctx.client.clone(),
        &identity.namespace().unwrap_or_default(),
    );
    let name = identity.secret_name();
    ctx.metrics.wrote("secret");
    let result = match existing {
        None => {
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&pp, &desired).await
        }
        Some(current) => {
            if resources::secret::owner_ref_to_drop(current, identity)
                && let Err(e) = drop_owner_ref(&api, current, identity).await
            {
                return Written::Failed(e);
            }
            desired.metadata.resource_version = None;
            let mut value = serde_json::to_value(&desired).unwrap_or_default();
            value["apiVersion"] = "v1".into();
            value["kind"] = "Secret".into();
            if !resources::secret::owner_ref_to_drop(current, identity) {
                value["metadata"]["resourceVersion"] =
                    current.metadata.resource_version.clone().into();
            }
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&name, &pp, &Patch::Apply(value)).await
        }
    };
    match result {
        Ok(written) => {
            info!(secret = name, "Secret written");
            // The next reconcile (the one this write triggers) reads it from here.
            ctx.secret_reads.wrote(
                format!("{}/{name}", identity.namespace().unwrap_or_default()),
                written,
            );
            Written::Ok
        }
        Err(e) => Written::Failed(e),
    }
}

/// Remove this identity's controller reference from its Secret (a Secret from before `Retain`
/// became the default was written with one by a create, whose fields server-side apply does not
/// take back). A JSON patch tested against the observed resourceVersion: never a blind write.
async fn drop_owner_ref(
    api: &Api<Secret>,
    current: &Secret,
    identity: &TlsIdentity,
) -> Result<(), kube::Error> {
    let uid = identity.uid().unwrap_or_default();
    let keep: Vec<_> = current
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.uid != uid)
        .cloned()
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": current.metadata.resource_version},
        {"op": "replace", "path": "/metadata/ownerReferences", "value": keep},
    ]))
    .map_err(kube::Error::SerdeError)?;
    info!(
        secret = current.name_any(),
        "removing the owner reference: the Secret is retained when the identity is deleted"
    );
    api.patch(
        &current.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map(|_| ())
}

/// Server-side apply the status (the caller only calls this when it differs).
pub async fn status(
    ctx: &Context,
    identity: &TlsIdentity,
    new: &TlsIdentityStatus,
) -> Result<(), super::Error> {
    let api = Api::<TlsIdentity>::namespaced(
        ctx.client.clone(),
        &identity.namespace().unwrap_or_default(),
    );
    // The observed resourceVersion is a precondition: a status computed from a stale read (or by
    // a leader that has been replaced) is refused, never applied over a newer one.
    let patch = serde_json::json!({
        "apiVersion": TlsIdentity::api_version(&()),
        "kind": TlsIdentity::kind(&()),
        "metadata": {"resourceVersion": identity.resource_version()},
        "status": new,
    });
    ctx.metrics.wrote("status");
    api.patch_status(
        &identity.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(|source| super::Error::StatusWrite {
        object: object_ref(identity),
        source,
    })?;
    Ok(())
}

/// An object the controller cannot read as a `TlsIdentity` (a value past the schema, e.g. written
/// under a looser CRD or straight to storage): say so on the object, once, and wait for a change.
pub async fn unreadable(
    obj: &DynamicObject,
    ctx: &Context,
    why: String,
) -> Result<Action, super::Error> {
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    ctx.metrics.record_unreadable(&ns, &name);
    let current: Vec<Condition> = obj
        .data
        .pointer("/status/conditions")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default();
    let Some(conditions) =
        crate::plan::unreadable_conditions(&current, &why, obj.metadata.generation, now)
    else {
        return Ok(Action::await_change());
    };
    let message = conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    warn!(
        namespace = ns,
        name,
        reason = Reason::UnreadableObject.as_str(),
        error = why,
        "object cannot be read; skipping it"
    );
    let ar = kube::api::ApiResource::erase::<TlsIdentity>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    let object = Box::new(kube::runtime::reflector::ObjectRef::from_obj_with(
        obj,
        ar.clone(),
    ));
    // The apiserver may refuse to patch an object it cannot convert either (a field of the wrong
    // type): then the Event is all that can be said. No retry: nothing will change that but an
    // edit of the object, which triggers a reconcile.
    ctx.metrics.wrote("status");
    if let Err(source) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        let e = super::Error::StatusWrite { object, source };
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        warn!(error = %e, cause, "cannot record on the object that it is unreadable");
    }
    ctx.publish_ref(
        &obj.object_ref(&ar),
        EventType::Warning,
        Reason::UnreadableObject.as_str(),
        message,
    )
    .await;
    Ok(Action::await_change())
}
