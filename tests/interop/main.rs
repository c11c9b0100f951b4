//! Interoperability of issued identities with other TLS stacks (see docs/interop.md).
//!
//! - `keystores_open_in_openssl_and_keytool`: the PKCS#12 files, every key type and profile, read by
//!   `openssl pkcs12` and Java 17's `keytool` (skipped with a message when a tool is missing).
//! - `write_identity_dir`: with `TLSID_INTEROP_OUT=DIR`, writes an identity directory for
//!   `driver.py` (optionally signed by the CA Secret files in `TLSID_INTEROP_CA=DIR`); otherwise a no-op.
//! - `rustls_peer`: with `TLSID_INTEROP_RUSTLS='["server", ...]'`, runs the rustls stand-in peer the
//!   driver starts when `tlsid demo` is not available; otherwise a no-op.
//! - `interop_matrix` (ignored: needs python3, go, javac, curl, openssl; a few minutes): the whole
//!   matrix over freshly generated identities. `cargo test --test interop -- --ignored --nocapture`.

mod fixtures;
mod rustls_peer;

use std::{
    path::{Path, PathBuf},
    process::Command,
};
use tlsid::pki::{
    Authority, KeySpec,
    keystore::{KEYSTORE_ALIAS, Pkcs12Profile, TRUSTSTORE_ALIAS, pkcs12},
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
    let dirs = fixtures::generate(Path::new(&out), &ca, fixtures::Sets::from_env(), &fixtures::MATRIX_KEYS);
    for d in dirs {
        eprintln!("wrote {}", d.display());
    }
}

#[test]
fn rustls_peer() {
    if let Ok(args) = std::env::var("TLSID_INTEROP_RUSTLS") {
        let args: Vec<String> = serde_json::from_str(&args).expect("TLSID_INTEROP_RUSTLS is a JSON array");
        rustls_peer::run(&args);
    }
}

#[test]
fn keystores_open_in_openssl_and_keytool() {
    let (openssl, keytool) = (have("openssl"), Command::new("keytool").arg("-help").output().is_ok());
    if !openssl || !keytool {
        eprintln!("SKIPPED: needs openssl ({openssl}) and keytool ({keytool})");
        return;
    }
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
            let stores = pkcs12(&leaf.chain_pem, &leaf.key_pem, &ca.bundle_pem(), "pass word", profile).unwrap();
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
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
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
        cmd.args(["pkcs12", "-info", "-nokeys", "-passin", "pass:pass word", "-in"])
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
        expect(text.contains(enc), &format!("openssl: encryption is not {enc}"), &text);
        expect(text.contains(mac), &format!("openssl: not {mac}"), &text);
        let certs = text.matches("-----BEGIN CERTIFICATE-----").count();
        if is_trust {
            expect(certs == 1, "openssl: truststore should hold 1 certificate", &text);
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
            expect(text.contains("Shrouded Keybag"), "openssl: no shrouded key bag", &text);
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
                text.contains(&format!("Alias name: {KEYSTORE_ALIAS}")) && text.contains("Entry type: PrivateKeyEntry"),
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

#[test]
#[ignore = "runs every TLS stack: python3, go, javac/java, curl, openssl; a few minutes"]
fn interop_matrix() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("identities");
    let ca = fixtures::load_or_generate_ca(None, jiff::Timestamp::now());
    fixtures::generate(&ids, &ca, fixtures::Sets::ALL, &fixtures::MATRIX_KEYS);
    let out = root.join("target/interop/matrix.md");
    let status = Command::new("python3")
        .arg(root.join("tests/interop/driver.py"))
        .arg("--identities")
        .arg(&ids)
        .arg("--out")
        .arg(&out)
        .env("TLSID_INTEROP_TESTBIN", std::env::current_exe().unwrap())
        .status()
        .expect("python3");
    assert!(status.success(), "interop matrix failed; see {}", out.display());
}
