//! When to renew: one pure function.

use super::RenewPolicy;
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
    let t = (base - jitter).max(not_before.as_second());
    jiff::Timestamp::from_second(t).unwrap_or(not_before)
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
            t
        );
    }
}
