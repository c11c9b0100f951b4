use super::*;
use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
use serde_json::json;

fn secrets() -> HashMap<(String, String), SecretFacts> {
    HashMap::from([
        (
            ("ns".into(), "web-tls".into()),
            SecretFacts {
                identity: "web".into(),
                digest: secret_digest("aa", "0123456789abcdef0123"),
            },
        ),
        (
            ("ns".into(), "db-tls".into()),
            SecretFacts {
                identity: "db".into(),
                digest: secret_digest("bb", "0123456789abcdef0123"),
            },
        ),
    ])
}

fn workload(name: &str, reload: Option<&str>, record: Option<&str>) -> Workload {
    Workload {
        kind: Kind::Deployment,
        namespace: "ns".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: Some("7".into()),
        reload: reload.map(Into::into),
        record: record.map(Into::into),
        restarted_at: None,
        secrets: BTreeMap::from([("web-tls".to_string(), BTreeSet::from([Via::Volume]))]),
        sub_path: BTreeSet::new(),
        rolling: None,
    }
}

const CURRENT: &str = "web-tls=aa.0123456789abcdef";

#[test]
fn record_round_trips_and_is_sorted() {
    let m = BTreeMap::from([("b".to_string(), "2".to_string()), ("a".into(), "1".into())]);
    assert_eq!(format_record(&m), "a=1,b=2");
    assert_eq!(parse_record("a=1,b=2"), m);
    assert_eq!(parse_record("garbage,=x,a=,b=2").len(), 1);
}

#[test]
fn restart_decisions() {
    struct Case {
        name: &'static str,
        reload: Option<&'static str>,
        record: Option<&'static str>,
        done: Option<&'static str>,
        rolling: Option<&'static str>,
        restart: bool,
        caught_up: bool,
        awaiting: u64,
    }
    let cases = [
        Case {
            name: "not opted in: never restarted",
            reload: None,
            record: None,
            done: None,
            rolling: None,
            restart: false,
            caught_up: false,
            awaiting: 0,
        },
        Case {
            name: "unknown mode: never restarted",
            reload: Some("hup"),
            record: None,
            done: None,
            rolling: None,
            restart: false,
            caught_up: false,
            awaiting: 0,
        },
        Case {
            name: "opted in, no record: one restart",
            reload: Some("restart"),
            record: None,
            done: None,
            rolling: None,
            restart: true,
            caught_up: false,
            awaiting: 1,
        },
        Case {
            name: "record current: nothing",
            reload: Some("restart"),
            record: Some(CURRENT),
            done: None,
            rolling: None,
            restart: false,
            caught_up: true,
            awaiting: 0,
        },
        Case {
            name: "record current, rolling: not caught up",
            reload: Some("restart"),
            record: Some(CURRENT),
            done: None,
            rolling: Some("rolling out"),
            restart: false,
            caught_up: false,
            awaiting: 1,
        },
        Case {
            name: "rotated: restart",
            reload: Some(" restart "),
            record: Some("web-tls=00.0123456789abcdef"),
            done: None,
            rolling: None,
            restart: true,
            caught_up: false,
            awaiting: 1,
        },
        Case {
            name: "rotated, already restarted by us (cache behind): no second",
            reload: Some("restart"),
            record: Some("web-tls=00.0123456789abcdef"),
            done: Some(CURRENT),
            rolling: None,
            restart: false,
            caught_up: false,
            awaiting: 1,
        },
        Case {
            name: "rotated again after our restart: restart",
            reload: Some("restart"),
            record: Some("web-tls=00.0123456789abcdef"),
            done: Some("web-tls=01.0123456789abcdef"),
            rolling: None,
            restart: true,
            caught_up: false,
            awaiting: 1,
        },
    ];
    for c in cases {
        let mut w = workload("app", c.reload, c.record);
        w.rolling = c.rolling.map(Into::into);
        let done: HashMap<String, String> = c
            .done
            .map(|d| (w.uid.clone(), d.to_string()))
            .into_iter()
            .collect();
        let p = pass([&w], &secrets(), &done);
        assert_eq!(p.wanted.len(), usize::from(c.restart), "{}", c.name);
        if c.restart {
            assert_eq!(p.wanted[0].record, CURRENT, "{}", c.name);
            assert_eq!(p.wanted[0].resource_version.as_deref(), Some("7"));
        }
        let list = &p.consumers[&("ns".to_string(), "web".to_string())];
        assert_eq!(list.len(), 1, "{}", c.name);
        assert_eq!(list[0].caught_up, c.caught_up, "{}", c.name);
        assert_eq!(p.awaiting, c.awaiting, "{}", c.name);
    }
}

#[test]
fn recomputing_after_the_restart_patch_asks_for_nothing() {
    // The restart's own patch is the record: the pass after it (what a restarted controller
    // computes) wants nothing; the pass before it (a crash before the patch) wants exactly one.
    let before = workload("app", Some("restart"), Some("web-tls=00.0123456789abcdef"));
    let p = pass([&before], &secrets(), &HashMap::new());
    assert_eq!(p.wanted.len(), 1);
    let after = workload("app", Some("restart"), Some(&p.wanted[0].record));
    assert!(
        pass([&after], &secrets(), &HashMap::new())
            .wanted
            .is_empty()
    );
    // Control: a record that ignored the bundle would restart forever.
    let wrong = workload("app", Some("restart"), Some("web-tls=aa"));
    assert_eq!(pass([&wrong], &secrets(), &HashMap::new()).wanted.len(), 1);
}

#[test]
fn reasons_say_what_changed() {
    let cur = BTreeMap::from([("web-tls".to_string(), "bb.2222".to_string())]);
    assert_eq!(
        reason(Some("web-tls=aa.2222"), &cur),
        "Secret web-tls rotated (certificate aa → bb)"
    );
    assert_eq!(
        reason(Some("web-tls=bb.1111"), &cur),
        "Secret web-tls rotated (trust bundle changed)"
    );
    assert_eq!(
        reason(Some("other=x.y"), &cur),
        "Secret web-tls newly consumed"
    );
    assert!(reason(None, &cur).starts_with("opted in"));
}

#[test]
fn foreign_secrets_are_not_consumers_and_sub_path_warns_whatever_the_mode() {
    let mut w = workload("app", None, None);
    w.secrets
        .insert("not-ours".into(), BTreeSet::from([Via::Env]));
    w.sub_path.insert("web-tls".into());
    w.sub_path.insert("not-ours".into());
    let p = pass([&w], &secrets(), &HashMap::new());
    assert_eq!(p.sub_path.len(), 1);
    assert_eq!(p.sub_path[0].identity, "web");
    assert!(p.sub_path[0].message().contains("subPath"));
    let c = &p.consumers[&("ns".to_string(), "web".to_string())][0];
    assert_eq!(c.reload, "none");
    assert!(c.message.as_deref().unwrap().contains("subPath"));
    // Only foreign Secrets: not a consumer at all.
    let mut f = workload("other", Some("restart"), None);
    f.secrets = BTreeMap::from([("not-ours".to_string(), BTreeSet::from([Via::Volume]))]);
    let p = pass([&f], &secrets(), &HashMap::new());
    assert!(p.consumers.is_empty() && p.wanted.is_empty() && p.awaiting == 0);
}

#[test]
fn one_workload_of_two_identities_is_listed_on_both_and_restarted_once() {
    let mut w = workload("app", Some("restart"), None);
    w.secrets
        .insert("db-tls".into(), BTreeSet::from([Via::EnvFrom]));
    let p = pass([&w], &secrets(), &HashMap::new());
    assert_eq!(p.wanted.len(), 1);
    assert_eq!(
        p.wanted[0].record,
        "db-tls=bb.0123456789abcdef,web-tls=aa.0123456789abcdef"
    );
    assert_eq!(p.consumers.len(), 2);
}

#[test]
fn consumers_are_sorted_opted_in_first_and_capped() {
    let ws: Vec<Workload> = (0..(MAX_CONSUMERS + 5))
        .map(|i| {
            workload(
                &format!("w{i:03}"),
                (i % 2 == 1).then_some("restart"),
                Some(CURRENT),
            )
        })
        .collect();
    let p = pass(&ws, &secrets(), &HashMap::new());
    let list = &p.consumers[&("ns".to_string(), "web".to_string())];
    assert_eq!(list.len(), MAX_CONSUMERS);
    assert_eq!(list[0].name, "w001");
    assert_eq!(list[0].reload, "restart");
    assert_eq!(list.last().unwrap().reload, "none");
}

#[test]
fn the_budget_admits_a_burst_then_paces() {
    let mut budget = Budget::new(1.0, 2);
    let wanted: Vec<Restart> = (0..4)
        .map(|i| {
            pass(
                [&workload(&format!("w{i}"), Some("restart"), None)],
                &secrets(),
                &HashMap::new(),
            )
            .wanted
            .remove(0)
        })
        .collect();
    let (go, wait) = admit(&mut budget, wanted.clone(), 0);
    assert_eq!(go.len(), 2);
    assert!(wait.is_some());
    // The waiting ones keep their slots: nothing new goes before they do.
    let (go, _) = admit(&mut budget, wanted[2..].to_vec(), 500);
    assert!(go.is_empty());
    let (go, _) = admit(&mut budget, wanted[2..].to_vec(), 2_000);
    assert_eq!(go.len(), 2);
    // One no longer wanted gives its slot back.
    let mut b = Budget::new(1.0, 1);
    let (_, _) = admit(&mut b, wanted[..2].to_vec(), 0);
    assert_eq!(b.waiting(), 1);
    let _ = admit(&mut b, Vec::new(), 100);
    assert_eq!(b.waiting(), 0);
}

#[test]
fn the_patch_records_and_is_preconditioned() {
    let r = pass(
        [&workload("app", Some("restart"), None)],
        &secrets(),
        &HashMap::new(),
    )
    .wanted
    .remove(0);
    let now: jiff::Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
    let p = r.patch(now);
    assert_eq!(p["metadata"]["resourceVersion"], "7");
    let a = &p["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(a[RESTARTED_FOR_ANNOTATION], CURRENT);
    assert_eq!(a[RESTARTED_AT_ANNOTATION], "2026-01-02T03:04:05Z");
    assert!(
        a[RESTART_REASON_ANNOTATION]
            .as_str()
            .unwrap()
            .starts_with("opted in")
    );
}

fn deployment(v: serde_json::Value) -> Deployment {
    serde_json::from_value(v).unwrap()
}

fn full_deployment() -> Deployment {
    deployment(json!({
        "metadata": {"name": "app", "namespace": "ns", "uid": "u1", "resourceVersion": "9", "generation": 3,
            "annotations": {"tlsid.dev/reload": "restart", "other": "x"}, "labels": {"a": "b"},
            "managedFields": [{"manager": "kubectl"}]},
        "spec": {"replicas": 2, "selector": {}, "template": {
            "metadata": {"labels": {"app": "x"}, "annotations": {
                "tlsid.dev/restarted-for": CURRENT, "tlsid.dev/restartedAt": "2026-01-02T03:04:05Z", "big": "y"}},
            "spec": {
                "volumes": [
                    {"name": "tls", "secret": {"secretName": "web-tls"}},
                    {"name": "proj", "projected": {"sources": [
                        {"secret": {"name": "db-tls"}}, {"configMap": {"name": "cm"}}]}},
                    {"name": "cfg", "configMap": {"name": "cm"}},
                    {"name": "sub", "secret": {"secretName": "sub-tls"}}
                ],
                "initContainers": [{"name": "init", "image": "i", "envFrom": [{"secretRef": {"name": "from-tls"}}, {"configMapRef": {"name": "cm"}}]}],
                "containers": [{"name": "c", "image": "big", "args": ["--a"],
                    "env": [{"name": "A", "value": "1"}, {"name": "K", "valueFrom": {"secretKeyRef": {"name": "env-tls", "key": "tls.crt"}}}],
                    "volumeMounts": [{"name": "tls", "mountPath": "/tls"}, {"name": "sub", "mountPath": "/s/tls.crt", "subPath": "tls.crt"},
                        {"name": "cfg", "mountPath": "/c", "subPath": "x"}]}]
            }}},
        "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    }))
}

#[test]
fn discovery_finds_every_way_a_pod_consumes_a_secret() {
    let d = full_deployment();
    let w = Workload::from_deployment(&d);
    let names: Vec<(&str, Vec<Via>)> = w
        .secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().copied().collect()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("db-tls", vec![Via::Projected]),
            ("env-tls", vec![Via::Env]),
            ("from-tls", vec![Via::EnvFrom]),
            ("sub-tls", vec![Via::Volume]),
            ("web-tls", vec![Via::Volume]),
        ]
    );
    assert_eq!(w.sub_path, BTreeSet::from(["sub-tls".to_string()]));
    assert_eq!(w.record.as_deref(), Some(CURRENT));
    assert!(w.restarted_at.is_some());
    assert_eq!(w.rolling, None);
    assert_eq!(w.reload.as_deref(), Some("restart"));
}

#[test]
fn pruning_keeps_the_answer_and_drops_the_rest() {
    let full = full_deployment();
    let mut pruned = full.clone();
    prune_metadata(&mut pruned.metadata);
    if let Some(spec) = pruned.spec.as_mut() {
        prune_template(&mut spec.template);
    }
    assert_eq!(
        Workload::from_deployment(&pruned),
        Workload::from_deployment(&full)
    );
    assert!(pruned.metadata.managed_fields.is_none() && pruned.metadata.labels.is_none());
    let t = &pruned.spec.as_ref().unwrap().template;
    let c = &t.spec.as_ref().unwrap().containers[0];
    assert!(c.image.is_none() && c.args.is_none());
    assert_eq!(c.env.as_ref().unwrap().len(), 1);
    assert_eq!(t.spec.as_ref().unwrap().volumes.as_ref().unwrap().len(), 3);
    assert!(
        !t.metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("big")
    );
}

#[test]
fn rollout_status_as_kubectl_judges_it() {
    let with = |spec_replicas: i32, status: serde_json::Value, generation: i64| {
        let mut d = Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(spec_replicas),
                ..Default::default()
            }),
            ..Default::default()
        };
        d.status = Some(serde_json::from_value::<DeploymentStatus>(status).unwrap());
        Workload::from_deployment(&d).rolling
    };
    assert_eq!(
        with(
            2,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            2
        ),
        None
    );
    assert_eq!(with(0, json!({"observedGeneration": 2}), 2), None);
    assert!(with(2, json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}), 2).is_some());
    assert!(with(2, json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}), 2).unwrap().contains("old pods"));
    assert!(with(2, json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}), 2).unwrap().contains("1 of 2"));
    assert!(with(2, json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}), 2).unwrap().contains("available"));
    let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"generation": 1}, "status": {
        "observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2,
        "currentNumberScheduled": 3, "numberMisscheduled": 0, "numberReady": 2}})).unwrap();
    assert!(Workload::from_daemon_set(&ds).rolling.is_some());
    let ss: StatefulSet = serde_json::from_value(json!({"metadata": {"generation": 1}, "spec": {"replicas": 1, "selector": {}, "serviceName": "s", "template": {}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}})).unwrap();
    assert_eq!(Workload::from_stateful_set(&ss).rolling, None);
}
