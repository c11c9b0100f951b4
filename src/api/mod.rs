//! The public API: the `TlsIdentity` custom resource (`tlsid.dev/v1alpha1`).
//!
//! Every field carries a doc comment: it becomes `kubectl explain`. Field names follow cert-manager's
//! `Certificate` where they mean the same thing. What the schema can reject (CEL rules, patterns, enums)
//! is rejected at admission; [`crate::pki::IssuanceRequest::from_spec`] re-checks what slips past.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub mod authority;
pub mod conditions;
mod duration;
mod lenient;
mod policy;
mod schema;

pub use authority::{CaCertificate, TlsAuthority, TlsAuthorityStatus};
pub use policy::{TlsIdentityPolicy, TlsIdentityPolicySpec};

pub use duration::{DurationError, GoDuration, MAX_GO_DURATION};

pub const GROUP: &str = "tlsid.dev";
/// Field manager for every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "tlsid";
/// Label on every Secret tlsid writes; the controller watches only Secrets carrying it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tlsid";
/// Label naming the `TlsIdentity` a Secret belongs to.
pub const IDENTITY_LABEL: &str = "tlsid.dev/identity";
/// Label on a `TlsIdentity` naming the tlsid install that serves it (`--install`). Absent means
/// the default install, [`DEFAULT_INSTALL`]. Every identity is served by exactly one install; the
/// others leave it alone. The install's name also names its Lease and its cluster-scoped objects.
pub const INSTALL_LABEL: &str = "tlsid.dev/install";
pub const DEFAULT_INSTALL: &str = "tlsid";

/// An RFC 1123 label: 1-63 lowercase letters, digits and `-`, alphanumeric at both ends (a
/// namespace name, a Service name, one label of a DNS name).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain: labels separated by dots, at most 253 characters (a ServiceAccount
/// name, a DNS domain).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The install that serves an object with these labels.
pub fn install_of(labels: &std::collections::BTreeMap<String, String>) -> &str {
    labels
        .get(INSTALL_LABEL)
        .map(String::as_str)
        .unwrap_or(DEFAULT_INSTALL)
}

/// Annotation that asks for a re-issue; its value is an opaque token (e.g. a timestamp).
/// A new value triggers one re-issue; the handled value is recorded in `status.lastRenewRequest`.
pub const RENEW_ANNOTATION: &str = "tlsid.dev/renew";
/// Annotation on a `TlsIdentity` with `spec.demo`: a testing aid that makes its demo workload a
/// deliberately slow consumer of new trust, for exercising a CA rollover. The value, a Go duration
/// from `0` to [`MAX_DEMO_TRUST_LAG`], becomes the demo's `--trust-lag`: a changed `ca.crt` is only
/// verified against once it has been seen for that long. Any other value is ignored.
pub const DEMO_TRUST_LAG_ANNOTATION: &str = "tlsid.dev/demo-trust-lag";
/// Longest [`DEMO_TRUST_LAG_ANNOTATION`] honoured.
pub const MAX_DEMO_TRUST_LAG: std::time::Duration = std::time::Duration::from_secs(3600);
/// Secret annotations describing what is in the Secret (never key material).
pub const SERIAL_ANNOTATION: &str = "tlsid.dev/serial";
pub const REVISION_ANNOTATION: &str = "tlsid.dev/revision";
/// Digest of the trust bundle (`ca.crt`) an identity Secret holds: a CA rollover waits until every
/// Secret holds the bundle with the next root, reading this from Secret metadata alone.
pub const TRUST_BUNDLE_ANNOTATION: &str = "tlsid.dev/trust-bundle";
/// Annotation on a Deployment, StatefulSet or DaemonSet naming how it takes in a rotated
/// certificate: `restart` (its pods load certificates only at start: tlsid restarts it, the way
/// `kubectl rollout restart` does, after each change of an identity Secret it mounts). Absent or
/// any other value: tlsid restarts nothing (the workload re-reads the files itself).
pub const RELOAD_ANNOTATION: &str = "tlsid.dev/reload";
/// The [`RELOAD_ANNOTATION`] value that opts a workload in.
pub const RELOAD_RESTART: &str = "restart";
/// Pod-template annotation written with each restart: what the pods were started for, as
/// `<secret>=<serial>.<bundle digest>` pairs (sorted, comma-separated). Restarts happen when it
/// differs from the Secrets' current content, and the restart writes it: one patch, so a crash
/// never skips or doubles a restart.
pub const RESTARTED_FOR_ANNOTATION: &str = "tlsid.dev/restarted-for";
/// Pod-template annotation: when tlsid last restarted the workload (RFC 3339).
pub const RESTARTED_AT_ANNOTATION: &str = "tlsid.dev/restartedAt";
/// Pod-template annotation: why tlsid last restarted the workload.
pub const RESTART_REASON_ANNOTATION: &str = "tlsid.dev/restart-reason";
/// Most entries kept in `status.consumers` (opted-in workloads first, then by kind and name).
pub const MAX_CONSUMERS: usize = 50;

pub const DEFAULT_DURATION_SECS: u64 = 24 * 3600;
pub const MIN_DURATION_SECS: u64 = 60;
/// Ten years (`87840h`): far beyond any sensible workload certificate, and keeps time arithmetic safe.
pub const MAX_DURATION_SECS: u64 = 10 * 366 * 24 * 3600;
pub const MIN_RENEW_BEFORE_SECS: u64 = 5;
/// A certificate is never renewed sooner than this after it was issued, whatever `renewBefore` or
/// `renewBeforePercentage` say: otherwise every issuance would trigger the next.
pub const MIN_RENEW_AFTER_SECS: u64 = 30;
/// `demo.interval`: default and bounds.
pub const DEFAULT_DEMO_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
pub const MIN_DEMO_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
pub const MAX_DEMO_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// The port of the demo workload's metrics endpoint; `demo.port` must differ.
pub const DEMO_METRICS_PORT: i32 = 9090;
/// Longest `metadata.name`: it becomes a label value (`tlsid.dev/identity`) and a Service name.
pub const MAX_NAME_LEN: usize = 63;
/// Upper bounds of status counters; larger stored values are clamped when read.
pub const MAX_FAILED_ISSUANCE_ATTEMPTS: i32 = 1_000_000;
pub const MAX_REVISION: i64 = (1 << 53) - 1;

/// A workload identity: the names a certificate vouches for and how it is kept fresh.
///
/// tlsid signs a certificate for these names with the cluster CA, writes it into a
/// `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`) and re-issues it before it expires,
/// and whenever this spec, the CA or the Secret changes.
// Repeated `printcolumn(...)` entries are separate columns, not duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "tlsid.dev",
    version = "v1alpha1",
    kind = "TlsIdentity",
    plural = "tlsidentities",
    singular = "tlsidentity",
    shortname = "tlsid",
    namespaced,
    status = "TlsIdentityStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A mutual-TLS workload identity: a certificate signed by the tlsid cluster CA, kept in a Secret and rotated before it expires.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(name = "Renews", type_ = "string", json_path = ".status.renewalTime"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = "1",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = schema::rule_name_length(),
)]
#[x_kube(
    validation = Rule::new("(has(self.commonName) && self.commonName != '') || (has(self.dnsNames) && size(self.dnsNames) > 0) || (has(self.ipAddresses) && size(self.ipAddresses) > 0) || (has(self.uris) && size(self.uris) > 0) || has(self.spiffe)")
        .message("at least one of commonName, dnsNames, ipAddresses, uris or spiffe must be set"),
    validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))")
        .message("renewBefore and renewBeforePercentage are mutually exclusive"),
    validation = schema::rule_duration_min(),
    validation = schema::rule_duration_max(),
    validation = schema::rule_renew_before_min(),
    validation = schema::rule_renew_before_shorter(),
    validation = schema::rule_renew_before_leaves_time(),
    validation = schema::rule_renew_percentage_leaves_time(),
)]
#[serde(rename_all = "camelCase")]
pub struct TlsIdentitySpec {
    /// Name of the Secret (type `kubernetes.io/tls`) that receives `tls.crt`, `tls.key` and `ca.crt`.
    /// Defaults to `<metadata.name>-tls`. The Secret must not exist, or must already belong to this
    /// identity: tlsid never overwrites a Secret it does not control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::secret_name")]
    pub secret_name: Option<String>,

    /// Subject common name. Optional and informational: clients verify the SANs below.
    /// At most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub common_name: Option<String>,

    /// DNS subject alternative names, lowercase RFC 1123 names; a leading `*.` makes a wildcard.
    /// For a Service use e.g. `my-svc.my-namespace.svc` and `my-svc.my-namespace.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::dns_names")]
    pub dns_names: Vec<String>,

    /// IP address subject alternative names (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::ip_addresses")]
    pub ip_addresses: Vec<String>,

    /// URI subject alternative names, e.g. a SPIFFE ID `spiffe://cluster.local/ns/default/sa/web`.
    /// The built-in name policy permits SPIFFE IDs in this identity's namespace
    /// (`spiffe://<trustDomain>/ns/<namespace>/...`); others need a `TlsIdentityPolicy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::uris")]
    pub uris: Vec<String>,

    /// Add the SPIFFE ID of a ServiceAccount in this namespace as a URI SAN:
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`, with the install's trust
    /// domain (default `cluster.local`), so it need not be typed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<SpiffeSpec>,

    /// What the certificate may be used for: `server` (TLS server authentication) and/or
    /// `client` (TLS client authentication). Defaults to both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::usages")]
    pub usages: Option<Vec<Usage>>,

    /// Requested lifetime of each certificate, as a Go duration (`24h`, `90m`, `2160h`).
    /// Default `24h`, minimum `60s`, maximum `87840h` (10 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub duration: Option<GoDuration>,

    /// How long before expiry to renew, as a Go duration. At least `5s`, and short enough to leave
    /// at least `30s` between issuance and renewal (`duration - renewBefore >= 30s`). Mutually
    /// exclusive with `renewBeforePercentage`. When neither is set the certificate is renewed at
    /// 2/3 of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub renew_before: Option<GoDuration>,

    /// Renew when this percentage of the lifetime remains (1-99). `33` renews at 2/3 of the lifetime.
    /// Must leave at least `30s` between issuance and renewal (the lifetime includes a 30s backdate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<u8>,

    /// The private key. A fresh key is generated on every issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,

    /// Extra labels and annotations put on the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// What happens to the Secret when this identity is deleted: `Retain` (default) keeps it, so
    /// running workloads keep their mounted certificate and a re-created identity (or a reinstall
    /// of tlsid) adopts it without re-issuing while it is valid; `Delete` gives the Secret an owner
    /// reference to the identity, so the garbage collector deletes it with the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_deletion_policy: Option<SecretDeletionPolicy>,

    /// Additional keystore formats written into the Secret beside the PEM files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystores: Option<Keystores>,

    /// Run the tlsid mTLS demo workload with this identity: a Deployment (plus a Service for a
    /// server) that mounts the Secret and reloads rotated certificates without restarting.
    /// Removing this field removes the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo: Option<DemoSpec>,
}

/// A SPIFFE ID derived from a ServiceAccount.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeSpec {
    /// Name of a ServiceAccount in the identity's namespace (it need not exist).
    #[schemars(schema_with = "schema::service_account_name")]
    pub service_account: String,
}

/// What happens to an identity's Secret when the identity is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SecretDeletionPolicy {
    /// Keep the Secret (the default, as cert-manager does): workloads that mount it keep running.
    #[default]
    Retain,
    /// Delete the Secret with the identity (an owner reference; the garbage collector deletes it).
    Delete,
}

/// Keystores for runtimes that do not read PEM (cert-manager's shape).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct Keystores {
    /// PKCS#12 files for Java and others: `keystore.p12` (private key and chain, alias
    /// `certificate`) and `truststore.p12` (each root of the trust bundle as a trusted certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<Pkcs12Keystore>,
}

/// PKCS#12 keystore settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!self.create || has(self.passwordSecretRef)")
        .message("keystores.pkcs12.passwordSecretRef is required when create is true"),
)]
#[serde(rename_all = "camelCase")]
pub struct Pkcs12Keystore {
    /// Write `keystore.p12` and `truststore.p12` into the Secret, re-generated on every rotation.
    pub create: bool,
    /// The Secret key (in the identity's namespace) holding the password that protects both files.
    /// A missing or empty password is reported as `Ready=False`, reason `KeystorePasswordMissing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Encryption: `Modern2023` (default; PBES2 AES-256-CBC, PBKDF2-HMAC-SHA256, HMAC-SHA256 MAC;
    /// Java 8u301+, OpenSSL 1.1.1+), `LegacyDES` (3DES, SHA-1 MAC) or `LegacyRC2` (RC2-40, for old readers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Pkcs12ProfileName>,
}

/// A key of a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name, in the identity's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// PKCS#12 encryption profile.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Pkcs12ProfileName {
    #[default]
    Modern2023,
    #[serde(rename = "LegacyDES")]
    LegacyDes,
    #[serde(rename = "LegacyRC2")]
    LegacyRc2,
}

/// The demo workload of an identity.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.role == 'client' ? has(self.server) && self.server != '' : !has(self.server)")
        .message("demo.server (the server's TlsIdentity name) is required for clients and not allowed for servers"),
    validation = Rule::new("self.role == 'client' || !has(self.serverNamespace)")
        .message("demo.serverNamespace is for clients"),
    validation = Rule::new("self.role == 'server' || !has(self.allowedClients)")
        .message("demo.allowedClients is for servers"),
    validation = schema::rule_demo_interval(),
    validation = schema::rule_demo_port(),
)]
#[serde(rename_all = "camelCase")]
pub struct DemoSpec {
    /// `server` (accepts mTLS connections, exposed by a Service named after the identity) or
    /// `client` (connects to a server identity's Service every `interval`).
    pub role: DemoRole,
    /// Number of pods. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: Option<i32>,
    /// TCP port the server listens on and clients connect to. Default 8443; not 9090 (metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: Option<i32>,
    /// For clients: the name of the server's TlsIdentity (in `serverNamespace`). Its Service is
    /// `<server>.<serverNamespace>.svc`, and the client verifies the server certificate for that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub server: Option<String>,
    /// For clients: the namespace of the server's TlsIdentity. Default: this identity's namespace.
    /// A server lets clients of other namespaces in only if its `allowedClients` says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::namespace_name")]
    pub server_namespace: Option<String>,
    /// For servers: the clients allowed in after the mTLS handshake, by SPIFFE ID (a URI SAN of
    /// the client certificate): exact, a prefix ending in `*`, or `*` alone for every client whose
    /// certificate the trust bundle verifies (at least one entry). Default: SPIFFE IDs in this namespace,
    /// `spiffe://<trustDomain>/ns/<namespace>/*`. Other clients get HTTP 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::allowed_clients_opt")]
    pub allowed_clients: Option<Vec<String>>,
    /// For clients: time between handshakes, as a Go duration. Default `2s`, between `100ms` and `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub interval: Option<GoDuration>,
}

/// Role of a demo workload.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DemoRole {
    /// Accepts mTLS connections.
    #[default]
    Server,
    /// Connects to a server.
    Client,
}

/// An extended key usage of the certificate.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    /// TLS server authentication (EKU serverAuth).
    Server,
    /// TLS client authentication (EKU clientAuth).
    Client,
}

/// Private key parameters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.size) || (self.algorithm == 'ECDSA' && self.size in [256, 384]) || (self.algorithm == 'RSA' && self.size in [2048, 3072, 4096])")
        .message("size must be 256 or 384 for ECDSA, 2048, 3072 or 4096 for RSA, and unset for Ed25519"),
)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeySpec {
    /// Key algorithm: `ECDSA` (default), `Ed25519` or `RSA`.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// Key size in bits: ECDSA 256 (P-256, default) or 384 (P-384); RSA 2048 (default), 3072 or 4096.
    /// Not used for Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

/// Key algorithm.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 or P-384.
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// Ed25519 (RFC 8410). Not every TLS stack accepts it.
    Ed25519,
    /// RSA with PKCS#1 v1.5 signatures (SHA-256).
    #[serde(rename = "RSA")]
    Rsa,
}

/// Labels and annotations copied onto the Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct SecretTemplate {
    /// Labels added to the Secret (at most 64, valid Kubernetes label keys and values). Keys under
    /// `tlsid.dev/` and `app.kubernetes.io/managed-by` are reserved for tlsid.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::template_labels")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret (at most 64, valid Kubernetes annotation keys). Keys under
    /// `tlsid.dev/` and `app.kubernetes.io/managed-by` are reserved for tlsid.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::template_annotations")]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state, written only by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsIdentityStatus {
    /// `Ready`: the Secret holds a valid certificate matching the spec. `Issuing`: a new
    /// certificate is being issued, with the reason why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The Secret the certificate was written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Start of the current certificate's validity (backdated slightly for clock skew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the controller will renew the current certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Serial number of the current certificate, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// SHA-256 fingerprint (hex) of the CA certificate that signed the current certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// Number of certificates issued for this identity so far.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "revision_lenient"
    )]
    #[schemars(range(min = 0, max = MAX_REVISION))]
    pub revision: Option<i64>,
    /// The value of the `tlsid.dev/renew` annotation that was last acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renew_request: Option<String>,
    /// When the last issuance attempt failed. Cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Consecutive failed issuance attempts; drives exponential backoff. Cleared on success.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "attempts_lenient"
    )]
    #[schemars(range(min = 0, max = MAX_FAILED_ISSUANCE_ATTEMPTS))]
    pub failed_issuance_attempts: Option<i32>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Workloads (Deployments, StatefulSets, DaemonSets in this namespace) that mount this
    /// identity's Secret as a volume, a projected volume, or through `env`/`envFrom`; at most 50,
    /// those opted in to restarts first. Kept only when the controller runs with `--restarts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub consumers: Vec<Consumer>,
}

/// A workload that mounts an identity's Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    /// The workload's name (same namespace as the identity).
    pub name: String,
    /// `restart`: tlsid restarts it after each change of the Secret (annotation
    /// `tlsid.dev/reload: restart`). `none`: tlsid restarts nothing; the workload must re-read
    /// the files itself.
    pub reload: String,
    /// `reload: restart` only: its pod template was restarted for the Secret's current content
    /// and its rollout has finished. Always false for `reload: none` (tlsid cannot tell).
    pub caught_up: bool,
    /// When tlsid last restarted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<Time>,
    /// What it waits for, or what is wrong (a `subPath` mount never sees a rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn revision_lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    lenient::clamped_i64(d, MAX_REVISION)
}

fn attempts_lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    lenient::clamped_i32(d, MAX_FAILED_ISSUANCE_ATTEMPTS)
}

// === impl TlsIdentitySpec ===

impl TlsIdentitySpec {
    /// The PKCS#12 settings, when keystores are to be written.
    pub fn pkcs12_wanted(&self) -> Option<&Pkcs12Keystore> {
        self.keystores
            .as_ref()
            .and_then(|k| k.pkcs12.as_ref())
            .filter(|p| p.create)
    }
}

// === impl TlsIdentity ===

/// The Secret an identity named `identity` writes when `spec.secretName` is not set.
pub fn default_secret_name(identity: &str) -> String {
    format!("{identity}-tls")
}

impl TlsIdentity {
    /// The Secret name, with the default applied.
    pub fn secret_name(&self) -> String {
        self.spec.secret_name.clone().unwrap_or_else(|| {
            default_secret_name(self.metadata.name.as_deref().unwrap_or_default())
        })
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_carries_the_new_bounds() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::api::TlsIdentity::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let root_rules = schema["x-kubernetes-validations"].to_string();
        assert!(
            root_rules.contains("self.metadata.name.size() <= 63"),
            "{root_rules}"
        );
        let status = &schema["properties"]["status"]["properties"];
        assert_eq!(status["failedIssuanceAttempts"]["minimum"], 0.0);
        assert_eq!(status["revision"]["maximum"], MAX_REVISION as f64);
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["properties"]["duration"]["maxLength"], 32);
        let spec_rules = spec["x-kubernetes-validations"].to_string();
        for want in ["87840h", "getSeconds()", "duration('30s')"] {
            assert!(spec_rules.contains(want), "{want}");
        }
    }
}
