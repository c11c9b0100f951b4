//! Hand-written schema fragments where the derived ones are too loose: admission-time validation with
//! messages a user can act on. Lists that CEL iterates carry `maxItems`/`maxLength` so the apiserver
//! can bound the rule's cost.

use super::{
    DEMO_METRICS_PORT, MAX_DEMO_INTERVAL, MAX_DURATION_SECS, MAX_NAME_LEN, MIN_DEMO_INTERVAL,
    MIN_DURATION_SECS, MIN_RENEW_AFTER_SECS, MIN_RENEW_BEFORE_SECS,
};
use crate::pki::BACKDATE;
use kube::core::Rule;
use schemars::{Schema, SchemaGenerator, json_schema};

/// Lowercase RFC 1123 DNS name, optionally a leading `*.` wildcard label.
pub const DNS_NAME_RE: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// Go duration as accepted by `time.ParseDuration` (non-negative).
pub const DURATION_RE: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A Go duration whose every part is small enough that CEL's `duration()` cannot overflow on it
/// (at most 5 digits before `h`, 7 before `m`, 9 before `s`, ...: within the 32-character limit the
/// sum stays below 292 years). Rules call `duration()` only on values matching this, so an
/// oversized value is rejected with our message instead of a CEL evaluation error.
pub const DURATION_BOUNDED_RE: &str = r"^([0-9]{1,5}(\.[0-9]+)?h|[0-9]{1,7}(\.[0-9]+)?m|[0-9]{1,9}(\.[0-9]+)?s|[0-9]{1,12}(\.[0-9]+)?ms|[0-9]{1,15}(\.[0-9]+)?(us|µs)|[0-9]{1,18}(\.[0-9]+)?ns)+$";
/// Longest duration string accepted at admission.
pub const DURATION_MAX_LEN: u32 = 32;
/// Label or annotation key: an optional DNS subdomain prefix and `/`, then a name of at most 63
/// characters (`[A-Za-z0-9._-]`, alphanumeric at both ends). The prefix length (at most 253) is
/// checked separately.
pub const QUALIFIED_NAME_RE: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// Label value: empty, or at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub const LABEL_VALUE_RE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// Most labels or annotations a `secretTemplate` may carry (bounds the cost of CEL over them).
pub const MAX_TEMPLATE_ENTRIES: u32 = 64;

/// A regex as a single-quoted CEL string literal.
fn cel_str(re: &str) -> String {
    format!("'{}'", re.replace('\\', "\\\\"))
}

/// CEL: `self.<field>` is a Go duration that `duration()` can evaluate without error.
fn bounded(field: &str) -> String {
    format!("self.{field}.matches({})", cel_str(DURATION_BOUNDED_RE))
}

/// CEL: the spec's duration (or its default) as a CEL duration; only call when [`duration_ok`].
const SPEC_DURATION: &str = "duration(has(self.duration) ? self.duration : '24h')";

/// CEL: the spec's duration is unset or evaluable.
fn duration_ok() -> String {
    format!("(!has(self.duration) || {})", bounded("duration"))
}

// === CEL rules of the spec ===

pub fn rule_duration_min() -> Rule {
    Rule::new(format!(
        "!has(self.duration) || !{} || duration(self.duration) >= duration('{MIN_DURATION_SECS}s')",
        bounded("duration")
    ))
    .message(format!("duration must be at least {MIN_DURATION_SECS}s").as_str())
}

pub fn rule_duration_max() -> Rule {
    let hours = MAX_DURATION_SECS / 3600;
    Rule::new(format!(
        "!has(self.duration) || !{} || duration(self.duration) <= duration('{hours}h')",
        bounded("duration")
    ))
    .message(format!("duration must be at most {hours}h (10 years)").as_str())
}

pub fn rule_renew_before_min() -> Rule {
    Rule::new(format!(
        "!has(self.renewBefore) || !{} || duration(self.renewBefore) >= duration('{MIN_RENEW_BEFORE_SECS}s')",
        bounded("renewBefore")
    ))
    .message(format!("renewBefore must be at least {MIN_RENEW_BEFORE_SECS}s").as_str())
}

pub fn rule_renew_before_shorter() -> Rule {
    Rule::new(format!(
        "!has(self.renewBefore) || !{} || !{} || duration(self.renewBefore) < {SPEC_DURATION}",
        bounded("renewBefore"),
        duration_ok()
    ))
    .message("renewBefore must be shorter than duration (default 24h)")
}

/// Renewal `duration - renewBefore` after issuance must leave [`MIN_RENEW_AFTER_SECS`].
pub fn rule_renew_before_leaves_time() -> Rule {
    Rule::new(format!(
        "!has(self.renewBefore) || !{} || !{} || {SPEC_DURATION} - duration(self.renewBefore) >= duration('{MIN_RENEW_AFTER_SECS}s')",
        bounded("renewBefore"),
        duration_ok()
    ))
    .message(
        format!(
            "renewBefore leaves less than {MIN_RENEW_AFTER_SECS}s between issuance and renewal: \
             duration - renewBefore must be at least {MIN_RENEW_AFTER_SECS}s (duration defaults to 24h); \
             lower renewBefore or raise duration"
        )
        .as_str(),
    )
}

/// With `p` = renewBeforePercentage, `d` = duration and `b` = the backdate, the certificate lives
/// `d + b` and is renewed `d - (d + b) * p / 100` after issuance; that must be at least
/// [`MIN_RENEW_AFTER_SECS`] (`m`), i.e. `(d + b) * (100 - p) >= 100 * (m + b)`.
pub fn rule_renew_percentage_leaves_time() -> Rule {
    let b = BACKDATE.as_secs();
    let bound = 100 * (MIN_RENEW_AFTER_SECS + b);
    Rule::new(format!(
        "!has(self.renewBeforePercentage) || !{} || ({SPEC_DURATION}.getSeconds() + {b}) * (100 - self.renewBeforePercentage) >= {bound}",
        duration_ok()
    ))
    .message(
        format!(
            "renewBeforePercentage leaves less than {MIN_RENEW_AFTER_SECS}s between issuance and renewal \
             for this duration (duration defaults to 24h; the certificate is also backdated {b}s): \
             lower renewBeforePercentage or raise duration"
        )
        .as_str(),
    )
}

// === CEL rules of the root and the demo ===

pub fn rule_name_length() -> Rule {
    Rule::new(format!("self.metadata.name.size() <= {MAX_NAME_LEN}")).message(
        format!(
            "metadata.name must be at most {MAX_NAME_LEN} characters: it becomes the tlsid.dev/identity \
             label of the Secret and the name of the demo Service"
        )
        .as_str(),
    )
}

pub fn rule_demo_interval() -> Rule {
    let (min, max) = (MIN_DEMO_INTERVAL.as_millis(), MAX_DEMO_INTERVAL.as_secs());
    Rule::new(format!(
        "!has(self.interval) || !{} || (duration(self.interval) >= duration('{min}ms') && duration(self.interval) <= duration('{max}s'))",
        bounded("interval")
    ))
    .message(format!("demo.interval must be between {min}ms and 1h").as_str())
}

pub fn rule_demo_port() -> Rule {
    Rule::new(format!(
        "!has(self.port) || self.port != {DEMO_METRICS_PORT}"
    ))
    .message(
        format!(
            "demo.port must not be {DEMO_METRICS_PORT}: the demo's metrics endpoint listens there"
        )
        .as_str(),
    )
}

pub fn secret_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 253,
        "x-kubernetes-validations": [{
            "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
            "message": "secretName must be a lowercase RFC 1123 subdomain (a valid Secret name)"
        }]
    })
}

pub fn dns_names(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 100,
        "items": { "type": "string", "maxLength": 253 },
        "x-kubernetes-validations": [{
            "rule": format!("self.all(n, n.matches('{}'))", DNS_NAME_RE.replace('\\', "\\\\")),
            "message": "dnsNames must be lowercase RFC 1123 DNS names, optionally starting with '*.' (e.g. web.default.svc)"
        }]
    })
}

pub fn ip_addresses(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 100,
        "items": { "type": "string", "maxLength": 45 },
        "x-kubernetes-validations": [{
            "rule": "self.all(i, isIP(i))",
            "message": "ipAddresses must be IPv4 or IPv6 addresses (e.g. 10.0.0.1, fd00::1)"
        }]
    })
}

pub fn uris(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 100,
        "items": { "type": "string", "maxLength": 2048 },
        "x-kubernetes-validations": [{
            "rule": "self.all(u, isURL(u) && u.contains('://'))",
            "message": "uris must be absolute URIs with a scheme (e.g. spiffe://cluster.local/ns/default/sa/web)"
        }]
    })
}

pub fn usages(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 2,
        "items": { "type": "string", "enum": ["server", "client"] },
        "x-kubernetes-list-type": "set"
    })
}

pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": DURATION_MAX_LEN,
        "pattern": DURATION_RE,
        "x-kubernetes-validations": [{
            "rule": format!("self.matches({})", cel_str(DURATION_BOUNDED_RE)),
            "message": "must be a Go duration such as 90s, 24h or 1h30m, with at most 5 digits before h, 7 before m and 9 before s"
        }]
    })
}

/// Rules shared by the label and annotation maps of `secretTemplate`.
fn template_key_rules(what: &str) -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "rule": format!(
                "self.all(k, k.matches({}) && (!k.contains('/') || k.matches('^[^/]{{1,253}}/')))",
                cel_str(QUALIFIED_NAME_RE)
            ),
            "message": format!(
                "secretTemplate.{what} keys must be qualified names: an optional DNS subdomain prefix \
                 (lowercase, at most 253 characters) and '/', then at most 63 characters of [A-Za-z0-9._-] \
                 starting and ending alphanumeric (e.g. example.com/team)"
            ),
        }),
        serde_json::json!({
            "rule": format!(
                "self.all(k, !k.startsWith('{}/') && k != '{}')",
                super::GROUP,
                super::MANAGED_BY_LABEL
            ),
            "message": format!(
                "secretTemplate.{what} must not use keys under {}/ or {}: tlsid sets those itself",
                super::GROUP,
                super::MANAGED_BY_LABEL
            ),
        }),
    ]
}

pub fn template_labels(_: &mut SchemaGenerator) -> Schema {
    let mut rules = template_key_rules("labels");
    rules.push(serde_json::json!({
        "rule": format!("self.all(k, self[k].matches({}))", cel_str(LABEL_VALUE_RE)),
        "message": "secretTemplate.labels values must be empty or at most 63 characters of [A-Za-z0-9._-] starting and ending alphanumeric",
    }));
    json_schema!({
        "type": "object",
        "maxProperties": MAX_TEMPLATE_ENTRIES,
        "additionalProperties": { "type": "string", "maxLength": 63 },
        "x-kubernetes-validations": rules,
    })
}

pub fn template_annotations(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": MAX_TEMPLATE_ENTRIES,
        "additionalProperties": { "type": "string" },
        "x-kubernetes-validations": template_key_rules("annotations"),
    })
}

pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": { "type": "string", "description": "Condition type: Ready or Issuing." },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"] },
                "reason": { "type": "string", "description": "Machine-readable CamelCase reason." },
                "message": { "type": "string", "description": "Human-readable detail." },
                "lastTransitionTime": { "type": "string", "format": "date-time", "description": "When status last changed." },
                "observedGeneration": { "type": "integer", "format": "int64" }
            }
        }
    })
}

// === TlsIdentityPolicy ===

pub fn policy_dns_names(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 256,
        "items": { "type": "string", "maxLength": 253 },
        "x-kubernetes-validations": [{
            "rule": format!("self.all(n, n.matches('{}'))", DNS_NAME_RE.replace('\\', "\\\\")),
            "message": "dnsNames must be lowercase RFC 1123 DNS names, or '*.' followed by one (e.g. *.example.com)"
        }]
    })
}

pub fn policy_cidrs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 256,
        "items": { "type": "string", "maxLength": 49 },
        "x-kubernetes-validations": [{
            "rule": "self.all(c, isCIDR(c))",
            "message": "ipAddresses must be CIDR ranges (e.g. 10.0.0.0/8, 127.0.0.1/32, fd00::/8)"
        }]
    })
}

pub fn policy_uris(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 256,
        "items": { "type": "string", "maxLength": 2048 },
        "x-kubernetes-validations": [{
            "rule": "self.all(u, u.contains(':') && (u.endsWith('*') ? (u.endsWith('/*') || u.endsWith(':*')) && u.indexOf('*') == size(u) - 1 : !u.contains('*')))",
            "message": "uris must be absolute URIs, optionally ending in '/*' (or ':*' for URNs) to grant what lies below a path (e.g. spiffe://cluster.local/ns/ingress/*)"
        }]
    })
}

/// A ServiceAccount name (a DNS subdomain).
pub fn service_account_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "x-kubernetes-validations": [{
            "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
            "message": "spiffe.serviceAccount must be a ServiceAccount name (a lowercase RFC 1123 subdomain)"
        }]
    })
}

/// `demo.allowedClients`: SPIFFE IDs, exact or a prefix ending in `*`, or `*` alone.
pub fn allowed_clients_opt(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "items": { "type": "string", "maxLength": 2048 },
        "x-kubernetes-validations": [{
            "rule": "self.all(p, p == '*' || (p.contains('://') && !p.matches('\\\\s') && (p.endsWith('*') ? p.indexOf('*') == size(p) - 1 : !p.contains('*'))))",
            "message": "allowedClients are URIs (SPIFFE IDs), optionally ending in '*' to allow a prefix, or '*' alone to allow every client tlsid issued"
        }]
    })
}

/// A namespace name (a DNS label).
pub fn namespace_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 63,
        "x-kubernetes-validations": [{
            "rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
            "message": "demo.serverNamespace must be a namespace name (a lowercase RFC 1123 label)"
        }]
    })
}
