#![forbid(unsafe_code)]
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

#[derive(Parser)]
#[command(name = "tlsid", version, about = "Mutual-TLS identities for Kubernetes workloads")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the TlsIdentity CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", tlsid::crd_yaml()?),
    }
    Ok(())
}
