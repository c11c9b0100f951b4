//! The `tlsid` binary: a thin CLI over the library.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::{net::SocketAddr, sync::Arc};
use tlsid::controller::{self, Config, Context};

#[derive(Parser)]
#[command(
    name = "tlsid",
    version,
    about = "Mutual-TLS identities for Kubernetes workloads"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "TLSID_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the TlsIdentity controller.
    Controller(ControllerArgs),
    /// Print the TlsIdentity CustomResourceDefinition as YAML.
    Crd,
    /// The mTLS demo workloads: a server and a client that reload rotated certificates.
    #[command(subcommand)]
    Demo(DemoCommand),
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Accept mTLS connections, requiring a client certificate from the trust bundle.
    Server(tlsid::demo::ServerArgs),
    /// Connect to a server at an interval, verifying its name and presenting our certificate.
    Client(tlsid::demo::ClientArgs),
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Namespace holding the CA Secret (the controller's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tlsid-system")]
    namespace: String,
    /// Name of the CA Secret; created with a new self-signed root if absent.
    #[arg(long, env = "TLSID_CA_SECRET", default_value = "tlsid-ca")]
    ca_secret: String,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "TLSID_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Image for the demo workloads the controller runs for identities with `spec.demo`.
    #[arg(
        long,
        env = "TLSID_DEMO_IMAGE",
        default_value = "docker.io/library/tlsid:dev"
    )]
    demo_image: String,
    /// How many identities are reconciled at once.
    #[arg(long, env = "TLSID_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Watch TlsIdentities in this namespace only (default: all namespaces).
    #[arg(long, env = "TLSID_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
    });
    // Colour only on a terminal: `kubectl logs` and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", tlsid::crd_yaml()?);
            Ok(())
        }
        Command::Controller(args) => {
            install_crypto_provider();
            init_logging(cli.log_format);
            run_controller(args).await
        }
        Command::Demo(demo) => {
            install_crypto_provider();
            init_logging(cli.log_format);
            match demo {
                DemoCommand::Server(args) => tlsid::demo::run_server(args, shutdown_signal()).await,
                DemoCommand::Client(args) => tlsid::demo::run_client(args, shutdown_signal()).await,
            }
        }
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// One process-wide rustls provider (aws-lc-rs), chosen explicitly rather than by feature luck.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let config = Config {
        namespace: args.namespace,
        ca_secret: args.ca_secret,
        demo_image: args.demo_image,
        concurrency: args.concurrency.max(1),
        watch_namespace: args.watch_namespace,
    };
    tracing::info!(
        namespace = config.namespace,
        ca_secret = config.ca_secret,
        version = env!("CARGO_PKG_VERSION"),
        "starting tlsid controller"
    );
    let ctx = Arc::new(Context::new(client, config));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(controller::server::serve(
        args.listen,
        ctx.clone(),
        async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|stop| *stop).await;
        },
    ));
    // The controller drains in-flight reconciles on SIGTERM/SIGINT, then returns.
    controller::run(ctx).await?;
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}
