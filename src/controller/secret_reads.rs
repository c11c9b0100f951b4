//! How a reconcile observes its identity's Secret with as few requests as the facts allow.
//!
//! The controller watches only the metadata of the Secrets that wear its label (a foreign Secret
//! wearing that label costs its metadata, never its data). The data is read by a GET, except:
//!
//! - **Just written**: the object the apiserver returned for our last write of this Secret is kept
//!   until the next reconcile of the identity takes it, and used instead of a GET when the
//!   metadata cache shows the Secret still at that resourceVersion (nobody wrote it since). This
//!   is the reconcile that our own writes trigger; the entry is taken once, and entries nobody
//!   took expire, so nothing stays cached in the steady state.
//! - **Never issued**: an identity whose status holds no certificate, and whose Secret name is
//!   not in the cache, creates its Secret without reading first. A Secret of that name that the
//!   cache cannot see (someone else's, without our label) makes the create fail with 409: that is
//!   no error, the identity is marked to read first and looked at again at once (then the
//!   ordinary conflict rules apply).
//!
//! All of it is process memory: a restarted controller reads everything again.

use k8s_openapi::api::core::v1::Secret;
use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

/// A written Secret nobody took within this long is dropped.
const WRITTEN_TTL: Duration = Duration::from_secs(60);
/// Expired entries are swept when the map grows past this.
const SWEEP_ABOVE: usize = 256;

/// How to observe the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// GET it.
    Get,
    /// Use the object our last write returned.
    Written,
    /// It does not exist as far as tlsid can tell: create it, and read first if that conflicts.
    Absent,
}

/// What the reconcile knows before reading. Pure.
///
/// - `issued`: the identity's status holds a certificate;
/// - `cached_rv`: the Secret's resourceVersion in the metadata cache (`None`: not in it);
/// - `written_rv`: the resourceVersion our last write of it returned, if kept;
/// - `read_first`: a create without reading conflicted since.
pub fn plan(
    issued: bool,
    cached_rv: Option<&str>,
    written_rv: Option<&str>,
    read_first: bool,
) -> Read {
    match (cached_rv, written_rv) {
        _ if read_first => Read::Get,
        (Some(c), Some(w)) if c == w => Read::Written,
        (None, _) if !issued => Read::Absent,
        _ => Read::Get,
    }
}

/// The process memory behind [`plan`], keyed by `namespace/secret`.
#[derive(Default)]
pub struct SecretReads {
    written: Mutex<HashMap<String, (Instant, Secret)>>,
    read_first: Mutex<HashSet<String>>,
}

impl SecretReads {
    /// Keep what the apiserver returned for our write.
    pub fn wrote(&self, key: String, secret: Secret) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written.len() >= SWEEP_ABOVE {
            written.retain(|_, (at, _)| at.elapsed() < WRITTEN_TTL);
        }
        written.insert(key, (Instant::now(), secret));
    }

    /// Take the kept write, if not expired (whatever the plan decides, it is used at most once).
    pub fn take_written(&self, key: &str) -> Option<Secret> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written
            .remove(key)
            .filter(|(at, _)| at.elapsed() < WRITTEN_TTL)
            .map(|(_, s)| s)
    }

    /// A create without reading conflicted: read first next time.
    pub fn conflicted(&self, key: String) {
        self.read_first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
    }

    /// Whether to read first, clearing the mark (one read answers it).
    pub fn take_read_first(&self, key: &str) -> bool {
        self.read_first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_what_the_facts_do_not_answer() {
        use Read::*;
        let cases = [
            // (issued, cached rv, written rv, read first) -> read
            (
                (false, None, None, false),
                Absent,
                "never issued, nothing of that name of ours",
            ),
            (
                (false, None, None, true),
                Get,
                "a create conflicted: someone else's Secret",
            ),
            (
                (false, Some("5"), None, false),
                Get,
                "a Secret of ours exists: read it",
            ),
            (
                (true, None, None, false),
                Get,
                "issued but the cache has no Secret: read",
            ),
            (
                (true, Some("7"), Some("7"), false),
                Written,
                "nobody wrote since our write",
            ),
            (
                (true, Some("8"), Some("7"), false),
                Get,
                "written since: read",
            ),
            (
                (true, None, Some("7"), false),
                Get,
                "cache not caught up (or deleted): read",
            ),
            ((true, Some("7"), Some("7"), true), Get, "read first wins"),
        ];
        for ((issued, cached, written, first), want, why) in cases {
            assert_eq!(plan(issued, cached, written, first), want, "{why}");
        }
    }

    #[test]
    fn a_kept_write_is_taken_once() {
        let reads = SecretReads::default();
        let mut s = Secret::default();
        s.metadata.resource_version = Some("9".into());
        reads.wrote("ns/a-tls".into(), s);
        let kept = reads.take_written("ns/a-tls").expect("kept");
        assert_eq!(kept.metadata.resource_version.as_deref(), Some("9"));
        assert!(reads.take_written("ns/a-tls").is_none());
        reads.conflicted("ns/b-tls".into());
        assert!(reads.take_read_first("ns/b-tls"));
        assert!(!reads.take_read_first("ns/b-tls"));
    }
}
