//! "Should we re-issue?": a chain of small pure checks. The first that fires gives the reason, which
//! goes into the `Issuing` condition and the Event as is.

use super::{
    Authority, BACKDATE, CertificateInfo, IssuanceRequest, SecretData,
    inspect::{DataProblem, inspect},
    renewal_time,
};

pub struct PolicyInput<'a> {
    /// `None`: the Secret does not exist.
    pub secret: Option<SecretData<'a>>,
    pub request: &'a IssuanceRequest,
    pub ca: &'a Authority,
    pub now: jiff::Timestamp,
    /// Jitter seed for the renewal time (the object's UID).
    pub seed: &'a str,
    /// Value of the `tlsid.dev/renew` annotation, if any.
    pub renew_requested: Option<&'a str>,
    /// The annotation value already acted upon (`status.lastRenewRequest`).
    pub renew_handled: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReissueReason {
    SecretMissing,
    DataMissing(&'static str),
    Unparseable(&'static str, String),
    KeyMismatch,
    UntrustedIssuer,
    /// Signed by a CA that is still trusted but no longer signs (a CA rollover's switch, or a
    /// new intermediate): re-issued by chain, at the issuance budget.
    SignerChanged,
    SpecChanged(String),
    ManualRequest(String),
    Expired(jiff::Timestamp),
    RenewalDue(jiff::Timestamp),
}

impl ReissueReason {
    /// CamelCase reason for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretMissing => "SecretMissing",
            Self::DataMissing(_) => "SecretDataMissing",
            Self::Unparseable(..) => "SecretDataInvalid",
            Self::KeyMismatch => "KeyMismatch",
            Self::UntrustedIssuer => "IssuerChanged",
            Self::SignerChanged => "SignerChanged",
            Self::SpecChanged(_) => "SpecChanged",
            Self::ManualRequest(_) => "ManuallyTriggered",
            Self::Expired(_) => "Expired",
            Self::RenewalDue(_) => "Renewing",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::SecretMissing => "the Secret does not exist".into(),
            Self::DataMissing(key) => format!("the Secret has no {key}"),
            Self::Unparseable(key, why) => format!("the Secret's {key} cannot be parsed: {why}"),
            Self::KeyMismatch => "the Secret's tls.key does not match its tls.crt".into(),
            Self::UntrustedIssuer => {
                "the certificate was not issued by a CA in the current trust bundle".into()
            }
            Self::SignerChanged => {
                "the certificate was signed by a CA that no longer signs (CA rollover); re-issued by the current signer".into()
            }
            Self::SpecChanged(what) => format!("the spec changed: {what}"),
            Self::ManualRequest(v) => {
                format!("renewal requested by annotation tlsid.dev/renew={v}")
            }
            Self::Expired(t) => format!("the certificate expired at {t}"),
            Self::RenewalDue(t) => format!("the renewal time {t} was reached"),
        }
    }

    /// A routine renewal rather than a first issuance or a repair.
    pub fn is_renewal(&self) -> bool {
        matches!(
            self,
            Self::RenewalDue(_) | Self::Expired(_) | Self::ManualRequest(_)
        )
    }
}

impl From<DataProblem> for ReissueReason {
    fn from(p: DataProblem) -> Self {
        match p {
            DataProblem::Missing(k) => Self::DataMissing(k),
            DataProblem::Unparseable(k, why) => Self::Unparseable(k, why),
            DataProblem::KeyMismatch => Self::KeyMismatch,
        }
    }
}

type Check = fn(&PolicyInput<'_>, &CertificateInfo) -> Option<ReissueReason>;

/// In order: the first that fires wins.
const CHECKS: &[Check] = &[
    untrusted_issuer,
    signer_changed,
    names_changed,
    usages_changed,
    key_changed,
    lifetime_changed,
    manual_request,
    expired,
    renewal_due,
];

/// `Ok((info, renewal_time))` when the stored certificate is good; otherwise why to re-issue.
pub fn should_reissue(
    input: &PolicyInput<'_>,
) -> Result<(CertificateInfo, jiff::Timestamp), ReissueReason> {
    let data = input.secret.as_ref().ok_or(ReissueReason::SecretMissing)?;
    let info = inspect(data, input.ca)?;
    if let Some(reason) = CHECKS.iter().find_map(|check| check(input, &info)) {
        return Err(reason);
    }
    let renew_at = renewal_time(
        info.not_before,
        info.not_after,
        input.request.renew,
        input.seed,
    );
    Ok((info, renew_at))
}

fn untrusted_issuer(_: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    info.issuer_fingerprint
        .is_none()
        .then_some(ReissueReason::UntrustedIssuer)
}

fn signer_changed(input: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    info.issuer_fingerprint
        .as_deref()
        .is_some_and(|fp| fp != input.ca.fingerprint())
        .then_some(ReissueReason::SignerChanged)
}

fn names_changed(input: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    let req = input.request;
    let mut changed = Vec::new();
    if req.dns_names != info.dns_names {
        changed.push("dnsNames");
    }
    if req.ip_addresses != info.ip_addresses {
        changed.push("ipAddresses");
    }
    if req.uris != info.uris {
        changed.push("uris");
    }
    if req.common_name.is_some() && req.common_name != info.common_name {
        changed.push("commonName");
    }
    (!changed.is_empty()).then(|| ReissueReason::SpecChanged(changed.join(", ")))
}

fn usages_changed(input: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    (input.request.usages != info.usages).then(|| ReissueReason::SpecChanged("usages".into()))
}

fn key_changed(input: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    (info.key != Some(input.request.key))
        .then(|| ReissueReason::SpecChanged(format!("privateKey (want {})", input.request.key)))
}

fn lifetime_changed(input: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    // A leaf clamped to the CA's expiry is as long as it can be.
    if info.not_after >= input.ca.not_after() {
        return None;
    }
    let actual =
        info.not_after.as_second() - info.not_before.as_second() - BACKDATE.as_secs() as i64;
    let want = i64::try_from(input.request.duration.as_secs()).unwrap_or(i64::MAX);
    ((actual - want).abs() > 2).then(|| ReissueReason::SpecChanged("duration".into()))
}

fn manual_request(input: &PolicyInput<'_>, _: &CertificateInfo) -> Option<ReissueReason> {
    let requested = input.renew_requested.filter(|v| !v.is_empty())?;
    (Some(requested) != input.renew_handled)
        .then(|| ReissueReason::ManualRequest(requested.to_string()))
}

fn expired(input: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    (input.now >= info.not_after).then_some(ReissueReason::Expired(info.not_after))
}

fn renewal_due(input: &PolicyInput<'_>, info: &CertificateInfo) -> Option<ReissueReason> {
    let at = renewal_time(
        info.not_before,
        info.not_after,
        input.request.renew,
        input.seed,
    );
    (input.now >= at).then_some(ReissueReason::RenewalDue(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{KeyAlgorithm, PrivateKeySpec, TlsIdentitySpec, Usage},
        pki::{IssuedCertificate, issue},
    };
    use std::time::Duration;

    fn now() -> jiff::Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn spec() -> TlsIdentitySpec {
        TlsIdentitySpec {
            dns_names: vec!["web.default.svc".into()],
            duration: Some("1h".parse().unwrap()),
            ..Default::default()
        }
    }

    struct World {
        ca: Authority,
        req: IssuanceRequest,
        cert: IssuedCertificate,
    }

    fn world() -> World {
        let ca = Authority::generate_root(now()).unwrap();
        let req = IssuanceRequest::from_spec(&spec()).unwrap();
        let cert = issue(&req, &ca, now()).unwrap();
        World { ca, req, cert }
    }

    fn check(
        w: &World,
        req: &IssuanceRequest,
        crt: Option<&[u8]>,
        key: Option<&[u8]>,
        at: jiff::Timestamp,
        renew: (Option<&str>, Option<&str>),
    ) -> Result<jiff::Timestamp, ReissueReason> {
        let input = PolicyInput {
            secret: Some(SecretData {
                tls_crt: crt,
                tls_key: key,
                ca_crt: None,
            }),
            request: req,
            ca: &w.ca,
            now: at,
            seed: "uid",
            renew_requested: renew.0,
            renew_handled: renew.1,
        };
        should_reissue(&input).map(|(_, t)| t)
    }

    #[test]
    fn fresh_certificate_is_kept_until_its_renewal_time() {
        let w = world();
        let (crt, key) = (w.cert.chain_pem.as_bytes(), w.cert.key_pem.as_bytes());
        let renew_at = check(&w, &w.req, Some(crt), Some(key), now(), (None, None)).unwrap();
        // Lifetime 1h + 30s backdate = 3630s; renew when 33% (1197s) remains, minus up to 72s jitter.
        let base = now() + jiff::SignedDuration::from_secs(3600 - 1197);
        assert!(
            renew_at <= base && renew_at >= base - jiff::SignedDuration::from_secs(72),
            "{renew_at}"
        );
        assert_eq!(
            check(&w, &w.req, Some(crt), Some(key), renew_at, (None, None)),
            Err(ReissueReason::RenewalDue(renew_at))
        );
    }

    #[test]
    fn table_of_reasons() {
        let w = world();
        let other = world();
        let (crt, key) = (w.cert.chain_pem.as_bytes(), w.cert.key_pem.as_bytes());
        let with = |f: fn(&mut TlsIdentitySpec)| {
            let mut s = spec();
            f(&mut s);
            IssuanceRequest::from_spec(&s).unwrap()
        };
        let later = now() + jiff::SignedDuration::from_hours(2);
        type Case<'a> = (
            &'a str,
            IssuanceRequest,
            Option<&'a [u8]>,
            Option<&'a [u8]>,
            jiff::Timestamp,
            (Option<&'a str>, Option<&'a str>),
            &'a str,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "no tls.crt",
                w.req.clone(),
                None,
                Some(key),
                now(),
                (None, None),
                "SecretDataMissing",
            ),
            (
                "no tls.key",
                w.req.clone(),
                Some(crt),
                Some(b""),
                now(),
                (None, None),
                "SecretDataMissing",
            ),
            (
                "garbage crt",
                w.req.clone(),
                Some(b"not pem"),
                Some(key),
                now(),
                (None, None),
                "SecretDataInvalid",
            ),
            (
                "bad pem",
                w.req.clone(),
                Some(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                Some(key),
                now(),
                (None, None),
                "SecretDataInvalid",
            ),
            (
                "garbage key",
                w.req.clone(),
                Some(crt),
                Some(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
                now(),
                (None, None),
                "SecretDataInvalid",
            ),
            (
                "other key",
                w.req.clone(),
                Some(crt),
                Some(other.cert.key_pem.as_bytes()),
                now(),
                (None, None),
                "KeyMismatch",
            ),
            (
                "other CA",
                w.req.clone(),
                Some(other.cert.chain_pem.as_bytes()),
                Some(other.cert.key_pem.as_bytes()),
                now(),
                (None, None),
                "IssuerChanged",
            ),
            (
                "dns changed",
                with(|s| s.dns_names.push("api.default.svc".into())),
                Some(crt),
                Some(key),
                now(),
                (None, None),
                "SpecChanged",
            ),
            (
                "ip added",
                with(|s| s.ip_addresses.push("10.0.0.9".into())),
                Some(crt),
                Some(key),
                now(),
                (None, None),
                "SpecChanged",
            ),
            (
                "uri added",
                with(|s| s.uris.push("spiffe://x/y".into())),
                Some(crt),
                Some(key),
                now(),
                (None, None),
                "SpecChanged",
            ),
            (
                "usages",
                with(|s| s.usages = Some(vec![Usage::Server])),
                Some(crt),
                Some(key),
                now(),
                (None, None),
                "SpecChanged",
            ),
            (
                "key algorithm",
                with(|s| {
                    s.private_key = Some(PrivateKeySpec {
                        algorithm: KeyAlgorithm::Ed25519,
                        size: None,
                    })
                }),
                Some(crt),
                Some(key),
                now(),
                (None, None),
                "SpecChanged",
            ),
            (
                "duration",
                with(|s| s.duration = Some("2h".parse().unwrap())),
                Some(crt),
                Some(key),
                now(),
                (None, None),
                "SpecChanged",
            ),
            (
                "manual",
                w.req.clone(),
                Some(crt),
                Some(key),
                now(),
                (Some("1"), None),
                "ManuallyTriggered",
            ),
            (
                "manual again",
                w.req.clone(),
                Some(crt),
                Some(key),
                now(),
                (Some("2"), Some("1")),
                "ManuallyTriggered",
            ),
            (
                "expired",
                w.req.clone(),
                Some(crt),
                Some(key),
                later,
                (None, None),
                "Expired",
            ),
        ];
        for (name, req, c, k, at, renew, want) in cases {
            let got = check(&w, &req, c, k, at, renew).expect_err(name);
            assert_eq!(got.reason(), want, "{name}: {}", got.message());
            assert!(!got.message().contains("PRIVATE KEY"), "{name}");
        }
        // Handled manual request and unchanged renewBefore: nothing to do.
        assert!(
            check(
                &w,
                &w.req,
                Some(crt),
                Some(key),
                now(),
                (Some("1"), Some("1"))
            )
            .is_ok()
        );
        let rb = with(|s| s.renew_before = Some("5m".parse().unwrap()));
        assert!(
            check(&w, &rb, Some(crt), Some(key), now(), (None, None)).is_ok(),
            "renewBefore alone does not re-issue"
        );
    }

    #[test]
    fn missing_secret() {
        let w = world();
        let input = PolicyInput {
            secret: None,
            request: &w.req,
            ca: &w.ca,
            now: now(),
            seed: "uid",
            renew_requested: None,
            renew_handled: None,
        };
        assert_eq!(
            should_reissue(&input).unwrap_err(),
            ReissueReason::SecretMissing
        );
    }

    #[test]
    fn every_key_type_issues_and_reads_back() {
        let ca = Authority::generate_root(now()).unwrap();
        for (alg, size) in [
            (KeyAlgorithm::Ecdsa, None),
            (KeyAlgorithm::Ecdsa, Some(384)),
            (KeyAlgorithm::Ed25519, None),
            (KeyAlgorithm::Rsa, Some(2048)),
            (KeyAlgorithm::Rsa, Some(3072)),
        ] {
            let s = TlsIdentitySpec {
                private_key: Some(PrivateKeySpec {
                    algorithm: alg,
                    size,
                }),
                ..spec()
            };
            let req = IssuanceRequest::from_spec(&s).unwrap();
            let cert = issue(&req, &ca, now()).unwrap();
            assert!(
                cert.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
                "{alg:?}: PKCS#8"
            );
            if alg == KeyAlgorithm::Ed25519 {
                let der = pem::parse(&cert.key_pem).unwrap().into_contents();
                assert_eq!(
                    (der.len(), der[4]),
                    (48, 0),
                    "Ed25519 keys are PKCS#8 v1, which OpenSSL 3.0 reads"
                );
            }
            let data = SecretData {
                tls_crt: Some(cert.chain_pem.as_bytes()),
                tls_key: Some(cert.key_pem.as_bytes()),
                ca_crt: None,
            };
            let info = inspect(&data, &ca).unwrap();
            assert_eq!(info.key, Some(req.key), "{alg:?}");
            assert_eq!(info.issuer_fingerprint.as_deref(), Some(ca.fingerprint()));
            assert_eq!(info.serial_hex, cert.serial_hex);
            assert_eq!(info.not_before, now() - BACKDATE);
            assert_eq!(info.not_after, now() + Duration::from_secs(3600));
        }
    }
}
