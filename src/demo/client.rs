//! `tlsid demo client`: connect to the demo server on an interval and report each exchange.

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
    identity::{CertSummary, NONE, printable},
    millis, negotiated,
    telemetry::{self, Role, Telemetry},
    verify::{ObservingServerVerifier, Presented},
};

/// The server's reply is one short line; anything longer is not our server.
const MAX_REPLY: u64 = 4096;

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

    let (mut attempts, mut failures) = (0_u64, 0_u64);
    loop {
        // An attempt in progress is allowed to finish (every step has a timeout), so shutdown is
        // only observed between attempts.
        let creds = store.current().await;
        attempts += 1;
        if exchange_and_report(&provider, &creds, &target, &telemetry).await {
            telemetry.set_ready();
        } else {
            failures += 1;
        }
        if args.count.is_some_and(|count| attempts >= count) {
            break;
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(args.interval) => {}
        }
    }
    info!(attempts, failures, "demo client stopped");
    if args.count.is_some() && failures > 0 {
        bail!(
            "{failures} of {attempts} mTLS exchanges with {} failed",
            target.addr
        );
    }
    Ok(())
}

/// Where each attempt's credentials come from: the mounted Secret, or (`--impostor`) a fixed set
/// from a throwaway CA.
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
                telemetry.clone(),
            )
            .await;
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

/// One attempt, logged and counted. Returns whether it succeeded.
async fn exchange_and_report(
    provider: &Arc<CryptoProvider>,
    creds: &Credentials,
    target: &Target,
    telemetry: &Telemetry,
) -> bool {
    let own = &creds.leaf;
    match exchange(provider, creds, target).await {
        Ok(ok) => {
            telemetry.handshake(true, ok.took);
            telemetry.peer_verified(&ok.peer);
            info!(
                role = %Role::Client.as_str(),
                result = %"ok",
                peer = %ok.peer.identity,
                peer_serial = %ok.peer.serial,
                own_serial = %own.serial,
                tls_version = %ok.version,
                cipher = %ok.cipher,
                latency_ms = millis(ok.took),
                server = %target.addr,
                reply = %ok.reply,
                "mTLS handshake ok",
            );
            true
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
            false
        }
    }
}

/// A completed exchange: the server proved its identity and accepted ours.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub peer: CertSummary,
    pub version: &'static str,
    pub cipher: String,
    pub reply: String,
    pub took: Duration,
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
        inner: creds.server_verifier.clone(),
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
    Ok(Arc::new(config))
}

/// Connect, handshake, read the server's one-line reply.
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
    // only its reply (or its alert) says whether we were accepted: the reply is part of the check.
    let mut reply = Vec::new();
    match timeout(
        IO_TIMEOUT,
        (&mut tls).take(MAX_REPLY).read_to_end(&mut reply),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            let reason = match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(alert @ rustls::Error::AlertReceived(_)) => {
                    format!("rejected by the server: {alert}")
                }
                _ => failure_reason(&e),
            };
            return Err(fail(reason));
        }
        Err(_) => return Err(fail("no reply from the server".into())),
    }
    let took = started.elapsed();
    let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
    if reply.is_empty() {
        return Err(fail(
            "the server closed the connection without a reply".into(),
        ));
    }

    let (_, conn) = tls.get_ref();
    let (version, cipher) = negotiated(conn);
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| CertSummary::from_der_lossy(c))
        .ok_or_else(|| fail("the server presented no certificate".into()))?;
    Ok(Exchange {
        peer,
        version,
        cipher,
        reply: printable(String::from_utf8_lossy(&reply).trim_end()),
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
