//! Pure status bookkeeping: conditions whose `lastTransitionTime` moves only when their status flips,
//! so an unchanged world produces an identical status and no write.

use crate::api::TlsIdentityStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const ISSUING: &str = "Issuing";

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

/// The Ready condition's reason, if any: used to emit an Event only when it changes.
pub fn ready_reason(status: Option<&TlsIdentityStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str())
}

/// Exponential backoff after `attempts` consecutive failures: 5s, 10s, 20s, ... capped at 5 minutes.
pub fn failure_backoff(attempts: i32) -> std::time::Duration {
    let exp = attempts.clamp(1, 7) - 1;
    std::time::Duration::from_secs((5u64 << exp).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        set_condition(
            &mut c,
            READY,
            true,
            "Renewed",
            "ok again".into(),
            Some(1),
            t1,
        );
        assert_eq!(
            c[0].last_transition_time,
            Time(t0),
            "reason changes keep the transition time"
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
    fn backoff_grows_and_caps() {
        let secs: Vec<u64> = (0..10).map(|n| failure_backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![5, 5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
