//! Interoperability of issued identities with other TLS stacks (see docs/interop.md).
//!
//! - `interop_matrix_with_controller_issued_identities`: the real controller, on the real control
//!   plane (tests/support), issues an identity per key type (plus the negative cases it can be asked
//!   for, and a P-256 identity from a second controller whose CA is an intermediate); the Secrets are
//!   written out as a pod mounts them and `driver.py` runs rustls (`tlsid demo`), Go, Python `ssl`,
//!   Java JSSE (from the PKCS#12 files), curl and `openssl s_client` against each other. Needs
//!   python3, go, javac/java, curl and openssl (`hack/install-deps.sh`); writes
//!   `target/interop/matrix.md`, and with `TLSID_INTEROP_UPDATE_DOC=1` also docs/interop.md.
//! - `interop_rollover_with_library_issued_identities`: the CA rollover states, no cluster needed:
//!   leaves of the old root A and of the new CA (root B, or root C's intermediate), each with the old,
//!   the overlap and the new trust bundle, judged by every stack as client and as server (TLS 1.3).
//!   Writes `target/interop/rollover.md`; with `TLSID_INTEROP_UPDATE_DOC=1` also its part of
//!   docs/interop.md.
//! - `keystores_open_in_openssl_and_keytool`: the PKCS#12 files, every key type and profile, read by
//!   `openssl pkcs12` and Java 17's `keytool`.
//! - `write_identity_dir`: with `TLSID_INTEROP_OUT=DIR`, writes an identity directory for
//!   `driver.py` without a cluster (optionally signed by the CA Secret files in `TLSID_INTEROP_CA=DIR`);
//!   otherwise a no-op.
//! - `rustls_peer`: with `TLSID_INTEROP_RUSTLS='["server", ...]'`, runs the rustls stand-in peer the
//!   driver can use instead of `tlsid demo` (`--rustls standin`); otherwise a no-op.

mod fixtures;
mod rustls_peer;
#[path = "../support/mod.rs"]
mod support;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, api::PostParams};
use serde_json::json;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};
use tlsid::{
    api::TlsIdentity,
    pki::{
        Authority, KeySpec,
        keystore::{KEYSTORE_ALIAS, Pkcs12Profile, TRUSTSTORE_ALIAS, pkcs12},
    },
};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-version").output().is_ok()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn write_identity_dir() {
    let Some(out) = std::env::var_os("TLSID_INTEROP_OUT") else {
        eprintln!("TLSID_INTEROP_OUT not set: nothing to write");
        return;
    };
    let ca_dir = std::env::var_os("TLSID_INTEROP_CA").map(PathBuf::from);
    let ca = fixtures::load_or_generate_ca(ca_dir.as_deref(), jiff::Timestamp::now());
    let dirs = fixtures::generate(
        Path::new(&out),
        &ca,
        fixtures::Sets::from_env(),
        &fixtures::MATRIX_KEYS,
    );
    for d in dirs {
        eprintln!("wrote {}", d.display());
    }
}

/// Run `driver.py` over the identity directories `dirs`, its progress to `target/interop/<log>`, the
/// markdown to `target/interop/<report>`; returns the report and whether the driver passed.
fn run_driver(dirs: &[&Path], report: &str, log: &str, extra: &[&str]) -> (String, bool) {
    let repo = support::repo();
    let out = repo.join("target/interop").join(report);
    let log = repo.join("target/interop").join(log);
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&out); // never report an earlier run's tables as this one's
    let mut driver = Command::new("python3");
    driver.arg(repo.join("tests/interop/driver.py"));
    for d in dirs {
        driver.arg("--identities").arg(d);
    }
    driver
        .args(["--rustls", "demo", "--require-all-stacks"])
        .args(extra)
        .arg("--out")
        .arg(&out)
        .env("TLSID_BIN", env!("CARGO_BIN_EXE_tlsid"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::inherit());
    if std::env::var_os("TLSID_INTEROP_UPDATE_DOC").is_some_and(|v| v == "1") {
        driver.arg("--update-doc").arg(repo.join("docs/interop.md"));
    }
    let status = driver
        .status()
        .expect("run python3 tests/interop/driver.py");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let ok = status.success();
    if !ok {
        eprintln!(
            "driver failed ({status}); see {} and {}",
            out.display(),
            log.display()
        );
    }
    (text, ok)
}

/// The CA rollover states (docs/interop.md, "CA rollover"), signed by the library: needs no cluster.
#[test]
fn interop_rollover_with_library_issued_identities() {
    let started = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let written = fixtures::write_rollover(tmp.path(), jiff::Timestamp::now());
    assert_eq!(written.len(), 12, "2 cases × 2 leaves × 3 bundles");
    let (report, ok) = run_driver(
        &[tmp.path()],
        "rollover.md",
        "rollover-driver.log",
        &["--versions", "1.3"],
    );
    println!("{report}");
    println!("rollover section in {:.0?}", started.elapsed());
    assert!(
        ok,
        "rollover interop failed; see target/interop/rollover.md"
    );
}

#[test]
fn rustls_peer() {
    if let Ok(args) = std::env::var("TLSID_INTEROP_RUSTLS") {
        let args: Vec<String> =
            serde_json::from_str(&args).expect("TLSID_INTEROP_RUSTLS is a JSON array");
        rustls_peer::run(&args);
    }
}

#[test]
fn keystores_open_in_openssl_and_keytool() {
    let (openssl, keytool) = (
        have("openssl"),
        Command::new("keytool").arg("-help").output().is_ok(),
    );
    assert!(
        openssl && keytool,
        "needs openssl ({openssl}) and keytool ({keytool}): hack/install-deps.sh installs both"
    );
    let now = jiff::Timestamp::now();
    let root = Authority::generate_root(now).unwrap();
    let inter = fixtures::intermediate_authority(now);
    let tmp = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, &Authority, KeySpec)> = [
        KeySpec::EcdsaP256,
        KeySpec::EcdsaP384,
        KeySpec::Ed25519,
        KeySpec::Rsa(2048),
        KeySpec::Rsa(3072),
        KeySpec::Rsa(4096),
    ]
    .into_iter()
    .map(|k| (fixtures::key_type_name(k), &root, k))
    .collect();
    cases.push(("intermediate-ecdsa-p256".into(), &inter, KeySpec::EcdsaP256));

    let mut jobs = Vec::new();
    for (name, ca, key) in &cases {
        let req = tlsid::pki::IssuanceRequest {
            common_name: None,
            dns_names: ["localhost".to_string()].into(),
            ip_addresses: Default::default(),
            uris: Default::default(),
            usages: [tlsid::api::Usage::Server, tlsid::api::Usage::Client].into(),
            key: *key,
            duration: std::time::Duration::from_secs(3600),
            renew: Default::default(),
        };
        let leaf = tlsid::pki::issue(&req, ca, now).unwrap();
        let chain_len = leaf.chain_pem.matches("BEGIN CERTIFICATE").count() + 1;
        // The profile changes how the file is encrypted, not how the key is stored: the legacy profiles
        // are checked with one EC and one RSA key, Modern2023 (the default) with every key type.
        let profiles: &[Pkcs12Profile] = if matches!(key, KeySpec::EcdsaP256 | KeySpec::Rsa(2048)) {
            &[
                Pkcs12Profile::LegacyRC2,
                Pkcs12Profile::LegacyDES,
                Pkcs12Profile::Modern2023,
            ]
        } else {
            &[Pkcs12Profile::Modern2023]
        };
        for &profile in profiles {
            let stores = pkcs12(
                &leaf.chain_pem,
                &leaf.key_pem,
                &ca.bundle_pem(),
                "pass word",
                profile,
            )
            .unwrap();
            let dir = tmp.path().join(format!("{name}-{profile:?}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("keystore.p12"), &stores.keystore_p12).unwrap();
            std::fs::write(dir.join("truststore.p12"), &stores.truststore_p12).unwrap();
            jobs.push((format!("{name} {profile:?}"), dir, profile, chain_len));
        }
    }

    // keytool starts a JVM per call: run the checks on a few threads.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(jobs.len().div_ceil(4))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .flat_map(|j| check_stores(&j.0, &j.1, j.2, j.3))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Problems found with one pair of stores (empty when all is well).
fn check_stores(label: &str, dir: &Path, profile: Pkcs12Profile, chain_len: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: &str, text: &str| {
        if !ok {
            problems.push(format!("{label}: {what}\n{text}"));
        }
    };
    let ks = dir.join("keystore.p12");
    let ts = dir.join("truststore.p12");

    for (file, is_trust) in [(&ks, false), (&ts, true)] {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "pkcs12",
            "-info",
            "-nokeys",
            "-passin",
            "pass:pass word",
            "-in",
        ])
        .arg(file);
        if profile == Pkcs12Profile::LegacyRC2 {
            cmd.arg("-legacy"); // OpenSSL 3 keeps RC2 in the legacy provider.
        }
        let (ok, text) = run(&mut cmd);
        expect(ok, "openssl pkcs12 -info failed", &text);
        let (enc, mac) = match profile {
            Pkcs12Profile::Modern2023 => (
                "PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256",
                "MAC: sha256, Iteration 10000",
            ),
            Pkcs12Profile::LegacyDES => (
                "pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
                "MAC: sha1, Iteration 2048",
            ),
            Pkcs12Profile::LegacyRC2 => (
                "pbeWithSHA1And40BitRC2-CBC, Iteration 2048",
                "MAC: sha1, Iteration 2048",
            ),
        };
        expect(
            text.contains(enc),
            &format!("openssl: encryption is not {enc}"),
            &text,
        );
        expect(text.contains(mac), &format!("openssl: not {mac}"), &text);
        let certs = text.matches("-----BEGIN CERTIFICATE-----").count();
        if is_trust {
            expect(
                certs == 1,
                "openssl: truststore should hold 1 certificate",
                &text,
            );
            expect(
                text.contains("2.16.840.1.113894.746875.1.1"),
                "openssl: no Oracle trusted-key-usage attribute",
                &text,
            );
        } else {
            expect(
                certs == chain_len,
                &format!("openssl: keystore should hold {chain_len} certificates"),
                &text,
            );
            expect(
                text.contains("Shrouded Keybag"),
                "openssl: no shrouded key bag",
                &text,
            );
        }

        let (ok, text) = run(Command::new("keytool")
            .args([
                "-list",
                "-v",
                "-storetype",
                "PKCS12",
                "-storepass",
                "pass word",
                "-keystore",
            ])
            .arg(file));
        expect(ok, "keytool -list failed", &text);
        if is_trust {
            expect(
                text.contains("Your keystore contains 1 entry"),
                "keytool: truststore should have 1 entry",
                &text,
            );
            expect(
                text.contains(&format!("Alias name: {TRUSTSTORE_ALIAS}"))
                    && text.contains("Entry type: trustedCertEntry"),
                "keytool: no trustedCertEntry 'ca'",
                &text,
            );
        } else {
            expect(
                text.contains("Your keystore contains 1 entry"),
                "keytool: keystore should have 1 entry",
                &text,
            );
            expect(
                text.contains(&format!("Alias name: {KEYSTORE_ALIAS}"))
                    && text.contains("Entry type: PrivateKeyEntry"),
                "keytool: no PrivateKeyEntry 'certificate'",
                &text,
            );
            expect(
                text.contains(&format!("Certificate chain length: {chain_len}")),
                &format!("keytool: chain length is not {chain_len}"),
                &text,
            );
        }
    }
    problems
}

const PASSWORD_SECRET: &str = "keystore-password";
const PASSWORD_KEY: &str = "password";

/// The TlsIdentity a user would write for `s`, with PKCS#12 keystores.
fn tls_identity(s: &fixtures::Spec) -> TlsIdentity {
    let private_key = match s.key {
        KeySpec::EcdsaP256 => json!({"algorithm": "ECDSA", "size": 256}),
        KeySpec::EcdsaP384 => json!({"algorithm": "ECDSA", "size": 384}),
        KeySpec::Ed25519 => json!({"algorithm": "Ed25519"}),
        KeySpec::Rsa(bits) => json!({"algorithm": "RSA", "size": bits}),
    };
    let mut spec = json!({
        "dnsNames": s.dns,
        "usages": s.usages.iter().map(|&u| fixtures::usage_name(u)).collect::<Vec<_>>(),
        "privateKey": private_key,
        "keystores": {"pkcs12": {
            "create": true,
            "passwordSecretRef": {"name": PASSWORD_SECRET, "key": PASSWORD_KEY},
        }},
    });
    if !s.ips.is_empty() {
        spec["ipAddresses"] = json!(s.ips);
    }
    serde_json::from_value(json!({
        "apiVersion": "tlsid.dev/v1alpha1",
        "kind": "TlsIdentity",
        "metadata": {"name": s.name},
        "spec": spec,
    }))
    .expect("TlsIdentity")
}

fn secret(name: &str, type_: &str, data: BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    }
}

/// Write an issued Secret the way the kubelet mounts it (one file per key, plus the keystore password
/// from its own Secret), with `meta.json` for the driver.
fn write_mounted(
    out: &Path,
    s: &fixtures::Spec,
    chain: &'static str,
    source: &str,
    issued: &Secret,
) -> PathBuf {
    let dir = out.join(&s.name);
    std::fs::create_dir_all(&dir).unwrap();
    for (key, value) in issued.data.iter().flatten() {
        std::fs::write(dir.join(key), &value.0).unwrap();
    }
    std::fs::write(dir.join(fixtures::PASSWORD_FILE), fixtures::PASSWORD).unwrap();
    let (_, info) =
        tlsid::pki::inspect::parse_leaf(support::data(issued, "tls.crt")).expect("issued tls.crt");
    fixtures::Meta::new(s, chain, info.not_after.to_string(), source.into()).write(&dir);
    dir
}

#[tokio::test]
async fn interop_matrix_with_controller_issued_identities() {
    let started = std::time::Instant::now();
    let repo = support::repo();
    let cluster = support::cluster().await;
    let client = cluster.client().await;
    let now = jiff::Timestamp::now();

    // One controller with the CA it creates for itself (a self-signed root), and one whose CA Secret,
    // created before it starts, is an intermediate: tls.crt = intermediate, ca.crt = the root only.
    let ns = support::namespace(&client, "interop").await;
    let ns_inter = support::namespace(&client, "interop-intermediate").await;
    let inter = fixtures::intermediate_authority(now);
    Api::<Secret>::namespaced(client.clone(), &ns_inter)
        .create(
            &PostParams::default(),
            &secret("tlsid-ca", "kubernetes.io/tls", inter.to_secret_data()),
        )
        .await
        .expect("create the intermediate CA Secret");
    let (controller, controller_inter) = tokio::join!(
        support::Controller::start(cluster, &ns),
        support::Controller::start(cluster, &ns_inter)
    );

    use fixtures::Role;
    let mut wanted: Vec<(&str, fixtures::Spec, &'static str)> = fixtures::MATRIX_KEYS
        .iter()
        .map(|&k| {
            (
                ns.as_str(),
                fixtures::spec(&fixtures::key_type_name(k), k, Role::Matrix),
                "root",
            )
        })
        .collect();
    for (name, role) in [
        ("neg-wrong-san", Role::WrongSan),
        ("neg-server-only", Role::ServerOnly),
        ("neg-client-only", Role::ClientOnly),
    ] {
        wanted.push((
            ns.as_str(),
            fixtures::spec(name, KeySpec::EcdsaP256, role),
            "root",
        ));
    }
    let inter_spec = fixtures::spec("intermediate-ecdsa-p256", KeySpec::EcdsaP256, Role::Matrix);
    wanted.push((ns_inter.as_str(), inter_spec, "intermediate"));

    for n in [&ns, &ns_inter] {
        let data = BTreeMap::from([(
            PASSWORD_KEY.to_string(),
            fixtures::PASSWORD.as_bytes().to_vec(),
        )]);
        Api::<Secret>::namespaced(client.clone(), n)
            .create(
                &PostParams::default(),
                &secret(PASSWORD_SECRET, "Opaque", data),
            )
            .await
            .expect("create the keystore password Secret");
    }
    for (n, s, _) in &wanted {
        Api::<TlsIdentity>::namespaced(client.clone(), n)
            .create(&PostParams::default(), &tls_identity(s))
            .await
            .unwrap_or_else(|e| panic!("create TlsIdentity {}: {e}", s.name));
    }

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("identities");
    for (n, s, chain) in &wanted {
        let ids = Api::<TlsIdentity>::namespaced(client.clone(), n);
        support::wait_identity(&ids, &s.name, "Ready", support::ready).await;
        let issued = Api::<Secret>::namespaced(client.clone(), n)
            .get(&format!("{}-tls", s.name))
            .await
            .expect("the issued Secret");
        for key in [
            "tls.crt",
            "tls.key",
            "ca.crt",
            "keystore.p12",
            "truststore.p12",
        ] {
            assert!(
                !support::data(&issued, key).is_empty(),
                "{n}/{}: no {key}",
                s.name
            );
        }
        let source = match *chain {
            "intermediate" => "the tlsid controller, its CA Secret a user's intermediate",
            _ => "the tlsid controller, with the root CA it created",
        };
        write_mounted(&out, s, chain, source, &issued);
    }
    // The intermediate case is only meaningful if peers must build the chain: the leaf travels with
    // the intermediate, and ca.crt holds the root alone.
    let inter_dir = out.join("intermediate-ecdsa-p256");
    let read = |f: &str| std::fs::read_to_string(inter_dir.join(f)).unwrap();
    assert_eq!(
        read("tls.crt").matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    assert_eq!(
        read("ca.crt"),
        inter.bundle_pem(),
        "ca.crt is the root alone"
    );
    controller.stop();
    controller_inter.stop();

    // What the controller cannot be asked for, signed by its own CA (expired) or by another one
    // (untrusted; it still trusts the cluster CA, so only its peer's verdict on it fails).
    let ca_secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("tlsid-ca")
        .await
        .expect("tlsid-ca");
    let cluster_ca = Authority::from_pem(
        support::data(&ca_secret, "tls.crt"),
        support::data(&ca_secret, "tls.key"),
        Some(support::data(&ca_secret, "ca.crt")),
        jiff::Timestamp::now(),
    )
    .expect("the controller's CA Secret");
    fixtures::write_expired(
        &out,
        "neg-expired",
        &cluster_ca,
        "tlsid::pki::issue, backdated, with the controller's CA from its Secret",
    );
    fixtures::write_untrusted(
        &out,
        "neg-untrusted",
        &cluster_ca,
        "tlsid::pki::issue with a CA nobody trusts",
    );
    let issued_in = started.elapsed();

    let (report, ok) = tokio::task::spawn_blocking(move || {
        run_driver(&[out.as_path()], "matrix.md", "driver.log", &[])
    })
    .await
    .unwrap();
    println!("{report}");
    println!(
        "identities issued in {:.0?}, whole test {:.0?}; driver log: {}",
        issued_in,
        started.elapsed(),
        repo.join("target/interop/driver.log").display()
    );
    assert!(
        ok,
        "interop matrix failed; see target/interop/matrix.md and target/interop/driver.log"
    );
}
