//! The TlsIdentity admission webhook: refuses, at `kubectl apply` time, names the namespace may
//! not claim, with the same pure check ([`crate::tenancy`]) the controller re-runs before signing.
//!
//! Why a webhook and not a ValidatingAdmissionPolicy: a policy binding evaluates its CEL once per
//! parameter object and requires every evaluation to pass, so "permitted by the built-in rule *or*
//! by any one of several TlsIdentityPolicies" cannot be expressed. The built-in rule alone could
//! be, but a VAP enforcing it would refuse every granted name.
//!
//! The webhook's serving certificate is a tlsid identity like any other: the leader keeps a
//! TlsIdentity named after the webhook's Service in the install's namespace (its Service names,
//! server usage), which tlsid issues and rotates; every replica watches its Secret, re-reads it
//! when it rotates, and serves (reads only). The leader keeps the ValidatingWebhookConfiguration's
//! `caBundle` equal to the CA's trust bundle. Both write only when something differs. (The chart
//! cannot create that TlsIdentity itself: Helm maps every manifest before installing the CRD
//! that defines it.)

use super::{Context, leader::Role};
use crate::api::{TlsIdentity, TlsIdentitySpec};
use axum::{
    Router, body::Bytes, extract::State, http::StatusCode, response::IntoResponse, routing::post,
};
use futures::StreamExt;
use k8s_openapi::api::{
    admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::Secret,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use rustls::{server::ResolvesServerCert, sign::CertifiedKey};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};
use tokio::{net::TcpListener, sync::mpsc};
use tracing::{debug, info, warn};

/// Largest admission request read: a TlsIdentity (and its old version) is a few KiB; the schema
/// bounds every list in it.
const MAX_BODY: usize = 1024 * 1024;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once (handshaking or served). The apiserver keeps a few; the cap bounds
/// what anyone else who can reach the port may hold (file descriptors, memory).
const MAX_CONNECTIONS: usize = 64;
/// A connection that sends nothing for this long is closed (as Go servers' IdleTimeout does): a
/// stalled client cannot hold a slot for longer, and the apiserver opens a new connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a review waits for the namespace to appear in the cache (it was just created).
const NAMESPACE_WAIT: Duration = Duration::from_secs(3);
/// How often the leader compares the webhook configuration's caBundle with the CA.
const CA_BUNDLE_RECHECK: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    /// The webhook's Service (in the install's namespace); also the name of its TlsIdentity, whose
    /// Secret is `<service>-tls`.
    pub service: String,
    /// The ValidatingWebhookConfiguration whose caBundle the leader keeps current.
    pub configuration: Option<String>,
    /// IP SANs of the serving certificate, for an apiserver that calls the webhook by address
    /// (a development or test setup; they need a TlsIdentityPolicy granting them).
    pub ip_addresses: Vec<std::net::IpAddr>,
}

impl WebhookConfig {
    pub fn secret(&self) -> String {
        format!("{}-tls", self.service)
    }
}

/// Serve until aborted.
pub async fn serve(cfg: WebhookConfig, ctx: Arc<Context>) {
    let cert = Arc::new(ServingCert::default());
    // Aborted with this task.
    let _children = AbortOnDrop(vec![
        tokio::spawn(watch_serving_cert(ctx.clone(), cfg.secret(), cert.clone())),
        tokio::spawn(keep_leader_objects(ctx.clone(), cfg.clone())),
    ]);
    let tcp = match TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            // A replica that cannot serve admission must not look ready: stop, and let the
            // kubelet restart it (and report why).
            tracing::error!(addr = %cfg.listen, error = %e, "cannot listen for admission reviews; exiting");
            std::process::exit(1);
        }
    };
    info!(addr = %cfg.listen, service = cfg.service, "serving the TlsIdentity admission webhook");
    let mut tls_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(cert);
    tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TlsListener::start(tcp, Arc::new(tls_config));
    let app = Router::new()
        .route("/validate", post(review))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admission webhook server stopped; exiting");
        std::process::exit(1);
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

// === the review ===

async fn review(State(ctx): State<Arc<Context>>, body: Bytes) -> axum::response::Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected an AdmissionReview (JSON)",
        )
            .into_response();
    };
    let request = &body["request"];
    let uid = request["uid"].clone();
    let (allowed, reason, message) = decide(&ctx, request).await;
    if reason == "NotReady" {
        ctx.metrics
            .admission_reviews
            .get_or_create(&super::metrics::ReasonLabels {
                reason: reason.into(),
            })
            .inc();
        // Not a decision: the apiserver applies the webhook's failurePolicy.
        return (StatusCode::SERVICE_UNAVAILABLE, message.unwrap_or_default()).into_response();
    }
    ctx.metrics
        .admission_reviews
        .get_or_create(&super::metrics::ReasonLabels {
            reason: reason.into(),
        })
        .inc();
    let mut response = json!({"uid": uid, "allowed": allowed});
    if let Some(message) = message {
        debug!(reason, message, "admission review refused");
        response["status"] = json!({"code": 403, "reason": "Forbidden", "message": message});
    }
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        review.to_string(),
    )
        .into_response()
}

/// `(allowed, reason for the metric, message when refused)`.
async fn decide(ctx: &Context, request: &Value) -> (bool, &'static str, Option<String>) {
    let Ok(identity) = serde_json::from_value::<TlsIdentity>(request["object"].clone()) else {
        // The schema admitted it; the controller reports what it cannot read on the object.
        return (true, "Unreadable", None);
    };
    let labels = identity.metadata.labels.clone().unwrap_or_default();
    if crate::api::install_of(&labels) != ctx.config.install {
        return (true, "OtherInstall", None);
    }
    if request["operation"] == "UPDATE"
        && let Ok(old) = serde_json::from_value::<TlsIdentity>(request["oldObject"].clone())
        && crate::api::install_of(&old.metadata.labels.clone().unwrap_or_default())
            == ctx.config.install
        && same_names(&old.spec, &identity.spec)
    {
        // Names unchanged: metadata and other edits are never blocked by a grant that went away.
        return (true, "Allowed", None);
    }
    let ns = request["namespace"]
        .as_str()
        .or(identity.metadata.namespace.as_deref())
        .unwrap_or_default()
        .to_string();
    let name = identity.metadata.name.clone().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + NAMESPACE_WAIT;
    loop {
        match ctx.names.check(&ns, &identity.spec) {
            Ok(Ok(())) => return (true, "Allowed", None),
            Ok(Err(refusal)) => {
                return (
                    false,
                    "NotPermitted",
                    Some(format!("TlsIdentity {ns}/{name}: {refusal}")),
                );
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(why) => {
                return (
                    false,
                    "NotReady",
                    Some(format!(
                        "tlsid cannot check the names of TlsIdentity {ns}/{name} yet ({why:?}); try again in a moment"
                    )),
                );
            }
        }
    }
}

/// Whether two specs ask for the same names.
fn same_names(a: &TlsIdentitySpec, b: &TlsIdentitySpec) -> bool {
    a.common_name == b.common_name
        && a.dns_names == b.dns_names
        && a.ip_addresses == b.ip_addresses
        && a.uris == b.uris
        && a.spiffe == b.spiffe
}

// === the serving certificate ===

#[derive(Debug, Default)]
struct ServingCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServingCert {
    fn loaded(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

fn certified_key(secret: &Secret) -> Result<CertifiedKey, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let data = crate::resources::secret_data(secret);
    let crt = data.tls_crt.ok_or("no tls.crt")?;
    let key = data.tls_key.ok_or("no tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("tls.key: {e}"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| e.to_string())
}

/// Keep the serving certificate equal to the Secret's (a rotation is picked up within a watch
/// event; a Secret that does not parse leaves the last good one in place).
async fn watch_serving_cert(ctx: Arc<Context>, name: String, cert: Arc<ServingCert>) {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config)
        .backoff(super::WatchBackoff::new())
        .applied_objects()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(secret) => match certified_key(&secret) {
                Ok(key) => {
                    let first = !cert.loaded();
                    *cert.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
                    ctx.webhook_ready
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    info!(secret = name, first, "webhook serving certificate loaded");
                }
                Err(why) => {
                    warn!(
                        secret = name,
                        error = why,
                        "webhook serving certificate unusable; keeping the last good one"
                    )
                }
            },
            Err(e) => debug!(error = %e, "webhook Secret watch failed; retrying"),
        }
    }
}

// === what the leader keeps: the webhook's identity, the caBundle ===

/// While leading: the webhook's TlsIdentity exists as wanted, and every webhook of the
/// configuration trusts the CA's bundle. On every replica: whether it does, for readiness (a
/// replica is ready only once the apiserver can verify the webhook, so `helm install --wait`
/// returns with admission working).
async fn keep_leader_objects(ctx: Arc<Context>, cfg: WebhookConfig) {
    let configurations = Api::<ValidatingWebhookConfiguration>::all(ctx.client.clone());
    let identities = Api::<TlsIdentity>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    loop {
        let leading = ctx.leadership.role() == Role::Leader;
        if leading {
            match sync_identity(&ctx, &identities, &cfg).await {
                Ok(true) => info!(identity = cfg.service, "webhook TlsIdentity applied"),
                Ok(false) => {}
                Err(e) => {
                    warn!(identity = cfg.service, error = %e, "cannot apply the webhook TlsIdentity yet")
                }
            }
        }
        let ca_now = ctx.ca();
        let trusted = match (&cfg.configuration, ca_now.clone()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(name), Some(ca)) => {
                match sync_ca_bundle(
                    &ctx,
                    &configurations,
                    name,
                    ca.bundle_pem().as_bytes(),
                    leading,
                )
                .await
                {
                    Ok(BundleState::InPlace) => true,
                    Ok(BundleState::Updated) => {
                        info!(
                            configuration = name,
                            "webhook caBundle updated to the CA's trust bundle"
                        );
                        true
                    }
                    Ok(BundleState::Stale) => false,
                    Err(e) => {
                        debug!(configuration = name, error = %e, "cannot check the webhook caBundle");
                        false
                    }
                }
            }
        };
        ctx.webhook_trusted
            .store(trusted, std::sync::atomic::Ordering::Relaxed);
        // Which bundle the configuration was last seen to hold (a CA rollover's Publish waits
        // for the apiserver to trust the next root too).
        *ctx.webhook_bundle
            .write()
            .unwrap_or_else(|e| e.into_inner()) = ca_now
            .filter(|_| trusted)
            .map(|ca| crate::pki::bundle_digest(ca.bundle_pem().as_bytes()));
        // Quickly while something is missing (an install coming up), at leisure afterwards.
        let wait = if trusted {
            CA_BUNDLE_RECHECK
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(wait).await;
    }
}

enum BundleState {
    InPlace,
    Updated,
    /// Differs, and this replica may not write.
    Stale,
}

/// The webhook's own identity: its Service's names, server usage only.
pub fn desired_identity(
    cfg: &WebhookConfig,
    namespace: &str,
    install: &str,
    cluster_domain: &str,
) -> TlsIdentity {
    let svc = format!("{}.{namespace}.svc", cfg.service);
    let spec = TlsIdentitySpec {
        dns_names: vec![svc.clone(), format!("{svc}.{cluster_domain}")],
        ip_addresses: cfg.ip_addresses.iter().map(ToString::to_string).collect(),
        usages: Some(vec![crate::api::Usage::Server]),
        ..Default::default()
    };
    let mut id = TlsIdentity::new(&cfg.service, spec);
    id.metadata.namespace = Some(namespace.into());
    let mut labels = std::collections::BTreeMap::from([(
        "app.kubernetes.io/component".to_string(),
        "webhook".to_string(),
    )]);
    if install != crate::api::DEFAULT_INSTALL {
        labels.insert(crate::api::INSTALL_LABEL.into(), install.into());
    }
    id.metadata.labels = Some(labels);
    id
}

async fn sync_identity(
    ctx: &Context,
    api: &Api<TlsIdentity>,
    cfg: &WebhookConfig,
) -> Result<bool, kube::Error> {
    let want = desired_identity(
        cfg,
        &ctx.config.namespace,
        &ctx.config.install,
        &ctx.config.names.cluster_domain,
    );
    // Only the fields this controller applies: another manager's additions (an admin's
    // `duration`) are not ours to fight over, and must not make every round a write.
    let owned = |s: &TlsIdentitySpec| {
        (
            s.dns_names.clone(),
            s.ip_addresses.clone(),
            s.usages.clone(),
        )
    };
    if let Some(current) = api.get_opt(&cfg.service).await?
        && owned(&current.spec) == owned(&want.spec)
        && want
            .metadata
            .labels
            .iter()
            .flatten()
            .all(|(k, v)| current.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
    {
        return Ok(false);
    }
    if ctx.leadership.role() != Role::Leader {
        return Ok(false);
    }
    let mut body = serde_json::to_value(&want).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = "tlsid.dev/v1alpha1".into();
    body["kind"] = "TlsIdentity".into();
    api.patch(
        &cfg.service,
        &PatchParams::apply(crate::api::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    ctx.metrics.wrote("identity");
    Ok(true)
}

async fn sync_ca_bundle(
    ctx: &Context,
    api: &Api<ValidatingWebhookConfiguration>,
    name: &str,
    bundle: &[u8],
    may_write: bool,
) -> Result<BundleState, kube::Error> {
    let Some(current) = api.get_opt(name).await? else {
        // No configuration (not installed, or deleted): nothing to keep, nothing to wait for.
        return Ok(BundleState::InPlace);
    };
    let mut ops = vec![json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": current.metadata.resource_version,
    })];
    for (i, hook) in current.webhooks.iter().flatten().enumerate() {
        if hook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            != Some(bundle)
        {
            use base64::Engine as _;
            ops.push(json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": base64::engine::general_purpose::STANDARD.encode(bundle),
            }));
        }
    }
    if ops.len() == 1 {
        return Ok(BundleState::InPlace);
    }
    if !may_write || ctx.leadership.role() != Role::Leader {
        return Ok(BundleState::Stale);
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(crate::api::FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Json::<()>(patch),
    )
    .await?;
    ctx.metrics.wrote("webhookconfiguration");
    Ok(BundleState::Updated)
}

// === TLS listener for axum ===

/// Accepts TCP connections and completes TLS handshakes off the accept loop (a slow client never
/// holds up the others), handing finished ones to axum.
struct TlsListener {
    ready: mpsc::Receiver<(Bounded, SocketAddr)>,
    local: SocketAddr,
}

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// A served connection: holds one of [`MAX_CONNECTIONS`] slots while open; reading ends (EOF,
/// so hyper closes it) after [`IDLE_TIMEOUT`] without a byte from the client.
struct Bounded {
    io: Tls,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Bounded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::{future::Future, task::Poll};
        match std::pin::Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(done) => {
                let next = tokio::time::Instant::now() + IDLE_TIMEOUT;
                self.idle.as_mut().reset(next);
                Poll::Ready(done)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl TlsListener {
    fn start(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(MAX_CONNECTIONS);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                // Wait for a free slot before accepting: excess clients queue in the kernel.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(io)) => {
                            let conn = Bounded {
                                io,
                                idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
                                _slot: slot,
                            };
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "webhook TLS handshake failed"),
                        Err(_) => debug!(%peer, "webhook TLS handshake timed out"),
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unchanged_ignores_everything_but_names() {
        let a: TlsIdentitySpec =
            serde_json::from_value(json!({"dnsNames": ["a.b.svc"], "duration": "1h"})).unwrap();
        let mut b = a.clone();
        b.duration = None;
        assert!(same_names(&a, &b));
        b.uris.push("spiffe://x/y".into());
        assert!(!same_names(&a, &b));
        let mut c = a.clone();
        c.spiffe = Some(crate::api::SpiffeSpec {
            service_account: "web".into(),
        });
        assert!(!same_names(&a, &c));
    }
}
