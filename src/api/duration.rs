//! Go-style durations in the spec (`24h`, `90m`, `1.5s`), kept as the text the user wrote.
//!
//! Deserializing never fails and never panics, whatever the apiserver hands us: a value that got
//! past admission (or was stored before a rule existed) must not stop the controller from reading
//! the whole list. Interpretation happens later, in [`GoDuration::parse`], whose errors become an
//! `InvalidSpec` condition on the one object that carries them.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::{fmt, time::Duration};

/// Longest duration [`GoDuration::parse`] accepts: far beyond any sensible value, and small enough
/// that adding it to any certificate time stays in range.
pub const MAX_GO_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration as written in the spec, in Go's `time.ParseDuration` syntax (non-negative only).
///
/// Serializes back exactly as it was read.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct GoDuration(pub String);

/// Why a duration could not be read. The message quotes (a prefix of) the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 90s, 24h, 1h30m, 1.5s)")]
pub struct DurationError {
    /// The input, cut to a readable length.
    pub input: String,
    pub reason: &'static str,
}

// === impl GoDuration ===

impl GoDuration {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parse with Go's `time.ParseDuration` grammar: a sequence of decimal numbers, each with an
    /// optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`, `1.5s`;
    /// or `0`. A leading `+` is allowed; negative values are rejected, as is anything above
    /// [`MAX_GO_DURATION`]. All arithmetic is checked: no input panics.
    pub fn parse(&self) -> Result<Duration, DurationError> {
        parse_go_duration(&self.0)
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoDuration({:?})", self.0)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for GoDuration {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for GoDuration {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for GoDuration {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.into()))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    /// Accepts any value: a string as is, a number or boolean as its text (which then fails
    /// [`GoDuration::parse`] with a clear message), anything else as a placeholder.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyText).map(GoDuration)
    }
}

struct AnyText;

impl<'de> serde::de::Visitor<'de> for AnyText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Go duration string")
    }
    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<String, E> {
        Ok(String::from_utf8_lossy(v).into_owned())
    }
    fn visit_bool<E>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_unit<E>(self) -> Result<String, E> {
        Ok(String::new())
    }
    fn visit_none<E>(self) -> Result<String, E> {
        Ok(String::new())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(AnyText)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok("<list>".into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok("<object>".into())
    }
}

// === parsing ===

const MAX_QUOTED_CHARS: usize = 40;

fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: &'static str| DurationError {
        input: input.chars().take(MAX_QUOTED_CHARS).collect(),
        reason,
    };
    let max_nanos = u64::try_from(MAX_GO_DURATION.as_nanos()).unwrap_or(u64::MAX);

    let mut rest = input;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(fail("must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(fail("empty"));
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        // Integer part.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, tail) = rest.split_at(int_len);
        let mut whole: u64 = 0;
        for b in int_digits.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| fail("too large (at most 100 years)"))?;
        }
        // Fraction: digits beyond what fits in a u64 are dropped, as Go does.
        let mut rest_after = tail;
        let mut frac: u64 = 0;
        let mut scale: u64 = 1;
        let mut has_frac_digits = false;
        if let Some(after_dot) = tail.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            let (frac_digits, t) = after_dot.split_at(frac_len);
            has_frac_digits = frac_len > 0;
            for b in frac_digits.bytes() {
                match (frac.checked_mul(10), scale.checked_mul(10)) {
                    (Some(f), Some(s)) => {
                        frac = f + u64::from(b - b'0');
                        scale = s;
                    }
                    _ => break,
                }
            }
            rest_after = t;
        }
        if int_len == 0 && !has_frac_digits {
            return Err(fail("expected a number"));
        }
        // Unit: everything up to the next digit or '.'.
        let unit_len = rest_after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest_after.len());
        let (unit, t) = rest_after.split_at(unit_len);
        let unit_nanos: u64 = match unit {
            "ns" => 1,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(fail("missing unit (one of ns, us, ms, s, m, h)")),
            _ => return Err(fail("unknown unit, expected one of ns, us, ms, s, m, h")),
        };
        let frac_nanos =
            u64::try_from(u128::from(frac) * u128::from(unit_nanos) / u128::from(scale))
                .map_err(|_| fail("too large (at most 100 years)"))?;
        total = whole
            .checked_mul(unit_nanos)
            .and_then(|v| v.checked_add(frac_nanos))
            .and_then(|v| v.checked_add(total))
            .filter(|v| *v <= max_nanos)
            .ok_or_else(|| fail("too large (at most 100 years)"))?;
        rest = t;
    }
    Ok(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Duration, DurationError> {
        GoDuration::from(s).parse()
    }

    #[test]
    fn accepts_go_durations() {
        let cases = [
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("60s", Duration::from_secs(60)),
            ("24h", Duration::from_secs(86400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("500ms", Duration::from_millis(500)),
            ("250us", Duration::from_micros(250)),
            ("10\u{00b5}s", Duration::from_micros(10)),
            ("10\u{03bc}s", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1h1m1s1ms1us1ns", Duration::new(3661, 1_001_001)),
            ("87840h", Duration::from_secs(87840 * 3600)),
            ("0.000000001s", Duration::from_nanos(1)),
            // Fraction digits beyond u64 precision are dropped, not an error.
            ("1.00000000000000000000000001s", Duration::from_secs(1)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("-1s", "negative"),
            ("1", "missing unit"),
            ("10", "missing unit"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("1d", "unknown unit"),
            ("1 s", "unknown unit"),
            (" 1s", "expected a number"),
            ("1s ", "unknown unit"),
            ("1h-1m", "unknown unit"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615ns1ns", "too large"),
            ("9223372036854775807h", "too large"),
            ("876001h", "too large"),
            ("1e400s", "unknown unit"),
            ("NaNs", "expected a number"),
        ];
        for (input, want) in cases {
            let err = parse(input).expect_err(input);
            assert!(err.to_string().contains(want), "{input}: {err}");
        }
        let long = "9".repeat(10_000) + "s";
        let err = parse(&long).unwrap_err();
        assert!(err.input.len() <= MAX_QUOTED_CHARS, "message stays short");
    }

    #[test]
    fn deserialize_accepts_anything_and_round_trips_strings() {
        for v in [
            serde_json::json!("99999999999999999999s"),
            serde_json::json!("not a duration"),
            serde_json::json!(""),
            serde_json::json!("1h30m"),
        ] {
            let d: GoDuration = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&d).unwrap(), v);
        }
        for (v, text) in [
            (serde_json::json!(30), "30"),
            (serde_json::json!(-1), "-1"),
            (serde_json::json!(1.5), "1.5"),
            (serde_json::json!(true), "true"),
            (serde_json::json!(null), ""),
            (serde_json::json!([1, [2]]), "<list>"),
            (serde_json::json!({"a": {"b": 1}}), "<object>"),
        ] {
            let d: GoDuration = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(d.as_str(), text, "{v}");
            assert!(d.parse().is_err(), "{v}");
        }
        // From text too (what the client actually deserializes).
        let d: Option<GoDuration> = serde_json::from_str(r#"{"x": 1}"#).unwrap();
        assert_eq!(d, Some(GoDuration::from("<object>")));
    }

    #[test]
    fn the_admission_bound_keeps_values_parseable() {
        // The largest values DURATION_BOUNDED_RE admits within the 32-character limit stay below
        // 100 years, hence far below Go's 292-year limit that CEL's duration() shares.
        for input in [
            "999999999s999999999s999999999s",
            "99999h99999h99999h99999h99999h",
            "9999999m9999999m9999999m9999999m",
            "999999999999ms999999999999ms",
            "999999999999999999ns999999999s",
            "99999.9999999999999999999999999h",
        ] {
            assert!(input.len() <= 32, "{input}");
            let d = parse(input).unwrap_or_else(|e| panic!("{e}"));
            assert!(d < MAX_GO_DURATION, "{input}");
        }
    }

    /// A small deterministic generator (xorshift): no extra dependency, reproducible failures.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn never_panics_on_generated_input() {
        let pieces = [
            "0",
            "1",
            "9",
            "99999999999999999999",
            "18446744073709551615",
            ".",
            "..",
            "+",
            "-",
            "ns",
            "us",
            "\u{00b5}s",
            "\u{03bc}s",
            "ms",
            "s",
            "m",
            "h",
            "d",
            "e",
            "E400",
            " ",
            "",
            "\u{0}",
            "\u{00b5}",
            "NaN",
            "inf",
            "\u{1F600}",
            "5",
            "00000000000000000000000000",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..50_000 {
            let n = rng.next() % 12;
            let s: String = (0..n).map(|_| rng.pick(&pieces)).collect();
            if let Ok(d) = parse(&s) {
                assert!(d <= MAX_GO_DURATION, "{s:?} -> {d:?}");
            }
        }
        // Arbitrary bytes made into (lossy) strings.
        for _ in 0..20_000 {
            let n = rng.next() % 24;
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse(&s);
        }
    }
}
