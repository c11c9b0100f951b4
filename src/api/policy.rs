//! `TlsIdentityPolicy` (`tlsid.dev/v1alpha1`, cluster-scoped): names a cluster admin grants to
//! namespaces beyond the built-in rule (an identity in namespace `N` may claim `*.N.svc`,
//! `*.N.svc.<clusterDomain>` and `spiffe://<trustDomain>/ns/N/...`, nothing else).
//!
//! Grants add up: a name is permitted when the built-in rule or any policy selecting the
//! identity's namespace allows it. The check itself is pure (`crate::tenancy`); the admission
//! webhook and the controller's signing step both run it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// Names that namespaces may claim in addition to the built-in rule.
// Repeated `printcolumn(...)` entries are separate columns, not duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "tlsid.dev",
    version = "v1alpha1",
    kind = "TlsIdentityPolicy",
    plural = "tlsidentitypolicies",
    singular = "tlsidentitypolicy",
    shortname = "tlsidpolicy",
    derive = "PartialEq",
    derive = "Default",
    doc = "Grants the namespaces it selects names (DNS, IP ranges, URIs) that TlsIdentities there may claim beyond the built-in rule (each namespace's own Service domain and SPIFFE IDs). Several policies add up.",
    printcolumn(
        name = "Namespaces",
        type_ = "string",
        json_path = ".spec.namespaceSelector"
    ),
    printcolumn(name = "DNS", type_ = "string", json_path = ".spec.dnsNames"),
    printcolumn(name = "IPs", type_ = "string", json_path = ".spec.ipAddresses"),
    printcolumn(name = "URIs", type_ = "string", json_path = ".spec.uris"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("(has(self.dnsNames) && size(self.dnsNames) > 0) || (has(self.ipAddresses) && size(self.ipAddresses) > 0) || (has(self.uris) && size(self.uris) > 0)")
        .message("a TlsIdentityPolicy grants at least one of dnsNames, ipAddresses or uris"),
)]
#[serde(rename_all = "camelCase")]
pub struct TlsIdentityPolicySpec {
    /// The namespaces granted these names, by their labels (`kubernetes.io/metadata.name` names
    /// one namespace). Required; `{}` selects every namespace.
    pub namespace_selector: LabelSelector,

    /// DNS names: exact (`api.example.com`), or `*.` followed by a domain (`*.example.com`),
    /// which grants every name below that domain (`a.example.com`, `a.b.example.com` and the
    /// wildcard `*.example.com` itself) but not the domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::policy_dns_names")]
    pub dns_names: Vec<String>,

    /// IP address ranges in CIDR notation (`10.0.0.0/8`, `127.0.0.1/32`, `fd00::/8`): any address
    /// inside them may be claimed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::policy_cidrs")]
    pub ip_addresses: Vec<String>,

    /// URIs: exact (`spiffe://cluster.local/ns/ingress/sa/gateway`), or a prefix ending in `/*`
    /// (`spiffe://partner.example/*`; `:*` for URNs) granting the path segments below it (letters,
    /// digits, `.`, `-`, `_`; never `..`). A SPIFFE ID must be well formed whatever grants it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::policy_uris")]
    pub uris: Vec<String>,
}
