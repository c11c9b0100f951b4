//! What a certificate says about who holds it, in the form the logs and metrics print.

use std::fmt;

use x509_parser::{extensions::GeneralName, prelude::*};

/// The parts of a certificate the demo reports. Public data only: never anything about the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertSummary {
    /// First URI SAN, else first DNS SAN, else first IP SAN, else the subject CN. Workload
    /// identities (SPIFFE IDs) are URIs, so they win over the DNS names that exist for routing.
    pub identity: String,
    /// Lowercase hex of the DER serial, exactly as the `tlsid.dev/serial` annotation spells it.
    pub serial: String,
    /// `notAfter` as Unix seconds.
    pub not_after: i64,
}

/// What to print when there is no identity: an absent peer, or a certificate we cannot parse.
pub(crate) const NONE: &str = "-";

impl CertSummary {
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            parse_x509_certificate(der).map_err(|e| format!("unparseable certificate: {e}"))?;
        Ok(Self {
            identity: printable(&identity_of(&cert)),
            serial: hex::encode(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// For certificates a peer sent: reporting must not fail just because we cannot parse them.
    pub(crate) fn from_der_lossy(der: &[u8]) -> Self {
        Self::from_der(der).unwrap_or_else(|_| Self {
            identity: "<unparseable certificate>".into(),
            serial: NONE.into(),
            not_after: 0,
        })
    }

    /// `notAfter` in RFC 3339, for humans reading the reload line.
    pub(crate) fn not_after_rfc3339(&self) -> String {
        jiff::Timestamp::from_second(self.not_after)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| self.not_after.to_string())
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (serial {})", self.identity, self.serial)
    }
}

/// Every URI SAN of a certificate, unescaped (for matching, not printing; see [`printable`]). Empty
/// when there is none or the certificate cannot be parsed.
pub(crate) fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = parse_x509_certificate(der) else {
        return Vec::new();
    };
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn identity_of(cert: &X509Certificate<'_>) -> String {
    let names: Vec<&GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().collect(),
        _ => Vec::new(),
    };
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = || {
        names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
    };
    let ip = || {
        names.iter().find_map(|n| match n {
            GeneralName::IPAddress(bytes) => ip_to_string(bytes),
            _ => None,
        })
    };
    let cn = || {
        cert.subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok().map(str::to_owned))
    };
    uri.or_else(dns)
        .or_else(ip)
        .or_else(cn)
        .unwrap_or_else(|| "<no identity>".into())
}

/// Names in a certificate are chosen by whoever made it, and the server logs what a *rejected*
/// client presented: without this, a crafted SAN containing a newline could forge log lines.
pub(crate) fn printable(name: &str) -> String {
    printable_up_to(name, 256)
}

/// [`printable`] with another length limit (in characters; longer text ends in `…`).
pub(crate) fn printable_up_to(name: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(name.len().min(max_chars));
    for c in name.chars().take(max_chars) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if name.chars().nth(max_chars).is_some() {
        out.push('\u{2026}');
    }
    out
}

fn ip_to_string(bytes: &[u8]) -> Option<String> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(std::net::Ipv4Addr::from(v4).to_string());
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| std::net::Ipv6Addr::from(v6).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>, cn: Option<&str>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_prefers_uri_then_dns_then_ip_then_cn() {
        use rcgen::SanType::*;
        let uri = || URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap());
        let dns = || DnsName("b.a.svc".try_into().unwrap());
        let ip = || IpAddress("10.0.0.7".parse().unwrap());
        let cases = [
            (
                vec![dns(), uri()],
                Some("cn"),
                "spiffe://cluster.local/ns/a/sa/b",
            ),
            (vec![ip(), dns()], Some("cn"), "b.a.svc"),
            (vec![ip()], Some("cn"), "10.0.0.7"),
            (vec![], Some("cn"), "cn"),
            (vec![], None, "<no identity>"),
        ];
        for (sans, cn, want) in cases {
            let summary = CertSummary::from_der(&cert(sans, cn)).unwrap();
            assert_eq!(summary.identity, want);
            assert_eq!(summary.serial, "0abc");
        }
    }

    #[test]
    fn names_cannot_forge_log_lines() {
        assert_eq!(printable("spiffe://a/b"), "spiffe://a/b");
        assert_eq!(
            printable("evil\nINFO forged\u{1b}[0m"),
            "evil\\nINFO forged\\u{1b}[0m"
        );
        assert_eq!(printable(&"x".repeat(300)).chars().count(), 257);
        let cn = cert(vec![], Some("line one\nline two"));
        assert_eq!(
            CertSummary::from_der(&cn).unwrap().identity,
            "line one\\nline two"
        );
    }

    #[test]
    fn every_uri_san_for_authorization() {
        use rcgen::SanType::*;
        let uri = |u: &str| URI(u.try_into().unwrap());
        let der = cert(
            vec![
                DnsName("b.a.svc".try_into().unwrap()),
                uri("spiffe://cluster.local/ns/a/sa/b"),
                uri("urn:example:second"),
            ],
            Some("cn"),
        );
        assert_eq!(
            uri_sans(&der),
            ["spiffe://cluster.local/ns/a/sa/b", "urn:example:second"]
        );
        assert!(uri_sans(&cert(vec![], Some("cn"))).is_empty());
        assert!(uri_sans(b"junk").is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(CertSummary::from_der(b"").is_err());
        assert!(CertSummary::from_der(&[0x30, 0x82, 0xff, 0xff, 0x00]).is_err());
        assert_eq!(CertSummary::from_der_lossy(b"junk").serial, NONE);
    }
}
