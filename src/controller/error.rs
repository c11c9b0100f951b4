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

    /// Whether the apiserver answered 429 (see [`is_throttled`]).
    pub fn throttled(&self) -> bool {
        match self {
            Error::Read { source, .. } | Error::StatusWrite { source, .. } => is_throttled(source),
            _ => false,
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

/// Whether a create found the name taken.
pub fn is_already_exists(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

/// Whether the apiserver asked us to slow down (429 from API Priority and Fairness or a rate
/// limit) even after kube-client's own retries (it retries 429/503/504 with backoff, honouring
/// Retry-After): not a failure of the object. Retried after a short pause, never recorded as a
/// failed attempt, so throttling slows the controller down instead of backing objects off.
pub fn is_throttled(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 429)
}

/// How long to pause after a 429 that survived the client's retries: 1-2 s, spread per object so
/// retries do not arrive in step.
pub fn throttle_pause(seed: &str) -> std::time::Duration {
    let spread = seed
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    std::time::Duration::from_millis(1000 + spread % 1000)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("x", "TooManyRequests")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn throttling_is_neither_persistent_nor_a_failure() {
        assert!(is_throttled(&api(429)));
        assert!(!is_persistent(&api(429)));
        assert!(!is_throttled(&api(422)));
        let p = throttle_pause("ns/a");
        assert!(p >= std::time::Duration::from_secs(1) && p < std::time::Duration::from_secs(2));
        assert_ne!(throttle_pause("ns/a"), throttle_pause("ns/b"));
    }
}
