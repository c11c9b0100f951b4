//! When to renew: one pure function.

use super::{BACKDATE, RenewPolicy};
use crate::api::MIN_RENEW_AFTER_SECS;
use sha2::{Digest, Sha256};

/// Jitter never exceeds this, nor 2% of the lifetime.
const MAX_JITTER_SECS: i64 = 300;

/// The renewal time of a certificate valid from `not_before` to `not_after`.
///
/// - `Before(d)`: `not_after - d`; if that is not after `not_before`, fall back to 2/3 of the lifetime
///   (as cert-manager does when renewBefore exceeds the actual lifetime, e.g. when clamped by the CA).
/// - `Percentage(p)`: when `p`% of the lifetime remains.
///
/// Then it moves earlier by a deterministic jitter in `[0, min(2% of lifetime, 5m)]` derived from
/// `seed` (the object's UID), so identities created together do not all renew in the same second,
/// and is truncated to the second.
///
/// Finally it is never earlier than the issuance time (`not_before + BACKDATE`) plus
/// [`MIN_RENEW_AFTER_SECS`], so one issuance can never trigger the next right away; if that floor
/// is after `not_after` (a certificate too short-lived for it), the result is `not_after`.
pub fn renewal_time(
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
    policy: RenewPolicy,
    seed: &str,
) -> jiff::Timestamp {
    let lifetime = (not_after.as_second() - not_before.as_second()).max(0);
    let two_thirds = not_before.as_second() + lifetime * 2 / 3;
    let base = match policy {
        RenewPolicy::Before(d) => {
            let t = not_after
                .as_second()
                .saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            if t > not_before.as_second() {
                t
            } else {
                two_thirds
            }
        }
        RenewPolicy::Percentage(p) => not_after.as_second() - lifetime * i64::from(p.min(99)) / 100,
    };
    let max_jitter = (lifetime / 50).min(MAX_JITTER_SECS);
    let jitter = if max_jitter > 0 {
        let digest = Sha256::digest(seed.as_bytes());
        let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        i64::try_from(n % (max_jitter as u64 + 1)).unwrap_or(0)
    } else {
        0
    };
    let floor = not_before
        .as_second()
        .saturating_add(i64::try_from(BACKDATE.as_secs()).unwrap_or(i64::MAX))
        .saturating_add(i64::try_from(MIN_RENEW_AFTER_SECS).unwrap_or(i64::MAX));
    if floor > not_after.as_second() {
        return not_after;
    }
    let t = (base - jitter).max(floor);
    jiff::Timestamp::from_second(t).unwrap_or(not_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn table() {
        let nb = ts("2026-01-01T00:00:00Z");
        let na = ts("2026-01-01T03:00:00Z"); // 3h lifetime: jitter up to 2% = 216s
        let cases = [
            (RenewPolicy::Percentage(33), "2026-01-01T02:00:36Z", 216),
            (
                RenewPolicy::Before(Duration::from_secs(1800)),
                "2026-01-01T02:30:00Z",
                216,
            ),
            // renewBefore longer than the actual lifetime: fall back to 2/3.
            (
                RenewPolicy::Before(Duration::from_secs(4 * 3600)),
                "2026-01-01T02:00:00Z",
                216,
            ),
            (RenewPolicy::Percentage(99), "2026-01-01T00:01:48Z", 108),
        ];
        for (policy, base, window) in cases {
            let got = renewal_time(nb, na, policy, "uid-1");
            let base = ts(base);
            let early = base.as_second() - got.as_second();
            assert!(
                (0..=window).contains(&early),
                "{policy:?}: {got} vs base {base}"
            );
            assert!(got >= nb);
        }
    }

    #[test]
    fn jitter_is_deterministic_bounded_and_spreads() {
        let nb = ts("2026-01-01T00:00:00Z");
        let na = ts("2026-01-02T00:00:00Z");
        let base = na.as_second() - 28512; // 33% of 86400s before notAfter
        let times: std::collections::BTreeSet<i64> = (0..50)
            .map(|i| {
                renewal_time(nb, na, RenewPolicy::Percentage(33), &format!("uid-{i}")).as_second()
            })
            .collect();
        assert!(
            times.len() > 20,
            "jitter should spread renewals: {}",
            times.len()
        );
        for t in &times {
            assert!(*t <= base && *t >= base - 300, "{t} vs {base}");
        }
        assert_eq!(
            renewal_time(nb, na, RenewPolicy::Percentage(33), "same"),
            renewal_time(nb, na, RenewPolicy::Percentage(33), "same")
        );
    }

    #[test]
    fn degenerate_lifetimes_do_not_panic() {
        let t = ts("2026-01-01T00:00:00Z");
        assert_eq!(renewal_time(t, t, RenewPolicy::Percentage(33), "x"), t);
        let earlier = ts("2025-01-01T00:00:00Z");
        assert_eq!(
            renewal_time(
                t,
                earlier,
                RenewPolicy::Before(Duration::from_secs(u64::MAX)),
                "x"
            ),
            earlier,
            "inverted validity: renew at notAfter (already past)"
        );
        let (min, max) = (jiff::Timestamp::MIN, jiff::Timestamp::MAX);
        for policy in [
            RenewPolicy::Percentage(1),
            RenewPolicy::Percentage(99),
            RenewPolicy::Before(Duration::ZERO),
            RenewPolicy::Before(Duration::from_secs(u64::MAX)),
        ] {
            let got = renewal_time(min, max, policy, "x");
            assert!(got >= min && got <= max);
            assert_eq!(renewal_time(max, max, policy, "x"), max);
        }
    }

    #[test]
    fn never_sooner_than_min_renew_after_issuance() {
        // Issued at 00:00:30 (notBefore backdated 30s); the floor is 00:01:00.
        let nb = ts("2026-01-01T00:00:00Z");
        let floor = ts("2026-01-01T00:01:00Z");
        let cases = [
            // (notAfter, policy, want)
            // duration 60s, 99%: base would be 00:00:31.
            ("2026-01-01T00:01:30Z", RenewPolicy::Percentage(99), floor),
            // duration 60s, renewBefore 59s: base 00:00:31.
            (
                "2026-01-01T00:01:30Z",
                RenewPolicy::Before(Duration::from_secs(59)),
                floor,
            ),
            // renewBefore longer than the lifetime: 2/3 fallback (00:01:00) is at the floor.
            (
                "2026-01-01T00:01:30Z",
                RenewPolicy::Before(Duration::from_secs(3600)),
                floor,
            ),
            // Lifetime shorter than backdate + minimum (e.g. clamped by the CA): renew at notAfter.
            (
                "2026-01-01T00:00:50Z",
                RenewPolicy::Percentage(33),
                ts("2026-01-01T00:00:50Z"),
            ),
            // Floor exactly at notAfter.
            ("2026-01-01T00:01:00Z", RenewPolicy::Percentage(1), floor),
        ];
        for (na, policy, want) in cases {
            let got = renewal_time(nb, ts(na), policy, "uid-1");
            assert_eq!(got, want, "{na} {policy:?}");
        }
        // Enough room: the policy decides (base 00:01:10, jitter up to 2% of 100s).
        for seed in ["a", "b", "c", "d"] {
            let got = renewal_time(
                nb,
                ts("2026-01-01T00:01:40Z"),
                RenewPolicy::Before(Duration::from_secs(30)),
                seed,
            );
            assert!(
                got >= ts("2026-01-01T00:01:08Z") && got <= ts("2026-01-01T00:01:10Z"),
                "{got}"
            );
        }
    }
}
