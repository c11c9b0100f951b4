//! A rustls server and client for the matrix's rustls column, used only while `tlsid demo` is not
//! available (the driver prefers the real binary). Same flags as the demo, plus `--tls 1.2|1.3` and
//! `--listen 127.0.0.1:0` (the chosen port is printed as `LISTEN <port>`).
//!
//! Output, one line per event, for the driver:
//! - server: `CONN ok <version> <peer subject>` or `CONN fail <error>`; it answers a GET with HTTP/1.1
//!   and a silent client with a greeting line;
//! - client: sends `GET /` (as `tlsid demo client` does), then `RESULT ok <version> <status line>` for
//!   a 2xx or `RESULT fail <error or status line>`.

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

struct Args {
    mode: String,
    cert_dir: PathBuf,
    listen: String,
    connect: String,
    server_name: String,
    count: u64,
    tls: String,
}

fn parse(args: &[String]) -> Args {
    let mut a = Args {
        mode: args.first().cloned().unwrap_or_default(),
        cert_dir: PathBuf::new(),
        listen: "127.0.0.1:0".into(),
        connect: String::new(),
        server_name: "localhost".into(),
        count: 1,
        tls: "any".into(),
    };
    let mut it = args.iter().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--cert-dir" => a.cert_dir = val.into(),
            "--listen" => a.listen = val,
            "--connect" => a.connect = val,
            "--server-name" => a.server_name = val,
            "--count" => a.count = val.parse().expect("--count"),
            "--tls" => a.tls = val,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn versions(tls: &str) -> Vec<&'static rustls::SupportedProtocolVersion> {
    match tls {
        "1.2" => vec![&rustls::version::TLS12],
        "1.3" => vec![&rustls::version::TLS13],
        _ => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load(
    dir: &Path,
) -> (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    RootCertStore,
) {
    let chain = CertificateDer::pem_file_iter(dir.join("tls.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    (chain, key, roots)
}

fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string().replace(['\n', '\r'], " ")
}

pub fn run(args: &[String]) {
    let a = parse(args);
    match a.mode.as_str() {
        "server" => server(a),
        "client" => {
            let ok = client(a);
            std::process::exit(if ok { 0 } else { 1 });
        }
        other => panic!("mode must be server or client, not {other:?}"),
    }
}

fn server(a: Args) {
    let (chain, key, roots) = load(&a.cert_dir);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(&a.tls))
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind(&a.listen).unwrap();
    println!("LISTEN {}", listener.local_addr().unwrap().port());
    for tcp in listener.incoming() {
        let Ok(tcp) = tcp else { continue };
        let config = config.clone();
        std::thread::spawn(move || {
            tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let conn = ServerConnection::new(config).unwrap();
            let mut tls = StreamOwned::new(conn, tcp);
            while tls.conn.is_handshaking() {
                if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                    println!("CONN fail {}", one_line(e));
                    return;
                }
            }
            let version = format!("{:?}", tls.conn.protocol_version());
            let peer = tls
                .conn
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .map(|c| {
                    x509_parser::parse_x509_certificate(&c)
                        .map(|(_, x)| x.subject().to_string())
                        .unwrap_or_default()
                })
                .unwrap_or_else(|| "-".into());
            println!("CONN ok {version} {peer}");
            // An HTTP/1.1 response when the client sends a request within a moment, else a greeting
            // line (as the tlsid demo server sends).
            tls.sock
                .set_read_timeout(Some(Duration::from_millis(400)))
                .ok();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("hello {peer} from rustls\n");
            let resp = if head.starts_with(b"GET ") {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                body
            };
            let _ = tls.write_all(resp.as_bytes()).and_then(|_| tls.flush());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
    }
}

fn client(a: Args) -> bool {
    let (chain, key, roots) = load(&a.cert_dir);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(&a.tls))
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let config = Arc::new(config);
    let mut all_ok = true;
    for _ in 0..a.count {
        let result = (|| -> Result<String, String> {
            let name = ServerName::try_from(a.server_name.clone()).map_err(|e| e.to_string())?;
            let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
            let tcp = TcpStream::connect(&a.connect).map_err(|e| e.to_string())?;
            tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut tls = StreamOwned::new(conn, tcp);
            let req = format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                a.server_name
            );
            tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(&mut tls);
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.is_empty() {
                return Err("connection closed without a response".into());
            }
            if !line.starts_with("HTTP/1.1 2") && !line.starts_with("HTTP/1.0 2") {
                return Err(format!("not a 2xx response: {}", line.trim_end()));
            }
            let version = format!("{:?}", tls.conn.protocol_version());
            Ok(format!("{version} {}", line.trim_end()))
        })();
        match result {
            Ok(s) => println!("RESULT ok {}", one_line(s)),
            Err(e) => {
                all_ok = false;
                println!("RESULT fail {}", one_line(e));
            }
        }
    }
    all_ok
}
