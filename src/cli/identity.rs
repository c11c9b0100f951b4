//! `tlsid status NAME` (one screen: conditions, the certificate, its Secret, consumers, Events)
//! and `tlsid renew NAME | --all [-l SELECTOR] [--wait]`.

use super::{
    EventView, Output, Scope, Style, Target, client,
    inspect::{KeyCheck, SecretReport, cert_fields, read_authority, secret_report, write_problems},
    recent_events,
    render::{Fields, TOP, relative, short_duration, when},
};
use crate::api::{RENEW_ANNOTATION, TlsIdentity, install_of};
use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Serialize;
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// One condition as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: jiff::Timestamp,
}

/// What `tlsid status NAME` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityReport {
    pub namespace: String,
    pub name: String,
    /// The install that serves it (label `tlsid.dev/install`).
    pub install: String,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// The names the spec asks for.
    pub requested: Requested,
    pub conditions: Vec<ConditionView>,
    pub secret_name: String,
    /// The Secret as `inspect secret` reads it; `None` when it does not exist.
    pub secret: Option<SecretReport>,
    pub serial: Option<String>,
    pub renewal_time: Option<jiff::Timestamp>,
    pub revision: Option<i64>,
    /// A `tlsid.dev/renew` request not acted upon yet.
    pub renewal_requested: Option<String>,
    /// The workloads that use the Secret (`status.consumers`), as the controller reports them.
    pub consumers: Vec<serde_json::Value>,
    pub events: Vec<EventView>,
    /// What is wrong, in words (empty when all is well).
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requested {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub uris: Vec<String>,
}

/// The report for one identity, from the objects read and the time. Pure.
pub fn identity_report(
    id: &TlsIdentity,
    raw_status: Option<&serde_json::Value>,
    secret: Option<&Secret>,
    authority: Result<&crate::api::TlsAuthority, String>,
    events: Vec<EventView>,
    now: jiff::Timestamp,
) -> IdentityReport {
    let status = id.status.clone().unwrap_or_default();
    let conditions: Vec<ConditionView> = status
        .conditions
        .iter()
        .map(|c| ConditionView {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: c.last_transition_time.0,
        })
        .collect();
    let secret = secret.map(|s| secret_report(s, authority, now));
    let mut problems = vec![];
    match conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" => {}
        Some(c) => problems.push(format!("not Ready: {} — {}", c.reason, c.message)),
        None => problems.push("no Ready condition yet: has a controller seen it?".into()),
    }
    if id.metadata.generation.is_some() && status.observed_generation != id.metadata.generation {
        problems.push(format!(
            "the status describes generation {}, the spec is at {}: the controller has not caught up",
            status
                .observed_generation
                .map_or("none".into(), |g| g.to_string()),
            id.metadata.generation.unwrap_or_default()
        ));
    }
    match &secret {
        None => problems.push(format!("Secret {} does not exist", id.secret_name())),
        Some(s) => {
            let serial = s.leaf.as_ref().map(|l| l.serial.as_str());
            if status.serial_number.is_some() && serial != status.serial_number.as_deref() {
                problems.push(
                    "the Secret's certificate is not the one the status describes".to_string(),
                );
            }
            problems.extend(s.problems.iter().map(|p| format!("Secret: {p}")));
        }
    }
    let pending = id
        .annotations()
        .get(RENEW_ANNOTATION)
        .filter(|r| Some(r.as_str()) != status.last_renew_request.as_deref())
        .cloned();
    let consumers = raw_status
        .and_then(|s| s.get("consumers"))
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    for c in &consumers {
        if c.get("caughtUp").and_then(|v| v.as_bool()) == Some(false) {
            problems.push(format!("consumer {} has not caught up", consumer_name(c)));
        }
    }
    IdentityReport {
        namespace: id.namespace().unwrap_or_default(),
        name: id.name_any(),
        install: install_of(id.labels()).to_string(),
        generation: id.metadata.generation,
        observed_generation: status.observed_generation,
        requested: Requested {
            common_name: id.spec.common_name.clone(),
            dns_names: id.spec.dns_names.clone(),
            ip_addresses: id.spec.ip_addresses.clone(),
            uris: id.spec.uris.clone(),
        },
        conditions,
        secret_name: id.secret_name(),
        secret,
        serial: status.serial_number.clone(),
        renewal_time: status.renewal_time.as_ref().map(|t| t.0),
        revision: status.revision,
        renewal_requested: pending,
        consumers,
        events,
        problems,
    }
}

fn consumer_name(c: &serde_json::Value) -> String {
    let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    format!("{}/{}", s("kind"), s("name"))
}

/// `tlsid status NAME`.
pub async fn status(target: &Target, scope: &Scope, name: &str) -> anyhow::Result<IdentityReport> {
    let client = client(target).await?;
    let ns = scope.one(&client);
    // Read untyped first: the controller's extra status fields are shown as they are, and an
    // identity that does not parse is named, not a crash.
    let ar = kube::api::ApiResource::erase::<TlsIdentity>(&());
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let obj = raw
        .get_opt(name)
        .await
        .with_context(|| format!("reading TlsIdentity {ns}/{name}"))?
        .with_context(|| format!("no TlsIdentity {name} in namespace {ns}"))?;
    let raw_status = obj.data.get("status").cloned();
    let id: TlsIdentity = serde_json::from_value(serde_json::to_value(&obj)?)
        .with_context(|| format!("TlsIdentity {ns}/{name} cannot be read as tlsid.dev/v1alpha1"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get_opt(&id.secret_name())
        .await
        .with_context(|| format!("reading Secret {ns}/{}", id.secret_name()))?;
    let authority = read_authority(&client, target).await;
    let events = recent_events(&client, &ns, "TlsIdentity", name, 8).await;
    Ok(identity_report(
        &id,
        raw_status.as_ref(),
        secret.as_ref(),
        authority.as_ref().map_err(Clone::clone),
        events,
        jiff::Timestamp::now(),
    ))
}

/// The human format of `tlsid status`.
pub fn render_identity(r: &IdentityReport, now: jiff::Timestamp, style: Style) -> String {
    let mut o = String::new();
    let mut head = Fields::aligned(TOP);
    head.add(
        "Identity",
        style.bold(&format!("{}/{}", r.namespace, r.name)),
    )
    .add("Install", r.install.clone());
    if let Some(g) = r.generation {
        let observed = match r.observed_generation {
            Some(o) if o == g => style.good(&format!("observed {o}")),
            Some(o) => style.warn(&format!("observed {o}")),
            None => style.warn("not observed yet"),
        };
        head.add("Generation", format!("{g} ({observed})"));
    }
    if let Some(cn) = &r.requested.common_name {
        head.add("Common name", cn.clone());
    }
    head.list("Requested", requested_names(&r.requested));
    head.write(&mut o, 0);
    let _ = writeln!(o, "Conditions:");
    if r.conditions.is_empty() {
        let _ = writeln!(o, "  {}", style.warn("none yet"));
    }
    let width = r
        .conditions
        .iter()
        .map(|c| c.type_.len())
        .max()
        .unwrap_or(0);
    let rwidth = r
        .conditions
        .iter()
        .map(|c| c.reason.len())
        .max()
        .unwrap_or(0);
    for c in &r.conditions {
        // `Issuing` True means work in progress; for the others True is the good state.
        let good = c.type_ != "Issuing";
        let _ = writeln!(
            o,
            "  {:width$}  {}  {:rwidth$}  {} ({})",
            c.type_,
            style.status(&format!("{:5}", c.status), good),
            c.reason,
            c.message,
            relative(c.last_transition_time, now),
        );
    }
    let mut secret_line = Fields::aligned(TOP);
    match &r.secret {
        Some(s) => {
            match &s.leaf {
                Some(leaf) => {
                    let _ = writeln!(o, "Certificate:");
                    let mut f = cert_fields(leaf, now, style, Some(issuer_line(s, style)));
                    if let Some(t) = r.renewal_time {
                        f.add("Renewal", when(t, now));
                    }
                    if let Some(rev) = r.revision {
                        f.add("Revision", rev.to_string());
                    }
                    f.write(&mut o, 2);
                }
                None => {
                    let _ = writeln!(
                        o,
                        "{:TOP$} {}",
                        "Certificate:",
                        style.bad("none in the Secret")
                    );
                }
            }
            let key = match &s.key {
                KeyCheck::Matches => style.good("key matches"),
                KeyCheck::Mismatch => style.bad("key DOES NOT match"),
                KeyCheck::Missing => style.bad("no key"),
                KeyCheck::Unreadable(why) => style.bad(&format!("key unreadable ({why})")),
            };
            secret_line.add(
                "Secret",
                format!(
                    "{} ({}; {}; ca.crt: {} root(s); {})",
                    r.secret_name,
                    s.type_,
                    s.keys.keys().cloned().collect::<Vec<_>>().join(", "),
                    s.bundle.len(),
                    key
                ),
            );
        }
        None => {
            secret_line.add(
                "Secret",
                format!("{} {}", r.secret_name, style.bad("(does not exist)")),
            );
        }
    }
    if let Some(req) = &r.renewal_requested {
        secret_line.add(
            "Renewal",
            format!("requested ({req}), {}", style.warn("not acted upon yet")),
        );
    }
    secret_line.write(&mut o, 0);
    if !r.consumers.is_empty() {
        let _ = writeln!(o, "Consumers:");
        for c in &r.consumers {
            let _ = writeln!(o, "  {}", consumer_line(c, now, style));
        }
    }
    if !r.events.is_empty() {
        let _ = writeln!(o, "Events (newest first):");
        for e in &r.events {
            let age = e
                .last_seen
                .map(|t| relative(t, now))
                .unwrap_or_else(|| "-".into());
            let kind = if e.type_ == "Warning" {
                style.warn(&e.type_)
            } else {
                e.type_.clone()
            };
            let times = if e.count > 1 {
                format!(" (x{})", e.count)
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "  {age:>12}  {kind:7}  {}: {}{times}",
                e.reason, e.message
            );
        }
    }
    write_problems(&mut o, &r.problems, style);
    o
}

fn requested_names(r: &Requested) -> Vec<String> {
    r.dns_names
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(r.ip_addresses.iter().map(|i| format!("IP:{i}")))
        .chain(r.uris.iter().map(|u| format!("URI:{u}")))
        .collect()
}

fn issuer_line(s: &SecretReport, style: Style) -> String {
    let Some(leaf) = &s.leaf else {
        return "-".into();
    };
    let mut line = leaf.issuer.clone();
    if let Some(t) = &s.install_trust {
        match (&t.unknown, &t.signed_by, t.trusted) {
            (Some(why), _, _) => line.push_str(&style.warn(&format!(" (install: {why})"))),
            (None, Some(role), true) => {
                line.push_str(&style.good(&format!(" (the install's {role} CA; trusted)")))
            }
            (None, None, true) => line.push_str(&style.good(" (trusted by the install)")),
            (None, _, false) => line.push_str(&style.bad(" (NOT trusted by the install)")),
        }
    }
    line
}

fn consumer_line(c: &serde_json::Value, now: jiff::Timestamp, style: Style) -> String {
    let s = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let caught_up = match c.get("caughtUp").and_then(|v| v.as_bool()) {
        Some(true) => style.good("caught up"),
        Some(false) => style.warn("not caught up"),
        None => "-".into(),
    };
    let mut line = format!(
        "{}  reload: {}  {caught_up}",
        consumer_name(c),
        s("reload").unwrap_or_else(|| "-".into())
    );
    if let Some(t) = s("lastRestart").and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        let _ = write!(line, "  restarted {}", relative(t, now));
    }
    if let Some(m) = s("message") {
        let _ = write!(line, "  {}", style.warn(&m));
    }
    line
}

/// What `tlsid renew` asks for.
#[derive(Clone, Debug, clap::Args)]
pub struct RenewArgs {
    /// The identity to renew.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub name: Option<String>,
    /// Every identity in the namespace (or, with -A, the cluster) served by the install.
    #[arg(long)]
    pub all: bool,
    /// With --all: only identities with these labels (kubectl's label selector syntax).
    #[arg(short = 'l', long, requires = "all")]
    pub selector: Option<String>,
    /// Wait until each identity holds a new certificate, or says why it cannot.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (Go-style duration).
    #[arg(long, default_value = "5m", value_parser = crate::demo::parse_positive_duration)]
    pub timeout: Duration,
}

/// One identity's renewal, as `renew` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Renewal {
    pub namespace: String,
    pub name: String,
    /// The value written to `tlsid.dev/renew`.
    pub request: String,
    pub serial_before: Option<String>,
    /// With --wait: the new certificate's serial.
    pub serial_after: Option<String>,
    /// With --wait: `Renewed`, or why not (the Ready reason and message, or `Timeout`).
    pub outcome: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewReport {
    pub renewals: Vec<Renewal>,
}

impl RenewReport {
    /// Every renewal done (when waited for), so the command's exit status can say so.
    pub fn all_renewed(&self) -> bool {
        self.renewals
            .iter()
            .all(|r| r.outcome.as_deref().is_none_or(|o| o == "Renewed"))
    }
}

/// Where a renewal stands, from the identity as watched. Pure.
fn renewal_state(id: &TlsIdentity, request: &str, serial_before: Option<&str>) -> Option<String> {
    let status = id.status.as_ref()?;
    let current = status.observed_generation == id.metadata.generation;
    if status.last_renew_request.as_deref() == Some(request) && current {
        let ready = id.condition("Ready");
        if ready.is_some_and(|c| c.status == "True")
            && status.serial_number.as_deref() != serial_before
        {
            return Some("Renewed".into());
        }
    }
    // A refusal that no renewal request can change: say it rather than wait for the timeout.
    let ready = id.condition("Ready")?;
    (current
        && ready.status == "False"
        && matches!(
            ready.reason.as_str(),
            "InvalidSpec" | "NotPermitted" | "SecretConflict"
        ))
    .then(|| format!("{}: {}", ready.reason, ready.message))
}

/// `tlsid renew`.
pub async fn renew(
    target: &Target,
    scope: &Scope,
    args: &RenewArgs,
) -> anyhow::Result<RenewReport> {
    let client = client(target).await?;
    let ns = if args.all {
        scope.many(&client)
    } else {
        Some(scope.one(&client))
    };
    let api: Api<TlsIdentity> = match &ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let chosen: Vec<TlsIdentity> = match &args.name {
        Some(name) => {
            let ns = ns.as_deref().unwrap_or_default();
            vec![
                api.get_opt(name)
                    .await
                    .with_context(|| format!("reading TlsIdentity {ns}/{name}"))?
                    .with_context(|| format!("no TlsIdentity {name} in namespace {ns}"))?,
            ]
        }
        None => {
            let mut lp = ListParams::default();
            if let Some(sel) = &args.selector {
                lp = lp.labels(sel);
            }
            api.list(&lp)
                .await
                .context("listing TlsIdentities")?
                .items
                .into_iter()
                .filter(|id| install_of(id.labels()) == target.install)
                .collect()
        }
    };
    if chosen.is_empty() {
        bail!(
            "no TlsIdentity of install {} matches{}",
            target.install,
            ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
        );
    }
    let token = format!(
        "{}-{:08x}",
        jiff::Timestamp::now().as_second(),
        rand::random::<u32>()
    );
    // Annotate a few at a time: `--all` over thousands should take seconds, not minutes, without
    // flooding the apiserver.
    let renewals: Vec<Renewal> = futures::stream::iter(&chosen)
        .map(|id| {
            let (client, token) = (client.clone(), token.clone());
            async move {
                let (idns, name) = (id.namespace().unwrap_or_default(), id.name_any());
                let patch =
                    serde_json::json!({"metadata": {"annotations": {RENEW_ANNOTATION: token}}});
                Api::<TlsIdentity>::namespaced(client, &idns)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("annotating TlsIdentity {idns}/{name}"))?;
                anyhow::Ok(Renewal {
                    namespace: idns,
                    name,
                    request: token,
                    serial_before: id.status.as_ref().and_then(|s| s.serial_number.clone()),
                    serial_after: None,
                    outcome: None,
                })
            }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let mut renewals = renewals;
    if args.wait {
        wait_renewed(
            &api,
            &args.name,
            args.selector.as_deref(),
            &mut renewals,
            args.timeout,
        )
        .await?;
    }
    Ok(RenewReport { renewals })
}

/// Follow the identities with one watch until each is renewed or refused, or the time is up.
async fn wait_renewed(
    api: &Api<TlsIdentity>,
    name: &Option<String>,
    selector: Option<&str>,
    renewals: &mut [Renewal],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut config = watcher::Config::default();
    if let Some(name) = name {
        config = config.fields(&format!("metadata.name={name}"));
    }
    if let Some(sel) = selector {
        config = config.labels(sel);
    }
    let mut index: BTreeMap<(String, String), usize> = renewals
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.namespace.clone(), r.name.clone()), i))
        .collect();
    let stream = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::Instant::now() + timeout;
    while !index.is_empty() {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let id = match next {
            Err(_) => break,
            Ok(None) => bail!("the watch of TlsIdentities ended"),
            Ok(Some(Err(e))) => return Err(e).context("watching TlsIdentities"),
            Ok(Some(Ok(id))) => id,
        };
        let key = (id.namespace().unwrap_or_default(), id.name_any());
        let Some(&i) = index.get(&key) else {
            continue;
        };
        let r = &mut renewals[i];
        if let Some(outcome) = renewal_state(&id, &r.request, r.serial_before.as_deref()) {
            r.serial_after = id.status.as_ref().and_then(|s| s.serial_number.clone());
            r.outcome = Some(outcome);
            index.remove(&key);
        }
    }
    for &i in index.values() {
        renewals[i].outcome = Some(format!(
            "Timeout: not renewed within {}",
            short_duration(timeout.as_secs())
        ));
    }
    Ok(())
}

/// The human format of `tlsid renew`.
pub fn render_renew(r: &RenewReport, style: Style) -> String {
    let mut o = String::new();
    for x in &r.renewals {
        let id = format!("{}/{}", x.namespace, x.name);
        let line = match (&x.outcome, &x.serial_after) {
            (None, _) => format!("{id}: renewal requested ({})", x.request),
            (Some(o), Some(serial)) if o == "Renewed" => style.good(&format!(
                "{id}: renewed, serial {} -> {serial}",
                x.serial_before.as_deref().unwrap_or("none")
            )),
            (Some(o), _) => style.bad(&format!("{id}: not renewed: {o}")),
        };
        let _ = writeln!(o, "{line}");
    }
    o
}

/// Print `status` as asked.
pub fn print_identity(output: Output, r: &IdentityReport) -> anyhow::Result<()> {
    super::print(output, r, |r| {
        render_identity(r, jiff::Timestamp::now(), Style::for_stdout())
    })
}

/// Print `renew` as asked.
pub fn print_renew(output: Output, r: &RenewReport) -> anyhow::Result<()> {
    super::print(output, r, |r| render_renew(r, Style::for_stdout()))
}

#[cfg(test)]
pub(super) fn renewal_state_for_tests(
    id: &TlsIdentity,
    request: &str,
    serial_before: Option<&str>,
) -> Option<String> {
    renewal_state(id, request, serial_before)
}
