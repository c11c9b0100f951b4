//! Prometheus metrics, `tlsid_` prefixed, served on `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::sync::atomic::AtomicI64;

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
        Self { registry, ..m }
    }
}

impl Metrics {
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
