//! The issuance request: a `TlsIdentity` spec with defaults applied and checked.
//! Anything the CRD schema could not reject is caught here and reported as `InvalidSpec`.

use crate::api::{
    DEFAULT_DEMO_INTERVAL, DEFAULT_DURATION_SECS, DEMO_METRICS_PORT, DemoSpec, GoDuration,
    KeyAlgorithm, MAX_DEMO_INTERVAL, MAX_DURATION_SECS, MIN_DEMO_INTERVAL, MIN_DURATION_SECS,
    MIN_RENEW_AFTER_SECS, MIN_RENEW_BEFORE_SECS, TlsIdentitySpec, Usage,
};
use crate::pki::BACKDATE;
use std::{collections::BTreeSet, net::IpAddr, time::Duration};

/// Key type and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa(u32),
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpec::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeySpec::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeySpec::Ed25519 => f.write_str("Ed25519"),
            KeySpec::Rsa(bits) => write!(f, "RSA {bits}"),
        }
    }
}

/// When to renew, relative to the certificate's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewPolicy {
    /// A fixed time before `notAfter`.
    Before(Duration),
    /// When this percentage of the lifetime remains.
    Percentage(u8),
}

impl Default for RenewPolicy {
    /// cert-manager's default: renew at 2/3 of the lifetime.
    fn default() -> Self {
        RenewPolicy::Percentage(33)
    }
}

/// A spec error that the schema did not catch. The message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuanceRequest {
    pub common_name: Option<String>,
    pub dns_names: BTreeSet<String>,
    pub ip_addresses: BTreeSet<IpAddr>,
    pub uris: BTreeSet<String>,
    pub usages: BTreeSet<Usage>,
    pub key: KeySpec,
    pub duration: Duration,
    pub renew: RenewPolicy,
}

impl IssuanceRequest {
    pub fn from_spec(spec: &TlsIdentitySpec) -> Result<Self, InvalidSpec> {
        let common_name = spec.common_name.clone().filter(|cn| !cn.is_empty());
        if common_name.as_ref().is_some_and(|cn| cn.len() > 64) {
            return Err(InvalidSpec(
                "commonName is longer than 64 characters".into(),
            ));
        }
        let mut dns_names = BTreeSet::new();
        for name in &spec.dns_names {
            check_dns_name(name)?;
            dns_names.insert(name.clone());
        }
        let mut ip_addresses = BTreeSet::new();
        for ip in &spec.ip_addresses {
            let parsed: IpAddr = ip
                .parse()
                .map_err(|_| InvalidSpec(format!("ipAddresses: {ip:?} is not an IP address")))?;
            ip_addresses.insert(parsed);
        }
        let mut uris = BTreeSet::new();
        for uri in &spec.uris {
            check_uri(uri)?;
            uris.insert(uri.clone());
        }
        if let Some(spiffe) = &spec.spiffe {
            let sa = &spiffe.service_account;
            if !crate::api::is_dns_subdomain(sa) {
                return Err(InvalidSpec(format!(
                    "spiffe.serviceAccount {sa:?} is not a ServiceAccount name"
                )));
            }
        }
        if common_name.is_none()
            && dns_names.is_empty()
            && ip_addresses.is_empty()
            && uris.is_empty()
            && spec.spiffe.is_none()
        {
            return Err(InvalidSpec(
                "at least one of commonName, dnsNames, ipAddresses, uris or spiffe must be set"
                    .into(),
            ));
        }
        let usages: BTreeSet<Usage> = match &spec.usages {
            None => [Usage::Server, Usage::Client].into(),
            Some(u) if u.is_empty() => return Err(InvalidSpec("usages must not be empty".into())),
            Some(u) => u.iter().copied().collect(),
        };
        let key = match &spec.private_key {
            None => KeySpec::EcdsaP256,
            Some(pk) => match (pk.algorithm, pk.size) {
                (KeyAlgorithm::Ecdsa, None | Some(256)) => KeySpec::EcdsaP256,
                (KeyAlgorithm::Ecdsa, Some(384)) => KeySpec::EcdsaP384,
                (KeyAlgorithm::Ed25519, None) => KeySpec::Ed25519,
                (KeyAlgorithm::Rsa, None) => KeySpec::Rsa(2048),
                (KeyAlgorithm::Rsa, Some(bits @ (2048 | 3072 | 4096))) => KeySpec::Rsa(bits),
                (alg, Some(size)) => {
                    return Err(InvalidSpec(format!(
                        "privateKey: size {size} is not supported for {alg:?}"
                    )));
                }
            },
        };
        let duration = match &spec.duration {
            None => Duration::from_secs(DEFAULT_DURATION_SECS),
            Some(d) => parse_field("duration", d)?,
        };
        if duration < Duration::from_secs(MIN_DURATION_SECS) {
            return Err(InvalidSpec(format!(
                "duration must be at least {MIN_DURATION_SECS}s"
            )));
        }
        if duration > Duration::from_secs(MAX_DURATION_SECS) {
            return Err(InvalidSpec(format!(
                "duration must be at most {}h (10 years)",
                MAX_DURATION_SECS / 3600
            )));
        }
        let min_renew_after = Duration::from_secs(MIN_RENEW_AFTER_SECS);
        let renew = match (&spec.renew_before, spec.renew_before_percentage) {
            (Some(_), Some(_)) => {
                return Err(InvalidSpec(
                    "renewBefore and renewBeforePercentage are mutually exclusive".into(),
                ));
            }
            (Some(rb), None) => {
                let rb = parse_field("renewBefore", rb)?;
                if rb < Duration::from_secs(MIN_RENEW_BEFORE_SECS) {
                    return Err(InvalidSpec(format!(
                        "renewBefore must be at least {MIN_RENEW_BEFORE_SECS}s"
                    )));
                }
                if rb >= duration {
                    return Err(InvalidSpec(
                        "renewBefore must be shorter than duration".into(),
                    ));
                }
                if duration.saturating_sub(rb) < min_renew_after {
                    return Err(InvalidSpec(format!(
                        "renewBefore leaves less than {MIN_RENEW_AFTER_SECS}s between issuance and renewal: \
                         duration - renewBefore must be at least {MIN_RENEW_AFTER_SECS}s; \
                         lower renewBefore or raise duration"
                    )));
                }
                RenewPolicy::Before(rb)
            }
            (None, Some(p)) if (1..=99).contains(&p) && !percentage_leaves_time(duration, p) => {
                return Err(InvalidSpec(format!(
                    "renewBeforePercentage {p} leaves less than {MIN_RENEW_AFTER_SECS}s between issuance \
                     and renewal for a duration of {}s (the certificate is also backdated {}s): \
                     lower renewBeforePercentage or raise duration",
                    duration.as_secs(),
                    BACKDATE.as_secs()
                )));
            }
            (None, Some(p)) if (1..=99).contains(&p) => RenewPolicy::Percentage(p),
            (None, Some(p)) => {
                return Err(InvalidSpec(format!(
                    "renewBeforePercentage {p} is not within 1-99"
                )));
            }
            (None, None) => RenewPolicy::default(),
        };
        if let Some(demo) = &spec.demo {
            demo_interval(demo)?;
            if demo.port == Some(DEMO_METRICS_PORT) {
                return Err(InvalidSpec(format!(
                    "demo.port must not be {DEMO_METRICS_PORT}: the demo's metrics endpoint listens there"
                )));
            }
        }
        Ok(Self {
            common_name,
            dns_names,
            ip_addresses,
            uris,
            usages,
            key,
            duration,
            renew,
        })
    }
}

/// The demo client's interval: the default when unset, else parsed and within bounds.
pub fn demo_interval(demo: &DemoSpec) -> Result<Duration, InvalidSpec> {
    let Some(text) = &demo.interval else {
        return Ok(DEFAULT_DEMO_INTERVAL);
    };
    let interval = parse_field("demo.interval", text)?;
    if !(MIN_DEMO_INTERVAL..=MAX_DEMO_INTERVAL).contains(&interval) {
        return Err(InvalidSpec(format!(
            "demo.interval must be between {}ms and 1h",
            MIN_DEMO_INTERVAL.as_millis()
        )));
    }
    Ok(interval)
}

/// Parse a duration field; the error names the field.
fn parse_field(field: &str, value: &GoDuration) -> Result<Duration, InvalidSpec> {
    value
        .parse()
        .map_err(|e| InvalidSpec(format!("{field}: {e}")))
}

/// Whether renewing when `p`% of the lifetime remains leaves [`MIN_RENEW_AFTER_SECS`] after
/// issuance. The lifetime is `duration + BACKDATE`; computed in whole seconds, as the CRD's CEL rule.
fn percentage_leaves_time(duration: Duration, p: u8) -> bool {
    let lifetime = u128::from(duration.as_secs()) + u128::from(BACKDATE.as_secs());
    let need = 100 * (u128::from(MIN_RENEW_AFTER_SECS) + u128::from(BACKDATE.as_secs()));
    lifetime * u128::from(100 - p.min(100)) >= need
}

fn check_dns_name(name: &str) -> Result<(), InvalidSpec> {
    let bad = |why: &str| Err(InvalidSpec(format!("dnsNames: {name:?} {why}")));
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1-253 characters");
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    if !crate::api::is_dns_subdomain(body) {
        return bad("is not a lowercase RFC 1123 DNS name");
    }
    Ok(())
}

fn check_uri(uri: &str) -> Result<(), InvalidSpec> {
    let valid_scheme = uri.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !rest.is_empty()
    });
    if !valid_scheme || !uri.is_ascii() || uri.chars().any(|c| c.is_ascii_whitespace()) {
        return Err(InvalidSpec(format!("uris: {uri:?} is not an absolute URI")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PrivateKeySpec;

    fn spec() -> TlsIdentitySpec {
        TlsIdentitySpec {
            dns_names: vec!["web.default.svc".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let r = IssuanceRequest::from_spec(&spec()).unwrap();
        assert_eq!(r.key, KeySpec::EcdsaP256);
        assert_eq!(r.duration, Duration::from_secs(86400));
        assert_eq!(r.usages, [Usage::Server, Usage::Client].into());
        assert_eq!(r.renew, RenewPolicy::Percentage(33));
    }

    #[test]
    fn rejects_what_slips_past_the_schema() {
        let cases: Vec<(TlsIdentitySpec, &str)> = vec![
            (TlsIdentitySpec::default(), "at least one of"),
            (
                TlsIdentitySpec {
                    dns_names: vec!["Bad_Name".into()],
                    ..spec()
                },
                "RFC 1123",
            ),
            (
                TlsIdentitySpec {
                    dns_names: vec!["a..b".into()],
                    ..spec()
                },
                "RFC 1123",
            ),
            (
                TlsIdentitySpec {
                    ip_addresses: vec!["300.1.1.1".into()],
                    ..spec()
                },
                "not an IP",
            ),
            (
                TlsIdentitySpec {
                    uris: vec!["no-scheme".into()],
                    ..spec()
                },
                "absolute URI",
            ),
            (
                TlsIdentitySpec {
                    usages: Some(vec![]),
                    ..spec()
                },
                "usages",
            ),
            (
                TlsIdentitySpec {
                    duration: Some("30s".parse().unwrap()),
                    ..spec()
                },
                "at least 60s",
            ),
            (
                TlsIdentitySpec {
                    duration: Some("1h".parse().unwrap()),
                    renew_before: Some("2h".parse().unwrap()),
                    ..spec()
                },
                "shorter than duration",
            ),
            (
                TlsIdentitySpec {
                    renew_before_percentage: Some(100),
                    ..spec()
                },
                "1-99",
            ),
            (
                TlsIdentitySpec {
                    private_key: Some(PrivateKeySpec {
                        algorithm: KeyAlgorithm::Rsa,
                        size: Some(1024),
                    }),
                    ..spec()
                },
                "size 1024",
            ),
            (
                TlsIdentitySpec {
                    private_key: Some(PrivateKeySpec {
                        algorithm: KeyAlgorithm::Ed25519,
                        size: Some(256),
                    }),
                    ..spec()
                },
                "size 256",
            ),
        ];
        for (s, want) in cases {
            let err = IssuanceRequest::from_spec(&s).expect_err(want);
            assert!(err.0.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn durations_and_renewal_windows() {
        use crate::api::{DemoRole, DemoSpec};
        let with = |d: Option<&str>, rb: Option<&str>, p: Option<u8>| TlsIdentitySpec {
            duration: d.map(GoDuration::from),
            renew_before: rb.map(GoDuration::from),
            renew_before_percentage: p,
            ..spec()
        };
        let demo = |interval: Option<&str>, port: Option<i32>| TlsIdentitySpec {
            demo: Some(DemoSpec {
                role: DemoRole::Client,
                server: Some("srv".into()),
                interval: interval.map(GoDuration::from),
                port,
                ..Default::default()
            }),
            ..spec()
        };
        // (spec, Ok(()) or Err(substring of the message))
        let cases: Vec<(&str, TlsIdentitySpec, Result<(), &str>)> = vec![
            (
                "overflow",
                with(Some("99999999999999999999s"), None, None),
                Err("duration: invalid duration"),
            ),
            (
                "garbage",
                with(Some("soon"), None, None),
                Err("duration: invalid duration"),
            ),
            ("negative", with(Some("-1h"), None, None), Err("negative")),
            (
                "100 years",
                with(Some("876000h"), None, None),
                Err("at most 87840h"),
            ),
            ("10 years", with(Some("87840h"), None, None), Ok(())),
            (
                "bad renewBefore",
                with(None, Some("1e9s"), None),
                Err("renewBefore: invalid duration"),
            ),
            (
                "renewBefore tiny",
                with(None, Some("4s"), None),
                Err("at least 5s"),
            ),
            (
                "renewBefore 59s of 60s",
                with(Some("60s"), Some("59s"), None),
                Err("renewBefore leaves less than 30s"),
            ),
            (
                "renewBefore 31s of 60s",
                with(Some("60s"), Some("31s"), None),
                Err("renewBefore leaves less than 30s"),
            ),
            (
                "renewBefore 30s of 60s",
                with(Some("60s"), Some("30s"), None),
                Ok(()),
            ),
            (
                "renewBefore 23h59m31s of 24h",
                with(None, Some("23h59m31s"), None),
                Err("lower renewBefore"),
            ),
            (
                "renewBefore 23h59m30s of 24h",
                with(None, Some("23h59m30s"), None),
                Ok(()),
            ),
            (
                "99% of 60s",
                with(Some("60s"), None, Some(99)),
                Err("renewBeforePercentage 99 leaves less than 30s"),
            ),
            (
                "34% of 60s",
                with(Some("60s"), None, Some(34)),
                Err("lower renewBeforePercentage"),
            ),
            ("33% of 60s", with(Some("60s"), None, Some(33)), Ok(())),
            ("99% of 24h", with(None, None, Some(99)), Ok(())),
            ("99% of 100m", with(Some("100m"), None, Some(99)), Ok(())),
            (
                "99% of 99m",
                with(Some("99m"), None, Some(99)),
                Err("leaves less"),
            ),
            (
                "demo interval garbage",
                demo(Some("1d"), None),
                Err("demo.interval: invalid duration"),
            ),
            (
                "demo interval too short",
                demo(Some("50ms"), None),
                Err("between 100ms and 1h"),
            ),
            (
                "demo interval too long",
                demo(Some("61m"), None),
                Err("between 100ms and 1h"),
            ),
            ("demo interval ok", demo(Some("100ms"), None), Ok(())),
            (
                "demo port = metrics",
                demo(None, Some(9090)),
                Err("demo.port must not be 9090"),
            ),
            ("demo port ok", demo(None, Some(8443)), Ok(())),
        ];
        for (name, s, want) in cases {
            match (IssuanceRequest::from_spec(&s), want) {
                (Ok(_), Ok(())) => {}
                (Err(e), Err(w)) => assert!(e.0.contains(w), "{name}: {e:?} should mention {w:?}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn percentage_bound_matches_actual_renewal_time() {
        // Wherever from_spec accepts a percentage, the renewal comes at least MIN_RENEW_AFTER
        // after issuance (before jitter and clamping).
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        for secs in [60u64, 61, 90, 100, 3600, 5999, 6000, 86400] {
            for p in 1..=99u8 {
                let d = Duration::from_secs(secs);
                let nb = now - BACKDATE;
                let na = now + d;
                let lifetime = na.as_second() - nb.as_second();
                let renew = na.as_second() - lifetime * i64::from(p) / 100;
                let after = renew - now.as_second();
                if percentage_leaves_time(d, p) {
                    assert!(
                        after >= MIN_RENEW_AFTER_SECS as i64,
                        "{secs}s {p}%: {after}"
                    );
                }
            }
        }
    }

    #[test]
    fn accepts_wildcards_ips_and_spiffe() {
        let s = TlsIdentitySpec {
            dns_names: vec!["*.example.com".into()],
            ip_addresses: vec!["10.0.0.1".into(), "fd00::1".into()],
            uris: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
            usages: Some(vec![Usage::Client]),
            private_key: Some(PrivateKeySpec {
                algorithm: KeyAlgorithm::Rsa,
                size: Some(3072),
            }),
            renew_before: Some("1h".parse().unwrap()),
            ..Default::default()
        };
        let r = IssuanceRequest::from_spec(&s).unwrap();
        assert_eq!(r.key, KeySpec::Rsa(3072));
        assert_eq!(r.renew, RenewPolicy::Before(Duration::from_secs(3600)));
        assert_eq!(r.usages, [Usage::Client].into());
        assert_eq!(r.ip_addresses.len(), 2);
    }
}
