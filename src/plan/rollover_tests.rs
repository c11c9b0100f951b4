//! The rollover machine: a table of single steps, and a model check of the invariant over random
//! runs (event orders, lost writes as crashes, leader changes with skewed clocks, consumers that
//! load new files late), with a control that breaks the guarantee on purpose and must be caught.

use super::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::BTreeSet;

fn t(s: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn facts(fp: &str, from: i64, to: i64, generated: bool) -> CaFacts {
    CaFacts {
        fingerprint: fp.into(),
        not_before: t(from),
        not_after: t(to),
        generated,
    }
}

fn settings(p: u64) -> Settings {
    Settings {
        propagation_delay: Duration::from_secs(p),
        rotate_at: DEFAULT_ROTATE_AT,
    }
}

fn world<'a>(now: i64, record: &'a Record, current: &'a CaFacts) -> World<'a> {
    World {
        now: t(now),
        record,
        current,
        next: None,
        previous: None,
        request: None,
        secrets_awaiting_bundle: 0,
        trust_bundles_awaiting: 0,
        consumers: Consumers::default(),
        awaiting_restart: 0,
        leaves_on_previous: 0,
        longest_leaf: Duration::from_secs(3600),
    }
}

fn rec(phase: Phase, since: i64) -> Record {
    Record {
        phase,
        since: Some(t(since)),
        ..Record::default()
    }
}

#[test]
fn single_steps() {
    let gen_ca = facts("a", 0, 3000, true);
    let user_ca = facts("a", 0, 3000, false);
    let next = facts("b", 100, 9000, true);
    let s = settings(60);
    let stable = Record::default();
    let req = Request {
        token: "1".into(),
        source: Source::Generate,
        mode: Mode::Normal,
    };
    let emergency = Request {
        mode: Mode::Emergency,
        ..req.clone()
    };

    // Stable: quiet before the rotation point (2/3 of 3000 s), with a recheck then.
    let st = step(&world(10, &stable, &gen_ca), &s);
    assert_eq!(st.action, Action::Nothing);
    assert_eq!(st.recheck, Some(t(2000)));
    // A user's CA is never rechecked on a timer (its Secret changes when the user acts).
    assert_eq!(step(&world(10, &stable, &user_ca), &s).recheck, None);
    // At the rotation point: a generated root rolls over, a user's CA only warns.
    assert_eq!(
        step(&world(2000, &stable, &gen_ca), &s).action,
        Action::Begin {
            trigger: Trigger::Automatic,
            mode: Mode::Normal,
            source: Source::Generate
        }
    );
    let warn = step(&world(2000, &stable, &user_ca), &s);
    assert_eq!(warn.action, Action::Nothing);
    assert!(warn.expiring_user_ca);
    assert!(warn.waiting_for.unwrap().contains("never replaces it"));
    // A request starts one.
    let mut w = world(10, &stable, &gen_ca);
    w.request = Some(&req);
    assert!(matches!(
        step(&w, &s).action,
        Action::Begin {
            trigger: Trigger::Requested,
            ..
        }
    ));

    // Publish waits for every Secret, then WaitForTrust.
    let publish = rec(Phase::Publish, 100);
    let mut w = world(101, &publish, &gen_ca);
    w.next = Some(&next);
    w.secrets_awaiting_bundle = 3;
    let st = step(&w, &s);
    assert_eq!(st.action, Action::Nothing);
    assert!(st.waiting_for.unwrap().starts_with("3 identity Secret(s)"));
    assert_eq!(st.recheck, Some(t(103)));
    w.secrets_awaiting_bundle = 0;
    // A trust ConfigMap (or the ClusterTrustBundle) behind holds Publish as well.
    w.trust_bundles_awaiting = 2;
    let st = step(&w, &s);
    assert_eq!(st.action, Action::Nothing);
    assert!(
        st.waiting_for
            .unwrap()
            .starts_with("2 trust ConfigMap(s) or ClusterTrustBundle to take"),
    );
    w.secrets_awaiting_bundle = 1;
    assert!(
        step(&w, &s)
            .waiting_for
            .unwrap()
            .starts_with("1 identity Secret(s) or webhook caBundle and 2 trust ConfigMap(s)")
    );
    w.secrets_awaiting_bundle = 0;
    w.trust_bundles_awaiting = 0;
    assert_eq!(step(&w, &s).action, Action::Enter(Phase::WaitForTrust));
    // A request during a rollover starts nothing; an emergency one escalates a normal one.
    w.request = Some(&req);
    assert!(matches!(step(&w, &s).action, Action::Decline(_)));
    w.request = Some(&emergency);
    assert_eq!(step(&w, &s).action, Action::Escalate);
    // An intermediate-only change switches at once.
    let same_root = Record {
        new_trust: false,
        ..rec(Phase::Publish, 100)
    };
    let mut w = world(101, &same_root, &gen_ca);
    w.next = Some(&next);
    assert!(matches!(step(&w, &s).action, Action::Switch { .. }));
    // A phase whose start was lost records it first.
    let lost = Record {
        since: None,
        ..rec(Phase::WaitForTrust, 0)
    };
    assert_eq!(
        step(&world(5, &lost, &gen_ca), &s).action,
        Action::Enter(Phase::WaitForTrust)
    );
    // A phase that lacks its CA resets.
    let w = world(101, &publish, &gen_ca);
    assert!(matches!(step(&w, &s).action, Action::Reset(_)));

    // WaitForTrust: the delay, then observed consumers, then Switch with the old-leaf horizon.
    let waiting = rec(Phase::WaitForTrust, 200);
    let mut w = world(259, &waiting, &gen_ca);
    w.next = Some(&next);
    let st = step(&w, &s);
    assert_eq!(st.recheck, Some(t(260)));
    w.now = t(260);
    w.consumers = Consumers {
        observed: true,
        total: 4,
        trusting_next: 3,
    };
    assert!(
        step(&w, &s)
            .waiting_for
            .unwrap()
            .starts_with("1 of 4 demo pod(s)")
    );
    w.consumers.trusting_next = 4;
    w.awaiting_restart = 2;
    assert!(
        step(&w, &s)
            .waiting_for
            .unwrap()
            .starts_with("2 workload(s) that load certificates only at start")
    );
    w.awaiting_restart = 0;
    assert_eq!(
        step(&w, &s).action,
        Action::Switch {
            old_leaves_until: Some(t(260 + 3600 + 60))
        }
    );
    // A next CA that would not outlive the longest leaf holds the switch.
    let short = facts("b", 100, 2000, true);
    w.next = Some(&short);
    assert!(
        step(&w, &s)
            .waiting_for
            .unwrap()
            .contains("before a certificate of the longest lifetime")
    );
    w.next = Some(&next);
    // A Secret that fell behind sends it back to Publish.
    w.secrets_awaiting_bundle = 1;
    assert_eq!(step(&w, &s).action, Action::Enter(Phase::Publish));
    w.secrets_awaiting_bundle = 0;
    w.trust_bundles_awaiting = 1;
    assert_eq!(step(&w, &s).action, Action::Enter(Phase::Publish));

    // Switch waits for re-issues, then Drain; Drain waits for the delay and old leaves.
    let switched = Record {
        old_leaves_until: Some(t(4000)),
        ..rec(Phase::Switch, 300)
    };
    let mut w = world(301, &switched, &gen_ca);
    w.previous = Some("a");
    w.leaves_on_previous = 2;
    assert!(
        step(&w, &s)
            .waiting_for
            .unwrap()
            .starts_with("2 leaf certificate(s)")
    );
    w.leaves_on_previous = 0;
    assert_eq!(step(&w, &s).action, Action::Enter(Phase::Drain));
    let draining = Record {
        old_leaves_until: Some(t(4000)),
        ..rec(Phase::Drain, 320)
    };
    let mut w = world(400, &draining, &gen_ca);
    w.previous = Some("a");
    assert_eq!(step(&w, &s).recheck, Some(t(4060)));
    w.now = t(4060);
    assert_eq!(step(&w, &s).action, Action::Retire);
    // Emergency: only the delay after the last re-issue.
    let urgent = Record {
        mode: Mode::Emergency,
        ..draining.clone()
    };
    let mut w = world(380, &urgent, &gen_ca);
    w.previous = Some("a");
    assert_eq!(step(&w, &s).action, Action::Retire);
    w.now = t(379);
    assert_eq!(step(&w, &s).action, Action::Nothing);
    // A leaf of the previous CA seen again (a restored Secret) goes back to Switch.
    w.leaves_on_previous = 1;
    assert_eq!(step(&w, &s).action, Action::Enter(Phase::Switch));
}

#[test]
fn a_hand_edit_does_not_answer_a_rotate_request() {
    let r = Record {
        handled_request: Some("7".into()),
        ..Record::default()
    };
    let edit = Request {
        token: String::new(),
        source: Source::Edited,
        mode: Mode::Normal,
    };
    let begin = Action::Begin {
        trigger: Trigger::SecretEdited,
        mode: Mode::Normal,
        source: Source::Edited,
    };
    assert_eq!(
        next_record(&r, &begin, t(1), Some(&edit)).handled_request,
        Some("7".into())
    );
    let asked = Request {
        token: "8".into(),
        source: Source::Generate,
        mode: Mode::Normal,
    };
    assert_eq!(
        next_record(&r, &begin, t(1), Some(&asked)).handled_request,
        Some("8".into())
    );
}

#[test]
fn records_round_trip_through_annotations() {
    for phase in Phase::ALL {
        let r = Record {
            phase,
            since: Some(t(5)),
            mode: Mode::Emergency,
            trigger: Some(Trigger::SecretEdited),
            old_leaves_until: Some(t(99)),
            handled_request: Some("x".into()),
            new_trust: false,
        };
        let a: BTreeMap<String, String> = r
            .to_annotations()
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect();
        let back = Record::from_annotations(&a).unwrap();
        if phase == Phase::Stable {
            assert_eq!(
                back,
                Record {
                    handled_request: Some("x".into()),
                    ..Record::default()
                }
            );
        } else {
            assert_eq!(back, r);
        }
    }
    let bad = BTreeMap::from([(PHASE_ANNOTATION.to_string(), "Later".to_string())]);
    assert!(
        Record::from_annotations(&bad)
            .unwrap_err()
            .contains("unknown phase")
    );
}

// ---------------------------------------------------------------------------------------------
// Model check.

/// A CA in the model: its id and the root it chains to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ca {
    id: u32,
    root: u32,
    not_before: i64,
    not_after: i64,
}

#[derive(Clone, Debug)]
struct CaSecret {
    signer: Ca,
    bundle: BTreeSet<u32>,
    next: Option<Ca>,
    previous: Option<Ca>,
    record: Record,
}

#[derive(Clone, Debug)]
struct Leaf {
    root: u32,
    signer: u32,
    issued: i64,
    not_after: i64,
}

/// One version of an identity Secret, from `at`.
#[derive(Clone, Debug)]
struct Version {
    at: i64,
    leaf: Leaf,
    bundle: BTreeSet<u32>,
}

struct Model {
    rng: StdRng,
    now: i64,
    ca: CaSecret,
    /// Versions of the CA Secret, for identity reconciles that read a lagging cache.
    ca_history: Vec<(i64, CaSecret)>,
    secrets: Vec<Vec<Version>>,
    next_id: u32,
    /// Skew of the current leader's clock.
    skew: i64,
    settings: Settings,
    observed: bool,
    /// Consumers load a Secret's new files at most this long after the write.
    lag: i64,
    leaf_life: i64,
    ca_life: i64,
    rollovers: u32,
    requests: u32,
    /// Requests may ask for emergency mode.
    emergency: bool,
    /// Roots retired in emergency mode: their leaves still in memory somewhere are refused on
    /// purpose.
    revoked: BTreeSet<u32>,
    /// Versions of trust ConfigMaps (`at`, bundle): clients without an identity trust what they
    /// hold, loaded up to `lag` late, and nobody observes them.
    trust_maps: Vec<Vec<(i64, BTreeSet<u32>)>>,
    /// The rollover counts trust ConfigMaps behind the bundle (off: the control).
    trust_gate: bool,
}

const CACHE_LAG: i64 = 3;

impl Model {
    fn new(seed: u64, settings: Settings, observed: bool, lag: i64) -> Self {
        let root = Ca {
            id: 0,
            root: 0,
            not_before: 0,
            not_after: 6000,
        };
        let ca = CaSecret {
            signer: root,
            bundle: BTreeSet::from([0]),
            next: None,
            previous: None,
            record: Record::default(),
        };
        let leaf = Leaf {
            root: 0,
            signer: 0,
            issued: 0,
            not_after: 600,
        };
        let secrets = (0..4)
            .map(|_| {
                vec![Version {
                    at: 0,
                    leaf: leaf.clone(),
                    bundle: BTreeSet::from([0]),
                }]
            })
            .collect();
        Self {
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            ca_history: vec![(0, ca.clone())],
            ca,
            secrets,
            next_id: 1,
            skew: 0,
            settings,
            observed,
            lag,
            leaf_life: 600,
            ca_life: 6000,
            rollovers: 0,
            requests: 0,
            emergency: true,
            revoked: BTreeSet::new(),
            trust_maps: vec![vec![(0, BTreeSet::from([0]))]; 2],
            trust_gate: true,
        }
    }

    fn ts(&self, s: i64) -> jiff::Timestamp {
        t(s)
    }

    fn facts(&self, ca: &Ca) -> CaFacts {
        CaFacts {
            fingerprint: ca.id.to_string(),
            not_before: self.ts(ca.not_before),
            not_after: self.ts(ca.not_after),
            generated: true,
        }
    }

    fn write_ca(&mut self, ca: CaSecret) {
        self.ca = ca.clone();
        self.ca_history.push((self.now, ca));
    }

    /// What a pod of identity `i` may have loaded at `now`: every version current at some time
    /// in [now - lag, now].
    fn loadable(&self, i: usize) -> Vec<&Version> {
        let v = &self.secrets[i];
        let from = self.now - self.lag;
        v.iter()
            .enumerate()
            .filter(|(k, ver)| {
                let ends = v.get(k + 1).map_or(i64::MAX, |n| n.at);
                ends > from && ver.at <= self.now
            })
            .map(|(_, ver)| ver)
            .collect()
    }

    /// What a client of trust ConfigMap `i` may have loaded at `now`.
    fn loadable_trust(&self, i: usize) -> Vec<&BTreeSet<u32>> {
        let v = &self.trust_maps[i];
        let from = self.now - self.lag;
        v.iter()
            .enumerate()
            .filter(|(k, (at, _))| {
                let ends = v.get(k + 1).map_or(i64::MAX, |n| n.0);
                ends > from && *at <= self.now
            })
            .map(|(_, (_, b))| b)
            .collect()
    }

    /// The trust writer, from a cache that may lag the CA Secret.
    fn write_trust(&mut self, i: usize) {
        let seen = self.now - self.rng.random_range(0..=CACHE_LAG);
        let view = self
            .ca_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= seen)
            .unwrap_or(&self.ca_history[0])
            .1
            .bundle
            .clone();
        if self.trust_maps[i].last().map(|(_, b)| b) != Some(&view) {
            self.trust_maps[i].push((self.now, view));
        }
    }

    fn controller_step(&mut self, request: Option<Request>) {
        let now = self.now + self.skew;
        let current = self.facts(&self.ca.signer);
        let next = self.ca.next.map(|c| self.facts(&c));
        let prev_fp = self.ca.previous.map(|c| c.id.to_string());
        let bundle = self.ca.bundle.clone();
        let awaiting = self
            .secrets
            .iter()
            .filter(|v| v.last().unwrap().bundle != bundle)
            .count() as u64;
        let trusting_next = match self.ca.next {
            Some(n) => (0..self.secrets.len())
                .filter(|&i| self.loadable(i).iter().all(|v| v.bundle.contains(&n.root)))
                .count() as u64,
            None => 0,
        };
        let leaves_on_previous = match self.ca.previous {
            Some(p) => self
                .secrets
                .iter()
                .filter(|v| v.last().unwrap().leaf.signer == p.id)
                .count() as u64,
            None => 0,
        };
        let record = self.ca.record.clone();
        let w = World {
            now: self.ts(now),
            record: &record,
            current: &current,
            next: next.as_ref(),
            previous: prev_fp.as_deref(),
            request: request.as_ref(),
            secrets_awaiting_bundle: awaiting,
            trust_bundles_awaiting: if self.trust_gate {
                self.trust_maps
                    .iter()
                    .filter(|m| m.last().map(|(_, b)| b) != Some(&bundle))
                    .count() as u64
            } else {
                0
            },
            consumers: Consumers {
                observed: self.observed,
                total: self.secrets.len() as u64,
                trusting_next,
            },
            awaiting_restart: 0,
            leaves_on_previous,
            longest_leaf: Duration::from_secs(self.leaf_life as u64),
        };
        let st = step(&w, &self.settings);
        if st.action == Action::Nothing {
            return;
        }
        // A crash before the write: nothing happened.
        if self.rng.random_bool(0.1) {
            return;
        }
        let mut ca = self.ca.clone();
        ca.record = next_record(&record, &st.action, self.ts(now), request.as_ref());
        match st.action {
            Action::Begin { ref source, .. } => {
                let id = self.next_id;
                self.next_id += 1;
                // A Secret source here is an intermediate under the current root.
                let root = if *source == Source::Secret("intermediate".into()) {
                    ca.signer.root
                } else {
                    id
                };
                let n = Ca {
                    id,
                    root,
                    not_before: self.now,
                    not_after: self.now + self.ca_life,
                };
                ca.record.new_trust = !ca.bundle.contains(&root);
                ca.bundle.insert(root);
                ca.next = Some(n);
                self.rollovers += 1;
            }
            Action::Switch { .. } => {
                ca.previous = Some(ca.signer);
                ca.signer = ca.next.take().unwrap();
            }
            Action::Retire => {
                let p = ca.previous.take().unwrap();
                if record.mode == Mode::Emergency {
                    self.revoked.insert(p.root);
                }
                if p.root != ca.signer.root {
                    ca.bundle.remove(&p.root);
                }
            }
            Action::Reset(ref why) => panic!("the model never loses a CA: {why}"),
            _ => {}
        }
        self.write_ca(ca);
    }

    /// An identity reconcile, reading the CA from a cache that lags by up to CACHE_LAG.
    fn reconcile(&mut self, i: usize) {
        let seen = self.now - self.rng.random_range(0..=CACHE_LAG);
        let view = self
            .ca_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= seen)
            .unwrap_or(&self.ca_history[0])
            .1
            .clone();
        let last = self.secrets[i].last().unwrap().clone();
        let mut leaf = last.leaf.clone();
        let renew = self.now >= leaf.issued + self.leaf_life * 2 / 3;
        if (leaf.signer != view.signer.id || renew)
            && view.signer.not_after >= self.now + self.leaf_life
        {
            leaf = Leaf {
                root: view.signer.root,
                signer: view.signer.id,
                issued: self.now,
                not_after: self.now + self.leaf_life,
            };
        }
        if leaf.signer != last.leaf.signer
            || leaf.issued != last.leaf.issued
            || view.bundle != last.bundle
        {
            self.secrets[i].push(Version {
                at: self.now,
                leaf,
                bundle: view.bundle,
            });
        }
    }

    /// The invariant at this instant: every leaf a pod of x may present verifies against every
    /// bundle a pod of y may hold; in Normal mode also every unexpired leaf ever written.
    fn check(&self) -> Result<(), String> {
        // Every bundle some client may hold: pods of identities, and clients of trust ConfigMaps
        // (numbered after the identities).
        let mut holders: Vec<(usize, &BTreeSet<u32>)> = Vec::new();
        for y in 0..self.secrets.len() {
            holders.extend(self.loadable(y).into_iter().map(|v| (y, &v.bundle)));
        }
        for m in 0..self.trust_maps.len() {
            let y = self.secrets.len() + m;
            holders.extend(self.loadable_trust(m).into_iter().map(|b| (y, b)));
        }
        for x in 0..self.secrets.len() {
            for &(y, held) in &holders {
                let presented = self.loadable(x);
                // Leaves loaded once and kept in memory: safe until they expire, unless
                // their root was retired in an emergency.
                let ever: Vec<&Version> = self.secrets[x]
                    .iter()
                    .filter(|v| {
                        let in_emergency = self.ca.record.mode == Mode::Emergency
                            && self.ca.previous.is_some_and(|p| p.root == v.leaf.root);
                        !(self.revoked.contains(&v.leaf.root) || in_emergency)
                    })
                    .collect();
                for v in presented.iter().chain(ever.iter()) {
                    if v.leaf.not_after <= self.now {
                        continue;
                    }
                    if !held.contains(&v.leaf.root) {
                        return Err(format!(
                            "t={}: leaf of identity {x} (CA {}, root {}, issued {} until {}) untrusted by a pod of identity {y} holding {:?}; CA Secret {:?}",
                            self.now,
                            v.leaf.signer,
                            v.leaf.root,
                            v.leaf.issued,
                            v.leaf.not_after,
                            held,
                            self.ca_history
                                .iter()
                                .map(|(at, c)| (
                                    *at,
                                    c.record.phase,
                                    c.record.mode,
                                    c.record
                                        .old_leaves_until
                                        .map(|t| t.as_second() - 1_800_000_000)
                                ))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
        // Bounded trust set.
        if self.ca.bundle.len() > 2 {
            return Err(format!("t={}: bundle {:?}", self.now, self.ca.bundle));
        }
        Ok(())
    }

    fn run(&mut self, ticks: u32) -> Result<(), String> {
        for _ in 0..ticks {
            self.now += self.rng.random_range(0..=6);
            if self.rng.random_bool(0.01) {
                // A leader change: another clock.
                self.skew = self.rng.random_range(-5..=5);
            }
            let request = if self.rng.random_bool(0.004) {
                self.requests += 1;
                let source = match self.rng.random_range(0..3) {
                    0 => Source::Generate,
                    1 => Source::Secret("intermediate".into()),
                    _ => Source::Edited,
                };
                let mode = if self.emergency && self.rng.random_bool(0.3) {
                    Mode::Emergency
                } else {
                    Mode::Normal
                };
                Some(Request {
                    token: self.requests.to_string(),
                    source,
                    mode,
                })
            } else {
                None
            };
            if request.is_some() || self.rng.random_bool(0.5) {
                self.controller_step(request);
            }
            for i in 0..self.secrets.len() {
                if self.rng.random_bool(0.3) {
                    self.reconcile(i);
                }
            }
            for i in 0..self.trust_maps.len() {
                // Slower than identity Secrets: a writer that backs off after refusals.
                if self.rng.random_bool(0.1) {
                    self.write_trust(i);
                }
            }
            self.check()?;
        }
        Ok(())
    }

    /// No new requests: every rollover completes.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..2000 {
            if self.ca.record.phase == Phase::Stable && self.ca.previous.is_none() {
                return Ok(());
            }
            self.now += 5;
            self.controller_step(None);
            for i in 0..self.secrets.len() {
                self.reconcile(i);
            }
            for i in 0..self.trust_maps.len() {
                self.write_trust(i);
            }
            self.check()?;
        }
        Err(format!("no progress: {:?}", self.ca.record))
    }
}

/// Consumers load new files up to 60 s late; leaders' clocks differ by up to 10 s; the delay
/// setting covers both. Random runs must never present an untrusted leaf, must roll over many
/// times (automatically and on request, normal and emergency, new root and intermediate-only),
/// and must always come back to Stable.
#[test]
fn model_no_peer_ever_sees_an_untrusted_chain() {
    let mut rollovers = 0;
    for seed in 0..60 {
        let observed = seed % 2 == 0;
        let mut m = Model::new(seed, settings(60 + 10), observed, 60);
        m.run(3000)
            .and_then(|()| m.settle())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        rollovers += m.rollovers;
        assert_eq!(
            m.ca.bundle,
            BTreeSet::from([m.ca.signer.root]),
            "seed {seed}"
        );
    }
    assert!(rollovers >= 100, "only {rollovers} rollovers exercised");
}

/// Observation alone gates the switch: with no delay at all (and normal mode, whose old root
/// waits for old leaves to expire), waiting until every consumer reports the next root keeps every
/// handshake good.
#[test]
fn model_observation_alone_gates_the_switch() {
    for seed in 100..130 {
        let mut m = Model::new(seed, settings(0), true, 60);
        m.emergency = false;
        // Nobody observes clients of trust ConfigMaps: only the delay covers them.
        m.trust_maps.clear();
        m.run(3000)
            .and_then(|()| m.settle())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

/// The control: no propagation delay and no observation must be caught by the same check.
#[test]
fn model_catches_a_rollover_without_gates() {
    let mut caught = 0;
    for seed in 0..20 {
        let mut m = Model::new(seed, settings(0), false, 60);
        m.emergency = false;
        if m.run(3000).is_err() {
            caught += 1;
        }
    }
    assert!(caught >= 15, "only {caught} of 20 ungated runs were caught");
}

/// The control of the trust ConfigMaps' gate: the same runs with the rollover not waiting for
/// them must be caught (a client of a ConfigMap still without the next root sees a new leaf).
#[test]
fn model_catches_a_rollover_that_does_not_wait_for_trust_configmaps() {
    let mut caught = 0;
    for seed in 0..20 {
        let mut m = Model::new(seed, settings(60 + 10), seed % 2 == 0, 60);
        m.trust_gate = false;
        if m.run(3000).and_then(|()| m.settle()).is_err() {
            caught += 1;
        }
    }
    assert!(
        caught >= 10,
        "only {caught} of 20 runs without the trust gate were caught"
    );
}

#[test]
fn rotation_point_is_a_fraction_of_the_life() {
    let ca = facts("a", 0, 3000, true);
    assert_eq!(rotation_point(&ca, 0.5), t(1500));
    assert_eq!(rotation_point(&ca, f64::NAN), t(2000));
    assert_eq!(rotation_point(&ca, 1.5), t(2000));
}
