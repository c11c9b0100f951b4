//! Identity directories for the interop driver (the contract in docs/interop.md):
//! ```text
//! DIR/<identity>/tls.crt  tls.key  ca.crt  keystore.p12  truststore.p12  keystore-password  meta.json
//! ```
//! The controller-backed test writes the Secrets the real controller issued; what the controller cannot
//! be asked for (an already expired certificate, one from a CA nobody trusts), the CA rollover states
//! and the cluster-less `write_identity_dir` helper are signed here with the library's own `issue()`
//! and `pkcs12()`.

use serde::Serialize;
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};
use tlsid::{
    api::Usage,
    pki::{
        Authority, IssuanceRequest, IssuedCertificate, KeySpec, RenewPolicy, issue,
        keystore::{Pkcs12Profile, pkcs12},
    },
};

pub const PASSWORD: &str = "tlsid-interop";
pub const PASSWORD_FILE: &str = "keystore-password";

/// What an identity is for in the matrix (`meta.json` field `role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Matrix,
    WrongSan,
    Expired,
    Untrusted,
    ServerOnly,
    ClientOnly,
    /// One state of a CA rollover: a leaf of one CA generation with one trust bundle (`meta.json`
    /// field `rollover` says which).
    Rollover,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Matrix => "matrix",
            Role::WrongSan => "wrong-san",
            Role::Expired => "expired",
            Role::Untrusted => "untrusted",
            Role::ServerOnly => "server-only",
            Role::ClientOnly => "client-only",
            Role::Rollover => "rollover",
        }
    }
}

pub fn key_type_name(spec: KeySpec) -> String {
    match spec {
        KeySpec::EcdsaP256 => "ecdsa-p256".into(),
        KeySpec::EcdsaP384 => "ecdsa-p384".into(),
        KeySpec::Ed25519 => "ed25519".into(),
        KeySpec::Rsa(bits) => format!("rsa-{bits}"),
    }
}

/// Every key type the matrix runs (RSA 4096 is covered by the keystore checks only: it adds run time
/// and nothing a TLS stack treats differently from 3072).
pub const MATRIX_KEYS: [KeySpec; 5] = [
    KeySpec::EcdsaP256,
    KeySpec::EcdsaP384,
    KeySpec::Rsa(2048),
    KeySpec::Rsa(3072),
    KeySpec::Ed25519,
];

/// One identity of the matrix: its names and usages follow from its role.
pub struct Spec {
    pub name: String,
    pub key: KeySpec,
    pub role: Role,
    pub dns: Vec<&'static str>,
    pub ips: Vec<&'static str>,
    pub usages: Vec<Usage>,
}

pub fn spec(name: &str, key: KeySpec, role: Role) -> Spec {
    let usages = match role {
        Role::ServerOnly => vec![Usage::Server],
        Role::ClientOnly => vec![Usage::Client],
        _ => vec![Usage::Server, Usage::Client],
    };
    let (dns, ips) = if role == Role::WrongSan {
        (vec!["wrong.example.com"], vec![])
    } else {
        (vec!["localhost"], vec!["127.0.0.1"])
    };
    Spec {
        name: name.into(),
        key,
        role,
        dns,
        ips,
        usages,
    }
}

pub fn usage_name(u: Usage) -> &'static str {
    match u {
        Usage::Server => "server",
        Usage::Client => "client",
    }
}

fn request(s: &Spec, duration: Duration) -> IssuanceRequest {
    IssuanceRequest {
        common_name: None,
        dns_names: s.dns.iter().map(|d| d.to_string()).collect(),
        ip_addresses: s
            .ips
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect::<BTreeSet<IpAddr>>(),
        uris: BTreeSet::new(),
        usages: s.usages.iter().copied().collect(),
        key: s.key,
        duration,
        renew: RenewPolicy::default(),
    }
}

/// `meta.json`: what the driver needs to know about an identity beyond its files.
#[derive(Serialize)]
pub struct Meta {
    pub name: String,
    pub key_type: String,
    pub role: &'static str,
    /// `root` or `intermediate`: the label of the matrix section.
    pub chain: &'static str,
    pub dns_names: Vec<&'static str>,
    pub ip_addresses: Vec<&'static str>,
    pub usages: Vec<&'static str>,
    pub password_file: &'static str,
    pub not_after: String,
    /// Who issued it, shown in the report.
    pub source: String,
    /// For role `rollover`: which leaf and which bundle this directory holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollover: Option<RolloverMeta>,
}

/// `meta.json` field `rollover`: one cell of {old, new leaf} × {old, overlap, new bundle}.
#[derive(Serialize)]
pub struct RolloverMeta {
    /// `root` (root A → root B) or `intermediate` (root A → root C's intermediate).
    pub case: &'static str,
    /// `old` (signed by A) or `new` (signed by B, or by C's intermediate).
    pub leaf: &'static str,
    /// `old` ({A}), `overlap` ({A, B} or {A, C}) or `new` ({B} or {C}).
    pub bundle: &'static str,
}

impl Meta {
    pub fn new(s: &Spec, chain: &'static str, not_after: String, source: String) -> Self {
        Meta {
            name: s.name.clone(),
            key_type: key_type_name(s.key),
            role: s.role.as_str(),
            chain,
            dns_names: s.dns.clone(),
            ip_addresses: s.ips.clone(),
            usages: s.usages.iter().map(|&u| usage_name(u)).collect(),
            password_file: PASSWORD_FILE,
            not_after,
            source,
            rollover: None,
        }
    }

    pub fn write(&self, dir: &Path) {
        let json = serde_json::to_string_pretty(self).unwrap();
        std::fs::write(dir.join("meta.json"), json).unwrap();
    }
}

/// A CA signing with an intermediate (root → intermediate → leaf), as a user-supplied CA Secret would
/// be: `to_secret_data()` gives `tls.crt` = the intermediate, `tls.key` its key, `ca.crt` = the root.
pub fn intermediate_authority(now: jiff::Timestamp) -> Authority {
    // Backdated so the intermediate's validity nests inside the root's.
    let root = Authority::generate_root(now - jiff::SignedDuration::from_hours(4)).expect("root");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "tlsid interop");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tlsid interop intermediate CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(now.as_second() - 3 * 3600).unwrap();
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(now.as_second() + 30 * 86400).unwrap();
    let cert = params
        .signed_by(&key, &root.issuer().expect("issuer"))
        .expect("sign intermediate");
    Authority::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        Some(root.bundle_pem().as_bytes()),
        now,
    )
    .expect("intermediate authority")
}

/// Issue `s` with `ca` at `issued_at` for `duration` and write it as a mounted Secret would be,
/// with `ca_pem` as its `ca.crt`. Returns the identity's directory.
#[allow(clippy::too_many_arguments)]
pub fn write_issued(
    out: &Path,
    s: &Spec,
    ca: &Authority,
    issued_at: jiff::Timestamp,
    duration: Duration,
    ca_pem: &str,
    chain: &'static str,
    source: &str,
) -> PathBuf {
    let leaf = issue(&request(s, duration), ca, issued_at).expect("issue");
    let meta = Meta::new(s, chain, leaf.not_after.to_string(), source.into());
    write_leaf(out, &leaf, ca_pem, &meta)
}

/// Write `leaf` with `ca_pem` as its `ca.crt` (and the PKCS#12 files built from both by the library,
/// as the controller builds them) into `out/<meta.name>`.
fn write_leaf(out: &Path, leaf: &IssuedCertificate, ca_pem: &str, meta: &Meta) -> PathBuf {
    let stores = pkcs12(
        &leaf.chain_pem,
        &leaf.key_pem,
        ca_pem,
        PASSWORD,
        Pkcs12Profile::Modern2023,
    )
    .expect("pkcs12");
    let dir = out.join(&meta.name);
    std::fs::create_dir_all(&dir).unwrap();
    let w = |f: &str, b: &[u8]| std::fs::write(dir.join(f), b).unwrap();
    w("tls.crt", leaf.chain_pem.as_bytes());
    w("tls.key", leaf.key_pem.as_bytes());
    w("ca.crt", ca_pem.as_bytes());
    w("keystore.p12", &stores.keystore_p12);
    w("truststore.p12", &stores.truststore_p12);
    w(PASSWORD_FILE, PASSWORD.as_bytes());
    meta.write(&dir);
    dir
}

/// An identity the controller cannot be asked for: issued 40 minutes ago for 20 minutes by `ca` (so it
/// expired 20 minutes ago, inside the validity of a CA created just now, and differs from a good one
/// in nothing else), with `ca`'s trust bundle.
pub fn write_expired(out: &Path, name: &str, ca: &Authority, source: &str) -> PathBuf {
    let now = jiff::Timestamp::now();
    let s = spec(name, KeySpec::EcdsaP256, Role::Expired);
    let past = now - jiff::SignedDuration::from_mins(40);
    write_issued(
        out,
        &s,
        ca,
        past,
        Duration::from_secs(20 * 60),
        &ca.bundle_pem(),
        "root",
        source,
    )
}

/// Signed by a CA nobody trusts, but trusting `trusted` itself (a realistic impostor: it can verify its
/// peer, so the failure is the peer's verdict on it, not its own on the peer).
pub fn write_untrusted(out: &Path, name: &str, trusted: &Authority, source: &str) -> PathBuf {
    let now = jiff::Timestamp::now();
    let rogue = Authority::generate_root(now).expect("rogue root");
    let s = spec(name, KeySpec::EcdsaP256, Role::Untrusted);
    let day = Duration::from_secs(24 * 3600);
    write_issued(
        out,
        &s,
        &rogue,
        now,
        day,
        &trusted.bundle_pem(),
        "root",
        source,
    )
}

/// Which groups of identities `generate` writes.
#[derive(Clone, Copy, Debug)]
pub struct Sets {
    pub matrix: bool,
    pub intermediate: bool,
    pub negatives: bool,
    pub rollover: bool,
}

impl Sets {
    /// `TLSID_INTEROP_SETS=matrix,intermediate,negatives,rollover` (default: all).
    pub fn from_env() -> Sets {
        match std::env::var("TLSID_INTEROP_SETS") {
            Ok(v) if !v.trim().is_empty() => {
                let has = |s: &str| v.split(',').any(|x| x.trim() == s);
                Sets {
                    matrix: has("matrix"),
                    intermediate: has("intermediate"),
                    negatives: has("negatives"),
                    rollover: has("rollover"),
                }
            }
            _ => Sets {
                matrix: true,
                intermediate: true,
                negatives: true,
                rollover: true,
            },
        }
    }
}

/// The signing CA: `ca_dir` (tls.crt, tls.key, optional ca.crt of a CA Secret) or a fresh root
/// backdated a day so expired leaves nest inside it.
pub fn load_or_generate_ca(ca_dir: Option<&Path>, now: jiff::Timestamp) -> Authority {
    match ca_dir {
        Some(dir) => {
            let read = |f: &str| std::fs::read(dir.join(f));
            let crt = read("tls.crt").expect("CA tls.crt");
            let key = read("tls.key").expect("CA tls.key");
            let bundle = read("ca.crt").ok();
            Authority::from_pem(&crt, &key, bundle.as_deref(), now).expect("CA Secret files")
        }
        None => Authority::generate_root(now - jiff::SignedDuration::from_hours(24)).expect("root"),
    }
}

/// Without a cluster: write the identities of `sets` into `out`, all signed by the library; returns
/// their directories.
pub fn generate(out: &Path, ca: &Authority, sets: Sets, keys: &[KeySpec]) -> Vec<PathBuf> {
    const SOURCE: &str = "tests/interop fixtures (tlsid::pki::issue + keystore::pkcs12)";
    let now = jiff::Timestamp::now();
    let day = Duration::from_secs(24 * 3600);
    std::fs::create_dir_all(out).expect("create identity dir");
    let bundle = ca.bundle_pem();
    let mut written = Vec::new();
    if sets.matrix {
        for &key in keys {
            let s = spec(&key_type_name(key), key, Role::Matrix);
            written.push(write_issued(out, &s, ca, now, day, &bundle, "root", SOURCE));
        }
    }
    if sets.intermediate {
        let ica = intermediate_authority(now);
        let s = spec("intermediate-ecdsa-p256", KeySpec::EcdsaP256, Role::Matrix);
        written.push(write_issued(
            out,
            &s,
            &ica,
            now,
            day,
            &ica.bundle_pem(),
            "intermediate",
            SOURCE,
        ));
    }
    if sets.negatives {
        for (name, role) in [
            ("neg-wrong-san", Role::WrongSan),
            ("neg-server-only", Role::ServerOnly),
            ("neg-client-only", Role::ClientOnly),
        ] {
            let s = spec(name, KeySpec::EcdsaP256, role);
            written.push(write_issued(out, &s, ca, now, day, &bundle, "root", SOURCE));
        }
        written.push(write_expired(out, "neg-expired", ca, SOURCE));
        written.push(write_untrusted(out, "neg-untrusted", ca, SOURCE));
    }
    if sets.rollover {
        written.extend(write_rollover(out, now));
    }
    written
}

// === CA rollover ===

/// The identity directories of the CA rollover section, built with the library alone: roots A (old)
/// and B (new) from `Authority::generate_root`, and a user root C whose intermediate signs (built as
/// the `intermediate-ecdsa-p256` fixture is). For each case (`root`: A → B, `intermediate`: A → C's
/// intermediate), every {old, new leaf} × {old, overlap, new bundle} is one directory
/// `rollover-<case>-<leaf>-<bundle>`: that leaf (ECDSA P-256, localhost + 127.0.0.1, server + client)
/// with that bundle as `ca.crt` and in `truststore.p12`. The same old leaf (signed by A) is in both
/// cases, as one workload's leaf would be whichever CA comes next.
pub fn write_rollover(out: &Path, now: jiff::Timestamp) -> Vec<PathBuf> {
    const SOURCE: &str = "tlsid::pki (Authority::generate_root, issue, keystore::pkcs12)";
    let a = Authority::generate_root(now).expect("root A");
    let b = Authority::generate_root(now).expect("root B");
    let c = intermediate_authority(now);
    // Two roots with one subject would make peers report a bad signature instead of an unknown
    // issuer: the rollover relies on generate_root giving each key its own subject.
    let subject = |der: &[u8]| {
        x509_parser::parse_x509_certificate(der)
            .expect("root")
            .1
            .subject()
            .to_string()
    };
    let (sa, sb, sc) = (
        subject(&a.roots()[0]),
        subject(&b.roots()[0]),
        subject(&c.roots()[0]),
    );
    assert!(
        sa != sb && sa != sc,
        "roots share a subject: {sa} / {sb} / {sc}"
    );

    let s = spec("rollover", KeySpec::EcdsaP256, Role::Rollover);
    let day = Duration::from_secs(24 * 3600);
    let old_leaf = issue(&request(&s, day), &a, now).expect("old leaf");
    let mut written = Vec::new();
    for (case, chain, new_ca) in [("root", "root", &b), ("intermediate", "intermediate", &c)] {
        let new_leaf = issue(&request(&s, day), new_ca, now).expect("new leaf");
        let (old_pem, new_pem) = (a.bundle_pem(), new_ca.bundle_pem());
        let overlap = format!("{old_pem}{new_pem}");
        for (leaf_name, leaf) in [("old", &old_leaf), ("new", &new_leaf)] {
            for (bundle_name, bundle) in
                [("old", &old_pem), ("overlap", &overlap), ("new", &new_pem)]
            {
                let name = format!("rollover-{case}-{leaf_name}-{bundle_name}");
                let mut meta = Meta::new(
                    &spec(&name, KeySpec::EcdsaP256, Role::Rollover),
                    if leaf_name == "new" { chain } else { "root" },
                    leaf.not_after.to_string(),
                    SOURCE.into(),
                );
                meta.rollover = Some(RolloverMeta {
                    case,
                    leaf: leaf_name,
                    bundle: bundle_name,
                });
                written.push(write_leaf(out, leaf, bundle, &meta));
            }
        }
    }
    written
}
