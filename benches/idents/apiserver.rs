//! The apiserver's own counters (`apiserver_request_total`, latencies): writes and requests by
//! resource, verb and code, and waiting for them to settle.

use super::*;

// ---------------------------------------------------------------------------------------------
// apiserver metrics

pub(crate) const MUTATING: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

/// `apiserver_request_total` by (verb, group, resource, subresource, code).
#[derive(Default, Clone)]
pub(crate) struct RequestCounts {
    pub(crate) by_key: BTreeMap<(String, String, String, String, String), u64>,
    /// `apiserver_request_duration_seconds` (sum, count) by "VERB group/resource[/sub]".
    pub(crate) latency: BTreeMap<String, (f64, f64)>,
}

impl RequestCounts {
    pub(crate) fn parse(text: &str) -> Self {
        let mut by_key = BTreeMap::new();
        let mut latency: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for line in text.lines() {
            for (prefix, is_sum) in [
                ("apiserver_request_duration_seconds_sum{", true),
                ("apiserver_request_duration_seconds_count{", false),
            ] {
                let Some((labels, value)) =
                    line.strip_prefix(prefix).and_then(|r| r.rsplit_once('}'))
                else {
                    continue;
                };
                let labels = parse_labels(labels);
                let value: f64 = value.trim().parse().unwrap_or(0.0);
                let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let entry = latency
                    .entry(request_name(
                        &get("verb"),
                        &get("group"),
                        &get("resource"),
                        &get("subresource"),
                    ))
                    .or_default();
                if is_sum {
                    entry.0 += value;
                } else {
                    entry.1 += value;
                }
            }
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let labels = parse_labels(labels);
            let value: f64 = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let key = (
                get("verb"),
                get("group"),
                get("resource"),
                get("subresource"),
                get("code"),
            );
            *by_key.entry(key).or_insert(0) += value as u64;
        }
        Self { by_key, latency }
    }

    /// Mean latency (ms) and count of each kind of request in this delta; WATCH left out.
    pub(crate) fn latencies(&self) -> Vec<(String, f64, f64)> {
        self.latency
            .iter()
            .filter(|(k, (_, count))| *count > 0.0 && !k.starts_with("WATCH"))
            .map(|(k, (sum, count))| (k.clone(), sum / count * 1000.0, *count))
            .collect()
    }

    pub(crate) fn delta(&self, before: &Self) -> Self {
        let mut by_key = BTreeMap::new();
        for (k, v) in &self.by_key {
            let d = v.saturating_sub(before.by_key.get(k).copied().unwrap_or(0));
            if d > 0 {
                by_key.insert(k.clone(), d);
            }
        }
        let mut latency = BTreeMap::new();
        for (k, (sum, count)) in &self.latency {
            let (s0, c0) = before.latency.get(k).copied().unwrap_or_default();
            if count - c0 > 0.0 {
                latency.insert(k.clone(), (sum - s0, count - c0));
            }
        }
        Self { by_key, latency }
    }

    pub(crate) fn mutating(
        &self,
    ) -> impl Iterator<Item = (&(String, String, String, String, String), u64)> {
        self.by_key
            .iter()
            .filter(|((verb, ..), _)| MUTATING.contains(&verb.as_str()))
            .map(|(k, v)| (k, *v))
    }

    /// Mutating requests to what the controller writes.
    pub(crate) fn writes(&self) -> Writes {
        let mut w = Writes::default();
        for ((_, group, resource, sub, _), v) in self.mutating() {
            match (group.as_str(), resource.as_str(), sub.as_str()) {
                ("", "secrets", _) => w.secrets += v,
                ("tlsid.dev", "tlsidentities", "status") => w.status += v,
                ("tlsid.dev", "tlsidentities", _) => w.identities += v,
                (_, "events", _) => w.events += v,
                _ => {}
            }
        }
        w
    }

    pub(crate) fn other_writes(&self) -> u64 {
        self.mutating()
            .filter(|((_, group, resource, ..), _)| {
                !matches!(
                    (group.as_str(), resource.as_str()),
                    ("", "secrets") | ("tlsid.dev", "tlsidentities") | (_, "events")
                )
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Non-2xx answers to mutating requests on what the controller writes.
    pub(crate) fn non_2xx(&self) -> u64 {
        self.mutating()
            .filter(|((_, group, resource, _, code), _)| {
                !code.starts_with('2')
                    && matches!(
                        (group.as_str(), resource.as_str()),
                        ("", "secrets") | ("tlsid.dev", "tlsidentities") | (_, "events")
                    )
            })
            .map(|(_, v)| v)
            .sum()
    }

    pub(crate) fn code_total(&self, code: &str) -> u64 {
        self.by_key
            .iter()
            .filter(|((.., c), _)| c == code)
            .map(|(_, v)| *v)
            .sum()
    }

    pub(crate) fn mutating_by_resource(&self) -> BTreeMap<String, u64> {
        self.by_resource(true)
    }

    /// Request counts by "VERB group/resource[/subresource] code"; WATCH left out.
    pub(crate) fn by_resource(&self, mutating_only: bool) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let requests = self.by_key.iter().filter(|((verb, ..), _)| {
            verb != "WATCH" && (!mutating_only || MUTATING.contains(&verb.as_str()))
        });
        for ((verb, group, resource, sub, code), v) in requests {
            *out.entry(format!(
                "{} {code}",
                request_name(verb, group, resource, sub)
            ))
            .or_insert(0) += *v;
        }
        out
    }
}

pub(crate) fn request_name(verb: &str, group: &str, resource: &str, sub: &str) -> String {
    let g = if group.is_empty() { "core" } else { group };
    if sub.is_empty() {
        format!("{verb} {g}/{resource}")
    } else {
        format!("{verb} {g}/{resource}/{sub}")
    }
}

pub(crate) fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut val = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len() - eq - 2;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(key, val);
        rest = &rest[(eq + 2 + end + 1).min(rest.len())..];
    }
    out
}

pub(crate) async fn scrape_apiserver(client: &Client) -> anyhow::Result<RequestCounts> {
    let req = axum::http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("reading the apiserver's /metrics")?;
    let counts = RequestCounts::parse(&text);
    ensure!(
        !counts.by_key.is_empty(),
        "no apiserver_request_total in the apiserver's /metrics"
    );
    Ok(counts)
}

/// After convergence the controller may still be publishing the last Events: wait until it has
/// counted N issuances and the apiserver's write counters stop moving (1 s unchanged), at most 30 s.
pub(crate) async fn settle(
    client: &Client,
    controller: &str,
    before: &RequestCounts,
    ctl_before: &ControllerCounts,
    n: usize,
) -> anyhow::Result<(RequestCounts, ControllerCounts)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = scrape_apiserver(client).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = scrape_apiserver(client).await?;
        let ctl = scrape_controller(controller).await?;
        let stable = now.delta(before).writes().total() == last.delta(before).writes().total();
        let issued = ctl.issuances.saturating_sub(ctl_before.issuances) >= n as u64;
        if (stable && issued) || Instant::now() >= deadline {
            if !(stable && issued) {
                log("write counters still moving after 30 s; counting what there is");
            }
            return Ok((now, ctl));
        }
        last = now;
    }
}
