//! `tlsid inspect secret NAME`: decode any `kubernetes.io/tls` Secret — the chain, the names,
//! the expiry, which root of its `ca.crt` (and of the install's trust bundle) it chains to, and
//! whether the key matches — without ever printing key material.

use super::{
    Output, Scope, Style, Target, client,
    render::{Fields, TOP, relative, short_fp, when},
};
use crate::{
    api::{CaCertificate, INSTALL_LABEL, MANAGED_BY_LABEL, TlsAuthority, TlsAuthorityStatus},
    pki::{fingerprint, inspect::parse_leaf, parse_pem_certs},
};
use anyhow::Context as _;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt};
use serde::Serialize;
use std::{collections::BTreeMap, fmt::Write as _};
use x509_parser::prelude::*;

/// One certificate, as the commands show it (no key material: certificates are public).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertView {
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex.
    pub serial: String,
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    pub is_ca: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Whether `tls.key` belongs to the leaf. Never the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result", content = "detail")]
pub enum KeyCheck {
    Matches,
    Mismatch,
    Missing,
    Unreadable(String),
}

/// Where the leaf's chain ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainEnd {
    /// The root of `ca.crt` the leaf chains to (signatures checked), if any.
    pub root: Option<CertView>,
    /// Subjects of the intermediates from `tls.crt` on the way.
    pub via: Vec<String>,
}

/// What the install's trust bundle (its TlsAuthority) says of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallTrust {
    pub authority: String,
    /// The chain's root is one of the install's roots (a peer holding its bundle accepts it).
    pub trusted: bool,
    /// Which of the install's CAs signed the leaf: `signer`, `next`, `previous`, or none.
    pub signed_by: Option<String>,
    /// Why nothing could be said (the TlsAuthority is not readable), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// What `tlsid inspect secret` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretReport {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    /// The Secret's keys with their sizes in bytes (never their values).
    pub keys: BTreeMap<String, usize>,
    /// `tlsid` when tlsid manages it (its label), else the manager named by the label, if any.
    pub managed_by: Option<String>,
    pub install: Option<String>,
    /// The leaf: the first certificate of `tls.crt`.
    pub leaf: Option<CertView>,
    /// The rest of `tls.crt`, in order.
    pub intermediates: Vec<CertView>,
    /// `ca.crt`, in order.
    pub bundle: Vec<CertView>,
    pub key: KeyCheck,
    pub chain: ChainEnd,
    pub install_trust: Option<InstallTrust>,
    /// Everything a peer would refuse, in words.
    pub problems: Vec<String>,
}

fn view(cert: &X509Certificate<'_>, der: &[u8]) -> CertView {
    CertView {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex::encode(cert.raw_serial()),
        fingerprint: fingerprint(der),
        not_before: crate::pki::from_asn1(cert.validity().not_before),
        not_after: crate::pki::from_asn1(cert.validity().not_after),
        is_ca: cert.is_ca(),
        dns_names: vec![],
        ip_addresses: vec![],
        uris: vec![],
        usages: vec![],
        key: None,
    }
}

/// Parse a PEM bundle; an unparseable one is a problem, never a failure of the command.
fn certs_of(
    data: Option<&ByteString>,
    key: &str,
    problems: &mut Vec<String>,
) -> Vec<(Vec<u8>, CertView)> {
    let Some(bytes) = data.filter(|b| !b.0.is_empty()) else {
        return vec![];
    };
    match parse_pem_certs(&bytes.0) {
        Ok(ders) => ders
            .into_iter()
            .filter_map(|der| match parse_x509_certificate(&der) {
                Ok((_, c)) => {
                    let v = view(&c, &der);
                    Some((der, v))
                }
                Err(e) => {
                    problems.push(format!("{key}: a certificate cannot be parsed: {e}"));
                    None
                }
            })
            .collect(),
        Err(e) => {
            problems.push(format!("{key}: {e}"));
            vec![]
        }
    }
}

fn signed_by(child: &[u8], parent: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, p))) = (
        parse_x509_certificate(child),
        parse_x509_certificate(parent),
    ) else {
        return false;
    };
    c.issuer() == p.subject() && c.verify_signature(Some(p.public_key())).is_ok()
}

/// The report for one Secret, from the Secret, the install's TlsAuthority (if readable) and
/// the time. Pure.
pub fn secret_report(
    secret: &Secret,
    authority: Result<&TlsAuthority, String>,
    now: jiff::Timestamp,
) -> SecretReport {
    let mut problems = vec![];
    let data = secret.data.clone().unwrap_or_default();
    let type_ = secret.type_.clone().unwrap_or_else(|| "Opaque".into());
    if type_ != "kubernetes.io/tls" {
        problems.push(format!(
            "type is {type_}, not kubernetes.io/tls: tools that expect a TLS Secret may refuse it"
        ));
    }
    let chain = certs_of(data.get("tls.crt"), "tls.crt", &mut problems);
    let bundle = certs_of(data.get("ca.crt"), "ca.crt", &mut problems);
    if data.get("tls.crt").is_none_or(|b| b.0.is_empty()) {
        problems.push("tls.crt is missing or empty".into());
    }
    if data.get("ca.crt").is_none_or(|b| b.0.is_empty()) {
        problems
            .push("ca.crt is missing or empty: peers need a trust bundle from elsewhere".into());
    }
    let mut leaf = None;
    let mut key = KeyCheck::Missing;
    if let Some((leaf_der, first)) = chain.first() {
        let mut described = first.clone();
        if let Ok((_, info)) = parse_leaf(&data["tls.crt"].0) {
            described.dns_names = info.dns_names.iter().cloned().collect();
            described.ip_addresses = info.ip_addresses.iter().map(|ip| ip.to_string()).collect();
            described.uris = info.uris.iter().cloned().collect();
            described.usages = info
                .usages
                .iter()
                .map(|u| match u {
                    crate::api::Usage::Server => "server".to_string(),
                    crate::api::Usage::Client => "client".to_string(),
                })
                .collect();
            described.key = info.key.map(|k| k.to_string());
        }
        if now < described.not_before {
            problems.push(format!(
                "the certificate is not valid yet (from {})",
                described.not_before
            ));
        }
        if now >= described.not_after {
            problems.push(format!(
                "the certificate expired {}",
                relative(described.not_after, now)
            ));
        }
        key = key_check(data.get("tls.key"), leaf_der);
        if key == KeyCheck::Mismatch {
            problems.push("tls.key does not belong to the certificate".into());
        }
        leaf = Some(described);
    }
    // Walk up: the leaf's issuer among the intermediates of tls.crt, until a root of ca.crt.
    let mut end = ChainEnd {
        root: None,
        via: vec![],
    };
    let mut path: Vec<&CertView> = vec![];
    if let Some((leaf_der, _)) = chain.first() {
        let mut current = leaf_der;
        for _ in 0..8 {
            if let Some((_, root)) = bundle.iter().find(|(der, _)| signed_by(current, der)) {
                end.root = Some(root.clone());
                path.push(root);
                break;
            }
            let Some((der, inter)) = chain
                .iter()
                .skip(1)
                .find(|(der, v)| signed_by(current, der) && !path.iter().any(|p| p == &v))
            else {
                break;
            };
            end.via.push(inter.subject.clone());
            path.push(inter);
            current = der;
        }
        if end.root.is_none() && !bundle.is_empty() {
            problems.push(
                "the certificate does not chain to any root of ca.crt (signatures checked)".into(),
            );
        }
    }
    for c in chain
        .iter()
        .skip(1)
        .map(|(_, v)| v)
        .chain(path.iter().copied())
    {
        if now >= c.not_after {
            problems.push(format!(
                "CA {} expired {}",
                c.subject,
                relative(c.not_after, now)
            ));
        }
    }
    let install_trust = leaf.as_ref().map(|_| match authority {
        Ok(a) => install_trust(
            &a.name_any(),
            a.status.as_ref(),
            path.first().map(|c| c.fingerprint.as_str()),
            end.root.as_ref().map(|r| r.fingerprint.as_str()),
        ),
        Err(why) => InstallTrust {
            authority: String::new(),
            trusted: false,
            signed_by: None,
            unknown: Some(why),
        },
    });
    if let Some(t) = &install_trust
        && t.unknown.is_none()
        && !t.trusted
    {
        problems.push(format!(
            "peers holding the trust bundle of {} do not trust it",
            t.authority
        ));
    }
    let labels = secret.labels();
    SecretReport {
        namespace: secret.namespace().unwrap_or_default(),
        name: secret.name_any(),
        type_,
        keys: data.iter().map(|(k, v)| (k.clone(), v.0.len())).collect(),
        managed_by: labels.get(MANAGED_BY_LABEL).cloned(),
        install: labels.get(INSTALL_LABEL).cloned(),
        leaf,
        intermediates: chain.iter().skip(1).map(|(_, v)| v.clone()).collect(),
        bundle: bundle.into_iter().map(|(_, v)| v).collect(),
        key,
        chain: end,
        install_trust,
        problems,
    }
}

fn key_check(key: Option<&ByteString>, leaf_der: &[u8]) -> KeyCheck {
    let Some(key) = key.filter(|k| !k.0.is_empty()) else {
        return KeyCheck::Missing;
    };
    let Ok(pem) = std::str::from_utf8(&key.0) else {
        return KeyCheck::Unreadable("not UTF-8 PEM".into());
    };
    // rcgen/aws-lc errors name the problem, never the key bytes.
    let pair = match rcgen::KeyPair::from_pem(pem) {
        Ok(p) => p,
        Err(e) => return KeyCheck::Unreadable(e.to_string()),
    };
    match parse_x509_certificate(leaf_der) {
        Ok((_, leaf))
            if leaf.public_key().subject_public_key.data.as_ref() == pair.public_key_raw() =>
        {
            KeyCheck::Matches
        }
        _ => KeyCheck::Mismatch,
    }
}

/// What the install's TlsAuthority says of a chain: trusted when its root is one of the install's
/// roots; which of its CAs signed the leaf.
fn install_trust(
    authority: &str,
    status: Option<&TlsAuthorityStatus>,
    issuer_fp: Option<&str>,
    root_fp: Option<&str>,
) -> InstallTrust {
    let Some(st) = status else {
        return InstallTrust {
            authority: authority.into(),
            trusted: false,
            signed_by: None,
            unknown: Some("its TlsAuthority has no status yet".into()),
        };
    };
    let is = |c: &Option<CaCertificate>| {
        c.as_ref()
            .is_some_and(|c| Some(c.fingerprint.as_str()) == issuer_fp)
    };
    let signed_by = [
        ("signer", &st.signer),
        ("next", &st.next),
        ("previous", &st.previous),
    ]
    .into_iter()
    .find(|(_, c)| is(c))
    .map(|(role, _)| role.to_string());
    InstallTrust {
        authority: authority.into(),
        trusted: root_fp.is_some_and(|fp| st.roots.iter().any(|r| r.fingerprint == fp)),
        signed_by,
        unknown: None,
    }
}

/// `tlsid inspect secret NAME`.
pub async fn inspect_secret(
    target: &Target,
    scope: &Scope,
    name: &str,
) -> anyhow::Result<SecretReport> {
    let client = client(target).await?;
    let ns = scope.one(&client);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {ns}/{name}"))?
        .with_context(|| format!("no Secret {name} in namespace {ns}"))?;
    let authority = read_authority(&client, target).await;
    Ok(secret_report(
        &secret,
        authority.as_ref().map_err(Clone::clone),
        jiff::Timestamp::now(),
    ))
}

/// The install's TlsAuthority, or why it cannot be read (a courtesy: never fails the command).
pub(super) async fn read_authority(
    client: &kube::Client,
    target: &Target,
) -> Result<TlsAuthority, String> {
    let api: Api<TlsAuthority> = Api::all(client.clone());
    match api.get_opt(target.authority_name()).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(format!(
            "no TlsAuthority {} (see --authority / --install)",
            target.authority_name()
        )),
        Err(e) => Err(format!(
            "TlsAuthority {} cannot be read: {e}",
            target.authority_name()
        )),
    }
}

/// One certificate's rows in the human format; `issuer` replaces the plain issuer row when the
/// caller knows more of it.
pub(super) fn cert_fields(
    c: &CertView,
    now: jiff::Timestamp,
    style: Style,
    issuer: Option<String>,
) -> Fields {
    let mut f = Fields::default();
    if !c.subject.is_empty() {
        f.add("Subject", c.subject.clone());
    }
    match issuer {
        Some(i) => {
            f.add("Issuer", i);
        }
        None if c.issuer != c.subject => {
            f.add("Issuer", c.issuer.clone());
        }
        None => {}
    }
    f.add("Serial", c.serial.clone());
    if let Some(k) = &c.key {
        f.add("Key", k.clone());
    }
    f.list("DNS names", &c.dns_names)
        .list("IP addresses", &c.ip_addresses)
        .list("URIs", &c.uris)
        .list("Usages", &c.usages);
    f.add("Not before", when(c.not_before, now));
    let expiry = when(c.not_after, now);
    f.add(
        "Not after",
        if now >= c.not_after {
            style.bad(&format!("{expiry} EXPIRED"))
        } else {
            expiry
        },
    );
    f.add("SHA-256", c.fingerprint.clone());
    f
}

/// The human format of `tlsid inspect secret`.
pub fn render_secret(r: &SecretReport, now: jiff::Timestamp, style: Style) -> String {
    let mut o = String::new();
    let mut head = Fields::aligned(TOP);
    head.add("Secret", style.bold(&format!("{}/{}", r.namespace, r.name)))
        .add("Type", r.type_.clone())
        .list(
            "Keys",
            r.keys.iter().map(|(k, n)| format!("{k} ({n} bytes)")),
        );
    if let Some(m) = &r.managed_by {
        let install = r
            .install
            .as_ref()
            .map(|i| format!(" (install {i})"))
            .unwrap_or_default();
        head.add("Managed by", format!("{m}{install}"));
    }
    let key = match &r.key {
        KeyCheck::Matches => style.good("matches the certificate"),
        KeyCheck::Mismatch => style.bad("DOES NOT match the certificate"),
        KeyCheck::Missing => style.bad("missing"),
        KeyCheck::Unreadable(why) => style.bad(&format!("unreadable ({why})")),
    };
    head.add("Private key", key);
    head.write(&mut o, 0);
    match &r.leaf {
        Some(leaf) => {
            let _ = writeln!(o, "Certificate:");
            cert_fields(leaf, now, style, None).write(&mut o, 2);
        }
        None => {
            let _ = writeln!(o, "{:TOP$} {}", "Certificate:", style.bad("none"));
        }
    }
    for (i, c) in r.intermediates.iter().enumerate() {
        let _ = writeln!(o, "Intermediate {} (tls.crt):", i + 1);
        cert_fields(c, now, style, None).write(&mut o, 2);
    }
    let _ = writeln!(
        o,
        "Trust bundle (ca.crt, {} certificate(s)):",
        r.bundle.len()
    );
    for c in &r.bundle {
        let marker = if r
            .chain
            .root
            .as_ref()
            .is_some_and(|root| root.fingerprint == c.fingerprint)
        {
            style.good(" <- the chain's root")
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  - {} (sha256 {}…), expires {}{marker}",
            c.subject,
            short_fp(&c.fingerprint),
            when(c.not_after, now)
        );
    }
    let mut tail = Fields::aligned(TOP);
    let chain = match &r.chain.root {
        Some(root) if r.chain.via.is_empty() => {
            style.good(&format!("to {} (ca.crt)", root.subject))
        }
        Some(root) => style.good(&format!(
            "to {} (ca.crt) via {}",
            root.subject,
            r.chain.via.join(" -> ")
        )),
        None if r.leaf.is_some() => style.bad("to no root of ca.crt"),
        None => "-".into(),
    };
    tail.add("Chains", chain);
    if let Some(t) = &r.install_trust {
        let said = match (&t.unknown, t.trusted) {
            (Some(why), _) => style.warn(&format!("unknown: {why}")),
            (None, true) => style.good(&format!("trusted by install {}", t.authority)),
            (None, false) => style.bad(&format!("NOT trusted by install {}", t.authority)),
        };
        let signer = t
            .signed_by
            .as_ref()
            .map(|s| format!(", signed by its {s} CA"))
            .unwrap_or_default();
        tail.add("Install", format!("{said}{signer}"));
    }
    tail.write(&mut o, 0);
    write_problems(&mut o, &r.problems, style);
    o
}

/// The closing `Problems:` of every report: `none`, or one line each.
pub(super) fn write_problems(o: &mut String, problems: &[String], style: Style) {
    if problems.is_empty() {
        let _ = writeln!(o, "{:TOP$} {}", "Problems:", style.good("none"));
    } else {
        let _ = writeln!(o, "Problems:");
        for p in problems {
            let _ = writeln!(o, "  - {}", style.bad(p));
        }
    }
}

/// Print `inspect secret` as asked.
pub fn print_secret(output: Output, r: &SecretReport) -> anyhow::Result<()> {
    super::print(output, r, |r| {
        render_secret(r, jiff::Timestamp::now(), Style::for_stdout())
    })
}
