//! Loading credentials from a mounted Secret, and swapping them when the kubelet rotates it.
//!
//! The kubelet writes each version of a Secret into a fresh `..<timestamp>` directory and then
//! atomically renames a `..data` symlink onto it; `tls.crt` and friends are symlinks through
//! `..data`. So "did it change?" is one `readlink`, and reading the files through the resolved
//! directory (not through `..data`) guarantees the three files come from the same version even if
//! another swap happens mid-read. Directories not laid out by a kubelet fall back to comparing
//! file modification times and lengths.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    RootCertStore,
    client::WebPkiServerVerifier,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::{identity::CertSummary, telemetry::Telemetry};

pub(crate) const TLS_CRT: &str = "tls.crt";
pub(crate) const TLS_KEY: &str = "tls.key";
pub(crate) const CA_CRT: &str = "ca.crt";
pub(crate) const DATA_LINK: &str = "..data";

/// One validated set of credentials. Shared by every connection that started while it was current.
pub(crate) struct Credentials {
    /// Leaf + intermediates and the matching private key.
    pub certified: Arc<CertifiedKey>,
    pub leaf: CertSummary,
    /// What peers are verified against. Usually parsed from the same `ca.crt` version as the leaf;
    /// with `--trust-lag` it can be an older bundle still waiting out the lag of its successor.
    pub trust: Trust,
    /// Digest of `tls.crt`, so touching files without changing them is not a "reload".
    leaf_content: [u8; 32],
}

// The key is deliberately absent from Debug output.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("leaf", &self.leaf)
            .field("chain_len", &self.certified.cert.len())
            .field("roots", &self.trust.roots.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The same leaf and key, verifying peers with `trust` instead.
    fn with_trust(&self, trust: Trust) -> Self {
        Self {
            certified: self.certified.clone(),
            leaf: self.leaf.clone(),
            trust,
            leaf_content: self.leaf_content,
        }
    }
}

/// A validated trust bundle (`ca.crt`) and the verifiers built from it.
#[derive(Clone)]
pub(crate) struct Trust {
    /// Verifies clients; used when serving.
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// Verifies servers; used when connecting.
    pub server_verifier: Arc<WebPkiServerVerifier>,
    /// Lowercase hex SHA-256 of each root's DER, in bundle order, each once.
    pub roots: Vec<String>,
    /// Digest of `ca.crt`: equal digests are the same bundle.
    content: [u8; 32],
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Why a credential set was refused. Messages name files and reasons, never key bytes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{file}: {reason}")]
    Invalid { file: &'static str, reason: String },
    #[error("tls.key does not belong to the certificate in tls.crt")]
    KeyMismatch,
}

fn invalid(file: &'static str, reason: impl fmt::Display) -> LoadError {
    LoadError::Invalid {
        file,
        reason: reason.to_string(),
    }
}

/// Cheap summary of a credential directory's state: equal fingerprints mean nothing to reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    data_target: Option<PathBuf>,
    files: [Option<(SystemTime, u64)>; 3],
}

impl Fingerprint {
    pub(crate) fn of(dir: &Path) -> Self {
        let stat = |name: &str| {
            fs::metadata(dir.join(name))
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        Self {
            data_target: fs::read_link(dir.join(DATA_LINK)).ok(),
            files: [stat(TLS_CRT), stat(TLS_KEY), stat(CA_CRT)],
        }
    }
}

/// Read and validate the credentials in `dir` as of `fingerprint`.
pub(crate) fn load(
    dir: &Path,
    fingerprint: &Fingerprint,
    provider: &Arc<CryptoProvider>,
) -> Result<Credentials, LoadError> {
    let base = match &fingerprint.data_target {
        // A relative target resolves against `dir`; an absolute one replaces it.
        Some(target) => dir.join(target),
        None => dir.to_path_buf(),
    };
    let read = |name: &str| {
        let path = base.join(name);
        fs::read(&path).map_err(|source| LoadError::Read { path, source })
    };
    let (crt, key, ca) = (read(TLS_CRT)?, read(TLS_KEY)?, read(CA_CRT)?);
    parse(&crt, &key, &ca, provider)
}

/// Validate the three files' contents. Pure, so every malformed input can be tested directly.
pub(crate) fn parse(
    crt: &[u8],
    key: &[u8],
    ca: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Credentials, LoadError> {
    let chain = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(TLS_CRT, format!("malformed PEM: {e}")))?;
    let leaf_der = chain
        .first()
        .ok_or_else(|| invalid(TLS_CRT, "no CERTIFICATE block"))?;
    let leaf = CertSummary::from_der(leaf_der).map_err(|e| invalid(TLS_CRT, e))?;

    // The PEM error type can quote the offending line; for the key file that could be key
    // material, so only the kind of problem is reported.
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        invalid(
            TLS_KEY,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block",
                _ => "malformed PEM",
            },
        )
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| invalid(TLS_KEY, "not a usable RSA, ECDSA or Ed25519 private key"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(LoadError::KeyMismatch);
        }
        Err(e) => {
            return Err(invalid(
                TLS_KEY,
                format!("cannot confirm it matches tls.crt: {e}"),
            ));
        }
    }

    let trust = parse_trust(ca, provider)?;
    Ok(Credentials {
        certified: Arc::new(certified),
        leaf,
        trust,
        leaf_content: digest(crt),
    })
}

/// Validate a trust bundle and build the verifiers for it.
pub(crate) fn parse_trust(ca: &[u8], provider: &Arc<CryptoProvider>) -> Result<Trust, LoadError> {
    let mut store = RootCertStore::empty();
    let mut roots = Vec::new();
    for (i, root) in CertificateDer::pem_slice_iter(ca).enumerate() {
        let root = root.map_err(|e| invalid(CA_CRT, format!("malformed PEM: {e}")))?;
        let fingerprint = hex::encode(Sha256::digest(root.as_ref()));
        // Strict on purpose: a bundle with one bad root is more likely half-written than intended.
        store.add(root).map_err(|e| {
            invalid(
                CA_CRT,
                format!("certificate #{} is not a usable trust anchor: {e}", i + 1),
            )
        })?;
        if !roots.contains(&fingerprint) {
            roots.push(fingerprint);
        }
    }
    if store.is_empty() {
        return Err(invalid(CA_CRT, "no CERTIFICATE block"));
    }
    let store = Arc::new(store);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| invalid(CA_CRT, e))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
        .build()
        .map_err(|e| invalid(CA_CRT, e))?;
    Ok(Trust {
        client_verifier,
        server_verifier,
        roots,
        content: digest(ca),
    })
}

fn digest(file: &[u8]) -> [u8; 32] {
    Sha256::digest(file).into()
}

/// Whether a trust bundle first seen at `first_seen` may replace the one in use at `now`, under
/// `--trust-lag`: only once it has been on disk for at least `lag`. A zero lag adopts at once.
pub(crate) fn adopt_trust_now(first_seen: Instant, now: Instant, lag: Duration) -> bool {
    now.saturating_duration_since(first_seen) >= lag
}

// === impl CredentialStore ===

/// The current credentials plus the bookkeeping to notice and vet a rotation.
pub(crate) struct CredentialStore {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    check_every: Duration,
    /// How long a changed `ca.crt` must have been seen before peers are verified against it.
    trust_lag: Duration,
    telemetry: Arc<Telemetry>,
    current: RwLock<Arc<Credentials>>,
    check: tokio::sync::Mutex<CheckState>,
}

struct CheckState {
    last_check: Instant,
    /// The state the current credentials were loaded from.
    loaded: Fingerprint,
    /// The last state refused, so a broken set is warned about once, not on every retry.
    refused: Option<Fingerprint>,
    /// The newest valid trust bundle read but not adopted yet (`--trust-lag`), and when it was
    /// first seen.
    pending_trust: Option<(Trust, Instant)>,
}

impl CredentialStore {
    /// Load the initial credentials, retrying every `check_every` until they are valid. The first
    /// trust bundle is used at once: there is no older one to keep for `trust_lag`.
    ///
    /// Waiting rather than exiting matters in a cluster: the Secret may be created after the pod
    /// (an optional volume), and a crash loop would only delay the first handshake.
    pub(crate) async fn wait_for_initial(
        dir: PathBuf,
        provider: Arc<CryptoProvider>,
        check_every: Duration,
        trust_lag: Duration,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        let retry_every = check_every.max(Duration::from_millis(100));
        let mut last_error = None;
        loop {
            let (fingerprint, result) = Self::read(&dir, &provider).await;
            match result {
                Ok(creds) => {
                    info!(
                        cert_dir = %dir.display(),
                        identity = %creds.leaf.identity,
                        serial = %creds.leaf.serial,
                        not_after = %creds.leaf.not_after_rfc3339(),
                        roots = creds.trust.roots.len(),
                        "credentials loaded: serial {}",
                        creds.leaf.serial,
                    );
                    telemetry.credentials_loaded(&creds.leaf);
                    telemetry.trust_loaded(&creds.trust.roots);
                    return Self {
                        dir,
                        provider,
                        check_every,
                        trust_lag,
                        telemetry,
                        current: RwLock::new(Arc::new(creds)),
                        check: tokio::sync::Mutex::new(CheckState {
                            last_check: Instant::now(),
                            loaded: fingerprint,
                            refused: None,
                            pending_trust: None,
                        }),
                    };
                }
                Err(e) => {
                    let message = e.to_string();
                    if last_error.as_ref() != Some(&message) {
                        warn!(cert_dir = %dir.display(), error = %message, "waiting for valid credentials");
                        last_error = Some(message);
                    }
                }
            }
            tokio::time::sleep(retry_every).await;
        }
    }

    /// The credentials to use for a connection starting now, after a cheap rotation check if one
    /// is due. Never waits for another task's check: that one will swap in anything new.
    pub(crate) async fn current(&self) -> Arc<Credentials> {
        self.refresh_if_due().await;
        self.snapshot()
    }

    pub(crate) fn snapshot(&self) -> Arc<Credentials> {
        // A poisoned lock still holds a complete Arc (the write is a single assignment).
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) async fn refresh_if_due(&self) {
        let Ok(mut state) = self.check.try_lock() else {
            return;
        };
        if state.last_check.elapsed() < self.check_every {
            return;
        }
        let dir = self.dir.clone();
        let (loaded, refused) = (state.loaded.clone(), state.refused.clone());
        let provider = self.provider.clone();
        // File I/O and parsing stay off the async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            let fingerprint = Fingerprint::of(&dir);
            if fingerprint == loaded {
                return None;
            }
            let result = load(&dir, &fingerprint, &provider);
            Some((fingerprint, result))
        })
        .await;
        state.last_check = Instant::now();
        match outcome {
            Ok(Some((fingerprint, Ok(new)))) => {
                let new = self.hold_back_trust(new, &mut state);
                self.install(new);
                state.loaded = fingerprint;
                state.refused = None;
            }
            Ok(Some((fingerprint, Err(e)))) if refused.as_ref() == Some(&fingerprint) => {
                debug!(cert_dir = %self.dir.display(), error = %e, "credentials still invalid");
            }
            Ok(Some((fingerprint, Err(e)))) => {
                warn!(
                    cert_dir = %self.dir.display(),
                    error = %e,
                    kept_serial = %self.snapshot().leaf.serial,
                    "ignoring new credentials, keeping the current ones",
                );
                self.telemetry.reload_failed();
                state.refused = Some(fingerprint);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "credential check did not complete"),
        }
        // A bundle waiting out the lag is the newest valid one seen: a broken set published since
        // does not hold it back, just as it would not have replaced it without a lag.
        self.adopt_pending_trust_if_due(&mut state);
    }

    /// The leaf and key of `new`, and, under `--trust-lag`, the trust bundle in use until the one
    /// in `new` has been seen for the lag; that one is parked in `state` meanwhile.
    fn hold_back_trust(&self, new: Credentials, state: &mut CheckState) -> Credentials {
        let current = self.snapshot();
        if new.trust.content == current.trust.content {
            // The bundle on disk is the one in use (again): anything parked is obsolete.
            state.pending_trust = None;
            return new;
        }
        let now = Instant::now();
        let first_seen = match &state.pending_trust {
            Some((pending, seen)) if pending.content == new.trust.content => Some(*seen),
            _ => None,
        };
        if adopt_trust_now(first_seen.unwrap_or(now), now, self.trust_lag) {
            state.pending_trust = None;
            return new;
        }
        if first_seen.is_none() {
            info!(
                cert_dir = %self.dir.display(),
                roots = current.trust.roots.len(),
                new_roots = new.trust.roots.len(),
                trust_lag_ms = super::millis(self.trust_lag),
                "new trust bundle seen: verifying peers with the current one until --trust-lag has passed",
            );
        }
        let held = new.with_trust(current.trust.clone());
        state.pending_trust = Some((new.trust, first_seen.unwrap_or(now)));
        held
    }

    fn adopt_pending_trust_if_due(&self, state: &mut CheckState) {
        let due = state
            .pending_trust
            .as_ref()
            .is_some_and(|(_, seen)| adopt_trust_now(*seen, Instant::now(), self.trust_lag));
        if !due {
            return;
        }
        let Some((trust, seen)) = state.pending_trust.take() else {
            return;
        };
        info!(
            cert_dir = %self.dir.display(),
            roots = trust.roots.len(),
            seen_for_ms = super::millis(seen.elapsed()),
            "trust bundle adopted after --trust-lag",
        );
        let new = self.snapshot().with_trust(trust);
        self.install(new);
    }

    fn install(&self, new: Credentials) {
        let old = self.snapshot();
        if old.leaf_content == new.leaf_content && old.trust.content == new.trust.content {
            debug!(cert_dir = %self.dir.display(), "credential files touched but unchanged");
            return;
        }
        info!(
            old_serial = %old.leaf.serial,
            new_serial = %new.leaf.serial,
            identity = %new.leaf.identity,
            not_after = %new.leaf.not_after_rfc3339(),
            roots = new.trust.roots.len(),
            "credentials reloaded: {} \u{2192} {}",
            old.leaf.serial,
            new.leaf.serial,
        );
        self.telemetry.credentials_reloaded(&new.leaf);
        self.telemetry.trust_loaded(&new.trust.roots);
        let new = Arc::new(new);
        match self.current.write() {
            Ok(mut guard) => *guard = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    async fn read(
        dir: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> (Fingerprint, Result<Credentials, LoadError>) {
        let (dir, provider) = (dir.to_path_buf(), provider.clone());
        let task = tokio::task::spawn_blocking(move || {
            let fingerprint = Fingerprint::of(&dir);
            let result = load(&dir, &fingerprint, &provider);
            (fingerprint, result)
        });
        match task.await {
            Ok(read) => read,
            Err(e) => (
                Fingerprint {
                    data_target: None,
                    files: [None, None, None],
                },
                Err(LoadError::Read {
                    path: PathBuf::new(),
                    source: io::Error::other(e),
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Set {
        crt: String,
        key: String,
        ca: String,
    }

    fn set() -> Set {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["leaf.test".to_string()]).unwrap();
        let crt = leaf
            .signed_by(&key, &rcgen::Issuer::new(ca, ca_key))
            .unwrap()
            .pem();
        Set {
            crt,
            key: key.serialize_pem(),
            ca: ca_pem,
        }
    }

    fn try_parse(crt: &str, key: &str, ca: &str) -> Result<Credentials, LoadError> {
        parse(
            crt.as_bytes(),
            key.as_bytes(),
            ca.as_bytes(),
            &crate::demo::provider(),
        )
    }

    #[test]
    fn a_consistent_set_loads() {
        let s = set();
        let creds = try_parse(&s.crt, &s.key, &s.ca).unwrap();
        assert_eq!(creds.leaf.identity, "leaf.test");
        assert_eq!(creds.trust.roots.len(), 1);
    }

    #[test]
    fn every_broken_set_is_refused_with_a_reason() {
        let s = set();
        let other = set();
        let truncated_key = &s.key[..s.key.len() / 2];
        let cases: Vec<(&str, &str, &str, &str)> = vec![
            ("", &s.key, &s.ca, "tls.crt: no CERTIFICATE block"),
            ("garbage", &s.key, &s.ca, "tls.crt: no CERTIFICATE block"),
            (&s.crt, "", &s.ca, "tls.key: no PRIVATE KEY block"),
            (&s.crt, "garbage", &s.ca, "tls.key: no PRIVATE KEY block"),
            (&s.crt, truncated_key, &s.ca, "tls.key: malformed PEM"),
            (&s.crt, &other.key, &s.ca, "tls.key does not belong"),
            (&s.crt, &s.key, "", "ca.crt: no CERTIFICATE block"),
            (
                &s.crt,
                &s.key,
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "ca.crt: certificate #1",
            ),
        ];
        for (crt, key, ca, want) in cases {
            let err = try_parse(crt, key, ca).expect_err(want).to_string();
            assert!(err.starts_with(want), "got {err:?}, want prefix {want:?}");
            assert!(
                !err.contains("PRIVATE KEY-----") && !err.contains(&s.key[30..60]),
                "{err}"
            );
        }
        let bad_der = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let err = try_parse(bad_der, &s.key, &s.ca)
            .expect_err("bad DER")
            .to_string();
        assert!(err.starts_with("tls.crt: unparseable certificate"), "{err}");
    }

    #[test]
    fn a_new_trust_bundle_is_adopted_once_seen_for_the_lag() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (seen for, lag, adopt now?)
        let cases = [
            (s(0), s(0), true),
            (s(5), s(0), true),
            (s(0), s(30), false),
            (ms(29_999), s(30), false),
            (s(30), s(30), true),
            (s(31), s(30), true),
            (s(3600), s(3600), true),
        ];
        for (seen_for, lag, want) in cases {
            assert_eq!(
                adopt_trust_now(t0, t0 + seen_for, lag),
                want,
                "seen for {seen_for:?}, lag {lag:?}"
            );
        }
        // "now" before "first seen" (a monotonic clock never does it) counts as not seen yet.
        assert!(!adopt_trust_now(t0 + s(10), t0, s(1)));
        assert!(adopt_trust_now(t0 + s(10), t0, Duration::ZERO));
    }

    #[test]
    fn roots_are_fingerprinted_once_each() {
        let (s, other) = (set(), set());
        let bundle = format!("{}{}{}", s.ca, other.ca, s.ca);
        let creds = try_parse(&s.crt, &s.key, &bundle).unwrap();
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let want = [
            hex::encode(Sha256::digest(der(&s.ca).as_ref())),
            hex::encode(Sha256::digest(der(&other.ca).as_ref())),
        ];
        assert_eq!(creds.trust.roots, want);
        assert!(creds.trust.roots.iter().all(|f| f.len() == 64));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let s = set();
        let mut blobs: Vec<Vec<u8>> = vec![vec![], vec![0xff; 64], b"-----BEGIN".to_vec()];
        for cut in [1, 10, 27, 28, 100, 200] {
            for pem in [&s.crt, &s.key, &s.ca] {
                blobs.push(pem.as_bytes()[..cut.min(pem.len())].to_vec());
                let mut flipped = pem.as_bytes().to_vec();
                let at = (cut * 7) % flipped.len();
                flipped[at] ^= 0x5a;
                blobs.push(flipped);
            }
        }
        let provider = crate::demo::provider();
        for blob in &blobs {
            let _ = parse(blob, s.key.as_bytes(), s.ca.as_bytes(), &provider);
            let _ = parse(s.crt.as_bytes(), blob, s.ca.as_bytes(), &provider);
            let _ = parse(s.crt.as_bytes(), s.key.as_bytes(), blob, &provider);
        }
    }
}
