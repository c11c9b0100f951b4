//! The commands' pure parts: reports built from real certificates (signatures checked, keys
//! compared), and the human format pinned by golden files (`src/cli/golden/`; rewrite them with
//! `TLSID_UPDATE_GOLDEN=1 cargo test --lib cli::`).

use super::{
    identity::{ConditionView, IdentityReport, Requested, renewal_state_for_tests},
    inspect::{CertView, ChainEnd, InstallTrust, KeyCheck, SecretReport},
    render::{relative, short_duration},
    *,
};
use crate::{
    api::{CaCertificate, TlsAuthority, TlsAuthorityStatus, TlsIdentitySpec},
    pki::{Authority, request::IssuanceRequest},
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use std::{collections::BTreeMap, path::PathBuf};

fn now() -> jiff::Timestamp {
    "2026-11-30T12:00:00Z".parse().unwrap()
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

/// Compare with `src/cli/golden/<name>`, or write it when `TLSID_UPDATE_GOLDEN` is set.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/cli/golden")
        .join(name);
    if std::env::var_os("TLSID_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TLSID_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (TLSID_UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

#[test]
fn durations_for_people() {
    for (secs, want) in [
        (0, "0s"),
        (42, "42s"),
        (60, "1m"),
        (310, "5m 10s"),
        (7200, "2h"),
        (7500, "2h 5m"),
        (90_000, "1d 1h"),
        (86_400 * 3 + 59, "3d"),
    ] {
        assert_eq!(short_duration(secs), want, "{secs}");
    }
    let t = now();
    assert_eq!(relative(t, t), "now");
    assert_eq!(
        relative(t + jiff::SignedDuration::from_secs(90), t),
        "in 1m 30s"
    );
    assert_eq!(
        relative(t - jiff::SignedDuration::from_secs(3600), t),
        "1h ago"
    );
}

fn tls_secret(ns: &str, name: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn leaf_of(ca: &Authority) -> crate::pki::issue::IssuedCertificate {
    let spec: TlsIdentitySpec =
        serde_json::from_value(serde_json::json!({"dnsNames": ["web.team.svc"]})).unwrap();
    let req = IssuanceRequest::from_spec(&spec).unwrap();
    crate::pki::issue(&req, ca, now()).unwrap()
}

fn authority_for(name: &str, signer: &Authority, roots: &[&Authority]) -> TlsAuthority {
    let cert = |a: &Authority| CaCertificate {
        fingerprint: a.fingerprint().to_string(),
        subject: crate::pki::subject_of(a.signer_der()),
        not_after: a.not_after().to_string(),
    };
    let mut a = TlsAuthority::new(name, Default::default());
    a.status = Some(TlsAuthorityStatus {
        signer: Some(cert(signer)),
        roots: roots.iter().map(|r| cert(r)).collect(),
        ..Default::default()
    });
    a
}

#[test]
fn a_secret_tlsid_wrote_chains_to_the_install_root_and_its_key_matches() {
    let ca = Authority::generate_root(now()).unwrap();
    let leaf = leaf_of(&ca);
    let secret = tls_secret(
        "team",
        "web-tls",
        &[
            ("tls.crt", leaf.chain_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
            ("ca.crt", ca.bundle_pem().as_bytes()),
        ],
    );
    let authority = authority_for("tlsid", &ca, &[&ca]);
    let r = secret_report(&secret, Ok(&authority), now());
    assert_eq!(r.key, KeyCheck::Matches);
    assert_eq!(r.problems, Vec::<String>::new());
    let leaf_view = r.leaf.as_ref().unwrap();
    assert_eq!(leaf_view.serial, leaf.serial_hex);
    assert_eq!(leaf_view.dns_names, ["web.team.svc"]);
    assert_eq!(leaf_view.key.as_deref(), Some("ECDSA P-256"));
    assert_eq!(
        r.chain.root.as_ref().unwrap().fingerprint,
        ca.fingerprint(),
        "chains to the root in ca.crt"
    );
    let trust = r.install_trust.as_ref().unwrap();
    assert!(trust.trusted);
    assert_eq!(trust.signed_by.as_deref(), Some("signer"));
    // Nothing of the key reaches the report, in either format.
    let json = serde_json::to_string(&r).unwrap();
    let text = render_secret(&r, now(), Style::plain());
    for out in [&json, &text] {
        assert!(!out.contains("PRIVATE KEY"), "{out}");
        let key_body: String = leaf
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!out.contains(&key_body[..24]), "key material in {out}");
    }
}

#[test]
fn a_wrong_key_a_foreign_root_and_an_expired_certificate_are_each_named() {
    let ca = Authority::generate_root(now()).unwrap();
    let other = Authority::generate_root(now()).unwrap();
    let leaf = leaf_of(&ca);
    let another = leaf_of(&ca);
    let secret = tls_secret(
        "team",
        "web-tls",
        &[
            ("tls.crt", leaf.chain_pem.as_bytes()),
            ("tls.key", another.key_pem.as_bytes()),
            ("ca.crt", other.bundle_pem().as_bytes()),
        ],
    );
    let authority = authority_for("tlsid", &other, &[&other]);
    let later = leaf.not_after + jiff::SignedDuration::from_secs(60);
    let r = secret_report(&secret, Ok(&authority), later);
    assert_eq!(r.key, KeyCheck::Mismatch);
    assert!(r.chain.root.is_none());
    let trust = r.install_trust.as_ref().unwrap();
    assert!(!trust.trusted);
    assert_eq!(trust.signed_by, None);
    let problems = r.problems.join("\n");
    for needle in [
        "tls.key does not belong",
        "does not chain to any root of ca.crt",
        "expired 1m ago",
        "do not trust it",
    ] {
        assert!(problems.contains(needle), "{needle} in {problems}");
    }
    // A key that is not a key, and no TlsAuthority: said, not fatal.
    let mut bad = secret.clone();
    bad.data
        .as_mut()
        .unwrap()
        .insert("tls.key".into(), ByteString(b"garbage".to_vec()));
    let r = secret_report(&bad, Err("no TlsAuthority tlsid".into()), now());
    assert!(matches!(r.key, KeyCheck::Unreadable(_)), "{:?}", r.key);
    assert_eq!(
        r.install_trust.unwrap().unknown.as_deref(),
        Some("no TlsAuthority tlsid")
    );
}

#[test]
fn an_intermediate_in_tls_crt_is_followed_to_the_root() {
    let root = Authority::generate_root(now()).unwrap();
    let inter = Authority::generate_intermediate(
        &root,
        "team intermediate",
        now(),
        std::time::Duration::from_secs(86_400 * 30),
    )
    .unwrap();
    let leaf = leaf_of(&inter);
    let secret = tls_secret(
        "team",
        "web-tls",
        &[
            ("tls.crt", leaf.chain_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
            ("ca.crt", root.bundle_pem().as_bytes()),
        ],
    );
    let authority = authority_for("tlsid", &inter, &[&root]);
    let r = secret_report(&secret, Ok(&authority), now());
    assert_eq!(r.problems, Vec::<String>::new());
    assert_eq!(r.intermediates.len(), 1);
    assert_eq!(r.chain.via, ["CN=team intermediate"]);
    assert_eq!(r.chain.root.unwrap().fingerprint, root.fingerprint());
    let trust = r.install_trust.unwrap();
    assert!(trust.trusted);
    assert_eq!(trust.signed_by.as_deref(), Some("signer"));
}

#[test]
fn a_renewal_is_done_when_the_request_is_answered_with_a_new_serial() {
    let spec: TlsIdentitySpec =
        serde_json::from_value(serde_json::json!({"dnsNames": ["a"]})).unwrap();
    let mut id = crate::api::TlsIdentity::new("web", spec);
    id.metadata.generation = Some(2);
    let ready =
        |status: &str, reason: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()),
            observed_generation: Some(2),
        };
    let mut status = crate::api::TlsIdentityStatus {
        conditions: vec![ready("True", "Issued")],
        serial_number: Some("aa".into()),
        observed_generation: Some(2),
        ..Default::default()
    };
    id.status = Some(status.clone());
    assert_eq!(
        renewal_state_for_tests(&id, "r1", Some("aa")),
        None,
        "not yet answered"
    );
    status.last_renew_request = Some("r1".into());
    id.status = Some(status.clone());
    assert_eq!(
        renewal_state_for_tests(&id, "r1", Some("aa")),
        None,
        "answered, same serial: the status write is on its way"
    );
    status.serial_number = Some("bb".into());
    status.conditions = vec![ready("True", "Renewed")];
    id.status = Some(status.clone());
    assert_eq!(
        renewal_state_for_tests(&id, "r1", Some("aa")).as_deref(),
        Some("Renewed")
    );
    // A refusal no request can change ends the wait with its reason.
    status.conditions = vec![ready("False", "NotPermitted")];
    status.last_renew_request = None;
    id.status = Some(status.clone());
    assert_eq!(
        renewal_state_for_tests(&id, "r2", Some("bb")).as_deref(),
        Some("NotPermitted: NotPermitted message")
    );
    // A refusal the controller has not re-evaluated at this generation does not.
    status.observed_generation = Some(1);
    id.status = Some(status);
    assert_eq!(renewal_state_for_tests(&id, "r2", Some("bb")), None);
}

fn cert_view(subject: &str, issuer: &str, serial: &str, fp: &str, ca: bool) -> CertView {
    CertView {
        subject: subject.into(),
        issuer: issuer.into(),
        serial: serial.into(),
        fingerprint: fp.into(),
        not_before: at("2026-11-30T09:59:30Z"),
        not_after: at("2026-12-01T10:00:00Z"),
        is_ca: ca,
        dns_names: vec![],
        ip_addresses: vec![],
        uris: vec![],
        usages: vec![],
        key: None,
    }
}

fn root_view() -> CertView {
    CertView {
        not_before: at("2026-01-01T00:00:00Z"),
        not_after: at("2036-01-01T00:00:00Z"),
        ..cert_view(
            "O=tlsid, CN=tlsid cluster CA 1767225600 1a2b3c4d",
            "O=tlsid, CN=tlsid cluster CA 1767225600 1a2b3c4d",
            "01ab",
            "4f2e9c0d1b3a5e7f00112233445566778899aabbccddeeff0011223344556677",
            true,
        )
    }
}

fn healthy_secret() -> SecretReport {
    let root = root_view();
    SecretReport {
        namespace: "team".into(),
        name: "web-tls".into(),
        type_: "kubernetes.io/tls".into(),
        keys: BTreeMap::from([
            ("ca.crt".into(), 603),
            ("tls.crt".into(), 720),
            ("tls.key".into(), 241),
        ]),
        managed_by: Some("tlsid".into()),
        install: None,
        leaf: Some(CertView {
            dns_names: vec!["web.team.svc".into()],
            uris: vec!["spiffe://cluster.local/ns/team/sa/web".into()],
            usages: vec!["server".into(), "client".into()],
            key: Some("ECDSA P-256".into()),
            ..cert_view(
                "",
                &root.subject,
                "5d0c7e2f9a1b3c4d5e6f708192a3b4c5",
                "aa00bb11cc22dd33ee44ff5566778899aa00bb11cc22dd33ee44ff5566778899",
                false,
            )
        }),
        intermediates: vec![],
        bundle: vec![root.clone()],
        key: KeyCheck::Matches,
        chain: ChainEnd {
            root: Some(root),
            via: vec![],
        },
        install_trust: Some(InstallTrust {
            authority: "tlsid".into(),
            trusted: true,
            signed_by: Some("signer".into()),
            unknown: None,
        }),
        problems: vec![],
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, ago: i64) -> ConditionView {
    ConditionView {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: now() - jiff::SignedDuration::from_secs(ago),
    }
}

fn event(type_: &str, reason: &str, message: &str, ago: i64, count: i32) -> EventView {
    EventView {
        type_: type_.into(),
        reason: reason.into(),
        message: message.into(),
        last_seen: Some(now() - jiff::SignedDuration::from_secs(ago)),
        count,
    }
}

#[test]
fn golden_status_of_a_healthy_identity() {
    let r = IdentityReport {
        namespace: "team".into(),
        name: "web".into(),
        install: "tlsid".into(),
        generation: Some(2),
        observed_generation: Some(2),
        requested: Requested {
            common_name: None,
            dns_names: vec!["web.team.svc".into()],
            ip_addresses: vec![],
            uris: vec!["spiffe://cluster.local/ns/team/sa/web".into()],
        },
        conditions: vec![
            condition(
                "Ready",
                "True",
                "Renewed",
                "certificate renewed (serial 5d0c7e2f…)",
                7200,
            ),
            condition("Issuing", "False", "Renewed", "up to date", 7200),
        ],
        secret_name: "web-tls".into(),
        secret: Some(healthy_secret()),
        serial: Some("5d0c7e2f9a1b3c4d5e6f708192a3b4c5".into()),
        renewal_time: Some(at("2026-12-01T02:00:00Z")),
        revision: Some(3),
        renewal_requested: None,
        consumers: vec![serde_json::json!({
            "kind": "Deployment", "name": "web", "reload": "restart", "caughtUp": true,
            "lastRestart": "2026-11-30T10:00:05Z"
        })],
        events: vec![
            event("Normal", "Renewed", "certificate renewed", 7200, 1),
            event("Normal", "Issued", "certificate issued", 86_000, 1),
        ],
        problems: vec![],
    };
    golden(
        "status-healthy.txt",
        &render_identity(&r, now(), Style::plain()),
    );
}

#[test]
fn golden_status_of_a_refused_identity() {
    let r = IdentityReport {
        namespace: "team".into(),
        name: "api".into(),
        install: "tlsid".into(),
        generation: Some(3),
        observed_generation: Some(2),
        requested: Requested {
            common_name: Some("api".into()),
            dns_names: vec!["api.other.svc".into()],
            ip_addresses: vec!["10.0.0.1".into()],
            uris: vec![],
        },
        conditions: vec![condition(
            "Ready",
            "False",
            "NotPermitted",
            "namespace team may not claim DNS:api.other.svc",
            65,
        )],
        secret_name: "api-tls".into(),
        secret: None,
        serial: None,
        renewal_time: None,
        revision: None,
        renewal_requested: Some("1796040000-0a1b2c3d".into()),
        consumers: vec![serde_json::json!({
            "kind": "StatefulSet", "name": "api", "reload": "restart", "caughtUp": false,
            "message": "mounts tls.crt with subPath: never sees updates"
        })],
        events: vec![event(
            "Warning",
            "NotPermitted",
            "namespace team may not claim DNS:api.other.svc",
            60,
            3,
        )],
        problems: vec![
            "not Ready: NotPermitted — namespace team may not claim DNS:api.other.svc".into(),
            "Secret api-tls does not exist".into(),
        ],
    };
    golden(
        "status-refused.txt",
        &render_identity(&r, now(), Style::plain()),
    );
}

#[test]
fn golden_inspect_of_a_foreign_secret() {
    let root = root_view();
    let inter = CertView {
        not_after: at("2027-06-01T00:00:00Z"),
        ..cert_view(
            "CN=team intermediate",
            &root.subject,
            "02cd",
            "bb00bb11cc22dd33ee44ff5566778899aa00bb11cc22dd33ee44ff5566778899",
            true,
        )
    };
    let mut r = healthy_secret();
    r.managed_by = Some("cert-manager".into());
    r.name = "legacy-tls".into();
    r.intermediates = vec![inter];
    r.chain.via = vec!["CN=team intermediate".into()];
    r.key = KeyCheck::Mismatch;
    r.install_trust = Some(InstallTrust {
        authority: "tlsid".into(),
        trusted: false,
        signed_by: None,
        unknown: None,
    });
    r.leaf.as_mut().unwrap().not_after = at("2026-11-30T11:00:00Z");
    r.problems = vec![
        "the certificate expired 1h ago".into(),
        "tls.key does not belong to the certificate".into(),
        "peers holding the trust bundle of tlsid do not trust it".into(),
    ];
    golden(
        "inspect-foreign.txt",
        &render_secret(&r, now(), Style::plain()),
    );
    golden(
        "inspect-healthy.txt",
        &render_secret(&healthy_secret(), now(), Style::plain()),
    );
}

#[test]
fn colour_only_when_asked() {
    let r = healthy_secret();
    let plain = render_secret(&r, now(), Style::plain());
    let coloured = render_secret(&r, now(), Style { color: true });
    assert!(!plain.contains('\x1b'));
    assert!(coloured.contains("\x1b[32m"), "{coloured}");
    let stripped = coloured
        .split('\x1b')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('m').map_or(part, |(_, rest)| rest)
            }
        })
        .collect::<String>();
    assert_eq!(stripped, plain, "colour changes nothing but colour");
}

#[test]
fn events_newest_first() {
    use k8s_openapi::{api::core::v1::Event, apimachinery::pkg::apis::meta::v1::Time};
    let ev = |name: &str, at: &str| Event {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        last_timestamp: Some(Time(at.parse().unwrap())),
        reason: Some(name.into()),
        ..Default::default()
    };
    let got: Vec<String> = newest_events(
        vec![
            ev("a", "2026-11-30T10:00:00Z"),
            ev("c", "2026-11-30T12:00:00Z"),
            ev("b", "2026-11-30T11:00:00Z"),
        ],
        2,
    )
    .into_iter()
    .map(|e| e.reason)
    .collect();
    assert_eq!(got, ["c", "b"]);
}
