//! Reconcile errors: each names the object and step, keeps its cause as a typed source (printed
//! once, by whoever prints the chain), and has a stable category for metrics and logs.

use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;

/// What kept a reconcile from finishing. Failures that the identity's status can carry (issuance,
/// a refused Secret write, a demo apply) are not errors: they become conditions. These are the
/// ones that cannot be recorded on the object, and are retried with per-object backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the cluster CA is not loaded yet")]
    CaNotReady,
    #[error("reading {what} for {object} failed")]
    Read {
        what: &'static str,
        object: Box<ObjectRef<DynamicObject>>,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {object} failed")]
    StatusWrite {
        object: Box<ObjectRef<DynamicObject>>,
        #[source]
        source: kube::Error,
    },
    #[error("the signing task for {object} did not finish")]
    Task {
        object: Box<ObjectRef<DynamicObject>>,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// A stable label for `tlsid_reconcile_errors_total` and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::CaNotReady => "CaNotReady",
            Error::Read { .. } => "ApiRead",
            Error::StatusWrite { .. } => "StatusWrite",
            Error::Task { .. } => "Task",
        }
    }
}

/// Whether an apiserver answer will stay the same if asked again soon: the request itself is
/// refused (forbidden, invalid, an immutable field, a webhook or admission policy saying no).
pub fn is_persistent(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) => matches!(s.code, 400 | 403 | 404 | 405 | 413 | 415 | 422),
        _ => false,
    }
}

/// The apiserver's own words for a failed request, for a condition message.
pub fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(s) => format!(
            "the apiserver answered {} {}: {}",
            s.code, s.reason, s.message
        ),
        other => other.to_string(),
    }
}
