//! The operator's commands (`tlsid status`, `renew`, `inspect secret`, and as `kubectl tlsid`)
//! against the real apiserver and a real controller: what they read, what they write, what they
//! print (the human format pinned by masked golden files in `tests/golden/`; rewrite them with
//! `TLSID_UPDATE_GOLDEN=1`).

mod support;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::PostParams;
use std::{path::PathBuf, process::Command};
use support::*;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn tlsid(cluster: &Cluster, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsid"))
        .args(args)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("NO_COLOR")
        .output()
        .expect("run tlsid");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let run = tlsid(cluster, args);
    assert!(run.ok, "tlsid {args:?} failed: {}", run.stderr);
    assert!(
        !run.stdout.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    run.stdout
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(cluster, &all)).expect("JSON output")
}

/// Replace what differs from run to run (names, times, serials, keys' sizes) with placeholders.
fn mask(text: &str, ns: &str, authority: &str) -> String {
    let mut out = text.replace(ns, "<ns>").replace(authority, "<authority>");
    let rules: [(&str, &str); 7] = [
        (r"CA \d+ [0-9a-f]{8}", "CA <n> <hex>"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>"),
        (r"\((in [^)]*|[^()]* ago|now)\)", "(<when>)"),
        (r"\b(in \S+( \S+)?|\S+( \S+)? ago)\b", "<when>"),
        // Right-aligned ages: their padding follows their width.
        (r"(?m)^ +(<when>|now)  ", "  <when>  "),
        (r"\b[0-9a-f]{8,}\b", "<hex>"),
        (r"\(\d+ bytes\)", "(<n> bytes)"),
    ];
    for (pattern, with) in rules {
        out = regex_lite::Regex::new(pattern)
            .unwrap()
            .replace_all(&out, with)
            .into_owned();
    }
    out
}

fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
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

fn key_body(pem: &[u8]) -> String {
    String::from_utf8_lossy(pem)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// kubectl as built by hack/build-k8s.sh, for the plugin test.
fn kubectl() -> PathBuf {
    let versions = read(&repo().join("hack/versions.env"));
    let version = versions
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("K8S_VERSION in hack/versions.env");
    cache_dir().join(format!("bin/kubernetes-{version}/kubectl"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_renew_and_inspect() {
    let cluster = cluster().await;
    let env = setup("cli").await;
    let ns = env.ns.clone();
    let authority = authority_name(&ns);
    let common = ["-n", ns.as_str(), "--authority", authority.as_str()];
    let with = |more: &[&str]| -> Vec<String> {
        more.iter()
            .chain(common.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |more: &[&str]| {
        ok(
            cluster,
            &with(more).iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let run_json = |more: &[&str]| {
        json(
            cluster,
            &with(more).iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };

    let web = create(
        &env,
        &identity(
            "web",
            serde_json::json!({"dnsNames": [format!("web.{ns}.svc")]}),
        ),
    )
    .await;
    let mut backend = identity(
        "api",
        serde_json::json!({"dnsNames": [format!("api.{ns}.svc")]}),
    );
    backend.metadata.labels = Some([("tier".to_string(), format!("backend-{ns}"))].into());
    create(&env, &backend).await;
    backend.metadata.name = Some("db".into());
    backend.spec.dns_names = vec![format!("db.{ns}.svc")];
    create(&env, &backend).await;

    // The install's TlsAuthority (what says which roots it trusts) is written by the leader
    // after it starts; wait for it rather than race it.
    let authorities: kube::Api<tlsid::api::TlsAuthority> =
        kube::Api::all(env.ids.clone().into_client());
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        kube::runtime::wait::await_condition(
            authorities,
            &authority,
            |a: Option<&tlsid::api::TlsAuthority>| {
                a.and_then(|a| a.status.as_ref())
                    .is_some_and(|s| s.signer.is_some() && !s.roots.is_empty())
            },
        ),
    )
    .await
    .expect("the TlsAuthority within 60 s")
    .expect("watch");

    // Events follow the status write: the golden below shows the three Issued ones.
    events_at_least(&env.ids.clone().into_client(), &ns, "Issued", 3).await;

    // status: one screen, from the identity, its Secret, the install's TlsAuthority and Events.
    let status = run_json(&["status", "web"]);
    assert_eq!(status["serial"], serial(&web), "{status}");
    assert_eq!(status["secret"]["leaf"]["serial"], serial(&web), "{status}");
    assert_eq!(status["secret"]["key"]["result"], "matches", "{status}");
    assert_eq!(
        status["secret"]["installTrust"]["trusted"], true,
        "{status}"
    );
    assert_eq!(
        status["secret"]["installTrust"]["signedBy"], "signer",
        "{status}"
    );
    assert_eq!(status["problems"], serde_json::json!([]), "{status}");
    assert!(
        status["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Issued"),
        "{status}"
    );
    let text = run(&["status", "web"]);
    golden("status.txt", &mask(&text, &ns, &authority));

    // renew NAME --wait: a new certificate, and the command says which.
    let said = run(&["renew", "web", "--wait"]);
    let renewed = env.ids.get("web").await.unwrap();
    assert_ne!(serial(&renewed), serial(&web));
    assert!(
        said.contains(&format!(
            "{ns}/web: renewed, serial {} -> {}",
            serial(&web),
            serial(&renewed)
        )),
        "{said}"
    );
    golden("renew.txt", &mask(&said, &ns, &authority));

    // renew --all -l: exactly the selected identities, in every namespace with -A.
    let before_api = serial(&env.ids.get("api").await.unwrap());
    let before_web = serial(&renewed);
    let selector = format!("tier=backend-{ns}");
    let report = json(
        cluster,
        &[
            "renew",
            "--all",
            "-A",
            "-l",
            &selector,
            "--wait",
            "--authority",
            &authority,
        ],
    );
    let renewals = report["renewals"].as_array().unwrap();
    assert_eq!(renewals.len(), 2, "{report}");
    for r in renewals {
        assert_eq!(r["outcome"], "Renewed", "{report}");
        assert_ne!(r["serialAfter"], r["serialBefore"], "{report}");
    }
    assert_ne!(serial(&env.ids.get("api").await.unwrap()), before_api);
    assert_eq!(
        serial(&env.ids.get("web").await.unwrap()),
        before_web,
        "not selected, not renewed"
    );

    // A renewal the controller refuses ends the wait with the reason, and a failing exit status.
    env.ids
        .create(
            &PostParams::default(),
            &identity(
                "stranger",
                serde_json::json!({"dnsNames": ["stranger.kube-system.svc"]}),
            ),
        )
        .await
        .unwrap();
    wait_identity(&env.ids, "stranger", "NotPermitted", |id| {
        condition(id, "Ready").is_some_and(|(s, r)| s == "False" && r == "NotPermitted")
    })
    .await;
    let refused = tlsid(
        cluster,
        &with(&["renew", "stranger", "--wait", "--timeout", "60s"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!refused.ok, "a refused renewal fails the command");
    assert!(
        refused.stdout.contains("not renewed: NotPermitted"),
        "{}",
        refused.stdout
    );
    let status = run_json(&["status", "stranger"]);
    assert!(
        status["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("not Ready: NotPermitted"),
        "{status}"
    );

    // inspect secret: a Secret tlsid wrote.
    let secret = env.secrets.get("web-tls").await.unwrap();
    let inspected = run_json(&["inspect", "secret", "web-tls"]);
    assert_eq!(inspected["key"]["result"], "matches", "{inspected}");
    assert_eq!(inspected["managedBy"], "tlsid", "{inspected}");
    assert_eq!(inspected["installTrust"]["trusted"], true, "{inspected}");
    assert_eq!(inspected["problems"], serde_json::json!([]), "{inspected}");
    let text = run(&["inspect", "secret", "web-tls"]);
    golden("inspect.txt", &mask(&text, &ns, &authority));
    let key = data(&secret, "tls.key");
    for out in [text.clone(), inspected.to_string()] {
        assert!(!out.contains("PRIVATE KEY"), "{out}");
        assert!(
            !out.contains(&key_body(key)[..32]),
            "key material printed: {out}"
        );
    }

    // inspect secret: one tlsid did not write — its own self-signed certificate, with the key
    // of another certificate. Every problem is named; nothing fails.
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    for (name, cn) in [("a", "legacy"), ("b", "other")] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "subjectAltName=DNS:legacy.example",
        ]);
    }
    let file = |f: &str| ByteString(std::fs::read(dir.path().join(f)).unwrap());
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("legacy-tls".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), file("a.crt")),
                ("tls.key".to_string(), file("b.key")),
                ("ca.crt".to_string(), file("a.crt")),
            ]
            .into(),
        ),
        ..Default::default()
    };
    env.secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let inspected = run_json(&["inspect", "secret", "legacy-tls"]);
    assert_eq!(inspected["key"]["result"], "mismatch", "{inspected}");
    assert_eq!(
        inspected["leaf"]["dnsNames"][0], "legacy.example",
        "{inspected}"
    );
    assert_eq!(
        inspected["chain"]["root"]["subject"], "CN=legacy",
        "{inspected}"
    );
    assert_eq!(inspected["installTrust"]["trusted"], false, "{inspected}");
    let problems = inspected["problems"].to_string();
    assert!(problems.contains("tls.key does not belong"), "{problems}");
    assert!(problems.contains("do not trust it"), "{problems}");
    let text = run(&["inspect", "secret", "legacy-tls"]);
    assert!(
        !text.contains(&key_body(&file("b.key").0)[..32]),
        "key material printed: {text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // Errors are said, not panicked: an unknown identity, an unknown Secret.
    let missing = tlsid(cluster, &["status", "nope", "-n", &ns]);
    assert!(!missing.ok);
    assert!(
        missing
            .stderr
            .contains(&format!("no TlsIdentity nope in namespace {ns}")),
        "{}",
        missing.stderr
    );
    let missing = tlsid(cluster, &["inspect", "secret", "nope", "-n", &ns]);
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("no Secret nope"),
        "{}",
        missing.stderr
    );

    // As a kubectl plugin: `kubectl tlsid ...` finds `kubectl-tlsid` on PATH.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_tlsid"),
        bin.path().join("kubectl-tlsid"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let help = Command::new(kubectl())
        .args(["tlsid", "status", "--help"])
        .env("PATH", &path)
        .output()
        .expect("run kubectl");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: kubectl tlsid status"),
        "{}",
        String::from_utf8_lossy(&help.stdout)
    );
    let out = Command::new(kubectl())
        .args([
            "tlsid",
            "status",
            "web",
            "-n",
            &ns,
            "--authority",
            &authority,
            "-o",
            "json",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("PATH", path)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via_kubectl: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(via_kubectl["name"], "web");
    assert_eq!(
        via_kubectl["serial"],
        serial(&env.ids.get("web").await.unwrap())
    );
    env.controller.stop();
}
