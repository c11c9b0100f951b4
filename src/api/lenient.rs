//! Deserializers for status integers that never fail: an out-of-range or mistyped value (written by
//! hand, or by an older controller) is clamped or dropped instead of making the whole object, and
//! with it the controller's list, unreadable.

use serde::{Deserializer, de};
use std::fmt;

/// `Option<i32>` clamped to `[0, max]`; anything that is not a number becomes `None`.
pub(crate) fn clamped_i32<'de, D: Deserializer<'de>>(
    d: D,
    max: i32,
) -> Result<Option<i32>, D::Error> {
    let v = clamped(d, i64::from(max))?;
    Ok(v.and_then(|v| i32::try_from(v).ok()))
}

/// `Option<i64>` clamped to `[0, max]`; anything that is not a number becomes `None`.
pub(crate) fn clamped_i64<'de, D: Deserializer<'de>>(
    d: D,
    max: i64,
) -> Result<Option<i64>, D::Error> {
    clamped(d, max)
}

fn clamped<'de, D: Deserializer<'de>>(d: D, max: i64) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(Clamp { max })
}

struct Clamp {
    max: i64,
}

impl Clamp {
    fn f64(&self, v: f64) -> Option<i64> {
        if v.is_nan() {
            return Some(0);
        }
        // `as` saturates at the i64 bounds; then clamp into range.
        Some((v.trunc() as i64).clamp(0, self.max))
    }
}

impl<'de> de::Visitor<'de> for Clamp {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative integer")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.clamp(0, self.max)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(
            i64::try_from(v).unwrap_or(i64::MAX).clamp(0, self.max),
        ))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Self::Value, E> {
        Ok(Some(
            i64::try_from(v.clamp(0, i128::from(self.max))).unwrap_or(0),
        ))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Self::Value, E> {
        Ok(Some(
            i64::try_from(v).unwrap_or(i64::MAX).clamp(0, self.max),
        ))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.f64(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(match v.trim().parse::<i64>() {
            Ok(n) => Some(n.clamp(0, self.max)),
            Err(_) => v.trim().parse::<f64>().ok().and_then(|f| self.f64(f)),
        })
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use crate::api::{MAX_FAILED_ISSUANCE_ATTEMPTS, MAX_REVISION, TlsIdentityStatus};

    #[test]
    fn status_counters_never_fail_to_deserialize() {
        let max_a = MAX_FAILED_ISSUANCE_ATTEMPTS;
        // (JSON text of the two fields, want attempts, want revision)
        let cases: &[(&str, Option<i32>, Option<i64>)] = &[
            ("3, \"revision\": 7", Some(3), Some(7)),
            ("-1, \"revision\": -5", Some(0), Some(0)),
            (
                "4294967296, \"revision\": 18446744073709551615",
                Some(max_a),
                Some(MAX_REVISION),
            ),
            (
                "99999999999999999999999, \"revision\": 1e300",
                Some(max_a),
                Some(MAX_REVISION),
            ),
            ("-1e300, \"revision\": 2.7", Some(0), Some(2)),
            ("\"12\", \"revision\": \"lots\"", Some(12), None),
            ("null, \"revision\": null", None, None),
            ("true, \"revision\": [1, {\"a\": 2}]", None, None),
            ("{\"n\": 1}, \"revision\": {}", None, None),
        ];
        for (fields, attempts, revision) in cases {
            let text = format!("{{\"failedIssuanceAttempts\": {fields}}}");
            let status: TlsIdentityStatus =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(status.failed_issuance_attempts, *attempts, "{text}");
            assert_eq!(status.revision, *revision, "{text}");
        }
        let empty: TlsIdentityStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (empty.failed_issuance_attempts, empty.revision),
            (None, None)
        );
        // Round trip of ordinary values is unchanged.
        let s = TlsIdentityStatus {
            failed_issuance_attempts: Some(2),
            revision: Some(9),
            ..Default::default()
        };
        let back: TlsIdentityStatus =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
