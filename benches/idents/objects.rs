//! What the bench creates and checks: namespaces, identities, calibration Secrets, and the
//! verification of every Secret tlsid wrote.

use super::*;

pub(crate) async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            bail!("namespace {name} already exists: the bench wants a fresh one")
        }
        Err(e) => Err(e).context(format!("creating namespace {name}")),
    }
}

/// The identities' `duration` and `renewBefore` (Go durations) from `TLSID_BENCH_DURATION` and
/// `TLSID_BENCH_RENEW_BEFORE`: `hack/bench.sh` sets them so that every certificate of the bulk
/// becomes due after the idle window and the restart (for the renewal storm, see storm.rs).
fn lifetime() -> (Option<String>, Option<String>) {
    static LIFETIME: std::sync::OnceLock<(Option<String>, Option<String>)> =
        std::sync::OnceLock::new();
    LIFETIME
        .get_or_init(|| {
            let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            (get("TLSID_BENCH_DURATION"), get("TLSID_BENCH_RENEW_BEFORE"))
        })
        .clone()
}

/// A one-name identity: a Service name of its own namespace, which the built-in name rule permits.
pub(crate) fn identity(prefix: &str, i: usize, ns: &str) -> TlsIdentity {
    let name = format!("{prefix}-{i:05}");
    let (duration, renew_before) = lifetime();
    let spec = TlsIdentitySpec {
        dns_names: vec![format!("{name}.{ns}.svc")],
        duration: duration.map(Into::into),
        renew_before: renew_before.map(Into::into),
        ..Default::default()
    };
    TlsIdentity::new(&name, spec)
}

/// Deterministic filler shaped like PEM (base64 alphabet, 64-column lines).
pub(crate) fn pem_like(tag: &str, len: usize, seed: usize) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let head = format!("-----BEGIN {tag}-----\n");
    let tail = format!("-----END {tag}-----\n");
    let body = len.saturating_sub(head.len() + tail.len());
    let mut out = head.into_bytes();
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..body {
        if i % 65 == 64 {
            out.push(b'\n');
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(B64[(x % 64) as usize]);
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

/// Create N TlsIdentities, at most `parallelism` in flight; the time from `t0` until all returned.
pub(crate) async fn create_identities(
    api: Api<TlsIdentity>,
    prefix: &'static str,
    n: usize,
    parallelism: usize,
    t0: Instant,
) -> anyhow::Result<Duration> {
    stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let ns = api.namespace().unwrap_or("default").to_string();
                api.create(&PostParams::default(), &identity(prefix, i, &ns))
                    .await
            }
        })
        .buffer_unordered(parallelism)
        .try_for_each(|_| async { Ok(()) })
        .await
        .with_context(|| {
            format!(
                "creating TlsIdentities in {}",
                api.namespace().unwrap_or_default()
            )
        })?;
    Ok(t0.elapsed())
}

/// Create N Secrets shaped like tlsid's, at most `parallelism` in flight; the time taken.
pub(crate) async fn create_secrets(
    client: &Client,
    ns: &str,
    prefix: &str,
    n: usize,
    parallelism: usize,
) -> anyhow::Result<Duration> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secrets: Vec<Secret> = (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i:05}-tls");
            Secret {
                metadata: ObjectMeta {
                    name: Some(name),
                    // Same shape as tlsid's labels/annotation, other keys (nothing watches these).
                    labels: Some(BTreeMap::from([
                        ("bench.tlsid.dev/managed-by".into(), "idents".into()),
                        ("bench.tlsid.dev/identity".into(), format!("id-{i:05}")),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        "bench.tlsid.dev/serial".into(),
                        format!("{:032x}", i as u128 * 7919),
                    )])),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(BTreeMap::from([
                    (
                        "tls.crt".into(),
                        ByteString(pem_like("CERTIFICATE", CAL_TLS_CRT, i)),
                    ),
                    (
                        "tls.key".into(),
                        ByteString(pem_like("PRIVATE KEY", CAL_TLS_KEY, i + n)),
                    ),
                    (
                        "ca.crt".into(),
                        ByteString(pem_like("CERTIFICATE", CAL_CA_CRT, 0)),
                    ),
                ])),
                ..Default::default()
            }
        })
        .collect();
    let t0 = Instant::now();
    stream::iter(secrets)
        .map(|s| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &s).await }
        })
        .buffer_unordered(parallelism)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("creating calibration Secrets")?;
    Ok(t0.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Secret verification

/// Every identity's Secret exists and holds a certificate signed by a CA in its `ca.crt` and a
/// private key. Returns the mean size of the Secrets' data, total and by key.
pub(crate) async fn verify_secrets(
    client: &Client,
    ns: &str,
    n: usize,
) -> anyhow::Result<(usize, String)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let identities: Api<TlsIdentity> = Api::namespaced(client.clone(), ns);
    let secrets = api
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            tlsid::api::MANAGED_BY_LABEL,
            tlsid::api::MANAGED_BY_VALUE
        )))
        .await?;
    let by_name: HashMap<String, &Secret> =
        secrets.items.iter().map(|s| (s.name_any(), s)).collect();
    let idents = identities.list(&ListParams::default()).await?;
    ensure!(
        idents.items.len() == n,
        "{} identities listed, want {n}",
        idents.items.len()
    );
    let mut bytes = 0usize;
    let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for id in &idents.items {
        let secret_name = id.secret_name();
        let Some(secret) = by_name.get(&secret_name) else {
            failures.push(format!("{secret_name}: missing"));
            continue;
        };
        let serial = id
            .status
            .as_ref()
            .and_then(|s| s.serial_number.clone())
            .unwrap_or_default();
        match check_secret(secret, &serial) {
            Ok(b) => {
                bytes += b;
                for (k, v) in secret.data.iter().flatten() {
                    *by_key.entry(k.clone()).or_default() += v.0.len();
                }
            }
            Err(e) => failures.push(format!("{secret_name}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {n} Secrets invalid, e.g. {}",
            failures.len(),
            failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let n = n.max(1);
    let keys = by_key
        .iter()
        .map(|(k, v)| format!("{k} {}", v / n))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((bytes / n, keys))
}

pub(crate) fn check_secret(secret: &Secret, status_serial: &str) -> anyhow::Result<usize> {
    use x509_parser::pem::Pem;
    ensure!(
        secret.type_.as_deref() == Some("kubernetes.io/tls"),
        "type {:?}",
        secret.type_
    );
    let data = secret.data.as_ref().ok_or_else(|| anyhow!("no data"))?;
    let get = |k: &str| {
        data.get(k)
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| anyhow!("{k} missing"))
    };
    let (crt, key, ca) = (get("tls.crt")?, get("tls.key")?, get("ca.crt")?);

    let key_pem = Pem::iter_from_buffer(key)
        .next()
        .ok_or_else(|| anyhow!("tls.key: no PEM block"))?
        .context("tls.key")?;
    ensure!(
        key_pem.label.ends_with("PRIVATE KEY") && !key_pem.contents.is_empty(),
        "tls.key: a {} block",
        key_pem.label
    );

    let leaf_pem = Pem::iter_from_buffer(crt)
        .next()
        .ok_or_else(|| anyhow!("tls.crt: no PEM block"))?
        .context("tls.crt")?;
    let leaf = leaf_pem.parse_x509().map_err(|e| anyhow!("tls.crt: {e}"))?;
    let roots: Vec<Pem> = Pem::iter_from_buffer(ca)
        .collect::<Result<_, _>>()
        .context("ca.crt")?;
    ensure!(!roots.is_empty(), "ca.crt: no certificate");
    let mut issuer_found = false;
    for root in &roots {
        let root = root.parse_x509().map_err(|e| anyhow!("ca.crt: {e}"))?;
        if root.subject() == leaf.issuer() {
            issuer_found = true;
            if leaf.verify_signature(Some(root.public_key())).is_ok() {
                let serial = leaf.raw_serial_as_string().replace(':', "");
                let norm = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
                ensure!(
                    norm(&serial) == norm(status_serial),
                    "serial {serial} in the Secret, {status_serial} in status"
                );
                return Ok(data.values().map(|v| v.0.len()).sum());
            }
        }
    }
    bail!(if issuer_found {
        "tls.crt: signature does not verify with ca.crt"
    } else {
        "tls.crt: issuer not in ca.crt"
    })
}
