//! Watching the identities: first Ready of each, and any change made after it.

use super::*;

#[derive(Default)]
pub(crate) struct WatchStats {
    /// Modifications of identities already seen Ready.
    pub(crate) changes_after_ready: u64,
    /// How many identities had any.
    pub(crate) changed_after_ready: u64,
    /// A few of them: what changed.
    pub(crate) examples: Vec<String>,
}

/// Report each identity once when it is first seen Ready; count (and describe a few of) the
/// changes made to identities after that, until `stop`.
pub(crate) async fn watch_identities(
    api: Api<TlsIdentity>,
    ready_tx: tokio::sync::mpsc::UnboundedSender<String>,
    synced_tx: tokio::sync::oneshot::Sender<()>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<WatchStats> {
    let mut synced = Some(synced_tx);
    let mut ready_seen: HashMap<String, serde_json::Value> = HashMap::new();
    let mut changed = HashSet::new();
    let mut stats = WatchStats::default();
    // Transient watch errors are retried with backoff (and logged) rather than end the run.
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = &mut stop => break,
        };
        let ev = match ev {
            None => break,
            Some(Err(e)) => {
                log(&format!("identity watch error (retrying): {e}"));
                continue;
            }
            Some(Ok(ev)) => ev,
        };
        match ev {
            watcher::Event::InitDone => {
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let name = obj.name_any();
                let value = comparable(&obj);
                if let Some(prev) = ready_seen.get(&name) {
                    if *prev != value {
                        stats.changes_after_ready += 1;
                        changed.insert(name.clone());
                        if stats.examples.len() < 3 {
                            let mut d = Vec::new();
                            json_diff("", prev, &value, &mut d);
                            stats.examples.push(format!("{name}: {}", d.join(", ")));
                        }
                    }
                    ready_seen.insert(name, value);
                } else if obj.condition("Ready").is_some_and(|c| c.status == "True") {
                    ready_seen.insert(name.clone(), value);
                    let _ = ready_tx.send(name);
                }
            }
            _ => {}
        }
    }
    stats.changed_after_ready = changed.len() as u64;
    Ok(stats)
}

/// The object without what changes on every write.
pub(crate) fn comparable(obj: &TlsIdentity) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    v
}

pub(crate) fn json_diff(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                json_diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}
