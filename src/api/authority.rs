//! `TlsAuthority` (`tlsid.dev/v1alpha1`, cluster-scoped, one per install, named after it): what
//! the install's CA is doing, for `kubectl get tlsauthorities` and `kubectl describe`. Written by
//! the leader from the CA Secret (the rollover's source of truth) and its own counts; nothing in
//! it is read back. Its spec is empty: a rollover is started with `tlsid ca rotate` or by editing
//! the CA Secret.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The install's certificate authority and its rollover, as the controller sees it.
// Repeated `printcolumn(...)` entries are separate columns, not duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "tlsid.dev",
    version = "v1alpha1",
    kind = "TlsAuthority",
    plural = "tlsauthorities",
    singular = "tlsauthority",
    shortname = "tlsca",
    status = "TlsAuthorityStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "The certificate authority of a tlsid install (named after the install): its signer, the roots of its trust bundle and the phase of a CA rollover. Written by the controller; start a rollover with `tlsid ca rotate`.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Signer",
        type_ = "string",
        json_path = ".status.signer.subject"
    ),
    printcolumn(name = "Roots", type_ = "integer", json_path = ".status.rootCount"),
    printcolumn(
        name = "Old Leaves",
        type_ = "integer",
        json_path = ".status.leavesOnPrevious"
    ),
    printcolumn(
        name = "Expires",
        type_ = "date",
        json_path = ".status.signer.notAfter"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TlsAuthoritySpec {}

/// One CA certificate.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificate {
    /// Lowercase hex SHA-256 of the certificate (DER).
    pub fingerprint: String,
    pub subject: String,
    /// RFC 3339.
    pub not_after: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsAuthorityStatus {
    /// Stable, Publish, WaitForTrust, Switch or Drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the phase began (RFC 3339), during a rollover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<String>,
    /// Normal or Emergency, during a rollover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Requested, Automatic or SecretEdited, during a rollover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// What the rollover waits for, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The CA that signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<CaCertificate>,
    /// tlsid generated the signer (it rolls over by itself; a CA you supplied is never replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<bool>,
    /// The next CA, published but not signing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<CaCertificate>,
    /// The previous signer, until its roots are retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<CaCertificate>,
    /// Every root of the trust bundle (`ca.crt` of every identity Secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<CaCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_count: Option<i64>,
    /// Identities whose certificate the previous CA signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves_on_previous: Option<i64>,
    /// `CaExpiring`: a CA you supplied is past its rotation point and no rollover is under way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
}
