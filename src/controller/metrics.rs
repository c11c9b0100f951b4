//! Prometheus metrics, `tlsid_` prefixed, served on `/metrics`.

use crate::api::TlsIdentityStatus;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    collections::BTreeSet,
    sync::{Mutex, atomic::AtomicI64},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub namespace: String,
    pub name: String,
    pub condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// A CA certificate of the CA Secret: the signer, the next CA, the previous signer, or a root of
/// the trust bundle.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaCertLabels {
    pub role: String,
    pub fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub expiration: Family<IdentityLabels, Gauge<i64, AtomicI64>>,
    pub renewal: Family<IdentityLabels, Gauge<i64, AtomicI64>>,
    pub ready: Family<ReadyLabels, Gauge<i64, AtomicI64>>,
    pub ca_expiration: Gauge<i64, AtomicI64>,
    pub issuances: Family<ReasonLabels, Counter>,
    pub reconciliations: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub blocked: Family<ReasonLabels, Counter>,
    /// 1 while this replica holds the leader Lease (the one that writes).
    pub leader: Gauge<i64, AtomicI64>,
    /// Renewals of the leader Lease seen (by any replica): the only writes an idle install makes.
    pub lease_renewals: Counter,
    /// Writes to identities, Secrets, Events and workloads, by kind (zero when nothing changes).
    pub writes: Family<KindLabels, Counter>,
    /// Events about identities this replica did not act on, by why (OtherInstall, Standby).
    pub skipped: Family<ReasonLabels, Counter>,
    /// Issuances that had to wait for the issuance budget.
    pub budget_waits: Counter,
    /// Identities holding a reserved slot of the issuance budget.
    pub budget_waiting: Gauge<i64, AtomicI64>,
    /// 1 while the CA Secret holds a usable CA, 0 while the last good CA signs in its place.
    pub ca_secret_valid: Gauge<i64, AtomicI64>,
    /// 1 while the built-in name rule is enforced; 0 when the install lets any identity claim any name.
    pub name_policy_enforced: Gauge<i64, AtomicI64>,
    /// Admission reviews answered by the webhook, by decision.
    pub admission_reviews: Family<ReasonLabels, Counter>,
    /// 1 for the CA rollover's current phase, 0 for the others.
    pub rollover_phase: Family<PhaseLabels, Gauge<i64, AtomicI64>>,
    /// notAfter of every CA certificate in the CA Secret, by role and fingerprint.
    pub ca_certificates: Family<CaCertLabels, Gauge<i64, AtomicI64>>,
    /// Identities whose leaf the previous CA signed (during a rollover).
    pub leaves_on_previous: Gauge<i64, AtomicI64>,
    /// Rollovers started, by trigger (Requested, Automatic, SecretEdited).
    pub rollovers: Family<ReasonLabels, Counter>,
    /// 1 while a CA the user supplied is past its rotation point and no rollover is running.
    pub ca_expiring: Gauge<i64, AtomicI64>,
    /// Objects of the trust bundle's name, in selected places, that tlsid does not own.
    pub trust_bundle_conflicts: Gauge<i64, AtomicI64>,
    /// The identities that have per-identity series, so they can be removed with the identity.
    known: Mutex<BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tlsid");
        let m = Self {
            expiration: Family::default(),
            renewal: Family::default(),
            ready: Family::default(),
            ca_expiration: Gauge::default(),
            issuances: Family::default(),
            reconciliations: Counter::default(),
            errors: Family::default(),
            reconcile_duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            blocked: Family::default(),
            leader: Gauge::default(),
            lease_renewals: Counter::default(),
            writes: Family::default(),
            skipped: Family::default(),
            budget_waits: Counter::default(),
            budget_waiting: Gauge::default(),
            ca_secret_valid: Gauge::default(),
            name_policy_enforced: Gauge::default(),
            admission_reviews: Family::default(),
            rollover_phase: Family::default(),
            ca_certificates: Family::default(),
            leaves_on_previous: Gauge::default(),
            rollovers: Family::default(),
            ca_expiring: Gauge::default(),
            trust_bundle_conflicts: Gauge::default(),
            known: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "Expiry (notAfter) of the certificate held for each TlsIdentity, Unix seconds",
            m.expiration.clone(),
        );
        registry.register(
            "certificate_renewal_timestamp_seconds",
            "When each TlsIdentity's certificate will be renewed, Unix seconds",
            m.renewal.clone(),
        );
        registry.register(
            "certificate_ready_status",
            "Ready condition of each TlsIdentity: 1 for the current condition value",
            m.ready.clone(),
        );
        registry.register(
            "ca_expiration_timestamp_seconds",
            "Expiry (notAfter) of the signing CA certificate, Unix seconds",
            m.ca_expiration.clone(),
        );
        registry.register(
            "issuances",
            "Certificates issued, by reason",
            m.issuances.clone(),
        );
        registry.register(
            "reconciliations",
            "Reconciliations run",
            m.reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliation errors, by category",
            m.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "issuance_blocked",
            "Identities that could not be issued because the CA cannot sign them, by reason (CaExpired, CaExpiring); counted when an identity becomes blocked",
            m.blocked.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and writes; 0 on standbys",
            m.leader.clone(),
        );
        registry.register(
            "lease_renewals",
            "Renewals of the leader Lease observed: the only writes an idle install makes",
            m.lease_renewals.clone(),
        );
        registry.register(
            "writes",
            "Writes to the apiserver for identities, by kind (secret, status, event, deployment, service, ca_secret); Lease renewals are counted apart",
            m.writes.clone(),
        );
        registry.register(
            "reconciliations_skipped",
            "Identity events this replica did not act on: OtherInstall (another install serves the identity), Standby (this replica is not the leader)",
            m.skipped.clone(),
        );
        registry.register(
            "issuance_budget_waits",
            "Issuances that waited for the install's issuance budget (--issuance-rate, --issuance-burst)",
            m.budget_waits.clone(),
        );
        registry.register(
            "issuance_budget_waiting",
            "Identities waiting for a slot of the issuance budget",
            m.budget_waiting.clone(),
        );
        registry.register(
            "ca_secret_valid",
            "1 while the CA Secret holds a usable CA; 0 while it does not and the last good CA keeps signing",
            m.ca_secret_valid.clone(),
        );
        registry.register(
            "name_policy_enforced",
            "1 while identities may claim only names of their namespace or granted by a TlsIdentityPolicy; 0 when any identity may claim any name",
            m.name_policy_enforced.clone(),
        );
        registry.register(
            "admission_reviews",
            "TlsIdentity admission reviews answered by the webhook, by reason (Allowed, NotPermitted, Invalid, NotReady)",
            m.admission_reviews.clone(),
        );
        registry.register(
            "ca_rollover_phase",
            "The CA rollover's phase: 1 for the current one (Stable, Publish, WaitForTrust, Switch, Drain)",
            m.rollover_phase.clone(),
        );
        registry.register(
            "ca_certificate_expiration_timestamp_seconds",
            "Expiry (notAfter) of each CA certificate in the CA Secret, by role (signer, next, previous, root) and SHA-256 fingerprint, Unix seconds",
            m.ca_certificates.clone(),
        );
        registry.register(
            "ca_leaves_on_previous",
            "Identities whose current certificate the previous CA signed (re-issued during a rollover's Switch phase)",
            m.leaves_on_previous.clone(),
        );
        registry.register(
            "ca_rollovers",
            "CA rollovers started, by trigger (Requested, Automatic, SecretEdited)",
            m.rollovers.clone(),
        );
        registry.register(
            "ca_expiring",
            "1 while a CA the user supplied is past its rotation point with no rollover to a next CA under way",
            m.ca_expiring.clone(),
        );
        registry.register(
            "trust_bundle_conflicts",
            "Trust ConfigMaps (in selected namespaces) or the ClusterTrustBundle of tlsid's name that tlsid does not own and leaves alone",
            m.trust_bundle_conflicts.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The CA Secret's certificates and phase, as last accepted.
    pub fn ca_state(&self, state: &crate::plan::ca_state::CaState) {
        use crate::plan::rollover::Phase;
        for p in Phase::ALL {
            self.rollover_phase
                .get_or_create(&PhaseLabels {
                    phase: p.as_str().into(),
                })
                .set(i64::from(p == state.record.phase));
        }
        self.ca_certificates.clear();
        let set = |role: &str, fingerprint: String, not_after: i64| {
            self.ca_certificates
                .get_or_create(&CaCertLabels {
                    role: role.into(),
                    fingerprint,
                })
                .set(not_after);
        };
        set(
            "signer",
            state.current.fingerprint().to_string(),
            state.current.not_after().as_second(),
        );
        if let Some(next) = &state.next {
            set(
                "next",
                next.fingerprint().to_string(),
                next.not_after().as_second(),
            );
        }
        for root in state.current.roots() {
            let end = crate::pki::not_after_of(root).map_or(0, |t| t.as_second());
            set("root", crate::pki::fingerprint(root), end);
        }
        if let Some(p) = &state.previous {
            let end = crate::pki::not_after_of(&p.signer).map_or(0, |t| t.as_second());
            set("previous", p.fingerprint.clone(), end);
        }
    }

    pub fn skip(&self, reason: &str) {
        self.skipped
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// One write to the apiserver of `kind`.
    pub fn wrote(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Per-identity series from the identity's status: never beside it.
    pub fn record(&self, namespace: &str, name: &str, status: &TlsIdentityStatus, ready: &str) {
        self.remember(namespace, name);
        if let (Some(not_after), Some(renew_at)) = (&status.not_after, &status.renewal_time) {
            self.set_certificate(namespace, name, not_after.0, renew_at.0);
        }
        self.set_ready(namespace, name, ready);
    }

    /// An identity that cannot be read is not Ready.
    pub fn record_unreadable(&self, namespace: &str, name: &str) {
        self.remember(namespace, name);
        self.set_ready(namespace, name, "False");
    }

    fn remember(&self, namespace: &str, name: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !known.contains(&(namespace.to_string(), name.to_string())) {
            known.insert((namespace.into(), name.into()));
        }
    }

    /// Remove every series of a deleted identity.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), name.to_string()));
        let labels = IdentityLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.expiration.remove(&labels);
        self.renewal.remove(&labels);
        for condition in ["True", "False", "Unknown"] {
            self.ready.remove(&ReadyLabels {
                namespace: namespace.into(),
                name: name.into(),
                condition: condition.into(),
            });
        }
    }

    /// Keep the series of `live` identities only (after a relist: deletions missed by a watch gap).
    pub fn retain(&self, live: &BTreeSet<(String, String)>) {
        let gone: Vec<_> = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .difference(live)
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.forget(&ns, &name);
        }
    }

    pub fn set_ready(&self, namespace: &str, name: &str, status: &str) {
        for condition in ["True", "False", "Unknown"] {
            let labels = ReadyLabels {
                namespace: namespace.into(),
                name: name.into(),
                condition: condition.into(),
            };
            self.ready
                .get_or_create(&labels)
                .set(i64::from(condition == status));
        }
    }

    pub fn set_certificate(
        &self,
        namespace: &str,
        name: &str,
        not_after: jiff::Timestamp,
        renew_at: jiff::Timestamp,
    ) {
        let labels = IdentityLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.expiration
            .get_or_create(&labels)
            .set(not_after.as_second());
        self.renewal
            .get_or_create(&labels)
            .set(renew_at.as_second());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
