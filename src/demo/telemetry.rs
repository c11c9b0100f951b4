//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::{
    future::Future,
    sync::{
        Arc,
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
