//! `tlsid demo server`: accept mTLS connections, answer one HTTP/1.1 request on each with what the
//! server verified about the client and whether `--allow-client` lets it in, close.

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
    authz::{self, Decision},
    credentials::{CredentialStore, Credentials},
    failure_reason,
    http::{self, HeadError},
    identity::{self, CertSummary, NONE, printable},
    millis, negotiated,
    telemetry::{self, RequestResult, Role, Telemetry},
    verify::{ObservingClientVerifier, Presented},
};

/// How long a connection waits for the client to close after the response.
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
            args.trust_lag,
            telemetry.clone(),
        ) => Arc::new(store),
        () = &mut shutdown => return Ok(()),
    };
    let own = store.snapshot().leaf.clone();
    let allow: Arc<[String]> = args.allow_client.clone().into();
    let allow_client = if allow.is_empty() {
        "* (no --allow-client given)".to_owned()
    } else {
        allow.join(",")
    };
    info!(listen = %local_addr, identity = %own.identity, serial = %own.serial, %allow_client, "serving mTLS on {local_addr}");
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
                    connections.spawn(handle(store.clone(), telemetry.clone(), provider.clone(), allow.clone(), tcp, peer_addr));
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
        inner: creds.trust.client_verifier.clone(),
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
    // Clients offering ALPN must offer http/1.1; clients offering none (openssl s_client, most
    // non-browser libraries) are served all the same.
    config.alpn_protocols = vec![http::ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

async fn handle(
    store: Arc<CredentialStore>,
    telemetry: Arc<Telemetry>,
    provider: Arc<CryptoProvider>,
    allow: Arc<[String]>,
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
    let alpn = conn.alpn_protocol().map_or_else(
        || NONE.to_owned(),
        |p| printable(&String::from_utf8_lossy(p)),
    );
    let Some((peer, uri_sans)) = conn.peer_certificates().and_then(|c| c.first()).map(|c| {
        (
            CertSummary::from_der_lossy(c),
            identity::uri_sans(c.as_ref()),
        )
    }) else {
        // Unreachable while client auth is mandatory; refuse rather than answer an anonymous peer.
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
        alpn = %alpn,
        latency_ms = millis(took),
        %peer_addr,
        "mTLS handshake ok",
    );

    // Authenticated; now one request, then authorization decides the answer.
    let response = match timeout(IO_TIMEOUT, http::read_request_head(&mut tls)).await {
        Ok(Ok(head)) => match http::parse_request(&head) {
            Ok(request) => {
                let decision = authz::authorize(&allow, &uri_sans);
                Some(answer(
                    &telemetry, &request, &decision, &peer, own, peer_addr,
                ))
            }
            Err(reason) => Some(bad_request(&telemetry, 400, &reason, &peer, own, peer_addr)),
        },
        Ok(Err(HeadError::TooLarge)) => {
            let reason = format!(
                "request head larger than {} KiB",
                http::MAX_REQUEST_HEAD / 1024
            );
            Some(bad_request(&telemetry, 431, &reason, &peer, own, peer_addr))
        }
        Ok(Err(HeadError::Closed)) => {
            debug!(%peer_addr, peer = %peer.identity, "client closed the connection without a request");
            None
        }
        Ok(Err(HeadError::Io(e))) => {
            // The client went away or broke the TLS stream: nobody left to answer.
            debug!(%peer_addr, peer = %peer.identity, error = %failure_reason(&e), "no request received");
            None
        }
        Err(_) => {
            let reason = format!("no complete request within {}s", IO_TIMEOUT.as_secs());
            Some(bad_request(&telemetry, 408, &reason, &peer, own, peer_addr))
        }
    };

    if let Some(response) = response {
        let reply = async {
            tls.write_all(&response).await?;
            // close_notify: tells the client the response is complete, not truncated.
            tls.shutdown().await
        };
        match timeout(IO_TIMEOUT, reply).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%peer_addr, error = %failure_reason(&e), "could not deliver the response")
            }
            Err(_) => debug!(%peer_addr, "timed out delivering the response"),
        }
    } else {
        let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
    }
    // Closing a socket with unread input makes the kernel send a reset, which can destroy the
    // response before the client reads it (e.g. a request body we never read, or `openssl
    // s_client` forwarding more typed lines). So wait briefly for the client to close first,
    // discarding whatever it sent.
    let mut sink = [0_u8; 1024];
    let _ = timeout(LINGER, async {
        while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The JSON every answer carries: who the server verified and who the server is, then `extra`.
fn body(peer: &CertSummary, own: &CertSummary, extra: &[(&str, &str)]) -> String {
    let mut fields = vec![
        ("peer", peer.identity.as_str()),
        ("peerSerial", peer.serial.as_str()),
        ("server", own.identity.as_str()),
        ("serverSerial", own.serial.as_str()),
    ];
    fields.extend_from_slice(extra);
    http::json_object(&fields)
}

/// The authorization decision on a well-formed request: 200 or 403, logged and counted.
fn answer(
    telemetry: &Telemetry,
    request: &http::Request,
    decision: &Decision,
    peer: &CertSummary,
    own: &CertSummary,
    peer_addr: SocketAddr,
) -> Vec<u8> {
    let (status, verdict) = if decision.allowed {
        (200, "allowed")
    } else {
        (403, "refused")
    };
    let method = printable(&request.method);
    let path = identity::printable_up_to(&request.target, 128);
    if decision.allowed {
        telemetry.request(RequestResult::Allowed);
        debug!(
            role = %Role::Server.as_str(),
            result = %verdict,
            peer = %peer.identity,
            reason = %decision.reason,
            %method,
            %path,
            %peer_addr,
            "request allowed",
        );
    } else {
        telemetry.request(RequestResult::Refused);
        warn!(
            role = %Role::Server.as_str(),
            result = %verdict,
            peer = %peer.identity,
            peer_serial = %peer.serial,
            reason = %decision.reason,
            own_serial = %own.serial,
            status,
            %method,
            %path,
            %peer_addr,
            "request refused",
        );
    }
    let body = body(
        peer,
        own,
        &[("decision", verdict), ("reason", &decision.reason)],
    );
    http::json_response(status, &body, request.wants_body())
}

/// A request that could not be read or parsed: 4xx with the reason, logged and counted. Not a
/// handshake failure: the handshake had already succeeded.
fn bad_request(
    telemetry: &Telemetry,
    status: u16,
    reason: &str,
    peer: &CertSummary,
    own: &CertSummary,
    peer_addr: SocketAddr,
) -> Vec<u8> {
    telemetry.request(RequestResult::Error);
    let reason = identity::printable_up_to(reason, 256);
    warn!(
        role = %Role::Server.as_str(),
        result = %"error",
        peer = %peer.identity,
        peer_serial = %peer.serial,
        reason = %reason,
        own_serial = %own.serial,
        status,
        %peer_addr,
        "bad request",
    );
    http::json_response(status, &body(peer, own, &[("error", &reason)]), true)
}
