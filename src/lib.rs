//! tlsid: a Kubernetes operator that gives workloads mutual-TLS identities.
//!
//! Layout (see ARCHITECTURE.md): `api` is the public CRD, `pki` the pure certificate logic, `resources`
//! the pure desired-object builders, `plan` the pure reconcile decision, `controller` the only code that talks to the apiserver.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod pki;
pub mod plan;
pub mod resources;
pub mod tenancy;

/// The CRDs, each with the file name it is committed under in `crds/`.
pub fn crds() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt;
    vec![
        ("tlsid.dev_tlsidentities.yaml", api::TlsIdentity::crd()),
        (
            "tlsid.dev_tlsidentitypolicies.yaml",
            api::TlsIdentityPolicy::crd(),
        ),
        ("tlsid.dev_tlsauthorities.yaml", api::TlsAuthority::crd()),
    ]
}

/// The TlsIdentity CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> Result<String, serde_json::Error> {
    crd_file_yaml(&crds()[0].1)
}

/// A CRD as YAML, exactly as committed in `crds/`.
pub fn crd_file_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_json::Error> {
    let json = serde_json::to_value(crd)?;
    Ok(format!(
        "---\n{}",
        serde_yaml_ng::to_string(&json).map_err(serde::ser::Error::custom)?
    ))
}
