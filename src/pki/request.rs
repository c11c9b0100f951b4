//! The issuance request: a `TlsIdentity` spec with defaults applied and checked.
//! Anything the CRD schema could not reject is caught here and reported as `InvalidSpec`.

use crate::api::{DEFAULT_DURATION_SECS, KeyAlgorithm, MIN_DURATION_SECS, TlsIdentitySpec, Usage};
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
        if common_name.is_none()
            && dns_names.is_empty()
            && ip_addresses.is_empty()
            && uris.is_empty()
        {
            return Err(InvalidSpec(
                "at least one of commonName, dnsNames, ipAddresses or uris must be set".into(),
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
            Some(d) if d.is_negative() => {
                return Err(InvalidSpec("duration must be positive".into()));
            }
            Some(d) => Duration::from(*d),
        };
        if duration < Duration::from_secs(MIN_DURATION_SECS) {
            return Err(InvalidSpec(format!(
                "duration must be at least {MIN_DURATION_SECS}s"
            )));
        }
        // Ten years is far beyond any sensible workload certificate and keeps time arithmetic safe.
        if duration > Duration::from_secs(10 * 366 * 24 * 3600) {
            return Err(InvalidSpec("duration must be at most 10 years".into()));
        }
        let renew = match (&spec.renew_before, spec.renew_before_percentage) {
            (Some(_), Some(_)) => {
                return Err(InvalidSpec(
                    "renewBefore and renewBeforePercentage are mutually exclusive".into(),
                ));
            }
            (Some(rb), None) => {
                let rb = Duration::from(*rb);
                if rb >= duration {
                    return Err(InvalidSpec(
                        "renewBefore must be shorter than duration".into(),
                    ));
                }
                RenewPolicy::Before(rb)
            }
            (None, Some(p)) if (1..=99).contains(&p) => RenewPolicy::Percentage(p),
            (None, Some(p)) => {
                return Err(InvalidSpec(format!(
                    "renewBeforePercentage {p} is not within 1-99"
                )));
            }
            (None, None) => RenewPolicy::default(),
        };
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

fn check_dns_name(name: &str) -> Result<(), InvalidSpec> {
    let bad = |why: &str| Err(InvalidSpec(format!("dnsNames: {name:?} {why}")));
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1-253 characters");
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return bad("is not a lowercase RFC 1123 DNS name");
        }
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
