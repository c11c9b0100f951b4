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
    Controller(Box<ControllerArgs>),
    /// Print the TlsIdentity CustomResourceDefinition as YAML, or write every CRD of tlsid
    /// (TlsIdentity, TlsIdentityPolicy) into a directory.
    Crd {
        /// Write each CRD to `<dir>/<group>_<plural>.yaml` instead of printing TlsIdentity's.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// The mTLS demo workloads: a server and a client that reload rotated certificates.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// One identity on one screen: conditions, the certificate, its Secret, consumers, Events.
    Status {
        #[command(flatten)]
        target: tlsid::cli::Target,
        #[command(flatten)]
        scope: tlsid::cli::Scope,
        /// The TlsIdentity.
        name: String,
    },
    /// Ask for new certificates now (the `tlsid.dev/renew` annotation), and wait for them.
    Renew {
        #[command(flatten)]
        target: tlsid::cli::Target,
        #[command(flatten)]
        scope: tlsid::cli::Scope,
        #[command(flatten)]
        args: tlsid::cli::RenewArgs,
    },
    /// Decode objects without printing key material.
    Inspect {
        #[command(flatten)]
        target: tlsid::cli::Target,
        #[command(flatten)]
        scope: tlsid::cli::Scope,
        #[command(subcommand)]
        command: InspectCommand,
    },
    /// The install's CA: its rollover state, and starting a rollover.
    Ca {
        #[command(flatten)]
        target: tlsid::cli::Target,
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// The rollover phase, the signer, the roots in the trust bundle, and how many certificates
    /// still chain to the previous CA.
    Status,
    /// Start a staged rollover to a new generated root, or to your own next CA (--from-secret).
    Rotate(tlsid::cli::RotateArgs),
}

#[derive(Subcommand)]
enum InspectCommand {
    /// Any `kubernetes.io/tls` Secret: the chain, the names, the expiry, which root it chains to
    /// (in its `ca.crt` and in the install's trust bundle), and whether the key matches.
    Secret {
        /// The Secret.
        name: String,
    },
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
    /// This install's name. It serves the identities whose label `tlsid.dev/install` names it
    /// (the install named `tlsid` also serves identities without the label) and names the leader
    /// Lease `<install>-leader`. Two installs in one cluster must have different names.
    #[arg(long, env = "TLSID_INSTALL", default_value = tlsid::api::DEFAULT_INSTALL, value_parser = parse_install)]
    install: String,
    /// Elect one writer among the replicas with a Lease. Disable only when a single replica runs.
    #[arg(long, env = "TLSID_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Seconds a leader's Lease lasts without renewal: a crashed leader is replaced after about
    /// this long plus one second.
    #[arg(long, env = "TLSID_LEASE_DURATION", default_value_t = controller::leader::LeaseTiming::DEFAULT.duration)]
    lease_duration: u64,
    /// Seconds before expiry that the leader renews its Lease. A leader stops writing half this
    /// (at least 1 s) before its Lease could expire: the clock skew tolerated between replicas.
    #[arg(long, env = "TLSID_LEASE_RENEW_GRACE", default_value_t = controller::leader::LeaseTiming::DEFAULT.grace)]
    lease_renew_grace: u64,
    /// The install's issuance budget: certificates signed per second, sustained.
    #[arg(long, env = "TLSID_ISSUANCE_RATE", default_value_t = tlsid::plan::budget::DEFAULT_RATE, value_parser = parse_rate)]
    issuance_rate: f64,
    /// The issuance budget's burst: certificates that may be signed at once before the rate applies.
    #[arg(long, env = "TLSID_ISSUANCE_BURST", default_value_t = tlsid::plan::budget::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    issuance_burst: u32,
    /// Who may claim which name. `namespace`: an identity may claim its namespace's Service names
    /// and SPIFFE IDs, plus what TlsIdentityPolicies grant its namespace. `any`: every identity
    /// may claim any name, so any namespace can impersonate any other (not for shared clusters).
    #[arg(long, env = "TLSID_NAME_POLICY", value_enum, default_value_t = NamePolicy::Namespace)]
    name_policy: NamePolicy,
    /// The cluster's DNS domain: Service names end in `.svc.<cluster-domain>`.
    #[arg(long, env = "TLSID_CLUSTER_DOMAIN", default_value = tlsid::tenancy::DEFAULT_CLUSTER_DOMAIN, value_parser = parse_domain)]
    cluster_domain: String,
    /// The SPIFFE trust domain of identities (`spiffe://<trust-domain>/ns/<namespace>/...`).
    /// Default: the cluster domain.
    #[arg(long, env = "TLSID_TRUST_DOMAIN", value_parser = parse_domain)]
    trust_domain: Option<String>,
    /// Serve the TlsIdentity admission webhook (HTTPS) on this address, e.g. 0.0.0.0:9443.
    /// Not with --watch-namespace: admission covers every namespace.
    #[arg(
        long,
        env = "TLSID_WEBHOOK_LISTEN",
        requires = "webhook_service",
        conflicts_with = "watch_namespace"
    )]
    webhook_listen: Option<SocketAddr>,
    /// The webhook's Service in --namespace. The leader keeps a TlsIdentity of that name for the
    /// Service's DNS names; its Secret (`<name>-tls`) is the serving certificate, re-read on
    /// every rotation.
    #[arg(long, env = "TLSID_WEBHOOK_SERVICE")]
    webhook_service: Option<String>,
    /// Extra IP SANs of the webhook's certificate, for an apiserver that calls it by address
    /// (development and tests; a TlsIdentityPolicy must grant them to --namespace).
    #[arg(long, env = "TLSID_WEBHOOK_IP_ADDRESSES", value_delimiter = ',')]
    webhook_ip_addresses: Vec<std::net::IpAddr>,
    /// The ValidatingWebhookConfiguration whose caBundle the leader keeps equal to the CA's trust
    /// bundle.
    #[arg(long, env = "TLSID_WEBHOOK_CONFIGURATION")]
    webhook_configuration: Option<String>,
    /// Run the demo workloads of identities with `spec.demo` (needs the RBAC for Deployments and
    /// Services). Off: such identities get a `Demo=False` condition and nothing is deployed.
    #[arg(long, env = "TLSID_DEMO_WORKLOADS", default_value_t = true, action = clap::ArgAction::Set)]
    demo_workloads: bool,
    /// Restart workloads (Deployments, StatefulSets, DaemonSets) annotated `tlsid.dev/reload:
    /// restart` after each change of an identity Secret they mount, and list every workload
    /// that mounts one in the identity's `status.consumers` (needs get/list/watch/patch on those
    /// kinds). Off: no workload is watched or restarted.
    #[arg(long, env = "TLSID_RESTARTS", default_value_t = true, action = clap::ArgAction::Set)]
    restarts: bool,
    /// Restarts per second across the install, sustained (a CA rollover restarts every opted-in
    /// workload).
    #[arg(long, env = "TLSID_RESTART_RATE", default_value_t = tlsid::plan::consumers::DEFAULT_RATE, value_parser = parse_rate)]
    restart_rate: f64,
    /// Restarts that may happen at once before the rate applies.
    #[arg(long, env = "TLSID_RESTART_BURST", default_value_t = tlsid::plan::consumers::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    restart_burst: u32,
    /// Name of the cluster-scoped TlsAuthority this install keeps up to date (default: the
    /// install's name).
    #[arg(long, env = "TLSID_AUTHORITY", value_parser = parse_install)]
    authority: Option<String>,
    /// Lifetime of a root CA tlsid generates, as a Go duration (at least 10m).
    #[arg(long, env = "TLSID_CA_LIFETIME", default_value = "87600h", value_parser = parse_ca_lifetime)]
    ca_lifetime: cli_duration::Go,
    /// Fraction of a generated root's lifetime after which tlsid rolls it over to a new root
    /// (between 0.1 and 0.95). A CA you supplied is never replaced: past this point tlsid warns.
    #[arg(long, env = "TLSID_CA_ROTATE_AT", default_value_t = tlsid::plan::rollover::DEFAULT_ROTATE_AT, value_parser = parse_fraction)]
    ca_rotate_at: f64,
    /// How long a CA rollover waits, once every identity Secret holds a new trust bundle (or has
    /// no certificate of the previous CA left), for every consumer to have loaded it: the
    /// kubelet's update of mounted Secrets plus the app's reload. Go duration, at most 24h.
    #[arg(long, env = "TLSID_TRUST_PROPAGATION_DELAY", default_value = "5m", value_parser = parse_delay)]
    trust_propagation_delay: cli_duration::Go,
    /// Before a CA rollover switches signers, wait until every running demo pod reports (on its
    /// metrics endpoint) that it trusts the next root. Needs `list` on Pods.
    #[arg(long, env = "TLSID_OBSERVE_DEMO_TRUST", default_value_t = true, action = clap::ArgAction::Set)]
    observe_demo_trust: bool,
    /// Publish the trust bundle (every root of the CA's bundle, as in identity Secrets' `ca.crt`)
    /// as a ConfigMap in every namespace --trust-bundle-namespaces selects. Needs the RBAC for
    /// ConfigMaps.
    #[arg(long, env = "TLSID_TRUST_BUNDLE_CONFIGMAPS", default_value_t = true, action = clap::ArgAction::Set)]
    trust_bundle_configmaps: bool,
    /// Label selector of the namespaces that get the trust ConfigMap. Default:
    /// `tlsid.dev/trust-bundle=<install>`.
    #[arg(long, env = "TLSID_TRUST_BUNDLE_NAMESPACES")]
    trust_bundle_namespaces: Option<String>,
    /// Name of the trust ConfigMaps. Default: `<install>-ca-bundle`.
    #[arg(long, env = "TLSID_TRUST_BUNDLE_NAME", value_parser = parse_configmap_name)]
    trust_bundle_name: Option<String>,
    /// Also put `truststore.p12` (PKCS#12, password `changeit`: it holds public certificates
    /// only) into the trust ConfigMaps, for Java.
    #[arg(long, env = "TLSID_TRUST_BUNDLE_TRUSTSTORE", default_value_t = false, action = clap::ArgAction::Set)]
    trust_bundle_truststore: bool,
    /// Publish the trust bundle as a ClusterTrustBundle (`certificates.k8s.io/v1beta1`, signer
    /// `tlsid.dev/<install>`) when the cluster serves that API (checked at start). Needs the RBAC
    /// for ClusterTrustBundles and `attest` on the signer.
    #[arg(long, env = "TLSID_CLUSTER_TRUST_BUNDLE", default_value_t = false, action = clap::ArgAction::Set)]
    cluster_trust_bundle: bool,
}

fn parse_configmap_name(s: &str) -> Result<String, String> {
    if tlsid::api::is_dns_subdomain(s) {
        Ok(s.to_string())
    } else {
        Err("a ConfigMap name is a DNS subdomain (lowercase letters, digits, '-', '.')".into())
    }
}

/// A Go duration given on the command line, parsed.
mod cli_duration {
    #[derive(Clone, Copy, Debug)]
    pub struct Go(pub std::time::Duration);
}

fn parse_go(s: &str) -> Result<std::time::Duration, String> {
    tlsid::api::GoDuration(s.to_string())
        .parse()
        .map_err(|e| e.to_string())
}

fn parse_ca_lifetime(s: &str) -> Result<cli_duration::Go, String> {
    let d = parse_go(s)?;
    if d < std::time::Duration::from_secs(600) {
        return Err("a CA lifetime is at least 10m".into());
    }
    Ok(cli_duration::Go(d))
}

fn parse_delay(s: &str) -> Result<cli_duration::Go, String> {
    let d = parse_go(s)?;
    if d > std::time::Duration::from_secs(24 * 3600) {
        return Err("the propagation delay is at most 24h".into());
    }
    Ok(cli_duration::Go(d))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.1..=0.95).contains(&f) => Ok(f),
        _ => Err("a fraction between 0.1 and 0.95".into()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NamePolicy {
    Namespace,
    Any,
}

fn parse_domain(s: &str) -> Result<String, String> {
    if tlsid::api::is_dns_subdomain(s) {
        Ok(s.to_string())
    } else {
        Err("a domain is lowercase DNS labels separated by dots (e.g. cluster.local)".into())
    }
}

fn parse_install(s: &str) -> Result<String, String> {
    if tlsid::api::is_dns_label(s) && s.len() <= 40 {
        Ok(s.to_string())
    } else {
        Err("an install name is a DNS label of at most 40 characters (lowercase letters, digits, '-')".into())
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 100_000.0 => Ok(r),
        _ => {
            Err("a rate is a number of certificates per second, above 0 and at most 100000".into())
        }
    }
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
    // As a kubectl plugin (`kubectl tlsid ...` runs `kubectl-tlsid`), help and errors say so.
    let mut command = <Cli as clap::CommandFactory>::command();
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if invoked_as.as_deref() == Some("kubectl-tlsid") {
        command = command.bin_name("kubectl tlsid");
    }
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&command.get_matches())
        .unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Crd { dir: None } => {
            print!("{}", tlsid::crd_yaml()?);
            Ok(())
        }
        Command::Crd { dir: Some(dir) } => {
            for (file, crd) in tlsid::crds() {
                let path = dir.join(file);
                std::fs::write(&path, tlsid::crd_file_yaml(&crd)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            Ok(())
        }
        Command::Status {
            target,
            scope,
            name,
        } => {
            install_crypto_provider();
            let report = tlsid::cli::status(&target, &scope, &name).await?;
            tlsid::cli::print_identity(target.output, &report)
        }
        Command::Renew {
            target,
            scope,
            args,
        } => {
            install_crypto_provider();
            let report = tlsid::cli::renew(&target, &scope, &args).await?;
            tlsid::cli::print_renew(target.output, &report)?;
            if !report.all_renewed() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Inspect {
            target,
            scope,
            command: InspectCommand::Secret { name },
        } => {
            install_crypto_provider();
            let report = tlsid::cli::inspect_secret(&target, &scope, &name).await?;
            tlsid::cli::print_secret(target.output, &report)
        }
        Command::Ca { target, command } => {
            install_crypto_provider();
            match command {
                CaCommand::Status => {
                    let status = tlsid::cli::ca_status(&target).await?;
                    match target.output {
                        tlsid::cli::Output::Json => {
                            println!("{}", serde_json::to_string_pretty(&status)?)
                        }
                        tlsid::cli::Output::Text => {
                            print!("{}", tlsid::cli::render_status(&status))
                        }
                    }
                }
                CaCommand::Rotate(args) => {
                    let said = tlsid::cli::ca_rotate(&target, &args).await?;
                    match target.output {
                        tlsid::cli::Output::Json => {
                            println!("{}", serde_json::json!({ "message": said }))
                        }
                        tlsid::cli::Output::Text => println!("{said}"),
                    }
                }
            }
            Ok(())
        }
        Command::Controller(args) => {
            install_crypto_provider();
            init_logging(cli.log_format);
            run_controller(*args).await
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
    let lease = controller::leader::LeaseTiming::new(args.lease_duration, args.lease_renew_grace)
        .map_err(anyhow::Error::msg)?;
    let authority = args.authority.unwrap_or_else(|| args.install.clone());
    let trust = controller::trust::TrustConfig {
        configmaps: args.trust_bundle_configmaps,
        namespace_selector: args
            .trust_bundle_namespaces
            .unwrap_or_else(|| controller::trust::default_selector(&args.install)),
        name: args
            .trust_bundle_name
            .unwrap_or_else(|| controller::trust::default_name(&args.install)),
        truststore: args.trust_bundle_truststore,
        cluster_trust_bundle: args.cluster_trust_bundle,
    };
    if trust.configmaps {
        // The apiserver parses the selector: a bad one fails here, not in a watch retried forever.
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(client.clone());
        if let Err(kube::Error::Api(s)) = namespaces
            .list_metadata(
                &kube::api::ListParams::default()
                    .labels(&trust.namespace_selector)
                    .limit(1),
            )
            .await
            && s.code == 400
        {
            anyhow::bail!(
                "--trust-bundle-namespaces {:?} is not a label selector: {}",
                trust.namespace_selector,
                s.message
            );
        }
    }
    let config = Config {
        namespace: args.namespace,
        ca_secret: args.ca_secret,
        demo_image: args.demo_image,
        concurrency: args.concurrency.max(1),
        watch_namespace: args.watch_namespace,
        install: args.install,
        leader_election: args.leader_election,
        lease,
        issuance_rate: args.issuance_rate,
        issuance_burst: args.issuance_burst,
        names: tlsid::tenancy::Settings {
            trust_domain: args
                .trust_domain
                .unwrap_or_else(|| args.cluster_domain.clone()),
            cluster_domain: args.cluster_domain,
            restrict_to_namespace: args.name_policy == NamePolicy::Namespace,
        },
        webhook: args
            .webhook_listen
            .map(|listen| controller::webhook::WebhookConfig {
                listen,
                service: args.webhook_service.clone().unwrap_or_default(),
                configuration: args.webhook_configuration.clone(),
                ip_addresses: args.webhook_ip_addresses.clone(),
            }),
        demo_workloads: args.demo_workloads,
        authority,
        rollover: controller::rollover::RolloverConfig {
            ca_lifetime: args.ca_lifetime.0,
            propagation_delay: args.trust_propagation_delay.0,
            rotate_at: args.ca_rotate_at,
            observe_demo_trust: args.observe_demo_trust,
        },
        trust,
        restarts: controller::restarts::RestartConfig {
            enabled: args.restarts,
            rate: args.restart_rate,
            burst: args.restart_burst,
        },
    };
    if !config.names.restrict_to_namespace {
        tracing::warn!(
            "--name-policy=any: every TlsIdentity may claim any name, so any namespace can obtain a certificate for another's Services and SPIFFE IDs; use only where every namespace is trusted"
        );
    }
    tracing::info!(
        install = config.install,
        namespace = config.namespace,
        ca_secret = config.ca_secret,
        version = env!("CARGO_PKG_VERSION"),
        "starting tlsid controller"
    );
    let ctx = Arc::new(Context::new(client, config));
    let webhook = ctx.config.webhook.clone().map(|w| {
        let ctx = ctx.clone();
        tokio::spawn(controller::webhook::serve(w, ctx))
    });
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
    if let Some(w) = webhook {
        w.abort();
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}
