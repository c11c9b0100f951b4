//! Writes an identity directory for the interop driver without a cluster: the same files a pod sees
//! when an issued Secret is mounted, signed with the library's own `issue()` and `pkcs12()`.
//!
//! Layout (the contract `driver.py` reads; see docs/interop.md):
//! ```text
//! DIR/<identity>/tls.crt  tls.key  ca.crt  keystore.p12  truststore.p12  keystore-password  meta.json
//! ```

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};
use tlsid::{
    api::Usage,
    pki::{
        Authority, IssuanceRequest, KeySpec, RenewPolicy, issue,
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
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Matrix => "matrix",
            Role::WrongSan => "wrong-san",
            Role::Expired => "expired",
            Role::Untrusted => "untrusted",
            Role::ServerOnly => "server-only",
            Role::ClientOnly => "client-only",
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

pub struct Spec {
    pub name: String,
    pub key: KeySpec,
    pub role: Role,
    pub dns: Vec<&'static str>,
    pub usages: Vec<Usage>,
}

fn spec(name: &str, key: KeySpec, role: Role) -> Spec {
    let usages = match role {
        Role::ServerOnly => vec![Usage::Server],
        Role::ClientOnly => vec![Usage::Client],
        _ => vec![Usage::Server, Usage::Client],
    };
    let dns = if role == Role::WrongSan {
        vec!["wrong.example.com"]
    } else {
        vec!["localhost"]
    };
    Spec {
        name: name.into(),
        key,
        role,
        dns,
        usages,
    }
}

fn request(s: &Spec, duration: Duration) -> IssuanceRequest {
    let ips: BTreeSet<IpAddr> = if s.role == Role::WrongSan {
        BTreeSet::new()
    } else {
        ["127.0.0.1".parse().unwrap()].into()
    };
    IssuanceRequest {
        common_name: None,
        dns_names: s.dns.iter().map(|d| d.to_string()).collect(),
        ip_addresses: ips,
        uris: BTreeSet::new(),
        usages: s.usages.iter().copied().collect(),
        key: s.key,
        duration,
        renew: RenewPolicy::default(),
    }
}

/// A CA signing with an intermediate (root → intermediate → leaf), as a user-supplied CA Secret would.
/// The root is the user's own, without a path length limit (tlsid's generated root has pathLen 0 and
/// cannot have intermediates below it).
pub fn intermediate_authority(now: jiff::Timestamp) -> Authority {
    let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("root key");
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    root_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "tlsid interop");
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tlsid interop root CA");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    root_params.not_before = time::OffsetDateTime::from_unix_timestamp(now.as_second() - 4 * 3600).unwrap();
    root_params.not_after = time::OffsetDateTime::from_unix_timestamp(now.as_second() + 60 * 86400).unwrap();
    let root_cert = root_params.self_signed(&root_key).expect("root");
    let root = Authority::from_pem(
        root_cert.pem().as_bytes(),
        root_key.serialize_pem().as_bytes(),
        None,
        now,
    )
    .expect("root authority");
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
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now.as_second() - 3 * 3600).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now.as_second() + 30 * 86400).unwrap();
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

/// Which groups of identities to write.
#[derive(Clone, Copy, Debug)]
pub struct Sets {
    pub matrix: bool,
    pub intermediate: bool,
    pub negatives: bool,
}

impl Sets {
    pub const ALL: Sets = Sets {
        matrix: true,
        intermediate: true,
        negatives: true,
    };

    /// `TLSID_INTEROP_SETS=matrix,intermediate,negatives` (default: all).
    pub fn from_env() -> Sets {
        match std::env::var("TLSID_INTEROP_SETS") {
            Ok(v) if !v.trim().is_empty() => {
                let has = |s: &str| v.split(',').any(|x| x.trim() == s);
                Sets {
                    matrix: has("matrix"),
                    intermediate: has("intermediate"),
                    negatives: has("negatives"),
                }
            }
            _ => Sets::ALL,
        }
    }
}

/// The signing CA: `ca_dir` (tls.crt, tls.key, optional ca.crt of a CA Secret, e.g. the cluster CA the
/// real controller uses) or a fresh root backdated a day so expired leaves nest inside it.
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

/// Write the identities of `sets` into `out`; returns their directories.
pub fn generate(out: &Path, ca: &Authority, sets: Sets, keys: &[KeySpec]) -> Vec<PathBuf> {
    let now = jiff::Timestamp::now();
    let day = Duration::from_secs(24 * 3600);
    std::fs::create_dir_all(out).expect("create identity dir");
    let mut written = Vec::new();
    let bundle = ca.bundle_pem();

    let mut write = |s: &Spec,
                     ca: &Authority,
                     issued_at: jiff::Timestamp,
                     duration: Duration,
                     ca_pem: &str,
                     chain: &str| {
        let leaf = issue(&request(s, duration), ca, issued_at).expect("issue");
        let stores = pkcs12(
            &leaf.chain_pem,
            &leaf.key_pem,
            ca_pem,
            PASSWORD,
            Pkcs12Profile::Modern2023,
        )
        .expect("pkcs12");
        let dir = out.join(&s.name);
        std::fs::create_dir_all(&dir).unwrap();
        let w = |f: &str, b: &[u8]| std::fs::write(dir.join(f), b).unwrap();
        w("tls.crt", leaf.chain_pem.as_bytes());
        w("tls.key", leaf.key_pem.as_bytes());
        w("ca.crt", ca_pem.as_bytes());
        w("keystore.p12", &stores.keystore_p12);
        w("truststore.p12", &stores.truststore_p12);
        w(PASSWORD_FILE, PASSWORD.as_bytes());
        let meta = serde_json::json!({
            "name": s.name,
            "key_type": key_type_name(s.key),
            "role": s.role.as_str(),
            "chain": chain,
            "dns_names": s.dns,
            "ip_addresses": if s.role == Role::WrongSan { vec![] } else { vec!["127.0.0.1"] },
            "usages": s.usages.iter().map(|u| match u { Usage::Server => "server", Usage::Client => "client" }).collect::<Vec<_>>(),
            "password_file": PASSWORD_FILE,
            "pkcs12_profile": "Modern2023",
            "not_after": leaf.not_after.to_string(),
            "source": "tests/interop fixtures (tlsid::pki::issue + keystore::pkcs12)",
        });
        w("meta.json", serde_json::to_string_pretty(&meta).unwrap().as_bytes());
        written.push(dir);
    };

    if sets.matrix {
        for &key in keys {
            write(
                &spec(&key_type_name(key), key, Role::Matrix),
                ca,
                now,
                day,
                &bundle,
                "root",
            );
        }
    }
    if sets.intermediate {
        let ica = intermediate_authority(now);
        write(
            &spec("intermediate-ecdsa-p256", KeySpec::EcdsaP256, Role::Matrix),
            &ica,
            now,
            day,
            &ica.bundle_pem(),
            "intermediate",
        );
    }
    if sets.negatives {
        let p256 = KeySpec::EcdsaP256;
        write(
            &spec("neg-wrong-san", p256, Role::WrongSan),
            ca,
            now,
            day,
            &bundle,
            "root",
        );
        write(
            &spec("neg-server-only", p256, Role::ServerOnly),
            ca,
            now,
            day,
            &bundle,
            "root",
        );
        write(
            &spec("neg-client-only", p256, Role::ClientOnly),
            ca,
            now,
            day,
            &bundle,
            "root",
        );
        // Issued two hours ago for one hour: expired an hour ago, by the same CA everyone trusts.
        let past = now - jiff::SignedDuration::from_hours(2);
        write(
            &spec("neg-expired", p256, Role::Expired),
            ca,
            past,
            Duration::from_secs(3600),
            &bundle,
            "root",
        );
        // Signed by a CA nobody trusts, but trusting the real CA itself (a realistic impostor: it can
        // verify its peer, so the failure is the peer's verdict on it, not its own on the peer).
        let rogue = Authority::generate_root(now).expect("rogue root");
        let leaf_spec = spec("neg-untrusted", p256, Role::Untrusted);
        write(&leaf_spec, &rogue, now, day, &bundle, "root");
    }
    written
}
