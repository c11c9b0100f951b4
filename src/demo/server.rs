//! `tlsid demo server`: accept mTLS connections, greet the verified peer by name, close.

use std::{future::Future, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use rustls::{
    ServerConfig, crypto::CryptoProvider, server::NoServerSessionStorage, sign::SingleCertAndKey,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::{Instant, timeout},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use super::{
    IO_TIMEOUT, PROTOCOL_VERSIONS, ServerArgs,
    credentials::{CredentialStore, Credentials},
    failure_reason,
    identity::{CertSummary, NONE},
    millis, negotiated,
    telemetry::{self, Role, Telemetry},
    verify::{ObservingClientVerifier, Presented},
};

/// How long a connection waits for the client to close after the greeting.
const LINGER: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    args: ServerArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Both sockets are bound before anything else so a port conflict fails the start, loudly.
    let metrics = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {}", args.metrics_listen))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen for mTLS on {}", args.listen))?;
    serve(args, listener, metrics, shutdown).await
}

/// The server on already-bound sockets (tests bind port 0 and need to know the port).
pub(crate) async fn serve(
    args: ServerArgs,
    listener: TcpListener,
    metrics: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    telemetry::with_endpoint(Role::Server, metrics, |telemetry| {
        accept_until(args, listener, telemetry, shutdown)
    })
    .await
}

pub(crate) async fn wait_for_stop(mut stop: watch::Receiver<bool>) {
    // An error means the sender is gone, which is also a reason to stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn accept_until(
    args: ServerArgs,
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = pin!(shutdown);
    let provider = super::provider();
    let local_addr = listener
        .local_addr()
        .context("listening socket has no address")?;
    let store = tokio::select! {
        store = CredentialStore::wait_for_initial(
            args.cert_dir.clone(),
            provider.clone(),
            args.reload_interval,
            telemetry.clone(),
        ) => Arc::new(store),
        () = &mut shutdown => return Ok(()),
    };
    let own = store.snapshot().leaf.clone();
    info!(listen = %local_addr, identity = %own.identity, serial = %own.serial, "serving mTLS on {local_addr}");
    telemetry.set_ready();

    // Connections already check for rotation; this keeps the metrics and the reload log line
    // current on a server nobody is talking to.
    let refresher = tokio::spawn({
        let store = store.clone();
        let mut tick = tokio::time::interval(args.reload_interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        async move {
            loop {
                tick.tick().await;
                store.refresh_if_due().await;
            }
        }
    });

    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Shutdown first: once it is requested, not one more connection is taken.
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer_addr)) => {
                    connections.spawn(handle(store.clone(), telemetry.clone(), provider.clone(), tcp, peer_addr));
                }
                Err(e) => {
                    // Typically fd exhaustion: back off instead of spinning on the error.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => report_panic(done),
        }
    }

    refresher.abort();
    drop(listener);
    info!(
        in_flight = connections.len(),
        "shutting down: no longer accepting, finishing connections in flight"
    );
    while let Some(done) = connections.join_next().await {
        report_panic(done);
    }
    info!("demo server stopped");
    Ok(())
}

fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        error!(error = %e, "connection task failed");
    }
}

/// Built per connection around the shared credentials: cheap (every field is an `Arc` or a
/// small value), and it gives each handshake its own record of what the client presented.
fn server_config(
    provider: &Arc<CryptoProvider>,
    creds: &Credentials,
    presented: Presented,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = Arc::new(ObservingClientVerifier {
        inner: creds.client_verifier.clone(),
        presented,
    });
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(creds.certified.clone())));
    // Every connection must be a full handshake: a resumed session skips certificate verification
    // against the current bundle and would show a peer's old certificate after a rotation.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

async fn handle(
    store: Arc<CredentialStore>,
    telemetry: Arc<Telemetry>,
    provider: Arc<CryptoProvider>,
    tcp: TcpStream,
    peer_addr: SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    // Pinned for the connection's whole life: a rotation now only affects later connections.
    let creds = store.current().await;
    let own = &creds.leaf;
    debug!(%peer_addr, own_serial = %own.serial, "connection accepted");
    let presented = Presented::default();
    let config = match server_config(&provider, &creds, presented.clone()) {
        Ok(config) => config,
        Err(e) => {
            error!(error = %e, %peer_addr, "cannot build the TLS configuration");
            return;
        }
    };

    let started = Instant::now();
    let accepted = timeout(
        IO_TIMEOUT,
        TlsAcceptor::from(config).accept(tcp).into_fallible(),
    )
    .await;
    let took = started.elapsed();
    let failed = |reason: &str| {
        telemetry.handshake(false, took);
        let peer = presented.summary();
        warn!(
            role = %Role::Server.as_str(),
            result = %"failed",
            reason = %reason,
            peer = %peer.as_ref().map_or(NONE, |p| p.identity.as_str()),
            peer_serial = %peer.as_ref().map_or(NONE, |p| p.serial.as_str()),
            own_serial = %own.serial,
            tls_version = %NONE,
            latency_ms = millis(took),
            %peer_addr,
            "mTLS handshake failed",
        );
    };
    let mut tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err((e, _)))
            if e.kind() == std::io::ErrorKind::UnexpectedEof && presented.summary().is_none() =>
        {
            // TCP health checks and port scanners connect and leave: not a handshake, not a failure.
            debug!(%peer_addr, "connection closed before a TLS handshake");
            return;
        }
        Ok(Err((e, mut tcp))) => {
            failed(&failure_reason(&e));
            // A FIN rather than a reset, so the client gets to read our alert.
            let _ = timeout(Duration::from_secs(1), tcp.shutdown()).await;
            return;
        }
        Err(_) => {
            failed(&format!(
                "handshake not completed within {}s",
                IO_TIMEOUT.as_secs()
            ));
            return;
        }
    };

    let (_, conn) = tls.get_ref();
    let (version, cipher) = negotiated(conn);
    let Some(peer) = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| CertSummary::from_der_lossy(c))
    else {
        // Unreachable while client auth is mandatory; refuse rather than greet an anonymous peer.
        failed("client presented no certificate");
        return;
    };
    telemetry.handshake(true, took);
    telemetry.peer_verified(&peer);
    info!(
        role = %Role::Server.as_str(),
        result = %"ok",
        peer = %peer.identity,
        peer_serial = %peer.serial,
        own_serial = %own.serial,
        tls_version = %version,
        cipher = %cipher,
        latency_ms = millis(took),
        %peer_addr,
        "mTLS handshake ok",
    );

    let greeting = format!(
        "hello {} from {}, your serial {}\n",
        peer.identity, own.identity, peer.serial
    );
    let reply = async {
        tls.write_all(greeting.as_bytes()).await?;
        // close_notify: tells the client the reply is complete, not truncated.
        tls.shutdown().await
    };
    match timeout(IO_TIMEOUT, reply).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(%peer_addr, error = %failure_reason(&e), "could not deliver the greeting")
        }
        Err(_) => debug!(%peer_addr, "timed out delivering the greeting"),
    }
    // Closing a socket with unread input makes the kernel send a reset, which can destroy the
    // greeting before the client reads it (e.g. `openssl s_client` forwarding a typed line). So
    // wait briefly for the client to close first, discarding whatever it sent.
    let mut sink = [0_u8; 1024];
    let _ = timeout(LINGER, async {
        while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
