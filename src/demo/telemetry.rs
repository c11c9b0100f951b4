//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

use super::identity::CertSummary;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    role: &'static str,
    result: &'static str,
}

/// The authorization outcome of one HTTP exchange over an established mTLS connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestResult {
    /// Answered (server: the client passed `--allow-client`; client: a 2xx response).
    Allowed,
    /// Refused with a 403: the client is authenticated but not authorized.
    Refused,
    /// Neither: a malformed or timed-out request (server), or an unexpected status or an
    /// unparseable response (client).
    Error,
}

impl RequestResult {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RequestResult::Allowed => "allowed",
            RequestResult::Refused => "refused",
            RequestResult::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    serial: String,
    identity: String,
}

/// The family the CA rollover reads back with [`trusted_roots`]: which roots a demo pod has
/// actually loaded and verifies its peers with.
pub const TRUSTED_ROOT_METRIC: &str = "tlsid_demo_trusted_root";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RootLabels {
    role: &'static str,
    /// Lowercase hex SHA-256 of the root certificate's DER.
    fingerprint: String,
}

/// Everything the process reports. Metrics are atomics; the registry is only read after setup.
#[derive(Debug)]
pub(crate) struct Telemetry {
    role: Role,
    registry: Registry,
    handshakes: Family<HandshakeLabels, Counter>,
    requests: Family<HandshakeLabels, Counter>,
    handshake_duration: Family<RoleLabels, Histogram>,
    expiration: Gauge,
    serial_info: Family<CertLabels, Gauge>,
    peer_serial_info: Family<CertLabels, Gauge>,
    trusted_roots: Family<RootLabels, Gauge>,
    /// The fingerprints `trusted_roots` holds a series for, to remove exactly the stale ones.
    trusted_root_set: Mutex<BTreeSet<String>>,
    connect_failures: Counter,
    reloads: Counter,
    reload_failures: Counter,
    ready: AtomicBool,
}

fn handshake_histogram() -> Histogram {
    // 0.5 ms .. ~4 s: in-cluster handshakes are milliseconds; seconds mean something is wrong.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Telemetry {
    pub(crate) fn new(role: Role) -> Self {
        let mut registry = Registry::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tlsid_demo_handshakes",
            "mTLS handshakes by role and result (success or failure)",
            handshakes.clone(),
        );
        let requests = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tlsid_demo_requests",
            "HTTP requests over completed mTLS handshakes, by role and authorization result \
             (allowed, refused, error); a refused request is not a failed handshake",
            requests.clone(),
        );
        let handshake_duration = Family::<RoleLabels, Histogram>::new_with_constructor(
            handshake_histogram as fn() -> Histogram,
        );
        registry.register(
            "tlsid_demo_handshake_duration_seconds",
            "Time to complete an mTLS handshake, successful or not",
            handshake_duration.clone(),
        );
        let expiration = Gauge::default();
        registry.register(
            "tlsid_demo_certificate_expiration_timestamp_seconds",
            "notAfter of the certificate this process presents, as Unix seconds",
            expiration.clone(),
        );
        let serial_info = Family::<CertLabels, Gauge>::default();
        registry.register(
            "tlsid_demo_certificate_serial_info",
            "Always 1, labelled with the serial (hex) and identity of the certificate this process presents",
            serial_info.clone(),
        );
        let peer_serial_info = Family::<CertLabels, Gauge>::default();
        registry.register(
            "tlsid_demo_peer_certificate_serial_info",
            "Always 1, labelled with the serial (hex) and identity the last successfully verified peer presented",
            peer_serial_info.clone(),
        );
        let trusted_roots = Family::<RootLabels, Gauge>::default();
        registry.register(
            TRUSTED_ROOT_METRIC,
            "Always 1, one series per root certificate (fingerprint: hex SHA-256 of its DER) in the \
             trust bundle this process verifies its peers with now",
            trusted_roots.clone(),
        );
        let connect_failures = Counter::default();
        if role == Role::Client {
            registry.register(
                "tlsid_demo_connect_failures",
                "Attempts that failed before a handshake could start (server unreachable)",
                connect_failures.clone(),
            );
        }
        let reloads = Counter::default();
        registry.register(
            "tlsid_demo_credential_reloads",
            "Times rotated credentials were picked up from the certificate directory",
            reloads.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "tlsid_demo_credential_reload_failures",
            "Credential sets refused as invalid (the previous ones stay in use)",
            reload_failures.clone(),
        );
        Self {
            role,
            registry,
            handshakes,
            requests,
            handshake_duration,
            expiration,
            serial_info,
            peer_serial_info,
            trusted_roots,
            trusted_root_set: Mutex::new(BTreeSet::new()),
            connect_failures,
            reloads,
            reload_failures,
            ready: AtomicBool::new(false),
        }
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }

    pub(crate) fn handshake(&self, success: bool, took: Duration) {
        let result = if success { "success" } else { "failure" };
        let role = self.role.as_str();
        self.handshakes
            .get_or_create(&HandshakeLabels { role, result })
            .inc();
        self.handshake_duration
            .get_or_create(&RoleLabels { role })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn request(&self, result: RequestResult) {
        let role = self.role.as_str();
        self.requests
            .get_or_create(&HandshakeLabels {
                role,
                result: result.as_str(),
            })
            .inc();
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.inc();
    }

    pub(crate) fn peer_verified(&self, peer: &CertSummary) {
        set_only(&self.peer_serial_info, peer);
    }

    pub(crate) fn credentials_loaded(&self, leaf: &CertSummary) {
        self.expiration.set(leaf.not_after);
        set_only(&self.serial_info, leaf);
    }

    pub(crate) fn credentials_reloaded(&self, leaf: &CertSummary) {
        self.credentials_loaded(leaf);
        self.reloads.inc();
    }

    /// The trust bundle peers are verified with from now on, as root fingerprints. New series are
    /// added before stale ones are removed, so a scrape in between never sees an empty bundle.
    pub(crate) fn trust_loaded(&self, roots: &[String]) {
        let role = self.role.as_str();
        let labels = |fingerprint: &String| RootLabels {
            role,
            fingerprint: fingerprint.clone(),
        };
        let now: BTreeSet<String> = roots.iter().cloned().collect();
        // A poisoned lock still holds a complete set (each update is one assignment).
        let mut loaded = match self.trusted_root_set.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for fingerprint in &now {
            self.trusted_roots
                .get_or_create(&labels(fingerprint))
                .set(1);
        }
        for stale in loaded.difference(&now) {
            self.trusted_roots.remove(&labels(stale));
        }
        *loaded = now;
    }

    pub(crate) fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// An info-style family holds exactly one series: the certificate in use now.
fn set_only(family: &Family<CertLabels, Gauge>, cert: &CertSummary) {
    let labels = CertLabels {
        serial: cert.serial.clone(),
        identity: cert.identity.clone(),
    };
    family.clear();
    family.get_or_create(&labels).set(1);
}

// === Reading it back ===

/// Longest exposition line [`trusted_roots`] looks at; a series of ours is far shorter.
const MAX_LINE_LEN: usize = 4 * 1024;
/// Most fingerprints [`trusted_roots`] returns: a bound on what a scraped pod can make us hold.
const MAX_TRUSTED_ROOTS: usize = 1_000;

/// The roots a demo pod verifies its peers with, read from its `/metrics` body: the `fingerprint`
/// label (64 lowercase hex digits) of every `tlsid_demo_trusted_root{…} 1` sample, whatever its
/// `role`.
///
/// Total on untrusted input: other metrics, comments, samples with any other value, and malformed
/// lines are ignored, as are lines over 4 KiB; reading stops once 1,000 roots were found.
pub fn trusted_roots(metrics_text: &str) -> BTreeSet<String> {
    let mut roots = BTreeSet::new();
    for line in metrics_text.lines() {
        if roots.len() >= MAX_TRUSTED_ROOTS {
            break;
        }
        if line.len() > MAX_LINE_LEN {
            continue;
        }
        if let Some(fingerprint) = trusted_root_sample(line) {
            roots.insert(fingerprint);
        }
    }
    roots
}

/// The fingerprint of one `tlsid_demo_trusted_root{…} 1 [timestamp]` line, if it is one.
fn trusted_root_sample(line: &str) -> Option<String> {
    let rest = line.strip_prefix(TRUSTED_ROOT_METRIC)?.strip_prefix('{')?;
    let (labels, rest) = label_set(rest)?;
    let mut fields = rest.strip_prefix([' ', '\t'])?.split_ascii_whitespace();
    let value: f64 = fields.next()?.parse().ok()?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<f64>().ok()?;
    }
    if value != 1.0 || fields.next().is_some() {
        return None;
    }
    let mut fingerprints = labels
        .into_iter()
        .filter(|(name, _)| *name == "fingerprint");
    let fingerprint = fingerprints.next()?.1;
    let well_formed = fingerprint.len() == 64
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (well_formed && fingerprints.next().is_none()).then_some(fingerprint)
}

/// The labels of a sample, from just after `{`: the pairs and what follows the closing `}`.
fn label_set(mut rest: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_len);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let mut chars = after.strip_prefix("=\"")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name, value));
        rest = &after["=\"".len() + end + 1..];
        // A comma separates pairs; one before the closing brace is tolerated.
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return None;
        }
    }
}

// === HTTP ===

/// Serve the endpoints until `stop` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(telemetry);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    match telemetry.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot encode metrics\n".to_string(),
        ),
    }
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    if telemetry.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        let why = match telemetry.role() {
            Role::Server => "not ready: no valid credentials loaded yet\n",
            Role::Client => "not ready: no completed mTLS exchange (HTTP response) yet\n",
        };
        (StatusCode::SERVICE_UNAVAILABLE, why)
    }
}

/// Run `work` with this role's `/metrics`, `/healthz` and `/readyz` served on `metrics`, then stop
/// the endpoint and return `work`'s result. An endpoint failure is logged, never masks `work`'s.
pub(crate) async fn with_endpoint<F, Fut>(
    role: Role,
    metrics: TcpListener,
    work: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Arc<Telemetry>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = Arc::new(Telemetry::new(role));
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(serve(
        metrics,
        telemetry.clone(),
        super::server::wait_for_stop(http_stopped),
    ));
    let result = work(telemetry).await;
    let _ = stop_http.send(true);
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics endpoint failed"),
        Err(e) => tracing::warn!(error = %e, "metrics endpoint task failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn fp(n: usize) -> String {
        format!("{n:064x}")
    }

    #[test]
    fn trusted_roots_reads_only_well_formed_samples_of_one() {
        let upper = A.to_uppercase();
        let cases: Vec<(String, Option<&str>)> = vec![
            (
                format!(r#"tlsid_demo_trusted_root{{role="server",fingerprint="{A}"}} 1"#),
                Some(A),
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}",role="client"}} 1"#),
                Some(A),
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} 1"#),
                Some(A),
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}",}} 1"#),
                Some(A),
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{role="ser\"v\\er",fingerprint="{A}"}} 1"#),
                Some(A),
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} 1.0"#),
                Some(A),
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} 1 1700000000"#),
                Some(A),
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}}   1  "#),
                Some(A),
            ),
            (
                format!("tlsid_demo_trusted_root{{fingerprint=\"{A}\"}} 1\r"),
                Some(A),
            ),
            // Other values.
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} 0"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} 2"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} NaN"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} "#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}}"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} 1 x"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"}} 1 1 1"#),
                None,
            ),
            // Other metrics and comments.
            (
                format!(r#"tlsid_demo_trusted_roots{{fingerprint="{A}"}} 1"#),
                None,
            ),
            (
                format!(r#"other_trusted_root{{fingerprint="{A}"}} 1"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_certificate_serial_info{{serial="{A}"}} 1"#),
                None,
            ),
            (
                format!(r#"# tlsid_demo_trusted_root{{fingerprint="{A}"}} 1"#),
                None,
            ),
            (
                format!(r#" tlsid_demo_trusted_root{{fingerprint="{A}"}} 1"#),
                None,
            ),
            ("# TYPE tlsid_demo_trusted_root gauge".into(), None),
            ("tlsid_demo_trusted_root 1".into(), None),
            // Malformed labels and fingerprints.
            ("tlsid_demo_trusted_root{} 1".into(), None),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}" 1"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}}} 1"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint={A}}} 1"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}"role="x"}} 1"#),
                None,
            ),
            (format!(r#"tlsid_demo_trusted_root{{="{A}"}} 1"#), None),
            (
                format!(r#"tlsid_demo_trusted_root{{role="\x",fingerprint="{A}"}} 1"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}",fingerprint="{B}"}} 1"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{upper}"}} 1"#),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{}"}} 1"#, &A[1..]),
                None,
            ),
            (
                format!(r#"tlsid_demo_trusted_root{{fingerprint="{A}0"}} 1"#),
                None,
            ),
            (r#"tlsid_demo_trusted_root{fingerprint="ÿ"} 1"#.into(), None),
            ("tlsid_demo_trusted_root{fingerprint=\"".into(), None),
            ("tlsid_demo_trusted_root{".into(), None),
            (String::new(), None),
        ];
        for (line, want) in cases {
            let got = trusted_roots(&line);
            let want: BTreeSet<String> = want.into_iter().map(str::to_owned).collect();
            assert_eq!(got, want, "{line:?}");
        }
    }

    #[test]
    fn trusted_roots_is_bounded() {
        let sample = |fingerprint: &str| {
            format!("tlsid_demo_trusted_root{{role=\"server\",fingerprint=\"{fingerprint}\"}} 1\n")
        };
        let padded = format!(
            "tlsid_demo_trusted_root{{pad=\"{}\",fingerprint=\"{A}\"}} 1\n",
            "x".repeat(MAX_LINE_LEN)
        );
        let body = format!("{padded}{}", sample(B));
        assert_eq!(trusted_roots(&body), BTreeSet::from([B.to_owned()]));

        let body: String = (0..MAX_TRUSTED_ROOTS + 5).map(|n| sample(&fp(n))).collect();
        let roots = trusted_roots(&body);
        assert_eq!(roots.len(), MAX_TRUSTED_ROOTS);
        assert!(roots.contains(&fp(MAX_TRUSTED_ROOTS - 1)));
        assert!(!roots.contains(&fp(MAX_TRUSTED_ROOTS)));
    }

    #[test]
    fn the_encoded_trust_bundle_reads_back_and_follows_reloads() {
        for role in [Role::Server, Role::Client] {
            let telemetry = Telemetry::new(role);
            assert!(trusted_roots(&telemetry.encode().unwrap()).is_empty());

            telemetry.trust_loaded(&[A.to_owned(), B.to_owned()]);
            let body = telemetry.encode().unwrap();
            assert!(
                body.contains(&format!(
                    "tlsid_demo_trusted_root{{role=\"{}\",fingerprint=\"{A}\"}} 1\n",
                    role.as_str()
                )),
                "{body}"
            );
            assert_eq!(
                trusted_roots(&body),
                BTreeSet::from([A.to_owned(), B.to_owned()])
            );

            // A reload drops the roots no longer in the bundle.
            telemetry.trust_loaded(&[B.to_owned(), fp(7)]);
            let body = telemetry.encode().unwrap();
            assert_eq!(trusted_roots(&body), BTreeSet::from([B.to_owned(), fp(7)]));
            assert!(!body.contains(A), "{body}");
        }
    }
}
