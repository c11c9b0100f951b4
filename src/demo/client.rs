//! `tlsid demo client`: connect to the demo server on an interval, send `GET /` over mTLS, and
//! report each exchange: the handshake, and the server's authorization decision (200 or 403).

use std::{future::Future, pin::pin, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, client::Resumption, crypto::CryptoProvider, pki_types::ServerName,
    sign::SingleCertAndKey,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{Instant, timeout},
};
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use super::{
    ClientArgs, IO_TIMEOUT, PROTOCOL_VERSIONS,
    credentials::{CredentialStore, Credentials},
    failure_reason,
    http::{self, Response},
    identity::{CertSummary, NONE, printable, printable_up_to},
    millis, negotiated,
    telemetry::{self, RequestResult, Role, Telemetry},
    verify::{ObservingServerVerifier, Presented},
};

/// Where to connect and which name the server's certificate must carry.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub addr: String,
    pub server_name: ServerName<'static>,
}

impl Target {
    pub(crate) fn parse(connect: &str, server_name: Option<&str>) -> anyhow::Result<Self> {
        let (host, port) = connect
            .rsplit_once(':')
            .with_context(|| format!("--connect {connect:?} is not host:port"))?;
        port.parse::<u16>()
            .with_context(|| format!("--connect {connect:?}: invalid port {port:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("--connect {connect:?}: missing host");
        }
        let name = server_name.unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned()).with_context(|| {
            format!("{name:?} is not a valid DNS name or IP address to verify the server against")
        })?;
        Ok(Self {
            addr: connect.to_owned(),
            server_name,
        })
    }
}

pub(crate) async fn run(
    args: ClientArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let target = Target::parse(&args.connect, args.server_name.as_deref())?;
    let metrics = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {}", args.metrics_listen))?;
    drive(args, target, metrics, shutdown).await
}

/// The client on an already-bound metrics socket (tests bind port 0 and need to know the port).
pub(crate) async fn drive(
    args: ClientArgs,
    target: Target,
    metrics: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    telemetry::with_endpoint(Role::Client, metrics, |telemetry| {
        connect_until(args, target, telemetry, shutdown)
    })
    .await
}

async fn connect_until(
    args: ClientArgs,
    target: Target,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = pin!(shutdown);
    let provider = super::provider();
    let store = tokio::select! {
        store = Source::load(&args, &provider, &telemetry) => store?,
        () = &mut shutdown => return Ok(()),
    };
    info!(
        server = %target.addr,
        server_name = %target.server_name.to_str(),
        interval_ms = millis(args.interval),
        "connecting to {} every {:?}",
        target.addr,
        args.interval,
    );

    let (mut attempts, mut failures, mut refusals) = (0_u64, 0_u64, 0_u64);
    loop {
        // An attempt in progress is allowed to finish (every step has a timeout), so shutdown is
        // only observed between attempts.
        let creds = store.current().await;
        attempts += 1;
        let outcome = exchange_and_report(&provider, &creds, &target, &telemetry).await;
        // Ready once an HTTP response of any status came back over mTLS: even a 403 proves both
        // certificates were accepted; authorization is the server's policy, not our health.
        if outcome.answered() {
            telemetry.set_ready();
        }
        match outcome {
            Outcome::Allowed => {}
            Outcome::Refused => refusals += 1,
            Outcome::HttpError | Outcome::Failed => failures += 1,
        }
        if args.count.is_some_and(|count| attempts >= count) {
            break;
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(args.interval) => {}
        }
    }
    info!(attempts, failures, refusals, "demo client stopped");
    if args.count.is_some() && failures + refusals > 0 {
        bail!(
            "{failures} of {attempts} mTLS exchanges with {} failed and {refusals} were refused",
            target.addr
        );
    }
    Ok(())
}

/// Where each attempt's credentials come from: the mounted Secret, or a fixed set: (`--impostor`)
/// from a throwaway CA, or (`--no-reload`) the mounted files as they were at start.
enum Source {
    Mounted(Box<CredentialStore>),
    Impostor(Arc<Credentials>),
}

impl Source {
    async fn load(
        args: &ClientArgs,
        provider: &Arc<CryptoProvider>,
        telemetry: &Arc<Telemetry>,
    ) -> anyhow::Result<Self> {
        if !args.impostor {
            let store = CredentialStore::wait_for_initial(
                args.cert_dir.clone(),
                provider.clone(),
                args.reload_interval,
                args.trust_lag,
                telemetry.clone(),
            )
            .await;
            if args.no_reload {
                let creds = store.current().await;
                warn!(
                    serial = %creds.leaf.serial,
                    not_after = %creds.leaf.not_after_rfc3339(),
                    "no-reload mode: credentials loaded once and never re-read; only a restart brings new ones",
                );
                return Ok(Self::Impostor(creds));
            }
            return Ok(Self::Mounted(Box::new(store)));
        }
        // Only the trust bundle is wanted, and it may appear after the pod starts.
        let path = args.cert_dir.join(super::credentials::CA_CRT);
        let mut warned = false;
        let ca = loop {
            match tokio::fs::read(&path).await {
                Ok(ca) => break ca,
                Err(e) if !warned => {
                    warn!(path = %path.display(), error = %e, "waiting for the trust bundle");
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(args.reload_interval.max(Duration::from_millis(100))).await;
        };
        let (crt, key) = impostor_certificate().context("cannot make the impostor certificate")?;
        let creds = super::credentials::parse(crt.as_bytes(), key.as_bytes(), &ca, provider)
            .context("impostor credentials")?;
        warn!(
            identity = %creds.leaf.identity,
            serial = %creds.leaf.serial,
            trust_bundle = %path.display(),
            "impostor mode: presenting a certificate from a throwaway CA (not tlsid's); \
             the server should reject every handshake",
        );
        telemetry.credentials_loaded(&creds.leaf);
        telemetry.trust_loaded(&creds.trust.roots);
        Ok(Self::Impostor(Arc::new(creds)))
    }

    async fn current(&self) -> Arc<Credentials> {
        match self {
            Self::Mounted(store) => store.current().await,
            Self::Impostor(creds) => creds.clone(),
        }
    }
}

/// A self-signed CA that exists only in this process, and a client certificate it signed: as
/// well-formed as a tlsid one, but from an issuer no tlsid trust bundle contains. PEM (cert, key).
fn impostor_certificate() -> Result<(String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "tlsid demo impostor CA (throwaway)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::minutes(1);
    ca.not_after = now + time::Duration::days(1);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name.push(DnType::CommonName, "impostor");
    leaf.subject_alt_names = vec![SanType::URI(
        "spiffe://impostor.invalid/demo-client".try_into()?,
    )];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.not_before = ca.not_before;
    leaf.not_after = ca.not_after;
    let crt = leaf.signed_by(&key, &Issuer::new(ca, ca_key))?.pem();
    Ok((crt, key.serialize_pem()))
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A 2xx response: authenticated and authorized.
    Allowed,
    /// A 403: the handshake succeeded, the server's `--allow-client` refused us.
    Refused,
    /// The handshake succeeded but the response was another status, or not HTTP at all.
    HttpError,
    /// No mTLS exchange: unreachable, handshake failed, or rejected by the server's verifier.
    Failed,
}

impl Outcome {
    /// Whether the server answered with an HTTP response (of any status).
    fn answered(self) -> bool {
        matches!(self, Self::Allowed | Self::Refused | Self::HttpError)
    }
}

/// One attempt, logged and counted.
async fn exchange_and_report(
    provider: &Arc<CryptoProvider>,
    creds: &Credentials,
    target: &Target,
    telemetry: &Telemetry,
) -> Outcome {
    let own = &creds.leaf;
    match exchange(provider, creds, target).await {
        Ok(ok) => {
            // The handshake itself succeeded whatever the server then decided.
            telemetry.handshake(true, ok.took);
            telemetry.peer_verified(&ok.peer);
            let reply = match &ok.reply {
                Ok(reply) => reply,
                Err(reason) => {
                    telemetry.request(RequestResult::Error);
                    warn!(
                        role = %Role::Client.as_str(),
                        result = %"error",
                        reason = %reason,
                        peer = %ok.peer.identity,
                        peer_serial = %ok.peer.serial,
                        own_serial = %own.serial,
                        tls_version = %ok.version,
                        status = %NONE,
                        latency_ms = millis(ok.took),
                        server = %target.addr,
                        "request failed",
                    );
                    // Counted as answered only if it was HTTP; this was not.
                    return Outcome::Failed;
                }
            };
            let outcome = reply.outcome();
            match outcome {
                Outcome::Allowed => {
                    telemetry.request(RequestResult::Allowed);
                    info!(
                        role = %Role::Client.as_str(),
                        result = %"ok",
                        peer = %ok.peer.identity,
                        peer_serial = %ok.peer.serial,
                        own_serial = %own.serial,
                        tls_version = %ok.version,
                        cipher = %ok.cipher,
                        alpn = %ok.alpn,
                        latency_ms = millis(ok.took),
                        server = %target.addr,
                        status = reply.status,
                        decision = %reply.decision.as_deref().unwrap_or(NONE),
                        reply = %reply.text,
                        "mTLS handshake ok",
                    );
                }
                Outcome::Refused => {
                    telemetry.request(RequestResult::Refused);
                    warn!(
                        role = %Role::Client.as_str(),
                        result = %"refused",
                        peer = %ok.peer.identity,
                        peer_serial = %ok.peer.serial,
                        reason = %reply.reason(),
                        own_serial = %own.serial,
                        tls_version = %ok.version,
                        latency_ms = millis(ok.took),
                        server = %target.addr,
                        status = reply.status,
                        decision = %reply.decision.as_deref().unwrap_or(NONE),
                        "request refused",
                    );
                }
                Outcome::HttpError | Outcome::Failed => {
                    telemetry.request(RequestResult::Error);
                    warn!(
                        role = %Role::Client.as_str(),
                        result = %"error",
                        reason = %format_args!("HTTP status {}: {}", reply.status, reply.reason()),
                        peer = %ok.peer.identity,
                        peer_serial = %ok.peer.serial,
                        own_serial = %own.serial,
                        tls_version = %ok.version,
                        status = reply.status,
                        latency_ms = millis(ok.took),
                        server = %target.addr,
                        "request failed",
                    );
                }
            }
            outcome
        }
        Err(failed) => {
            match failed.took {
                Some(took) => telemetry.handshake(false, took),
                None => telemetry.connect_failed(),
            }
            let peer = failed.presented.as_ref();
            warn!(
                role = %Role::Client.as_str(),
                result = %"failed",
                reason = %failed.reason,
                peer = %peer.map_or(NONE, |p| p.identity.as_str()),
                peer_serial = %peer.map_or(NONE, |p| p.serial.as_str()),
                own_serial = %own.serial,
                tls_version = %NONE,
                latency_ms = millis(failed.took.unwrap_or_default()),
                server = %target.addr,
                "mTLS handshake failed",
            );
            Outcome::Failed
        }
    }
}

/// A completed exchange: the server proved its identity and accepted ours.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub peer: CertSummary,
    pub version: &'static str,
    pub cipher: String,
    pub alpn: String,
    /// The server's HTTP response, or why what it sent is not one.
    pub reply: Result<Reply, String>,
    pub took: Duration,
}

/// The server's response as the client reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: u16,
    /// The body on one printable line (the tlsid server's JSON, or another server's text).
    pub text: String,
    /// `decision` of the tlsid server's JSON body; `None` for other servers.
    pub decision: Option<String>,
    /// `reason` (or `error`) of the tlsid server's JSON body.
    pub json_reason: Option<String>,
    /// `peer` of the tlsid server's JSON body: who the server says we are.
    pub seen_as: Option<String>,
}

impl Reply {
    pub(crate) fn from_response(response: &Response) -> Self {
        let body = String::from_utf8_lossy(&response.body);
        let json = serde_json::from_str::<serde_json::Value>(&body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(printable)
        };
        Self {
            status: response.status,
            text: printable_up_to(body.trim(), 1024),
            decision: field("decision"),
            json_reason: field("reason").or_else(|| field("error")),
            seen_as: field("peer"),
        }
    }

    /// Any 2xx is an answer (servers other than tlsid's reply with text); 403 is a refusal.
    pub(crate) fn outcome(&self) -> Outcome {
        match self.status {
            200..=299 => Outcome::Allowed,
            403 => Outcome::Refused,
            _ => Outcome::HttpError,
        }
    }

    /// The server's reason, else its body.
    pub(crate) fn reason(&self) -> &str {
        self.json_reason.as_deref().unwrap_or(&self.text)
    }
}

#[derive(Debug)]
pub(crate) struct Failed {
    pub reason: String,
    /// What the server presented, if it got that far (verified or not).
    pub presented: Option<CertSummary>,
    /// Time spent in the TLS handshake; `None` if it never started (TCP connect failed).
    pub took: Option<Duration>,
}

/// Built per attempt around the shared credentials; see `server_config` for why.
pub(crate) fn client_config(
    provider: &Arc<CryptoProvider>,
    creds: &Credentials,
    presented: Presented,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = Arc::new(ObservingServerVerifier {
        inner: creds.trust.server_verifier.clone(),
        presented,
    });
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        // "dangerous" only because the verifier is custom: it is webpki's, wrapped to observe.
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(creds.certified.clone())));
    // A resumed session would show the server's certificate from the first handshake forever,
    // hiding exactly the rotation this demo exists to show.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![http::ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Connect, handshake, send `GET /`, read the response.
pub(crate) async fn exchange(
    provider: &Arc<CryptoProvider>,
    creds: &Credentials,
    target: &Target,
) -> Result<Exchange, Failed> {
    let presented = Presented::default();
    let config = client_config(provider, creds, presented.clone()).map_err(|e| Failed {
        reason: format!("cannot build the TLS configuration: {e}"),
        presented: None,
        took: None,
    })?;
    let tcp = match timeout(IO_TIMEOUT, TcpStream::connect(&target.addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(Failed {
                reason: format!("cannot connect: {e}"),
                presented: None,
                took: None,
            });
        }
        Err(_) => {
            return Err(Failed {
                reason: "cannot connect: timed out".into(),
                presented: None,
                took: None,
            });
        }
    };
    let _ = tcp.set_nodelay(true);

    let started = Instant::now();
    let fail = |reason: String| Failed {
        reason,
        presented: presented.summary(),
        took: Some(started.elapsed()),
    };
    let mut tls = match timeout(
        IO_TIMEOUT,
        TlsConnector::from(config).connect(target.server_name.clone(), tcp),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(fail(failure_reason(&e))),
        Err(_) => return Err(fail("handshake timed out".into())),
    };

    // In TLS 1.3 our side of the handshake ends before the server has checked our certificate, so
    // only its response (or its alert) says whether we were accepted: the response is part of the
    // check. A server rejecting us may close before reading the request, so a failed write is not
    // conclusive either: the read below reports the alert.
    let host = match target.server_name.to_str() {
        ip6 if ip6.contains(':') => format!("[{ip6}]"),
        name => name.into_owned(),
    };
    let _ = timeout(IO_TIMEOUT, tls.write_all(&http::request(&host))).await;
    let mut received = Vec::new();
    let response = timeout(IO_TIMEOUT, async {
        let mut buf = [0_u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => return Ok(http::parse_response(&received, true)),
                Ok(n) => {
                    received.extend_from_slice(buf.get(..n).unwrap_or_default());
                    match http::parse_response(&received, false) {
                        Ok(None) => {}
                        done => return Ok(done),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let reply = match response {
        Ok(Ok(Ok(Some(response)))) => Ok(Reply::from_response(&response)),
        Ok(Ok(Ok(None))) => Err("incomplete response".to_owned()), // only before eof; not reached
        Ok(Ok(Err(_))) if received.is_empty() => {
            return Err(fail(
                "the server closed the connection without a reply".into(),
            ));
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => {
            if let Some(alert @ rustls::Error::AlertReceived(_)) = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Err(fail(format!("rejected by the server: {alert}")));
            }
            if received.is_empty() {
                return Err(fail(failure_reason(&e)));
            }
            // Data came, so the server accepted our certificate; the response is what broke.
            Err(format!(
                "response cut short ({} bytes): {}",
                received.len(),
                failure_reason(&e)
            ))
        }
        Err(_) if received.is_empty() => return Err(fail("no reply from the server".into())),
        Err(_) => Err(format!(
            "incomplete response within {}s ({} bytes)",
            IO_TIMEOUT.as_secs(),
            received.len()
        )),
    };
    let took = started.elapsed();
    let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;

    let (_, conn) = tls.get_ref();
    let (version, cipher) = negotiated(conn);
    let alpn = conn.alpn_protocol().map_or_else(
        || NONE.to_owned(),
        |p| printable(&String::from_utf8_lossy(p)),
    );
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| CertSummary::from_der_lossy(c))
        .ok_or_else(|| fail("the server presented no certificate".into()))?;
    Ok(Exchange {
        peer,
        version,
        cipher,
        alpn,
        reply,
        took,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("demo-server.demo.svc:8443", None).unwrap();
        assert_eq!(t.addr, "demo-server.demo.svc:8443");
        assert_eq!(
            t.server_name,
            ServerName::try_from("demo-server.demo.svc").unwrap()
        );
        let t = Target::parse("127.0.0.1:8443", Some("localhost")).unwrap();
        assert_eq!(t.server_name, ServerName::try_from("localhost").unwrap());
        let t = Target::parse("[::1]:8443", None).unwrap();
        assert_eq!(t.server_name, ServerName::try_from("::1").unwrap());
        for bad in ["demo", "demo:", "demo:http", ":8443", "demo:99999"] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Target::parse("demo:8443", Some("not a name")).is_err());
    }

    #[test]
    fn replies_from_the_tlsid_server_and_from_others() {
        let reply = |status, body: &str| {
            Reply::from_response(&Response {
                status,
                body: body.as_bytes().to_vec(),
            })
        };
        let allowed = reply(
            200,
            r#"{"peer":"spiffe://a/b","decision":"allowed","reason":"ok because"}"#,
        );
        assert_eq!(allowed.outcome(), Outcome::Allowed);
        assert_eq!(allowed.decision.as_deref(), Some("allowed"));
        assert_eq!(allowed.seen_as.as_deref(), Some("spiffe://a/b"));
        assert_eq!(allowed.reason(), "ok because");

        // Go, Python and Java peers answer with text.
        let text = reply(200, "hello CN=x from go\n");
        assert_eq!(text.outcome(), Outcome::Allowed);
        assert_eq!(
            (text.text.as_str(), text.decision),
            ("hello CN=x from go", None)
        );

        let refused = reply(
            403,
            r#"{"decision":"refused","reason":"no URI SAN matches"}"#,
        );
        assert_eq!(refused.outcome(), Outcome::Refused);
        assert_eq!(refused.reason(), "no URI SAN matches");
        let forbidden_text = reply(403, "go away");
        assert_eq!(forbidden_text.outcome(), Outcome::Refused);
        assert_eq!(forbidden_text.reason(), "go away");

        let bad = reply(400, r#"{"error":"the request line is bad"}"#);
        assert_eq!(bad.outcome(), Outcome::HttpError);
        assert_eq!(bad.reason(), "the request line is bad");
        assert_eq!(reply(500, "").outcome(), Outcome::HttpError);
        assert_eq!(reply(204, "").outcome(), Outcome::Allowed);

        // A body cannot forge log lines.
        assert_eq!(reply(200, "a\nINFO forged").text, "a\\nINFO forged");
    }

    #[test]
    fn the_impostor_certificate_is_a_fresh_client_certificate() {
        let (crt, key) = impostor_certificate().unwrap();
        let (other, _) = impostor_certificate().unwrap();
        assert_ne!(crt, other, "a fresh CA and key every start");
        // Any valid bundle loads it (the server's bundle is what rejects it).
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let bundle = ca.self_signed(&ca_key).unwrap().pem();
        let creds = crate::demo::credentials::parse(
            crt.as_bytes(),
            key.as_bytes(),
            bundle.as_bytes(),
            &crate::demo::provider(),
        )
        .unwrap();
        assert_eq!(creds.leaf.identity, "spiffe://impostor.invalid/demo-client");
    }
}
