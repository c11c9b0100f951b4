//! The mTLS demo: a server and a client that prove a tlsid-issued identity works end to end.
//!
//! Both read `tls.crt` (leaf + intermediates), `tls.key` and `ca.crt` (trust bundle) from a mounted
//! `kubernetes.io/tls` Secret and pick up rotations without restarting: before each connection (at
//! most once per `--reload-interval`) they check whether the kubelet swapped the `..data` symlink and,
//! if so, load and validate the new set. A set that fails validation never replaces the last good
//! one. Each connection is pinned to the credentials current when it started, so a rotation never
//! disturbs a connection in flight.
//!
//! The protocol is HTTPS: HTTP/1.1 over the mTLS connection (ALPN `http/1.1`; clients offering no
//! ALPN are served too), one request per connection, `Connection: close`. The server answers any
//! path (and method; HEAD gets no body) with JSON saying whom it verified and what it decided:
//!
//! ```text
//! 200 {"peer":"spiffe://…/ns/shop/sa/shopper","peerSerial":"…","server":"spiffe://…","serverSerial":"…","decision":"allowed","reason":"URI SAN … matches --allow-client spiffe://…/ns/shop/*"}
//! 403 {…,"decision":"refused","reason":"no URI SAN matches --allow-client spiffe://…/ns/shop/*"}
//! 400 {…,"error":"<why the request is malformed>"}   (431: head over 16 KiB; 408: none within 10 s)
//! ```
//!
//! so `curl --cacert ca.crt --cert tls.crt --key tls.key https://host:8443/` works as is.
//! Authentication (the mTLS handshake, against `ca.crt`) comes first; authorization (the server's
//! `--allow-client` patterns, matched against the client's URI SANs, see `authz`) is a separate,
//! later decision: a refused client has completed a successful handshake and is counted so.
//!
//! What users watch in `kubectl logs` is one line per exchange and one per credential reload:
//!
//! ```text
//! INFO mTLS handshake ok role=server result=ok peer=spiffe://… peer_serial=… own_serial=… tls_version=TLSv1.3 cipher=… alpn=http/1.1 latency_ms=1.2 peer_addr=…
//! WARN request refused role=server result=refused peer=spiffe://… peer_serial=… reason="no URI SAN matches --allow-client …" own_serial=… status=403 method=GET path=/ peer_addr=…
//! WARN bad request role=server result=error peer=spiffe://… reason=… status=400 …
//! INFO mTLS handshake ok role=client result=ok peer=spiffe://… … server=… status=200 decision=allowed reply={"peer":…}
//! WARN request refused role=client result=refused peer=<server> … reason=<the server's reason> status=403 decision=refused
//! WARN request failed role=client result=error reason="HTTP status 500: …" …   (any other status, or not HTTP)
//! WARN mTLS handshake failed role=server result=failed reason=invalid peer certificate: UnknownIssuer peer=<what was presented> …
//! INFO credentials reloaded: <old serial> → <new serial> old_serial=… new_serial=… identity=… not_after=… roots=…
//! ```
//!
//! The server logs the handshake as soon as it completes, then only a refusal or a bad request
//! (an allowed request is logged at debug level); the client logs one line per attempt. The client
//! takes any 2xx as allowed, whatever the body (other stacks' servers answer with text), and any
//! 403 as refused.
//!
//! `/metrics` (`tlsid_demo_handshakes_total{role,result="success"|"failure"}`,
//! `tlsid_demo_requests_total{role,result="allowed"|"refused"|"error"}` (requests over completed
//! handshakes: a refused request is not a failed handshake), `tlsid_demo_certificate_serial_info`,
//! `tlsid_demo_certificate_expiration_timestamp_seconds`, `tlsid_demo_credential_reloads_total`,
//! `tlsid_demo_trusted_root{role,fingerprint}` (one series per root of the trust bundle peers are
//! verified with now; [`trusted_roots`] reads it back), …), `/healthz` and `/readyz` are served on
//! `--metrics-listen`.
//!
//! `--trust-lag` makes a process a deliberately slow consumer of new trust, for testing a CA
//! rollover: a changed `ca.crt` is only verified against once it has been seen for the lag, while
//! `tls.crt` and `tls.key` still reload at once.
//!
//! Readiness: the server is ready once it has loaded credentials and is accepting connections; the
//! client is ready once it has completed one mTLS exchange, i.e. received an HTTP response of any
//! status (credentials alone prove nothing about whether the server trusts them; a 403 does prove
//! it: the server verified the client and only its policy refused it). Neither becomes unready
//! afterwards: a later failure or refusal is reported in the logs and metrics, not by pulling the
//! pod out of rotation. With `--count`, the client exits with an error if any attempt failed or
//! was refused.

mod authz;
mod client;
mod credentials;
mod http;
mod identity;
mod server;
mod telemetry;
mod verify;

#[cfg(all(test, unix))]
mod tests;

pub use telemetry::{TRUSTED_ROOT_METRIC, trusted_roots};

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use rustls::crypto::CryptoProvider;

/// The TLS versions both sides offer: 1.3 preferred, 1.2 as the floor for older peers.
pub(crate) static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Bounds every network step so a stalled peer cannot hold a task (or graceful shutdown) forever.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `tlsid demo server`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Directory holding tls.crt, tls.key and ca.crt (a mounted kubernetes.io/tls Secret).
    #[arg(long, env = "TLSID_CERT_DIR", default_value = "/etc/tlsid/tls")]
    pub cert_dir: PathBuf,

    /// Address to accept mTLS connections on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address to serve /metrics, /healthz and /readyz on (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// How often at most to check --cert-dir for rotated credentials (Go-style duration, e.g. 1s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub reload_interval: Duration,

    /// Keep verifying peers with the trust bundle already loaded until a changed ca.crt has been
    /// seen for this long (Go-style duration, e.g. 30s; 0 adopts it at once). A testing aid: it
    /// makes the process a deliberately slow consumer of new trust. tls.crt and tls.key are never
    /// delayed, and the first bundle is used as soon as it is read.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub trust_lag: Duration,

    /// Answer only clients with a URI SAN (SPIFFE ID) equal to PATTERN, or starting with it up to
    /// a trailing `*` (e.g. spiffe://cluster.local/ns/shop/*); `*` alone allows every verified
    /// client. Repeatable: any match allows. Without it, every verified client is allowed. Others
    /// complete the handshake and get a 403.
    #[arg(long = "allow-client", value_name = "PATTERN", value_parser = authz::parse_pattern)]
    pub allow_client: Vec<String>,
}

/// Arguments of `tlsid demo client`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Directory holding tls.crt, tls.key and ca.crt (a mounted kubernetes.io/tls Secret).
    #[arg(long, env = "TLSID_CERT_DIR", default_value = "/etc/tlsid/tls")]
    pub cert_dir: PathBuf,

    /// The demo server to connect to, as host:port (e.g. demo-server.demo.svc:8443).
    #[arg(long, env = "TLSID_CONNECT")]
    pub connect: String,

    /// The name the server's certificate must carry (a DNS or IP SAN); defaults to the host part of
    /// --connect.
    #[arg(long)]
    pub server_name: Option<String>,

    /// Time between connection attempts (Go-style duration, e.g. 2s, 500ms, 1m30s).
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    pub interval: Duration,

    /// Stop after this many attempts; the exit status is then an error if any attempt failed or
    /// was refused (403).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Address to serve /metrics, /healthz and /readyz on (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// How often at most to check --cert-dir for rotated credentials (Go-style duration, e.g. 1s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub reload_interval: Duration,

    /// Keep verifying peers with the trust bundle already loaded until a changed ca.crt has been
    /// seen for this long (Go-style duration, e.g. 30s; 0 adopts it at once). A testing aid: it
    /// makes the process a deliberately slow consumer of new trust. tls.crt and tls.key are never
    /// delayed, and the first bundle is used as soon as it is read.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub trust_lag: Duration,

    /// Present a certificate from a throwaway CA made in memory at start instead of tls.crt and
    /// tls.key; only ca.crt is read from --cert-dir (to verify the server). Shows a server
    /// rejecting a client that tlsid did not issue.
    #[arg(long)]
    pub impostor: bool,

    /// Load tls.crt, tls.key and ca.crt once at start and never again, like an app that does not
    /// reload: a rotation reaches it only through a restart (`tlsid.dev/reload: restart` on its
    /// workload), and without one its handshakes fail once its certificate expires.
    #[arg(long, conflicts_with = "impostor")]
    pub no_reload: bool,
}

/// Serve mTLS until `shutdown` resolves; then stop accepting and let connections in flight finish.
pub async fn run_server(
    args: ServerArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    server::run(args, shutdown).await
}

/// Connect to the demo server every `--interval` until `shutdown` resolves (or `--count` attempts).
pub async fn run_client(
    args: ClientArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    client::run(args, shutdown).await
}

/// The crypto provider is chosen here rather than taken from the process default, so the demo
/// behaves the same whether or not (and whichever) provider `main` installed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS version and cipher suite as printed in the handshake log line.
pub(crate) fn negotiated(conn: &rustls::CommonState) -> (&'static str, String) {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "other",
        None => identity::NONE,
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| identity::NONE.into());
    (version, cipher)
}

/// The most specific reason an I/O error on a TLS stream carries: the rustls error if there is one
/// (e.g. `invalid peer certificate: UnknownIssuer`, `received fatal alert: UnknownCA`).
pub(crate) fn failure_reason(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls.to_string(),
        None => e.to_string(),
    }
}

/// Milliseconds with 0.1 ms resolution: enough to read, short enough to scan in a log line.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Parse a Go-style duration (`300ms`, `2s`, `1m30s`, `1.5h`, or `0`) without ever panicking:
/// the API's parser ([`crate::api::GoDuration`], checked integer arithmetic), with surrounding
/// blanks allowed and a sign refused, as a command-line flag should.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.starts_with('+') {
        return Err(format!(
            "invalid duration {input:?}: no sign allowed (examples: 500ms, 2s, 1m30s)"
        ));
    }
    crate::api::GoDuration::from(text)
        .parse()
        .map_err(|e| e.to_string())
}

/// Like [`parse_duration`], but zero is refused: a zero interval would spin.
pub fn parse_positive_duration(input: &str) -> Result<Duration, String> {
    match parse_duration(input)? {
        Duration::ZERO => Err(format!(
            "invalid duration {input:?}: must be greater than zero"
        )),
        d => Ok(d),
    }
}

#[cfg(test)]
mod args_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    enum Demo {
        Server(ServerArgs),
        Client(ClientArgs),
    }

    #[test]
    fn defaults_and_parsing() {
        let Demo::Server(s) = Demo::try_parse_from(["demo", "server"]).unwrap() else {
            panic!()
        };
        assert_eq!(s.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(s.metrics_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(s.reload_interval, Duration::from_secs(1));
        assert_eq!(s.trust_lag, Duration::ZERO, "no lag unless asked for");
        assert!(s.allow_client.is_empty());

        let Demo::Server(s) =
            Demo::try_parse_from(["demo", "server", "--trust-lag", "1m"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.trust_lag, Duration::from_secs(60));

        let argv = [
            "demo",
            "server",
            "--allow-client",
            "spiffe://cluster.local/ns/shop/*",
            "--allow-client=spiffe://cluster.local/ns/bank/sa/teller",
        ];
        let Demo::Server(s) = Demo::try_parse_from(argv).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.allow_client,
            [
                "spiffe://cluster.local/ns/shop/*",
                "spiffe://cluster.local/ns/bank/sa/teller"
            ]
        );

        let argv = [
            "demo",
            "client",
            "--connect",
            "srv:8443",
            "--interval",
            "1m30s",
            "--count",
            "3",
        ];
        let Demo::Client(c) = Demo::try_parse_from(argv).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.connect.as_str(), c.interval, c.count),
            ("srv:8443", Duration::from_secs(90), Some(3))
        );
        assert_eq!(c.server_name, None);
        assert_eq!(c.trust_lag, Duration::ZERO);
        let argv = [
            "demo",
            "client",
            "--connect",
            "srv:8443",
            "--trust-lag=250ms",
        ];
        let Demo::Client(c) = Demo::try_parse_from(argv).unwrap() else {
            panic!()
        };
        assert_eq!(c.trust_lag, Duration::from_millis(250));

        for bad in [
            vec![
                "demo",
                "client",
                "--connect",
                "srv:8443",
                "--interval",
                "0s",
            ],
            vec!["demo", "client", "--connect", "srv:8443", "--interval", "2"],
            vec!["demo", "client", "--connect", "srv:8443", "--count", "0"],
            vec!["demo", "server", "--listen", "nonsense"],
            vec!["demo", "server", "--trust-lag", "10"],
            vec![
                "demo",
                "client",
                "--connect",
                "srv:8443",
                "--trust-lag",
                "-1s",
            ],
            vec!["demo", "server", "--allow-client", ""],
            vec!["demo", "server", "--allow-client", "spiffe://td/*/sa/x"],
        ] {
            assert!(Demo::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("2s", Duration::from_secs(2)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_secs(5400)),
            ("250us", Duration::from_micros(250)),
            ("10\u{00b5}s", Duration::from_micros(10)),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_durations_are_errors_not_panics() {
        for input in [
            "",
            "s",
            "2",
            "2x",
            "-2s",
            "+2s",
            "1e400s",
            "NaNs",
            "infh",
            "1..2s",
            ".s",
            "9999999999999h",
            "2s3",
        ] {
            assert!(
                parse_duration(input).is_err(),
                "{input:?} should be rejected"
            );
        }
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_positive_duration("20ms"),
            Ok(Duration::from_millis(20))
        );
    }
}
