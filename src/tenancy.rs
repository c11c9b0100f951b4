//! Who may claim which name: the built-in per-namespace rule plus `TlsIdentityPolicy` grants.
//!
//! Pure: the admission webhook and the controller's signing step call [`NamePolicy::check`] with
//! what they observed (the namespace's labels, the policies in force), so admission and signing
//! can never disagree on a rule, only on how fresh their view is.
//!
//! The built-in rule, for an identity in namespace `N`:
//! - DNS names inside `N`'s Service domain: one or more labels before `.N.svc` or
//!   `.N.svc.<clusterDomain>` (`web.N.svc`, `web-0.web.N.svc.cluster.local`, `*.web.N.svc`,
//!   `*.N.svc`), and nothing shorter: `<name>.N` would let a namespace named `com` claim `bank.com`;
//! - URIs that are SPIFFE IDs in `N`: `spiffe://<trustDomain>/ns/N/...`;
//! - no IP addresses;
//! - a common name containing a dot is a DNS name; other common names are free text.
//!
//! A `TlsIdentityPolicy` selecting `N` grants more; grants add up.

use crate::api::{TlsIdentityPolicy, TlsIdentitySpec};
use kube::core::{Selector, SelectorExt};
use std::{collections::BTreeMap, fmt, net::IpAddr};

/// Default cluster DNS domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// At most this many refused names are spelled out in one message.
const MAX_LISTED: usize = 5;

/// The install's naming settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// The SPIFFE trust domain (default: the cluster domain).
    pub trust_domain: String,
    /// The built-in per-namespace rule. Off: every name is permitted (the behaviour before
    /// tenancy), and grants do not matter.
    pub restrict_to_namespace: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            trust_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            restrict_to_namespace: true,
        }
    }
}

impl Settings {
    /// The SPIFFE ID of ServiceAccount `sa` in namespace `ns`.
    pub fn spiffe_id(&self, ns: &str, sa: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain)
    }

    /// The prefix every SPIFFE ID of namespace `ns` starts with.
    pub fn spiffe_prefix(&self, ns: &str) -> String {
        format!("spiffe://{}/ns/{ns}/", self.trust_domain)
    }
}

/// One `TlsIdentityPolicy`, parsed once.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub policy: String,
    selector: Selector,
    dns_names: Vec<String>,
    cidrs: Vec<Cidr>,
    uris: Vec<String>,
}

impl Grant {
    /// A policy as a grant. A policy that cannot be parsed (written past admission) grants
    /// nothing; the error says why, for a log line.
    pub fn from_policy(policy: &TlsIdentityPolicy) -> Result<Self, String> {
        let name = policy.metadata.name.clone().unwrap_or_default();
        let selector = Selector::try_from(policy.spec.namespace_selector.clone())
            .map_err(|e| format!("TlsIdentityPolicy {name}: namespaceSelector: {e}"))?;
        let cidrs = policy
            .spec
            .ip_addresses
            .iter()
            .map(|c| {
                Cidr::parse(c)
                    .ok_or_else(|| format!("TlsIdentityPolicy {name}: {c:?} is not a CIDR"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            policy: name,
            selector,
            dns_names: policy.spec.dns_names.clone(),
            cidrs,
            uris: policy.spec.uris.clone(),
        })
    }

    fn selects(&self, ns: &Namespace<'_>) -> bool {
        self.selector.matches(ns.labels)
    }

    fn dns(&self, name: &str) -> bool {
        self.dns_names.iter().any(|g| match g.strip_prefix("*.") {
            Some(domain) => name
                .strip_suffix(domain)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => g == name,
        })
    }

    fn ip(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
    }

    fn uri(&self, uri: &str) -> bool {
        self.uris.iter().any(|g| match g.strip_suffix('*') {
            // What the prefix covers must not climb out of it once a URL library normalises it.
            Some(prefix) => uri.strip_prefix(prefix).is_some_and(plain_path),
            None => g == uri,
        })
    }
}

/// The namespace an identity lives in, as observed.
#[derive(Clone, Copy, Debug)]
pub struct Namespace<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Why an identity may not have the names it asks for. Its message names each offending name, the
/// field it came from and the rule, and is shown as is (admission error, condition, Event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub problems: Vec<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listed = self.problems.iter().take(MAX_LISTED);
        for (i, p) in listed.enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(p)?;
        }
        if self.problems.len() > MAX_LISTED {
            write!(f, "; and {} more", self.problems.len() - MAX_LISTED)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// The rules in force: settings plus every parsed policy.
#[derive(Clone, Copy, Debug)]
pub struct NamePolicy<'a> {
    pub settings: &'a Settings,
    pub grants: &'a [Grant],
}

impl NamePolicy<'_> {
    /// Whether an identity in `ns` may have every name of `spec` (the SPIFFE ID of
    /// `spec.spiffe` is in its namespace by construction and always permitted).
    pub fn check(&self, ns: Namespace<'_>, spec: &TlsIdentitySpec) -> Result<(), Refusal> {
        if !self.settings.restrict_to_namespace {
            return Ok(());
        }
        let grants: Vec<&Grant> = self.grants.iter().filter(|g| g.selects(&ns)).collect();
        let mut problems = Vec::new();
        let outside = |field: String, value: &str, own: String| {
            format!(
                "{field} {value:?} is outside namespace {} ({own}); a TlsIdentityPolicy can grant it",
                ns.name
            )
        };
        let dns_domain = || {
            format!(
                "its DNS names end in .{0}.svc or .{0}.svc.{1}",
                ns.name, self.settings.cluster_domain
            )
        };
        if let Some(cn) = spec.common_name.as_deref() {
            if !cn.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                // Non-ASCII look-alikes (`。` is a dot to IDNA) and control characters.
                problems.push(format!("commonName {cn:?} must be printable ASCII"));
            } else if cn.contains('.') {
                let name = cn.to_ascii_lowercase();
                if !self.dns_in_namespace(ns.name, &name) && !grants.iter().any(|g| g.dns(&name)) {
                    problems.push(outside("commonName".into(), cn, dns_domain()));
                }
            }
        }
        for (i, name) in spec.dns_names.iter().enumerate() {
            if !self.dns_in_namespace(ns.name, name) && !grants.iter().any(|g| g.dns(name)) {
                problems.push(outside(format!("dnsNames[{i}]"), name, dns_domain()));
            }
        }
        for (i, ip) in spec.ip_addresses.iter().enumerate() {
            // Unparseable addresses are InvalidSpec, reported before this check.
            let granted = ip
                .parse::<IpAddr>()
                .is_ok_and(|ip| grants.iter().any(|g| g.ip(ip)));
            if !granted {
                problems.push(format!(
                    "ipAddresses[{i}] {ip:?} is not granted to namespace {} (IP addresses need a TlsIdentityPolicy)",
                    ns.name
                ));
            }
        }
        let prefix = self.settings.spiffe_prefix(ns.name);
        for (i, uri) in spec.uris.iter().enumerate() {
            if uri
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"))
                && !spiffe_id_conforms(uri)
            {
                problems.push(format!(
                    "uris[{i}] {uri:?} is not a well-formed SPIFFE ID (spiffe://<trust domain>/<segments of letters, digits, '.', '-', '_'>; no '.' or '..' segments, '%', '?', '#', port or user)"
                ));
                continue;
            }
            let own = uri.len() > prefix.len() && uri.starts_with(&prefix);
            if !own && !grants.iter().any(|g| g.uri(uri)) {
                problems.push(outside(
                    format!("uris[{i}]"),
                    uri,
                    format!("its SPIFFE IDs start with {prefix}"),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Refusal { problems })
        }
    }

    /// `name` has one or more labels before `.N.svc` or `.N.svc.<clusterDomain>`.
    fn dns_in_namespace(&self, ns: &str, name: &str) -> bool {
        let short = format!(".{ns}.svc");
        let long = format!(".{ns}.svc.{}", self.settings.cluster_domain);
        [short, long].iter().any(|suffix| {
            name.strip_suffix(suffix.as_str())
                .is_some_and(|head| !head.is_empty() && !head.ends_with('.'))
        })
    }
}

/// A SPIFFE ID as the SPIFFE specification defines it: `spiffe://`, a trust domain of lowercase
/// letters, digits, `.`, `-`, `_`, then one or more path segments of letters, digits, `.`, `-`,
/// `_`, none of them `.` or `..`. Nothing that a URL parser could normalise into another ID.
pub fn spiffe_id_conforms(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return false;
    };
    let Some((domain, path)) = rest.split_once('/') else {
        return false;
    };
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    domain_ok && plain_path(path) && !path.is_empty()
}

/// Path segments of letters, digits, `.`, `-`, `_` (none empty, `.` or `..`): the part of a URI a
/// prefix grant covers, or a SPIFFE ID's path.
fn plain_path(path: &str) -> bool {
    path.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    })
}

/// An IP range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (addr, len) = s.split_once('/')?;
        let network: IpAddr = addr.parse().ok()?;
        let prefix: u8 = len.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u32) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        // An IPv4-mapped IPv6 address is the IPv4 address it maps.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((net, net_width), (addr, addr_width)) = (bits(self.network), bits(ip));
        if net_width != addr_width {
            return false;
        }
        let prefix = u32::from(self.prefix);
        if prefix == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - prefix);
        (net & mask) == (addr & mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TlsIdentityPolicySpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn spec(dns: &[&str], ips: &[&str], uris: &[&str], cn: Option<&str>) -> TlsIdentitySpec {
        TlsIdentitySpec {
            common_name: cn.map(Into::into),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.to_string()).collect(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn policy(selector: LabelSelector, dns: &[&str], ips: &[&str], uris: &[&str]) -> Grant {
        let mut p = TlsIdentityPolicy::new(
            "grant",
            TlsIdentityPolicySpec {
                namespace_selector: selector,
                dns_names: dns.iter().map(|s| s.to_string()).collect(),
                ip_addresses: ips.iter().map(|s| s.to_string()).collect(),
                uris: uris.iter().map(|s| s.to_string()).collect(),
            },
        );
        p.metadata.name = Some("grant".into());
        Grant::from_policy(&p).unwrap()
    }

    fn check(
        ns: &str,
        labels: &[(&str, &str)],
        grants: &[Grant],
        s: &TlsIdentitySpec,
    ) -> Result<(), Refusal> {
        let settings = Settings::default();
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("kubernetes.io/metadata.name".to_string(), ns.to_string())])
            .collect();
        NamePolicy {
            settings: &settings,
            grants,
        }
        .check(
            Namespace {
                name: ns,
                labels: &labels,
            },
            s,
        )
    }

    #[test]
    fn the_built_in_rule() {
        let ok = |dns: &[&str], uris: &[&str]| {
            check("team-b", &[], &[], &spec(dns, &[], uris, None)).is_ok()
        };
        // Own Service domain, any depth, both forms, wildcards of one leading label.
        assert!(ok(&["api.team-b.svc"], &[]));
        assert!(ok(&["api.team-b.svc.cluster.local"], &[]));
        assert!(ok(&["web-0.web.team-b.svc.cluster.local"], &[]));
        assert!(ok(&["*.web.team-b.svc"], &[]));
        assert!(ok(&["*.team-b.svc"], &[]));
        assert!(ok(&[], &["spiffe://cluster.local/ns/team-b/sa/web"]));
        // Nothing shorter, nothing foreign.
        for name in [
            "team-b.svc",
            "api.team-b",
            "bank.com",
            "localhost",
            "api.team-a.svc",
            "api.team-b.svc.other.domain",
            "api.xteam-b.svc",
            "*.team-a.svc",
            "api.team-b.svc.cluster.local.evil.com",
        ] {
            assert!(!ok(&[name], &[]), "{name} must be refused");
        }
        for uri in [
            "spiffe://cluster.local/ns/team-a/sa/web",
            "spiffe://cluster.local/ns/team-b",
            "spiffe://cluster.local/ns/team-b/",
            "spiffe://cluster.local/ns/team-bb/sa/web",
            "spiffe://other.domain/ns/team-b/sa/web",
            "https://team-b.example.com/",
        ] {
            assert!(!ok(&[], &[uri]), "{uri} must be refused");
        }
        // IP addresses always need a grant.
        assert!(check("team-b", &[], &[], &spec(&[], &["10.0.0.1"], &[], None)).is_err());
    }

    #[test]
    fn refusals_name_the_field_the_name_and_the_rule() {
        let err = check(
            "team-b",
            &[],
            &[],
            &spec(
                &["ok.team-b.svc", "api.team-a.svc"],
                &["127.0.0.1"],
                &["spiffe://cluster.local/ns/kube-system/sa/admin"],
                None,
            ),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "dnsNames[1] \"api.team-a.svc\" is outside namespace team-b (its DNS names end in .team-b.svc or .team-b.svc.cluster.local); a TlsIdentityPolicy can grant it; \
             ipAddresses[0] \"127.0.0.1\" is not granted to namespace team-b (IP addresses need a TlsIdentityPolicy); \
             uris[0] \"spiffe://cluster.local/ns/kube-system/sa/admin\" is outside namespace team-b (its SPIFFE IDs start with spiffe://cluster.local/ns/team-b/); a TlsIdentityPolicy can grant it"
        );
        let many: Vec<String> = (0..8).map(|i| format!("n{i}.other.svc")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = check("team-b", &[], &[], &spec(&many, &[], &[], None)).unwrap_err();
        assert_eq!(err.problems.len(), 8);
        assert!(err.to_string().ends_with("; and 3 more"), "{err}");
    }

    #[test]
    fn common_names_with_a_dot_follow_the_dns_rule() {
        assert!(check("b", &[], &[], &spec(&[], &[], &[], Some("my service"))).is_ok());
        assert!(check("b", &[], &[], &spec(&[], &[], &[], Some("Web.B.svc"))).is_ok());
        let err = check(
            "b",
            &[],
            &[],
            &spec(&[], &[], &[], Some("payments.prod.svc")),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("commonName \"payments.prod.svc\""),
            "{err}"
        );
    }

    #[test]
    fn grants_add_up_for_the_namespaces_they_select() {
        let all = LabelSelector::default();
        let ingress = LabelSelector {
            match_labels: Some([("role".to_string(), "ingress".to_string())].into()),
            ..Default::default()
        };
        let not_prod = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "NotIn".into(),
                values: Some(vec!["prod".into()]),
            }]),
            ..Default::default()
        };
        let grants = [
            policy(ingress, &["*.example.com", "exact.example.org"], &[], &[]),
            policy(all, &[], &["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"], &[]),
            policy(
                not_prod,
                &[],
                &[],
                &["spiffe://partner.example/*", "urn:exact"],
            ),
        ];
        let s = spec(
            &["a.example.com", "*.b.example.com", "exact.example.org"],
            &["127.0.0.1", "10.1.2.3", "fd00::1", "::ffff:10.0.0.1"],
            &["spiffe://partner.example/x", "urn:exact"],
            None,
        );
        assert_eq!(
            check("gw", &[("role", "ingress"), ("env", "dev")], &grants, &s),
            Ok(())
        );
        // The same names elsewhere: each grant only where its selector matches.
        let err = check("gw", &[("env", "prod")], &grants, &s).unwrap_err();
        let fields: Vec<&str> = err
            .problems
            .iter()
            .map(|p| p.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "dnsNames[0]",
                "dnsNames[1]",
                "dnsNames[2]",
                "uris[0]",
                "uris[1]"
            ]
        );
        // A domain grant covers names below it, not the domain nor look-alikes.
        for name in [
            "example.com",
            "badexample.com",
            "a.example.com.evil",
            "example.org",
        ] {
            assert!(
                check(
                    "gw",
                    &[("role", "ingress")],
                    &grants,
                    &spec(&[name], &[], &[], None)
                )
                .is_err(),
                "{name}"
            );
        }
        for ip in ["127.0.0.2", "11.0.0.1", "fe00::1"] {
            assert!(
                check("gw", &[], &grants, &spec(&[], &[ip], &[], None)).is_err(),
                "{ip}"
            );
        }
        for uri in [
            "spiffe://partner.example",
            "urn:exactly",
            "spiffe://partner.examplex/y",
        ] {
            assert!(
                check("gw", &[], &grants, &spec(&[], &[], &[uri], None)).is_err(),
                "{uri}"
            );
        }
    }

    #[test]
    fn the_rule_can_be_turned_off() {
        let settings = Settings {
            restrict_to_namespace: false,
            ..Settings::default()
        };
        let labels = BTreeMap::new();
        let s = spec(
            &["bank.com"],
            &["8.8.8.8"],
            &["spiffe://cluster.local/ns/kube-system/sa/admin"],
            None,
        );
        assert_eq!(
            NamePolicy {
                settings: &settings,
                grants: &[]
            }
            .check(
                Namespace {
                    name: "x",
                    labels: &labels
                },
                &s
            ),
            Ok(())
        );
    }

    #[test]
    fn uris_that_a_url_parser_would_read_as_another_namespace_are_refused() {
        let grants = [policy(
            LabelSelector::default(),
            &[],
            &[],
            &["spiffe://partner.example/team-x/*", "urn:partner:*"],
        )];
        for uri in [
            "spiffe://cluster.local/ns/b/../a/sa/x",
            "spiffe://cluster.local/ns/b/%2e%2e/a/sa/x",
            "spiffe://cluster.local/ns/b/sa/x?y",
            "spiffe://cluster.local/ns/b/sa/x#f",
            "spiffe://cluster.local/ns/b//sa/x",
            "spiffe://cluster.local/ns/b/./sa",
            "spiffe://user@cluster.local/ns/b/sa/x",
            "spiffe://cluster.local:443/ns/b/sa/x",
            "SPIFFE://cluster.local/ns/b/sa/x/..",
            "spiffe://partner.example/team-x/../team-y",
            "spiffe://partner.example/team-x/a%2fb",
        ] {
            assert!(
                check("b", &[], &grants, &spec(&[], &[], &[uri], None)).is_err(),
                "{uri} must be refused"
            );
        }
        for uri in [
            "spiffe://cluster.local/ns/b/sa/x",
            "spiffe://cluster.local/ns/b/sa/x.y_z-1",
            "spiffe://partner.example/team-x/svc",
            "urn:partner:thing",
        ] {
            assert_eq!(
                check("b", &[], &grants, &spec(&[], &[], &[uri], None)),
                Ok(()),
                "{uri}"
            );
        }
    }

    #[test]
    fn common_names_must_be_printable_ascii() {
        for cn in ["api。team-a。svc", "bank.com\u{0}.b.svc", "tab\there"] {
            assert!(
                check("b", &[], &[], &spec(&[], &[], &[], Some(cn))).is_err(),
                "{cn:?}"
            );
        }
    }

    #[test]
    fn cidrs() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert!(c("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(!c("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(c("::/0").contains("::1".parse().unwrap()));
        assert!(c("192.168.1.0/24").contains("192.168.1.255".parse().unwrap()));
        assert!(!c("192.168.1.0/24").contains("192.168.2.0".parse().unwrap()));
        assert!(c("::1/128").contains("::1".parse().unwrap()));
        assert!(!c("::1/128").contains("::2".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "::/129", "x/8", "10.0.0.0/-1"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_unparseable_policy_grants_nothing_and_says_why() {
        let mut p = TlsIdentityPolicy::new(
            "broken",
            TlsIdentityPolicySpec {
                ip_addresses: vec!["10.0.0.0/99".into()],
                ..Default::default()
            },
        );
        p.metadata.name = Some("broken".into());
        assert!(Grant::from_policy(&p).unwrap_err().contains("broken"));
        p.spec.ip_addresses.clear();
        p.spec.namespace_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "a".into(),
            operator: "Sometimes".into(),
            values: None,
        }]);
        assert!(Grant::from_policy(&p).is_err());
    }
}
