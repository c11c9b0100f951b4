//! tlsid: a Kubernetes operator that gives workloads mutual-TLS identities.
//!
//! Layout (see ARCHITECTURE.md): `api` is the public CRD, `pki` the pure certificate logic, `resources`
//! the pure desired-object builders, `plan` the pure reconcile decision, `controller` the only code that talks to the apiserver.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod controller;
pub mod demo;
pub mod pki;
pub mod plan;
pub mod resources;

/// The CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> Result<String, serde_json::Error> {
    use kube::CustomResourceExt;
    let crd = api::TlsIdentity::crd();
    let json = serde_json::to_value(&crd)?;
    Ok(format!(
        "---\n{}",
        serde_yaml_ng::to_string(&json).map_err(serde::ser::Error::custom)?
    ))
}
