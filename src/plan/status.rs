//! Status bookkeeping: conditions whose `lastTransitionTime` moves only when their status flips,
//! so an unchanged world produces an identical status and no write; and the failure backoff.

use crate::api::{TlsIdentityStatus, conditions::READY};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The longest wait between two attempts after failures, and the re-check period of a failure
/// that retrying will not fix soon (403, 422): an admission policy can be removed without any event.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// The first wait after a failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);

/// Set condition `type_` in `conditions`, keeping `lastTransitionTime` if the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let previous = conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    let new = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    conditions.retain(|c| c.type_ != type_);
    conditions.push(new);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// A condition of `status`, if present.
pub fn condition<'a>(status: &'a TlsIdentityStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The Ready condition's reason, if any: Events are emitted only when it changes.
pub fn ready_reason(status: &TlsIdentityStatus) -> Option<&str> {
    condition(status, READY).map(|c| c.reason.as_str())
}

/// The wait after `attempts` consecutive failures: 5s, 10s, 20s, ... up to [`BACKOFF_CAP`], less a
/// deterministic jitter of up to 10% derived from `seed` (the object's UID) and the attempt, so
/// objects that failed together do not retry together.
pub fn failure_backoff(attempts: i32, seed: &str) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 16) - 1).unwrap_or(0);
    let base = BACKOFF_BASE
        .saturating_mul(1 << exp)
        .min(BACKOFF_CAP)
        .as_millis() as u64;
    let digest = Sha256::digest(format!("{seed}/{attempts}").as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    let jitter = n % (base / 10 + 1);
    Duration::from_millis(base - jitter)
}

/// The attempt count at which [`failure_backoff`] reaches its cap: what a failure that retrying
/// will not fix soon jumps to.
pub const CAPPED_ATTEMPTS: i32 = 7;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::ISSUING;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1 = t0 + jiff::SignedDuration::from_secs(60);
        let mut c = Vec::new();
        set_condition(&mut c, READY, true, "Issued", "ok".into(), Some(1), t0);
        let first = c.clone();
        set_condition(&mut c, READY, true, "Issued", "ok".into(), Some(1), t1);
        assert_eq!(
            c, first,
            "same status at a later time: identical, so no write"
        );
        set_condition(&mut c, READY, true, "Renewed", "again".into(), Some(1), t1);
        assert_eq!(
            c[0].last_transition_time,
            Time(t0),
            "reason changes keep the time"
        );
        set_condition(
            &mut c,
            READY,
            false,
            "SecretConflict",
            "x".into(),
            Some(1),
            t1,
        );
        assert_eq!(c[0].last_transition_time, Time(t1));
        set_condition(&mut c, ISSUING, false, "Issued", "x".into(), Some(1), t1);
        assert_eq!(
            c.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            vec![ISSUING, READY]
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for seed in ["a", "b", "c", "uid-1234"] {
            let secs: Vec<f64> = (0..12)
                .map(|n| failure_backoff(n, seed).as_secs_f64())
                .collect();
            let nominal = [
                5., 5., 10., 20., 40., 80., 160., 300., 300., 300., 300., 300.,
            ];
            for (got, want) in secs.iter().zip(nominal) {
                assert!(
                    *got <= want && *got >= want * 0.9,
                    "{seed}: {got} vs {want}"
                );
            }
        }
        assert!(failure_backoff(CAPPED_ATTEMPTS, "x") >= BACKOFF_CAP.mul_f64(0.9));
        assert!(failure_backoff(i32::MAX, "x") <= BACKOFF_CAP);
        assert!(failure_backoff(i32::MIN, "x") <= BACKOFF_BASE);
        let spread: std::collections::BTreeSet<_> = (0..50)
            .map(|i| failure_backoff(5, &format!("uid-{i}")))
            .collect();
        assert!(
            spread.len() > 10,
            "jitter spreads objects that failed together"
        );
    }
}
