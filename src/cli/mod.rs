//! The operator's commands, usable as a kubectl plugin (`kubectl tlsid ...` via a `kubectl-tlsid`
//! name): `status`, `renew`, `inspect secret`, `ca status`, `ca rotate`. They honour `KUBECONFIG`
//! and `--context` as kubectl does, `-n`/`-A` for identities, and a named flag for the install's
//! namespace (`--install-namespace`). Output is text for people (colour only on a terminal) and
//! `-o json` for scripts.
//!
//! Each command is split the same way as the controller: a fetch (the only I/O), a pure report
//! built from the objects fetched and the time, and a pure renderer (golden-tested).

mod ca;
mod identity;
mod inspect;
mod render;
#[cfg(test)]
mod tests;

pub use ca::{CaStatus, RotateArgs, ca_rotate, ca_status, render_status};
pub use identity::{
    IdentityReport, RenewArgs, RenewReport, identity_report, print_identity, print_renew,
    render_identity, render_renew, renew, status,
};
pub use inspect::{SecretReport, inspect_secret, print_secret, render_secret, secret_report};
pub use render::Style;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Event;
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta},
    config::KubeConfigOptions,
};
use serde::Serialize;

/// Where the install lives and how to reach the cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace of the tlsid install (its CA Secret).
    #[arg(
        long,
        global = true,
        default_value = "tlsid-system",
        env = "TLSID_INSTALL_NAMESPACE"
    )]
    pub install_namespace: String,
    /// The install's CA Secret.
    #[arg(long, global = true, default_value = "tlsid-ca")]
    pub ca_secret: String,
    /// The install's name (the identities it serves: label `tlsid.dev/install`).
    #[arg(long, global = true, default_value = crate::api::DEFAULT_INSTALL)]
    pub install: String,
    /// The install's TlsAuthority (default: the install's name).
    #[arg(long, global = true)]
    pub authority: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl Target {
    pub fn authority_name(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.install)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Which namespace(s) of identities a command looks at, as kubectl's `-n` and `-A`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Scope {
    /// The namespace of the identities (default: the kubeconfig context's namespace).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (with `renew --all`).
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

impl Scope {
    /// The one namespace to use: `-n`, else the context's.
    pub fn one(&self, client: &Client) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string())
    }

    /// `None` for every namespace.
    pub fn many(&self, client: &Client) -> Option<String> {
        (!self.all_namespaces).then(|| self.one(client))
    }
}

pub async fn client(target: &Target) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(c) => c,
        Err(e) if target.context.is_some() => return Err(e).context("reading the kubeconfig"),
        Err(_) => kube::Config::infer()
            .await
            .context("finding a kubeconfig")?,
    };
    Client::try_from(config).context("building a Kubernetes client")
}

/// One Event as the commands show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339, when it last happened.
    pub last_seen: Option<jiff::Timestamp>,
    pub count: i32,
}

/// The newest `n` Events about one object, newest first. Events are a courtesy: a refusal to
/// list them (RBAC) gives none rather than failing the command.
pub async fn recent_events(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    n: usize,
) -> Vec<EventView> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let listed = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind={kind}"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    newest_events(listed, n)
}

/// Events sorted newest first (by their last time, then their name for ties), at most `n`.
pub fn newest_events(events: Vec<Event>, n: usize) -> Vec<EventView> {
    let mut views: Vec<(EventView, String)> = events
        .into_iter()
        .map(|e| {
            let last_seen = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or(e.last_timestamp.as_ref().map(|t| t.0))
                .or(e.first_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let view = EventView {
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                message: e.message.unwrap_or_default(),
                last_seen,
                count: e
                    .series
                    .as_ref()
                    .and_then(|s| s.count)
                    .or(e.count)
                    .unwrap_or(1),
            };
            (view, name_of(&e.metadata))
        })
        .collect();
    views.sort_by(|(a, an), (b, bn)| b.last_seen.cmp(&a.last_seen).then_with(|| bn.cmp(an)));
    views.into_iter().take(n).map(|(v, _)| v).collect()
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Print a report: JSON for scripts, or the human rendering.
pub fn print<T: Serialize>(
    output: Output,
    report: &T,
    human: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
        Output::Text => print!("{}", human(report)),
    }
    Ok(())
}
