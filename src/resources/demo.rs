//! The demo workload of an identity with `spec.demo`: a Deployment running `tlsid demo server|client`
//! with the identity's Secret mounted (as a volume, never `subPath`, which would never update), and
//! a Service in front of servers.

use crate::api::{
    DEMO_TRUST_LAG_ANNOTATION, DemoRole, DemoSpec, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    MAX_DEMO_TRUST_LAG, TlsIdentity,
};
use crate::tenancy::Settings;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, HTTPGetAction, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
            ServicePort, ServiceSpec, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const DEFAULT_PORT: i32 = 8443;
pub const METRICS_PORT: i32 = crate::api::DEMO_METRICS_PORT;
pub const CERT_DIR: &str = "/etc/tlsid/tls";
/// Hash of what we last applied: compared instead of the live object, which the apiserver fills
/// with defaults, so an unchanged workload costs no write.
pub const SPEC_HASH_ANNOTATION: &str = "tlsid.dev/applied-hash";

/// Where a client connects: the server identity's Service, and the name it verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTarget {
    pub address: String,
    pub server_name: String,
}

/// The target for a client whose server identity is `server`: its Service DNS name, verified as
/// the first of the server's DNS SANs that names that Service (else its first DNS SAN).
pub fn server_target(
    server: &TlsIdentity,
    port: i32,
    cluster_domain: &str,
) -> Option<ServerTarget> {
    let ns = server.namespace()?;
    let svc = format!("{}.{ns}.svc", server.name_any());
    let server_name = server
        .spec
        .dns_names
        .iter()
        .find(|n| **n == svc || n.starts_with(&format!("{svc}.")))
        .or_else(|| server.spec.dns_names.first())?
        .clone();
    // An absolute name (trailing dot): never expanded with the pod's search domains, which on
    // some networks include a wildcard domain that answers for anything (a client that started
    // before the server's Service existed connected to a stranger and failed its handshake).
    Some(ServerTarget {
        address: format!("{svc}.{cluster_domain}.:{port}"),
        server_name,
    })
}

pub fn demo_name(identity: &TlsIdentity) -> String {
    format!("{}-demo", identity.name_any())
}

pub fn labels(identity: &TlsIdentity, role: DemoRole) -> BTreeMap<String, String> {
    let component = match role {
        DemoRole::Server => "demo-server",
        DemoRole::Client => "demo-client",
    };
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "tlsid-demo".into()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/instance".into(), identity.name_any()),
    ])
}

fn meta(identity: &TlsIdentity, name: String, role: DemoRole) -> ObjectMeta {
    let mut l = labels(identity, role);
    l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    ObjectMeta {
        name: Some(name),
        namespace: identity.namespace(),
        labels: Some(l),
        owner_references: identity.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The clients a demo server lets in after the handshake: `demo.allowedClients`, by default
/// every SPIFFE ID of its own namespace.
pub fn allowed_clients(identity: &TlsIdentity, demo: &DemoSpec, names: &Settings) -> Vec<String> {
    demo.allowed_clients.clone().unwrap_or_else(|| {
        vec![format!(
            "{}*",
            names.spiffe_prefix(&identity.namespace().unwrap_or_default())
        )]
    })
}

/// The demo's `--trust-lag` from [`DEMO_TRUST_LAG_ANNOTATION`], if it is a duration the demo's
/// flag accepts, within [`MAX_DEMO_TRUST_LAG`]. Anything else is ignored: the annotation is a
/// testing aid, not part of the validated spec.
pub fn demo_trust_lag(identity: &TlsIdentity) -> Option<std::time::Duration> {
    let value = identity.annotations().get(DEMO_TRUST_LAG_ANNOTATION)?;
    crate::demo::parse_duration(value)
        .ok()
        .filter(|lag| *lag <= MAX_DEMO_TRUST_LAG)
}

/// The Deployment. `target` is required for clients.
pub fn desired_deployment(
    identity: &TlsIdentity,
    demo: &DemoSpec,
    image: &str,
    target: Option<&ServerTarget>,
    names: &Settings,
) -> Deployment {
    let port = demo.port.unwrap_or(DEFAULT_PORT);
    let mut args: Vec<String> = vec!["demo".into()];
    match demo.role {
        DemoRole::Server => {
            args.extend([
                "server".into(),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
            ]);
            for pattern in allowed_clients(identity, demo, names) {
                args.extend(["--allow-client".into(), pattern]);
            }
        }
        DemoRole::Client => {
            args.push("client".into());
            if let Some(t) = target {
                args.extend([
                    "--connect".into(),
                    t.address.clone(),
                    "--server-name".into(),
                    t.server_name.clone(),
                ]);
            }
            // An invalid interval is reported as InvalidSpec by `IssuanceRequest::from_spec`
            // before the demo is built; the default here only keeps this builder total.
            let interval = crate::pki::request::demo_interval(demo)
                .unwrap_or(crate::api::DEFAULT_DEMO_INTERVAL);
            args.extend(["--interval".into(), format!("{}ms", interval.as_millis())]);
        }
    }
    if let Some(lag) = demo_trust_lag(identity) {
        // Whole milliseconds, as `--interval`: the text is ours, so the pod template (and its
        // hash) only changes when the lag does.
        args.extend(["--trust-lag".into(), format!("{}ms", lag.as_millis())]);
    }
    args.extend([
        "--cert-dir".into(),
        CERT_DIR.into(),
        "--metrics-listen".into(),
        format!("0.0.0.0:{METRICS_PORT}"),
    ]);

    let mut ports = vec![ContainerPort {
        name: Some("metrics".into()),
        container_port: METRICS_PORT,
        ..Default::default()
    }];
    if demo.role == DemoRole::Server {
        ports.insert(
            0,
            ContainerPort {
                name: Some("mtls".into()),
                container_port: port,
                ..Default::default()
            },
        );
    }
    let selector = labels(identity, demo.role);
    let container = Container {
        name: "demo".into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        ports: Some(ports),
        env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
            name: "RUST_LOG".into(),
            value: Some("info".into()),
            ..Default::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: "tls".into(),
            mount_path: CERT_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::String("metrics".into()),
                ..Default::default()
            }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut deployment = Deployment {
        metadata: meta(identity, demo_name(identity), demo.role),
        spec: Some(DeploymentSpec {
            replicas: Some(demo.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "tls".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(identity.secret_name()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    stamp(&mut deployment);
    deployment
}

/// The Service in front of a server, named after the identity (so `<name>.<ns>.svc` matches).
pub fn desired_service(identity: &TlsIdentity, demo: &DemoSpec) -> Service {
    let port = demo.port.unwrap_or(DEFAULT_PORT);
    let mut service = Service {
        metadata: meta(identity, identity.name_any(), DemoRole::Server),
        spec: Some(ServiceSpec {
            selector: Some(labels(identity, DemoRole::Server)),
            ports: Some(vec![
                ServicePort {
                    name: Some("mtls".into()),
                    port,
                    target_port: Some(IntOrString::String("mtls".into())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".into())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    stamp(&mut service);
    service
}

/// Record the hash of the desired object in an annotation.
fn stamp<K: Resource + serde::Serialize>(obj: &mut K) {
    let hash = hex::encode(&Sha256::digest(serde_json::to_vec(&*obj).unwrap_or_default())[..12]);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(SPEC_HASH_ANNOTATION.into(), hash);
}

/// Whether the live object still carries what we would apply now.
pub fn up_to_date<K: Resource>(live: &K, desired: &K) -> bool {
    let get = |o: &K| {
        o.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
            .cloned()
    };
    get(live).is_some() && get(live) == get(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TlsIdentitySpec;

    fn id(name: &str, dns: &[&str], demo: DemoSpec) -> TlsIdentity {
        let mut i = TlsIdentity::new(
            name,
            TlsIdentitySpec {
                dns_names: dns.iter().map(|s| s.to_string()).collect(),
                demo: Some(demo),
                ..Default::default()
            },
        );
        i.metadata.namespace = Some("shop".into());
        i.metadata.uid = Some(format!("uid-{name}"));
        i
    }

    #[test]
    fn server_deployment_is_locked_down_and_mounts_the_secret() {
        let demo = DemoSpec {
            role: DemoRole::Server,
            port: Some(9443),
            ..Default::default()
        };
        let server = id("orders", &["orders.shop.svc"], demo.clone());
        let d = desired_deployment(
            &server,
            &demo,
            "docker.io/library/tlsid:dev",
            None,
            &Settings::default(),
        );
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap()[..6],
            [
                "demo",
                "server",
                "--listen",
                "0.0.0.0:9443",
                "--allow-client",
                "spiffe://cluster.local/ns/shop/*"
            ],
            "by default only clients of its own namespace are let in"
        );
        let custom = DemoSpec {
            allowed_clients: Some(vec!["spiffe://cluster.local/ns/a/sa/x".into(), "*".into()]),
            ..demo.clone()
        };
        let settings = Settings {
            trust_domain: "example.org".into(),
            ..Settings::default()
        };
        assert_eq!(
            allowed_clients(&server, &demo, &settings),
            ["spiffe://example.org/ns/shop/*"]
        );
        assert_eq!(
            allowed_clients(&server, &custom, &settings),
            ["spiffe://cluster.local/ns/a/sa/x", "*"]
        );
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.sub_path.as_deref()),
            (CERT_DIR, None),
            "never subPath"
        );
        assert_eq!(
            pod.volumes.as_ref().unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref(),
            Some("orders-tls")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(
            pod.security_context
                .as_ref()
                .unwrap()
                .seccomp_profile
                .as_ref()
                .unwrap()
                .type_,
            "RuntimeDefault"
        );
        assert!(c.readiness_probe.is_some());
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-orders"
        );
        let svc = desired_service(&server, &demo);
        assert_eq!(svc.metadata.name.as_deref(), Some("orders"));
        assert_eq!(
            svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            9443
        );
    }

    #[test]
    fn client_targets_the_server_service_and_its_san() {
        let sdemo = DemoSpec {
            role: DemoRole::Server,
            ..Default::default()
        };
        let server = id(
            "orders",
            &["orders.example.com", "orders.shop.svc.cluster.local"],
            sdemo,
        );
        let t = server_target(&server, 8443, "cluster.local").unwrap();
        assert_eq!(t.address, "orders.shop.svc.cluster.local.:8443");
        assert_eq!(
            t.server_name, "orders.shop.svc.cluster.local",
            "the SAN naming the Service wins"
        );
        let cdemo = DemoSpec {
            role: DemoRole::Client,
            server: Some("orders".into()),
            interval: Some("500ms".parse().unwrap()),
            ..Default::default()
        };
        let client = id("billing", &["billing.shop.svc"], cdemo.clone());
        let d = desired_deployment(&client, &cdemo, "img", Some(&t), &Settings::default());
        let args = d.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(
            args.windows(2)
                .any(|w| w == ["--connect", "orders.shop.svc.cluster.local.:8443"])
        );
        assert!(args.windows(2).any(|w| w == ["--interval", "500ms"]));
    }

    #[test]
    fn trust_lag_annotation_becomes_the_flag_only_when_valid() {
        let demo = DemoSpec {
            role: DemoRole::Server,
            ..Default::default()
        };
        let cdemo = DemoSpec {
            role: DemoRole::Client,
            server: Some("orders".into()),
            ..Default::default()
        };
        let t = ServerTarget {
            address: "orders.shop.svc.cluster.local.:8443".into(),
            server_name: "orders.shop.svc".into(),
        };
        let args = |annotation: Option<&str>, demo: &DemoSpec| {
            let mut i = id("orders", &["orders.shop.svc"], demo.clone());
            if let Some(value) = annotation {
                i.metadata.annotations =
                    Some([(DEMO_TRUST_LAG_ANNOTATION.to_string(), value.to_string())].into());
            }
            let d = desired_deployment(&i, demo, "img", Some(&t), &Settings::default());
            d.spec.unwrap().template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap()
        };
        let lag_of = |args: &[String]| {
            let at = args.iter().position(|a| a == "--trust-lag")?;
            args.get(at + 1).cloned()
        };
        let cases = [
            (None, None),
            (Some("0"), Some("0ms")),
            (Some("0s"), Some("0ms")),
            (Some("30s"), Some("30000ms")),
            (Some("1m30s"), Some("90000ms")),
            (Some(" 2s "), Some("2000ms")),
            (Some("1h"), Some("3600000ms")),
            (Some("60m"), Some("3600000ms")),
            (Some("1h0m0.001s"), None),
            (Some("2h"), None),
            (Some("9999999999999h"), None),
            (Some("-1s"), None),
            (Some("+1s"), None),
            (Some("30"), None),
            (Some(""), None),
            (Some("soon"), None),
        ];
        for (annotation, want) in cases {
            for d in [&demo, &cdemo] {
                let args = args(annotation, d);
                assert_eq!(lag_of(&args).as_deref(), want, "{annotation:?}");
                assert_eq!(
                    args.iter().filter(|a| *a == "--trust-lag").count(),
                    usize::from(want.is_some())
                );
                // The flag the demo parses accepts exactly what is passed.
                if let Some(value) = lag_of(&args) {
                    assert!(crate::demo::parse_duration(&value).is_ok(), "{value}");
                }
            }
        }
        let demo_without = desired_deployment(
            &id("orders", &["orders.shop.svc"], demo.clone()),
            &demo,
            "img",
            None,
            &Settings::default(),
        );
        let mut lagging = id("orders", &["orders.shop.svc"], demo.clone());
        lagging.metadata.annotations =
            Some([(DEMO_TRUST_LAG_ANNOTATION.to_string(), "30s".to_string())].into());
        assert!(
            !up_to_date(
                &demo_without,
                &desired_deployment(&lagging, &demo, "img", None, &Settings::default())
            ),
            "adding the annotation rolls the demo out again"
        );
    }

    #[test]
    fn hash_tracks_changes() {
        let demo = DemoSpec {
            role: DemoRole::Server,
            ..Default::default()
        };
        let server = id("orders", &["orders.shop.svc"], demo.clone());
        let a = desired_deployment(&server, &demo, "img:1", None, &Settings::default());
        assert!(up_to_date(
            &a,
            &desired_deployment(&server, &demo, "img:1", None, &Settings::default())
        ));
        assert!(!up_to_date(
            &a,
            &desired_deployment(&server, &demo, "img:2", None, &Settings::default())
        ));
    }
}
