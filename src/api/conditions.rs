//! Condition types and reasons: part of the public API. Users, alerts and scripts match on these
//! strings (`kubectl wait --for=condition=Ready`, `kubectl get -o jsonpath=...reason`), so they are
//! defined once here and never spelled out elsewhere.

/// The Secret holds a valid certificate matching the spec, signed by the current CA.
pub const READY: &str = "Ready";
/// A new certificate is being (or was last) issued, with the reason why.
pub const ISSUING: &str = "Issuing";
/// The demo workload of `spec.demo` is applied (or why it is not).
pub const DEMO: &str = "Demo";
/// Present (False) only while the CA Secret holds nothing usable and the last good CA signs in
/// its place: the identity is served, but someone broke the CA Secret.
pub const CA_SECRET: &str = "CaSecretValid";

/// Every reason a condition or an Event of tlsid can carry, besides the re-issue reasons of
/// [`crate::pki::ReissueReason::reason`] (which the `Issuing` condition shows while issuing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // --- Ready=True
    /// A certificate was issued for the first time, or re-issued after a repair or spec change.
    Issued,
    /// A certificate was renewed (renewal time, expiry or a manual request).
    Renewed,
    // --- Ready=False, terminal until the identity, its Secret or the CA changes
    /// The spec cannot be issued as written; the message says why.
    InvalidSpec,
    /// The object could not be read at all (a value the controller cannot represent).
    UnreadableObject,
    /// The identity asks for names its namespace may not claim (the built-in rule and every
    /// `TlsIdentityPolicy`); nothing is issued or renewed until they are permitted.
    NotPermitted,
    /// The Secret exists and belongs to someone else; tlsid leaves it alone.
    SecretConflict,
    /// The apiserver refused the Secret write (403, 422, an immutable Secret, an admission policy);
    /// re-checked on the capped backoff.
    SecretRejected,
    /// The keystore password is missing or unusable; PEM files are still written.
    KeystorePasswordMissing,
    /// The CA has expired: nothing can be signed until it is replaced.
    CaExpired,
    /// The CA expires before a certificate of the requested lifetime would.
    CaExpiring,
    // --- Ready=False or Issuing=True, retried with backoff
    /// Signing or key generation failed.
    IssuanceFailed,
    /// Writing the Secret failed for a reason that may pass (a timeout, a conflict, a 5xx).
    SecretWriteFailed,
    // --- Issuing=True, no failure
    /// A certificate is due but waits for the install's issuance budget (a renewal storm, a CA
    /// change re-issuing everything); shown only when the wait is long enough to matter
    /// ([`crate::plan::BUDGET_WAIT_VISIBLE`]), so a bulk that passes in seconds writes nothing.
    WaitingForBudget,
    // --- Issuing=False
    /// The stored certificate needs no re-issue.
    UpToDate,
    // --- CaSecretValid=False
    /// The CA Secret was changed into something unusable; the last good CA keeps signing.
    CaSecretInvalid,
    // --- Demo
    /// The demo workload is applied.
    Applied,
    /// A demo client names a server identity that does not exist or has no DNS name.
    ServerNotFound,
    /// A demo Deployment or Service of that name exists and belongs to someone else.
    DemoConflict,
    /// Applying the demo workload failed; the message carries the apiserver's answer.
    DemoFailed,
    /// This install runs no demo workloads (`--demo-workloads=false`, chart `demo.enabled=false`).
    DemoDisabled,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::Issued,
        Reason::Renewed,
        Reason::InvalidSpec,
        Reason::UnreadableObject,
        Reason::NotPermitted,
        Reason::SecretConflict,
        Reason::SecretRejected,
        Reason::KeystorePasswordMissing,
        Reason::CaExpired,
        Reason::CaExpiring,
        Reason::IssuanceFailed,
        Reason::SecretWriteFailed,
        Reason::WaitingForBudget,
        Reason::UpToDate,
        Reason::CaSecretInvalid,
        Reason::Applied,
        Reason::ServerNotFound,
        Reason::DemoConflict,
        Reason::DemoFailed,
        Reason::DemoDisabled,
    ];

    /// The CamelCase string shown in conditions, Events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Issued => "Issued",
            Reason::Renewed => "Renewed",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::UnreadableObject => "UnreadableObject",
            Reason::NotPermitted => "NotPermitted",
            Reason::SecretConflict => "SecretConflict",
            Reason::SecretRejected => "SecretRejected",
            Reason::KeystorePasswordMissing => "KeystorePasswordMissing",
            Reason::CaExpired => "CaExpired",
            Reason::CaExpiring => "CaExpiring",
            Reason::IssuanceFailed => "IssuanceFailed",
            Reason::SecretWriteFailed => "SecretWriteFailed",
            Reason::WaitingForBudget => "WaitingForBudget",
            Reason::UpToDate => "UpToDate",
            Reason::CaSecretInvalid => "CaSecretInvalid",
            Reason::Applied => "Applied",
            Reason::ServerNotFound => "ServerNotFound",
            Reason::DemoConflict => "DemoConflict",
            Reason::DemoFailed => "DemoFailed",
            Reason::DemoDisabled => "DemoDisabled",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_unique_camel_case() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.chars().next().unwrap().is_ascii_uppercase(), "{s}");
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
        }
    }
}
