//! Hand-written schema fragments where the derived ones are too loose: admission-time validation with
//! messages a user can act on. Lists that CEL iterates carry `maxItems`/`maxLength` so the apiserver
//! can bound the rule's cost.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Lowercase RFC 1123 DNS name, optionally a leading `*.` wildcard label.
pub const DNS_NAME_RE: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// Go duration as accepted by `time.ParseDuration` (non-negative).
pub const DURATION_RE: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

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
        "maxLength": 64,
        "pattern": DURATION_RE,
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
