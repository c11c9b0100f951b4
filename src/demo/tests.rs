//! End-to-end tests of the demo on loopback: real sockets, real handshakes, and certificate
//! directories laid out the way the kubelet lays out a mounted Secret.

use std::{
    collections::BTreeSet,
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore, pki_types::CertificateDer, pki_types::PrivateKeyDer,
    pki_types::pem::PemObject,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::Instant,
};
use tokio_rustls::TlsConnector;

use super::{
    ClientArgs, ServerArgs,
    client::{self, Target},
    credentials::{self, CA_CRT, Credentials, DATA_LINK, TLS_CRT, TLS_KEY},
    identity::CertSummary,
    server,
    verify::Presented,
};

const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
const IMPOSTOR_ID: &str = "spiffe://evil.example/ns/demo/sa/client";
const RELOAD: Duration = Duration::from_millis(50);

// === PKI fixtures ===

struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA's own certificate: the trust anchor for a root, part of the chain for an intermediate.
    pem: String,
    /// What a leaf's `tls.crt` carries after the leaf itself.
    intermediates: String,
}

struct Leaf {
    crt: String,
    key: String,
    serial: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            params,
            key,
            pem,
            intermediates: String::new(),
        }
    }

    fn intermediate(&self, name: &str) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let pem = params.signed_by(&key, &issuer).unwrap().pem();
        let intermediates = format!("{pem}{}", self.intermediates);
        Self {
            params,
            key,
            pem,
            intermediates,
        }
    }

    /// A workload certificate: the identity as URI SAN, plus `localhost` so the client can verify
    /// it by name, usable for both ends of mTLS like the ones tlsid issues.
    fn issue(&self, identity: &str) -> Leaf {
        self.issue_with_uris(&[identity])
    }

    /// Like [`Ca::issue`] with any number of URI SANs (none: a DNS-only certificate).
    fn issue_with_uris(&self, uris: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for (i, uri) in uris.iter().enumerate() {
            params
                .subject_alt_names
                .insert(i, rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        params.serial_number = Some(rcgen::SerialNumber::from(rand::random::<u64>()));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &rcgen::Issuer::from_params(&self.params, &self.key))
            .unwrap();
        Leaf {
            serial: CertSummary::from_der(cert.der()).unwrap().serial,
            crt: format!("{}{}", cert.pem(), self.intermediates),
            key: key.serialize_pem(),
        }
    }
}

fn creds(leaf: &Leaf, bundle: &str) -> Credentials {
    credentials::parse(
        leaf.crt.as_bytes(),
        leaf.key.as_bytes(),
        bundle.as_bytes(),
        &super::provider(),
    )
    .unwrap()
}

// === A certificate directory as the kubelet writes it ===

/// Mirrors the kubelet's AtomicWriter: each version in a fresh `..<timestamp>` directory,
/// `..data` swapped onto it by renaming a temporary symlink, then the old version deleted.
struct CertDir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    generation: u32,
    current: Option<PathBuf>,
}

impl CertDir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        Self {
            path: tmp.path().to_path_buf(),
            _tmp: tmp,
            generation: 0,
            current: None,
        }
    }

    fn publish(&mut self, crt: &str, key: &str, ca: &str) {
        self.generation += 1;
        let version = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        let version_dir = self.path.join(&version);
        std::fs::create_dir(&version_dir).unwrap();
        for (name, content) in [(TLS_CRT, crt), (TLS_KEY, key), (CA_CRT, ca)] {
            std::fs::write(version_dir.join(name), content).unwrap();
        }
        let tmp_link = self.path.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp_link).unwrap();
        std::fs::rename(&tmp_link, self.path.join(DATA_LINK)).unwrap();
        for name in [TLS_CRT, TLS_KEY, CA_CRT] {
            let link = self.path.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(version_dir) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }

    fn publish_leaf(&mut self, leaf: &Leaf, bundle: &str) {
        self.publish(&leaf.crt, &leaf.key, bundle);
    }
}

// === Captured logs ===

/// The log lines of one test. Tests run on a current-thread runtime, so every task they spawn
/// logs through the thread-local subscriber installed here.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines containing every one of `needles`.
    fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    fn assert_line(&self, needles: &[&str]) -> String {
        self.lines_with(needles)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no log line with {needles:?} in:\n{}", self.text()))
    }
}

// === Running processes ===

struct Running {
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("stops promptly")
            .expect("no panic")
    }

    async fn metrics(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics").await;
        assert_eq!(status, 200);
        body
    }
}

fn stop_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

async fn start_server(dir: &CertDir) -> Running {
    start_server_allowing(dir, &[]).await
}

/// A server with these `--allow-client` patterns.
async fn start_server_allowing(dir: &CertDir, allow: &[&str]) -> Running {
    start_server_with(dir, allow, Duration::ZERO).await
}

/// A server with these `--allow-client` patterns and `--trust-lag`.
async fn start_server_with(dir: &CertDir, allow: &[&str], trust_lag: Duration) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, metrics_addr) = (
        listener.local_addr().unwrap(),
        metrics.local_addr().unwrap(),
    );
    let args = ServerArgs {
        cert_dir: dir.path.clone(),
        listen: addr,
        metrics_listen: metrics_addr,
        reload_interval: RELOAD,
        trust_lag,
        allow_client: allow.iter().map(|p| (*p).to_owned()).collect(),
    };
    let (stop, signal) = stop_signal();
    let task = tokio::spawn(server::serve(args, listener, metrics, signal));
    Running {
        addr,
        metrics: metrics_addr,
        stop: Some(stop),
        task,
    }
}

async fn start_client(dir: &CertDir, server: SocketAddr, count: Option<u64>) -> Running {
    start_client_with(dir, server, count, Duration::ZERO).await
}

/// A client with `--no-reload`.
async fn start_client_no_reload(dir: &CertDir, server: SocketAddr) -> Running {
    start_client_opts(dir, server, None, Duration::ZERO, true).await
}

/// A client with `--trust-lag`.
async fn start_client_with(
    dir: &CertDir,
    server: SocketAddr,
    count: Option<u64>,
    trust_lag: Duration,
) -> Running {
    start_client_opts(dir, server, count, trust_lag, false).await
}

async fn start_client_opts(
    dir: &CertDir,
    server: SocketAddr,
    count: Option<u64>,
    trust_lag: Duration,
    no_reload: bool,
) -> Running {
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let args = ClientArgs {
        cert_dir: dir.path.clone(),
        connect: server.to_string(),
        server_name: Some("localhost".into()),
        interval: Duration::from_millis(20),
        count,
        metrics_listen: metrics_addr,
        reload_interval: RELOAD,
        trust_lag,
        impostor: false,
        no_reload,
    };
    let target = Target::parse(&args.connect, args.server_name.as_deref()).unwrap();
    let (stop, signal) = stop_signal();
    let task = tokio::spawn(client::drive(args, target, metrics, signal));
    Running {
        addr: server,
        metrics: metrics_addr,
        stop: Some(stop),
        task,
    }
}

async fn wait_ready(process: &Running) {
    eventually("/readyz to return 200", || async {
        http_get(process.metrics, "/readyz").await.0 == 200
    })
    .await;
}

fn target(server: SocketAddr) -> Target {
    Target::parse(&server.to_string(), Some("localhost")).unwrap()
}

async fn exchange(
    server: SocketAddr,
    creds: &Credentials,
) -> Result<client::Exchange, client::Failed> {
    client::exchange(&super::provider(), creds, &target(server)).await
}

// === Small helpers ===

/// Poll `check` until it holds; the deadline only bounds a failing test.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of one exact series (`name{labels}`), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The `serial` label of an info-style family.
fn serial_label(metrics: &str, family: &str) -> Option<String> {
    let prefix = format!("{family}{{serial=\"");
    metrics.lines().find_map(|l| {
        l.strip_prefix(&prefix)?
            .split('"')
            .next()
            .map(str::to_owned)
    })
}

/// The `fingerprint` label `tlsid_demo_trusted_root` carries for a root, from its PEM.
fn fingerprint(pem: &str) -> String {
    use sha2::{Digest, Sha256};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    hex::encode(Sha256::digest(der.as_ref()))
}

/// The roots a process reports it verifies peers with, read as the controller reads them.
async fn trusted(process: &Running) -> BTreeSet<String> {
    super::trusted_roots(&process.metrics().await)
}

fn roots(pems: &[&str]) -> BTreeSet<String> {
    pems.iter().map(|pem| fingerprint(pem)).collect()
}

fn handshakes(metrics: &str, role: &str, result: &str) -> f64 {
    sample(
        metrics,
        &format!("tlsid_demo_handshakes_total{{role=\"{role}\",result=\"{result}\"}}"),
    )
}

fn requests(metrics: &str, role: &str, result: &str) -> f64 {
    sample(
        metrics,
        &format!("tlsid_demo_requests_total{{role=\"{role}\",result=\"{result}\"}}"),
    )
}

/// The reply of a completed exchange, which must have been an HTTP response.
fn reply(ok: &client::Exchange) -> &client::Reply {
    ok.reply.as_ref().expect("an HTTP response")
}

/// The JSON body of a demo server's response (`reply` is its printable one-line form).
fn json(reply: &client::Reply) -> serde_json::Value {
    serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {}", reply.text))
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// Send `request` on an established stream and read the whole response (until close_notify).
async fn request_on<S>(tls: &mut S, request: &[u8]) -> io::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tls.write_all(request).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

fn client_config_without_cert(bundle: &str) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A raw exchange with an arbitrary rustls client sending `GET /`: the whole response (head and
/// body) and the TLS version, or the error text.
async fn raw_exchange(
    server: SocketAddr,
    config: ClientConfig,
) -> Result<(String, String), String> {
    raw_request(server, config, GET).await
}

/// Like [`raw_exchange`] with any bytes as the request.
async fn raw_request(
    server: SocketAddr,
    config: ClientConfig,
    request: &[u8],
) -> Result<(String, String), String> {
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let response = request_on(&mut tls, request)
        .await
        .map_err(|e| e.to_string())?;
    let version = format!("{:?}", tls.get_ref().1.protocol_version());
    Ok((response, version))
}

// === The tests ===

#[tokio::test]
async fn mutual_tls_both_ways() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let (server_leaf, client_leaf) = (ca.issue(SERVER_ID), ca.issue(CLIENT_ID));
    let mut dir = CertDir::new();
    dir.publish_leaf(&server_leaf, &ca.pem);
    let server = start_server(&dir).await;
    wait_ready(&server).await;
    assert_eq!(http_get(server.metrics, "/healthz").await.0, 200);

    // The client sees the server's identity; the server's JSON names the client's.
    let ok = exchange(server.addr, &creds(&client_leaf, &ca.pem))
        .await
        .expect("mTLS exchange");
    assert_eq!(ok.peer.identity, SERVER_ID);
    assert_eq!(ok.peer.serial, server_leaf.serial);
    assert_eq!(ok.version, "TLSv1.3");
    assert_eq!(ok.alpn, "http/1.1");
    let got = reply(&ok);
    assert_eq!(got.status, 200);
    assert_eq!(got.decision.as_deref(), Some("allowed"));
    assert_eq!(got.seen_as.as_deref(), Some(CLIENT_ID));
    assert_eq!(
        json(got),
        serde_json::json!({
            "peer": CLIENT_ID,
            "peerSerial": client_leaf.serial,
            "server": SERVER_ID,
            "serverSerial": server_leaf.serial,
            "decision": "allowed",
            "reason": "no --allow-client given: every verified client is allowed",
        })
    );

    let metrics = server.metrics().await;
    assert_eq!(handshakes(&metrics, "server", "success"), 1.0);
    assert_eq!(requests(&metrics, "server", "allowed"), 1.0);
    assert_eq!(
        serial_label(&metrics, "tlsid_demo_certificate_serial_info"),
        Some(server_leaf.serial.clone())
    );
    assert_eq!(
        serial_label(&metrics, "tlsid_demo_peer_certificate_serial_info"),
        Some(client_leaf.serial.clone())
    );
    assert!(
        sample(
            &metrics,
            "tlsid_demo_certificate_expiration_timestamp_seconds"
        ) > 1.7e9
    );
    assert!(
        metrics.contains("tlsid_demo_credential_reloads_total 0"),
        "{metrics}"
    );
    logs.assert_line(&[
        "mTLS handshake ok",
        "role=server",
        "result=ok",
        &format!("peer={CLIENT_ID}"),
        &format!("peer_serial={}", client_leaf.serial),
        &format!("own_serial={}", server_leaf.serial),
        "tls_version=TLSv1.3",
        "alpn=http/1.1",
        "latency_ms=",
    ]);

    // TLS 1.2 is the floor, still mutual.
    let client = creds(&client_leaf, &ca.pem);
    let mut tls12 = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates({
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                .unwrap();
            roots
        })
        .with_client_auth_cert(
            client.certified.cert.clone(),
            PrivateKeyDer::from_pem_slice(client_leaf.key.as_bytes()).unwrap(),
        )
        .unwrap();
    tls12.resumption = rustls::client::Resumption::disabled();
    let (response, version) = raw_exchange(server.addr, tls12)
        .await
        .expect("TLS 1.2 exchange");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains(&format!("\"peer\":\"{CLIENT_ID}\"")),
        "{response}"
    );
    assert_eq!(version, "Some(TLSv1_2)");
    // A client offering no ALPN is served all the same.
    logs.assert_line(&[
        "mTLS handshake ok",
        "role=server",
        "tls_version=TLSv1.2",
        "alpn=-",
    ]);

    // The client loop reports the server's identity the same way, and --count ends it cleanly.
    let client_dir = dir_with(&client_leaf, &ca.pem);
    let looping = start_client(&client_dir, server.addr, Some(2)).await;
    tokio::time::timeout(Duration::from_secs(5), looping.task)
        .await
        .unwrap()
        .unwrap()
        .expect("2 good exchanges");
    logs.assert_line(&[
        "mTLS handshake ok",
        "role=client",
        &format!("peer={SERVER_ID}"),
        &format!("peer_serial={}", server_leaf.serial),
        &format!("own_serial={}", client_leaf.serial),
        "status=200",
        "decision=allowed",
        "reply={\"peer\":",
    ]);
    server.stop().await.unwrap();
    assert!(
        !logs.text().contains("PRIVATE KEY"),
        "key material in the logs"
    );
}

/// Keep the result alive while a process reads it: dropping it deletes the directory.
fn dir_with(leaf: &Leaf, bundle: &str) -> CertDir {
    let mut dir = CertDir::new();
    dir.publish_leaf(leaf, bundle);
    dir
}

#[tokio::test]
async fn chains_through_an_intermediate_verify_against_the_root() {
    let root = Ca::new("root CA");
    let issuing = root.intermediate("issuing CA");
    let (server_leaf, client_leaf) = (issuing.issue(SERVER_ID), issuing.issue(CLIENT_ID));
    let server_dir = dir_with(&server_leaf, &root.pem);
    let server = start_server(&server_dir).await;
    wait_ready(&server).await;
    let ok = exchange(server.addr, &creds(&client_leaf, &root.pem))
        .await
        .expect("mTLS via intermediate");
    assert_eq!(ok.peer.serial, server_leaf.serial);
    assert!(
        reply(&ok).text.contains(&client_leaf.serial),
        "{:?}",
        ok.reply
    );

    // Without its intermediate the client's leaf no longer chains to the root.
    let bare = Leaf {
        crt: client_leaf
            .crt
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap()
            .into(),
        ..client_leaf
    };
    let failed = exchange(server.addr, &creds(&bare, &root.pem))
        .await
        .expect_err("no chain");
    assert!(
        failed.reason.contains("rejected by the server"),
        "{}",
        failed.reason
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_no_reload_client_keeps_its_first_certificate() {
    let ca = Ca::new("cluster CA");
    let (server_v1, client_v1, client_v2) = (
        ca.issue(SERVER_ID),
        ca.issue(CLIENT_ID),
        ca.issue(CLIENT_ID),
    );
    let server_dir = dir_with(&server_v1, &ca.pem);
    let mut client_dir = dir_with(&client_v1, &ca.pem);
    let server = start_server(&server_dir).await;
    wait_ready(&server).await;
    let client = start_client_no_reload(&client_dir, server.addr).await;
    wait_ready(&client).await;
    client_dir.publish_leaf(&client_v2, &ca.pem);
    // Well past the reload interval (a reloading client would have the new one by now), it
    // still presents the first certificate.
    tokio::time::sleep(RELOAD * 5).await;
    let before = handshakes(&client.metrics().await, "client", "success");
    eventually("more exchanges after the files changed", || async {
        handshakes(&client.metrics().await, "client", "success") >= before + 3.0
    })
    .await;
    assert_eq!(
        serial_label(
            &client.metrics().await,
            "tlsid_demo_certificate_serial_info"
        ),
        Some(client_v1.serial.clone())
    );
}

#[tokio::test]
async fn rotation_is_picked_up_without_failures_or_dropped_connections() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let (server_v1, client_v1) = (ca.issue(SERVER_ID), ca.issue(CLIENT_ID));
    let (server_v2, client_v2) = (ca.issue(SERVER_ID), ca.issue(CLIENT_ID));
    let mut server_dir = dir_with(&server_v1, &ca.pem);
    let mut client_dir = dir_with(&client_v1, &ca.pem);
    let server = start_server(&server_dir).await;
    wait_ready(&server).await;
    let client = start_client(&client_dir, server.addr, None).await;
    wait_ready(&client).await;
    eventually("a few exchanges before the rotation", || async {
        handshakes(&client.metrics().await, "client", "success") >= 3.0
    })
    .await;

    // A connection the server accepted before the rotation keeps the credentials it started with.
    let in_flight = TcpStream::connect(server.addr).await.unwrap();
    let in_flight_addr = in_flight.local_addr().unwrap().to_string();
    eventually("the server to accept the in-flight connection", || async {
        !logs
            .lines_with(&["connection accepted", &in_flight_addr])
            .is_empty()
    })
    .await;

    server_dir.publish_leaf(&server_v2, &ca.pem);
    client_dir.publish_leaf(&client_v2, &ca.pem);

    eventually("the server to serve the new certificate", || async {
        serial_label(
            &server.metrics().await,
            "tlsid_demo_certificate_serial_info",
        )
        .as_ref()
            == Some(&server_v2.serial)
    })
    .await;
    let config = client::client_config(
        &super::provider(),
        &creds(&client_v1, &ca.pem),
        Presented::default(),
    )
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(name, in_flight)
        .await
        .expect("in-flight handshake");
    let response = request_on(&mut tls, GET).await.expect("in-flight reply");
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        CertSummary::from_der(&served).unwrap().serial,
        server_v1.serial
    );
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains(&format!("\"serverSerial\":\"{}\"", server_v1.serial)),
        "{response}"
    );

    eventually(
        "the client to present and see the new certificates",
        || async {
            let (client_metrics, server_metrics) = (client.metrics().await, server.metrics().await);
            serial_label(&client_metrics, "tlsid_demo_peer_certificate_serial_info").as_ref()
                == Some(&server_v2.serial)
                && serial_label(&client_metrics, "tlsid_demo_certificate_serial_info").as_ref()
                    == Some(&client_v2.serial)
                && serial_label(&server_metrics, "tlsid_demo_peer_certificate_serial_info").as_ref()
                    == Some(&client_v2.serial)
        },
    )
    .await;
    let before_stop = handshakes(&client.metrics().await, "client", "success");
    eventually("more exchanges after the rotation", || async {
        handshakes(&client.metrics().await, "client", "success") >= before_stop + 3.0
    })
    .await;

    let (client_metrics, server_metrics) = (client.metrics().await, server.metrics().await);
    client.stop().await.expect("client ran clean");
    assert_eq!(
        handshakes(&client_metrics, "client", "failure"),
        0.0,
        "{}",
        logs.text()
    );
    assert_eq!(
        handshakes(&server_metrics, "server", "failure"),
        0.0,
        "{}",
        logs.text()
    );
    assert_eq!(
        sample(&server_metrics, "tlsid_demo_credential_reloads_total"),
        1.0
    );
    assert_eq!(
        sample(&client_metrics, "tlsid_demo_credential_reloads_total"),
        1.0
    );
    logs.assert_line(&[&format!(
        "credentials reloaded: {} \u{2192} {}",
        server_v1.serial, server_v2.serial
    )]);
    logs.assert_line(&[&format!(
        "credentials reloaded: {} \u{2192} {}",
        client_v1.serial, client_v2.serial
    )]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn impostors_and_anonymous_clients_are_rejected() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let other_ca = Ca::new("someone else's CA");
    let server_leaf = ca.issue(SERVER_ID);
    let server_dir = dir_with(&server_leaf, &ca.pem);
    let server = start_server(&server_dir).await;
    wait_ready(&server).await;

    // An impostor that trusts our server but whose certificate comes from another CA.
    let impostor = other_ca.issue(IMPOSTOR_ID);
    let failed = exchange(server.addr, &creds(&impostor, &ca.pem))
        .await
        .expect_err("impostor must be rejected");
    assert!(
        failed.reason.contains("rejected by the server"),
        "{}",
        failed.reason
    );
    logs.assert_line(&[
        "mTLS handshake failed",
        "role=server",
        "result=failed",
        "invalid peer certificate: UnknownIssuer",
        &format!("peer={IMPOSTOR_ID}"),
        &format!("peer_serial={}", impostor.serial),
    ]);

    // The client loop logs it too, and --count turns it into an error exit.
    let impostor_dir = dir_with(&impostor, &ca.pem);
    let looping = start_client(&impostor_dir, server.addr, Some(1)).await;
    let result = tokio::time::timeout(Duration::from_secs(5), looping.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "an impostor run must fail");
    logs.assert_line(&[
        "mTLS handshake failed",
        "role=client",
        "rejected by the server: received fatal alert",
    ]);

    // No client certificate at all.
    let anonymous = raw_exchange(server.addr, client_config_without_cert(&ca.pem)).await;
    assert!(anonymous.is_err(), "anonymous client got {anonymous:?}");
    logs.assert_line(&[
        "mTLS handshake failed",
        "role=server",
        "peer sent no certificates",
    ]);

    let metrics = server.metrics().await;
    assert_eq!(handshakes(&metrics, "server", "failure"), 3.0);
    assert_eq!(handshakes(&metrics, "server", "success"), 0.0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_client_refuses_a_server_it_cannot_verify() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let other_ca = Ca::new("someone else's CA");
    let server_leaf = ca.issue(SERVER_ID);
    let server_dir = dir_with(&server_leaf, &ca.pem);
    let server = start_server(&server_dir).await;
    wait_ready(&server).await;
    let client_creds = creds(&ca.issue(CLIENT_ID), &ca.pem);

    let wrong_name = Target::parse(&server.addr.to_string(), Some("other.example")).unwrap();
    let failed = client::exchange(&super::provider(), &client_creds, &wrong_name)
        .await
        .unwrap_err();
    assert!(
        failed
            .reason
            .contains("not valid for name \"other.example\""),
        "{}",
        failed.reason
    );
    assert_eq!(
        failed.presented.map(|p| p.identity).as_deref(),
        Some(SERVER_ID)
    );

    let untrusting = creds(&ca.issue(CLIENT_ID), &other_ca.pem);
    let failed = exchange(server.addr, &untrusting).await.unwrap_err();
    assert!(failed.reason.contains("UnknownIssuer"), "{}", failed.reason);
    // The server sees the client's alert.
    eventually("the server to log the client's alert", || async {
        !logs
            .lines_with(&["role=server", "result=failed", "received fatal alert"])
            .is_empty()
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_broken_rotation_keeps_the_last_good_credentials() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let (v1, v2, v3) = (
        ca.issue(SERVER_ID),
        ca.issue(SERVER_ID),
        ca.issue(SERVER_ID),
    );
    let mut dir = dir_with(&v1, &ca.pem);
    let server = start_server(&dir).await;
    wait_ready(&server).await;
    let client_creds = creds(&ca.issue(CLIENT_ID), &ca.pem);
    let reload_failures = || async {
        sample(
            &server.metrics().await,
            "tlsid_demo_credential_reload_failures_total",
        )
    };

    // A new certificate with a garbage key.
    dir.publish(&v2.crt, "-----BEGIN PRIVATE KEY-----\ngarbage\n", &ca.pem);
    eventually("the broken set to be refused", || async {
        reload_failures().await == 1.0
    })
    .await;
    logs.assert_line(&[
        "ignoring new credentials",
        "tls.key: malformed PEM",
        &format!("serial={}", v1.serial),
    ]);
    let ok = exchange(server.addr, &client_creds)
        .await
        .expect("still serving");
    assert_eq!(ok.peer.serial, v1.serial);

    // A well-formed key that belongs to another certificate.
    dir.publish(&v2.crt, &v3.key, &ca.pem);
    eventually("the mismatched set to be refused", || async {
        reload_failures().await == 2.0
    })
    .await;
    logs.assert_line(&[
        "ignoring new credentials",
        "tls.key does not belong to the certificate",
    ]);
    assert_eq!(
        exchange(server.addr, &client_creds)
            .await
            .expect("still serving")
            .peer
            .serial,
        v1.serial
    );

    // The next good set is picked up.
    dir.publish_leaf(&v3, &ca.pem);
    eventually("the good set to be served", || async {
        serial_label(
            &server.metrics().await,
            "tlsid_demo_certificate_serial_info",
        )
        .as_ref()
            == Some(&v3.serial)
    })
    .await;
    assert_eq!(
        exchange(server.addr, &client_creds)
            .await
            .expect("serving v3")
            .peer
            .serial,
        v3.serial
    );
    let metrics = server.metrics().await;
    assert_eq!(handshakes(&metrics, "server", "failure"), 0.0);
    assert_eq!(sample(&metrics, "tlsid_demo_credential_reloads_total"), 1.0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_servers_trust_bundle_reloads_too() {
    let (logs, _guard) = Logs::capture();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let server_leaf = old_ca.issue(SERVER_ID);
    let both = format!("{}{}", old_ca.pem, new_ca.pem);
    let mut dir = dir_with(&server_leaf, &old_ca.pem);
    let server = start_server(&dir).await;
    wait_ready(&server).await;
    let new_client = creds(&new_ca.issue(CLIENT_ID), &both);
    exchange(server.addr, &new_client)
        .await
        .expect_err("not trusted yet");

    // CA rotation, step one: the server trusts both roots; its own certificate is unchanged.
    dir.publish_leaf(&server_leaf, &both);
    eventually("the new bundle to be loaded", || async {
        sample(
            &server.metrics().await,
            "tlsid_demo_credential_reloads_total",
        ) == 1.0
    })
    .await;
    logs.assert_line(&["credentials reloaded", "roots=2"]);
    assert_eq!(trusted(&server).await, roots(&[&old_ca.pem, &new_ca.pem]));
    let ok = exchange(server.addr, &new_client)
        .await
        .expect("trusted after the bundle reload");
    assert_eq!(ok.peer.serial, server_leaf.serial);

    // CA rotation, last step: the old root is dropped, and so is its series.
    dir.publish_leaf(&server_leaf, &new_ca.pem);
    eventually("the old root to disappear", || async {
        trusted(&server).await == roots(&[&new_ca.pem])
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn with_a_trust_lag_the_new_bundle_waits_but_the_leaf_does_not() {
    const LAG: Duration = Duration::from_secs(2);
    let (logs, _guard) = Logs::capture();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (v1, v2) = (old_ca.issue(SERVER_ID), old_ca.issue(SERVER_ID));
    let both = format!("{}{}", old_ca.pem, new_ca.pem);
    let mut dir = dir_with(&v1, &old_ca.pem);
    let server = start_server_with(&dir, &[], LAG).await;
    wait_ready(&server).await;
    assert_eq!(
        trusted(&server).await,
        roots(&[&old_ca.pem]),
        "the first bundle is used at once"
    );
    let new_client = creds(&new_ca.issue(CLIENT_ID), &both);

    // A rotated leaf and a new bundle in one Secret update: the leaf is served at once ...
    dir.publish_leaf(&v2, &both);
    let published = Instant::now();
    eventually("the rotated leaf to be served", || async {
        serial_label(
            &server.metrics().await,
            "tlsid_demo_certificate_serial_info",
        )
        .as_ref()
            == Some(&v2.serial)
    })
    .await;
    logs.assert_line(&["new trust bundle seen", "roots=1", "new_roots=2"]);
    // ... while peers are still verified with the old bundle.
    exchange(server.addr, &new_client)
        .await
        .expect_err("the new root is not trusted before the lag");
    assert_eq!(trusted(&server).await, roots(&[&old_ca.pem]));
    assert!(
        published.elapsed() < LAG,
        "the checks above ran within the lag, so they prove the delay"
    );

    // Once the new bundle has been on disk for the lag, it is adopted without another update.
    eventually("the new bundle to be adopted", || async {
        trusted(&server).await == roots(&[&old_ca.pem, &new_ca.pem])
    })
    .await;
    assert!(
        published.elapsed() >= LAG,
        "adopted after {:?}",
        published.elapsed()
    );
    logs.assert_line(&["trust bundle adopted after --trust-lag", "roots=2"]);
    let ok = exchange(server.addr, &new_client)
        .await
        .expect("trusted after the lag");
    assert_eq!(ok.peer.serial, v2.serial);
    let metrics = server.metrics().await;
    assert_eq!(sample(&metrics, "tlsid_demo_credential_reloads_total"), 2.0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_lagging_client_keeps_trusting_the_old_bundle_until_the_lag_has_passed() {
    const LAG: Duration = Duration::from_secs(1);
    // Captured even if unused elsewhere: tracing caches per call site whether anyone listens, and
    // a test without a subscriber that logs a line first can hide it from the test that asserts it.
    let (logs, _guard) = Logs::capture();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let both = format!("{}{}", old_ca.pem, new_ca.pem);
    let server_dir = dir_with(&old_ca.issue(SERVER_ID), &both);
    let server = start_server(&server_dir).await;
    wait_ready(&server).await;
    let client_leaf = old_ca.issue(CLIENT_ID);
    let mut client_dir = dir_with(&client_leaf, &old_ca.pem);
    let client = start_client_with(&client_dir, server.addr, None, LAG).await;
    wait_ready(&client).await;
    assert_eq!(trusted(&client).await, roots(&[&old_ca.pem]));

    client_dir.publish_leaf(&client_leaf, &both);
    let published = Instant::now();
    // The client keeps connecting (its own certificate is unchanged) with the old bundle.
    tokio::time::sleep(LAG / 2).await;
    assert_eq!(trusted(&client).await, roots(&[&old_ca.pem]));
    assert!(published.elapsed() < LAG);
    eventually("the client to adopt the new bundle", || async {
        trusted(&client).await == roots(&[&old_ca.pem, &new_ca.pem])
    })
    .await;
    assert!(published.elapsed() >= LAG);
    logs.assert_line(&["new trust bundle seen", "roots=1", "new_roots=2"]);
    logs.assert_line(&["trust bundle adopted after --trust-lag", "roots=2"]);
    let metrics = client.metrics().await;
    assert_eq!(handshakes(&metrics, "client", "failure"), 0.0);
    client.stop().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn waits_for_credentials_and_drains_on_shutdown() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let mut dir = CertDir::new();
    let server = start_server(&dir).await;
    eventually("the server to report missing credentials", || async {
        !logs
            .lines_with(&["waiting for valid credentials"])
            .is_empty()
    })
    .await;
    let (status, body) = http_get(server.metrics, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: no valid credentials loaded yet\n")
    );

    dir.publish_leaf(&ca.issue(SERVER_ID), &ca.pem);
    wait_ready(&server).await;

    // Shutdown stops accepting but lets an accepted connection finish.
    let in_flight = TcpStream::connect(server.addr).await.unwrap();
    let in_flight_addr = in_flight.local_addr().unwrap().to_string();
    eventually("the server to accept the connection", || async {
        !logs
            .lines_with(&["connection accepted", &in_flight_addr])
            .is_empty()
    })
    .await;
    let (addr, Running { stop, task, .. }) = (server.addr, server);
    let _ = stop.unwrap().send(());
    eventually("new connections to be refused", || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    let config = client::client_config(
        &super::provider(),
        &creds(&ca.issue(CLIENT_ID), &ca.pem),
        Presented::default(),
    )
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(config)
        .connect(name, in_flight)
        .await
        .expect("in-flight handshake");
    let response = request_on(&mut tls, GET).await.expect("in-flight reply");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains(&format!("\"peer\":\"{CLIENT_ID}\"")),
        "{response}"
    );
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    logs.assert_line(&["shutting down", "in_flight=1"]);
}

// === HTTP and authorization ===

const SHOP_CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/shopper";
const SHOPPING_CLIENT: &str = "spiffe://cluster.local/ns/shopping/sa/shopper";
const SHOP_PATTERN: &str = "spiffe://cluster.local/ns/shop/*";

#[tokio::test]
async fn allow_client_authorizes_after_authenticating() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let server_leaf = ca.issue(SERVER_ID);
    let server_dir = dir_with(&server_leaf, &ca.pem);
    let server = start_server_allowing(&server_dir, &[SHOP_PATTERN]).await;
    wait_ready(&server).await;
    logs.assert_line(&["serving mTLS", &format!("allow_client={SHOP_PATTERN}")]);

    // In the namespace: allowed, and told which rule matched.
    let shopper = ca.issue(SHOP_CLIENT);
    let ok = exchange(server.addr, &creds(&shopper, &ca.pem))
        .await
        .expect("allowed exchange");
    let got = reply(&ok);
    assert_eq!(
        (got.status, got.decision.as_deref()),
        (200, Some("allowed"))
    );
    assert_eq!(
        got.json_reason.as_deref(),
        Some(format!("URI SAN {SHOP_CLIENT} matches --allow-client {SHOP_PATTERN}").as_str())
    );

    // Another namespace (whose name merely starts the same): authenticated, then refused.
    let outsider = ca.issue(SHOPPING_CLIENT);
    let ok = exchange(server.addr, &creds(&outsider, &ca.pem))
        .await
        .expect("a refusal is a completed exchange, not a failed handshake");
    let got = reply(&ok);
    assert_eq!(
        (got.status, got.decision.as_deref()),
        (403, Some("refused"))
    );
    assert_eq!(ok.peer.identity, SERVER_ID);
    let body = json(got);
    assert_eq!(body["peer"], SHOPPING_CLIENT);
    assert_eq!(body["peerSerial"], outsider.serial.as_str());
    assert_eq!(body["server"], SERVER_ID);
    assert_eq!(
        body["reason"],
        format!("no URI SAN matches --allow-client {SHOP_PATTERN}")
    );
    logs.assert_line(&[
        "WARN",
        "request refused",
        "role=server",
        "result=refused",
        &format!("peer={SHOPPING_CLIENT}"),
        &format!("peer_serial={}", outsider.serial),
        &format!("reason=no URI SAN matches --allow-client {SHOP_PATTERN}"),
        "status=403",
    ]);

    // No URI SAN at all: refused, with that reason.
    let dns_only = ca.issue_with_uris(&[]);
    let ok = exchange(server.addr, &creds(&dns_only, &ca.pem))
        .await
        .expect("DNS-only exchange");
    let got = reply(&ok);
    assert_eq!(got.status, 403);
    assert!(
        got.reason().contains("has no URI SAN (SPIFFE ID)"),
        "{}",
        got.reason()
    );
    assert_eq!(got.seen_as.as_deref(), Some("localhost"));

    // Several URI SANs: one in the namespace is enough.
    let several = ca.issue_with_uris(&[SHOPPING_CLIENT, SHOP_CLIENT]);
    let ok = exchange(server.addr, &creds(&several, &ca.pem))
        .await
        .expect("exchange");
    assert_eq!(reply(&ok).status, 200);

    // The handshakes all succeeded: authorization is a later, separate decision.
    let metrics = server.metrics().await;
    assert_eq!(handshakes(&metrics, "server", "success"), 4.0);
    assert_eq!(handshakes(&metrics, "server", "failure"), 0.0);
    assert_eq!(requests(&metrics, "server", "allowed"), 2.0);
    assert_eq!(requests(&metrics, "server", "refused"), 2.0);

    // The client loop: a WARN line with the server's reason, not a handshake failure; --count
    // still makes it an error.
    let outsider_dir = dir_with(&outsider, &ca.pem);
    let looping = start_client(&outsider_dir, server.addr, Some(2)).await;
    let result = tokio::time::timeout(Duration::from_secs(5), looping.task)
        .await
        .unwrap()
        .unwrap();
    let err = result.expect_err("a refused run must fail");
    assert!(err.to_string().contains("2 were refused"), "{err}");
    logs.assert_line(&[
        "WARN",
        "request refused",
        "role=client",
        "result=refused",
        &format!("peer={SERVER_ID}"),
        &format!("reason=no URI SAN matches --allow-client {SHOP_PATTERN}"),
        "status=403",
    ]);
    logs.assert_line(&["demo client stopped", "failures=0", "refusals=2"]);
    assert!(
        logs.lines_with(&["role=client", "mTLS handshake failed"])
            .is_empty(),
        "{}",
        logs.text()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_client_is_ready_and_counts_no_failed_handshake() {
    let ca = Ca::new("cluster CA");
    let server_dir = dir_with(&ca.issue(SERVER_ID), &ca.pem);
    let server =
        start_server_allowing(&server_dir, &["spiffe://cluster.local/ns/elsewhere/*"]).await;
    wait_ready(&server).await;
    let client_dir = dir_with(&ca.issue(CLIENT_ID), &ca.pem);
    let client = start_client(&client_dir, server.addr, None).await;
    wait_ready(&client).await;
    eventually("a few refusals", || async {
        requests(&client.metrics().await, "client", "refused") >= 2.0
    })
    .await;
    let metrics = client.metrics().await;
    assert!(
        handshakes(&metrics, "client", "success") >= 2.0,
        "{metrics}"
    );
    assert_eq!(handshakes(&metrics, "client", "failure"), 0.0, "{metrics}");
    assert_eq!(requests(&metrics, "client", "allowed"), 0.0, "{metrics}");
    client
        .stop()
        .await
        .expect("without --count, refusals are not an error");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn star_allows_every_verified_client_but_not_an_unverified_one() {
    let ca = Ca::new("cluster CA");
    let other_ca = Ca::new("someone else's CA");
    let server_dir = dir_with(&ca.issue(SERVER_ID), &ca.pem);
    let server = start_server_allowing(&server_dir, &["*"]).await;
    wait_ready(&server).await;
    for leaf in [ca.issue("spiffe://anywhere/x"), ca.issue_with_uris(&[])] {
        let ok = exchange(server.addr, &creds(&leaf, &ca.pem))
            .await
            .expect("exchange");
        assert_eq!(reply(&ok).status, 200);
        assert_eq!(
            reply(&ok).json_reason.as_deref(),
            Some("--allow-client * allows every verified client")
        );
    }
    let failed = exchange(server.addr, &creds(&other_ca.issue(CLIENT_ID), &ca.pem))
        .await
        .expect_err("authentication comes first");
    assert!(
        failed.reason.contains("rejected by the server"),
        "{}",
        failed.reason
    );
    server.stop().await.unwrap();
}

/// A client certificate presented over a plain rustls client, for sending arbitrary bytes.
fn raw_client_config(leaf: &Leaf, bundle: &str) -> ClientConfig {
    let client = creds(leaf, bundle);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::PROTOCOL_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            client.certified.cert.clone(),
            PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
        )
        .unwrap()
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_not_a_handshake_failure() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new("cluster CA");
    let server_dir = dir_with(&ca.issue(SERVER_ID), &ca.pem);
    let server = start_server(&server_dir).await;
    wait_ready(&server).await;
    let client_leaf = ca.issue(CLIENT_ID);

    // What the previous demo client did, and a hand-typed line: not HTTP/1.1.
    for (request, why) in [
        (&b"hello\r\n\r\n"[..], "is not METHOD TARGET HTTP/1.1"),
        (b"GET / HTTP/1.1\r\n\r\n", "exactly one Host header"),
    ] {
        let (response, _) = raw_request(
            server.addr,
            raw_client_config(&client_leaf, &ca.pem),
            request,
        )
        .await
        .expect("a response");
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
        assert!(
            response.contains("Content-Type: application/json\r\n"),
            "{response}"
        );
        assert!(response.contains(why), "{response}");
        assert!(
            response.contains(&format!("\"peer\":\"{CLIENT_ID}\"")),
            "{response}"
        );
    }
    logs.assert_line(&[
        "WARN",
        "bad request",
        "role=server",
        "result=error",
        &format!("peer={CLIENT_ID}"),
        "status=400",
        "is not METHOD TARGET",
    ]);

    // A head larger than the limit.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (response, _) = raw_request(
        server.addr,
        raw_client_config(&client_leaf, &ca.pem),
        huge.as_bytes(),
    )
    .await
    .expect("a response");
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );

    // HEAD: the headers alone.
    let (response, _) = raw_request(
        server.addr,
        raw_client_config(&client_leaf, &ca.pem),
        b"HEAD /anything HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .expect("a response");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\n"), "{response}");

    let metrics = server.metrics().await;
    assert_eq!(handshakes(&metrics, "server", "success"), 4.0);
    assert_eq!(handshakes(&metrics, "server", "failure"), 0.0);
    assert_eq!(requests(&metrics, "server", "error"), 3.0);
    assert_eq!(requests(&metrics, "server", "allowed"), 1.0);
    server.stop().await.unwrap();
}

/// `curl` must be on PATH: a missing curl fails this test rather than skipping it.
async fn curl(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl must be installed to run this test")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn plain_curl_gets_the_json() {
    let ca = Ca::new("cluster CA");
    let server_dir = dir_with(&ca.issue(SERVER_ID), &ca.pem);
    let server = start_server_allowing(&server_dir, &[SHOP_PATTERN]).await;
    wait_ready(&server).await;

    for (identity, status, decision) in [
        (SHOP_CLIENT, "200", "allowed"),
        (SHOPPING_CLIENT, "403", "refused"),
    ] {
        let leaf = ca.issue(identity);
        let client_dir = dir_with(&leaf, &ca.pem);
        let file = |name: &str| client_dir.path.join(name).display().to_string();
        let url = format!("https://localhost:{}/", server.addr.port());
        // `-v` for the ALPN line, `-i` for the status line and headers; nothing changes the protocol.
        let out = curl(vec![
            "-sS".into(),
            "-v".into(),
            "-i".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            file(CA_CRT),
            "--cert".into(),
            file(TLS_CRT),
            "--key".into(),
            file(TLS_KEY),
            url,
        ])
        .await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "curl failed: {stderr}");
        assert!(
            stdout.starts_with(&format!("HTTP/1.1 {status} ")),
            "{stdout}\n{stderr}"
        );
        assert!(
            stdout
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{stdout}"
        );
        let body = stdout.split("\r\n\r\n").nth(1).unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(body["peer"], identity);
        assert_eq!(body["peerSerial"], leaf.serial.as_str());
        assert_eq!(body["server"], SERVER_ID);
        assert_eq!(body["decision"], decision);
        // curl offers h2 and http/1.1 when it can; the server picks http/1.1. A curl without
        // HTTP/2 support may offer http/1.1 alone, which is the same answer.
        if stderr.contains("ALPN") {
            assert!(
                stderr.contains("server accepted http/1.1")
                    || stderr.contains("server accepted to use http/1.1"),
                "{stderr}"
            );
        }
    }
    server.stop().await.unwrap();
}
