//! The CA rollover, as a pure phase machine: what the leader should do next with the CA Secret,
//! given what it observes. No client, no clock of its own.
//!
//! ```text
//! Stable ──request / auto / edited Secret──► Publish ──every Secret has the new bundle──► WaitForTrust
//!    ▲                                           │ (next root already trusted:                 │ propagation delay elapsed
//!    │                                           │  an intermediate-only change)               │ and every observed demo pod
//!    │                                           ▼                                             ▼ trusts the next root
//!  Retire ◄──propagation delay (and, Normal: ── Drain ◄──no leaf left on the previous CA── Switch (next signs;
//!  (previous root leaves the bundle)    every old leaf expired)                              leaves re-issued)
//! ```
//!
//! The whole state lives in the CA Secret (keys and annotations, see [`Record`]); every step is
//! one write of that Secret with a resourceVersion precondition, recorded before anything acts
//! on it: a controller killed at any point reads the same phase back and resumes the same rollover,
//! and a second rollover can only start from `Stable`.

use std::{collections::BTreeMap, time::Duration};

/// Phase of the rollover, as recorded in the CA Secret (`tlsid.dev/rollover-phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// One CA signs; the bundle holds its root (and any other root the user put there).
    Stable,
    /// The next CA is stored and its root is in the CA's bundle; identity Secrets are taking the
    /// overlap bundle.
    Publish,
    /// Every identity Secret holds the overlap bundle; waiting for consumers to load it.
    WaitForTrust,
    /// The next CA signs; leaves of the previous one are re-issued at the issuance budget.
    Switch,
    /// No Secret holds a leaf of the previous CA; waiting until none can be in use anywhere.
    Drain,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Stable,
        Phase::Publish,
        Phase::WaitForTrust,
        Phase::Switch,
        Phase::Drain,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "Stable",
            Phase::Publish => "Publish",
            Phase::WaitForTrust => "WaitForTrust",
            Phase::Switch => "Switch",
            Phase::Drain => "Drain",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// How the previous root is retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// The previous root stays trusted until every leaf it signed has expired.
    #[default]
    Normal,
    /// A compromised CA: the previous root is retired as soon as no Secret holds a leaf it signed
    /// (plus the propagation delay), without waiting for old leaves to expire. A peer that has
    /// loaded its new leaf and the overlap bundle is never broken; one still holding an old leaf
    /// in memory is refused from then on.
    Emergency,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "Normal",
            Mode::Emergency => "Emergency",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Normal" => Some(Mode::Normal),
            "Emergency" => Some(Mode::Emergency),
            _ => None,
        }
    }
}

/// What started a rollover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `tlsid ca rotate` (the `tlsid.dev/rotate` annotation on the CA Secret).
    Requested,
    /// A root tlsid generated reached its rotation point.
    Automatic,
    /// Someone put a new signer into the CA Secret by hand.
    SecretEdited,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Requested => "Requested",
            Trigger::Automatic => "Automatic",
            Trigger::SecretEdited => "SecretEdited",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Requested" => Some(Trigger::Requested),
            "Automatic" => Some(Trigger::Automatic),
            "SecretEdited" => Some(Trigger::SecretEdited),
            _ => None,
        }
    }
}

/// Annotations of the CA Secret that record the rollover (written by the leader only).
pub const PHASE_ANNOTATION: &str = "tlsid.dev/rollover-phase";
pub const SINCE_ANNOTATION: &str = "tlsid.dev/rollover-since";
pub const MODE_ANNOTATION: &str = "tlsid.dev/rollover-mode";
pub const TRIGGER_ANNOTATION: &str = "tlsid.dev/rollover-trigger";
pub const OLD_LEAVES_UNTIL_ANNOTATION: &str = "tlsid.dev/rollover-old-leaves-until";
pub const NEW_TRUST_ANNOTATION: &str = "tlsid.dev/rollover-new-trust";
/// Fingerprint of the signer tlsid last wrote into `tls.crt`: a Secret whose signer differs from
/// it was edited by hand (a new CA to roll over to, never an instant swap).
pub const SIGNER_ANNOTATION: &str = "tlsid.dev/signer";
/// `"true"` on a CA Secret whose signer tlsid generated (rolled over automatically).
pub const GENERATED_ANNOTATION: &str = "tlsid.dev/ca-generated";
/// Annotations a user (or `tlsid ca rotate`) writes to ask for a rollover: any new value of
/// `tlsid.dev/rotate` is a request, answered once (`tlsid.dev/rotate-handled`).
pub const ROTATE_ANNOTATION: &str = "tlsid.dev/rotate";
/// Name of a `kubernetes.io/tls` Secret in the install's namespace holding the next CA (signer
/// chain in `tls.crt`, key in `tls.key`, roots in `ca.crt`); absent: tlsid generates a root.
pub const ROTATE_FROM_ANNOTATION: &str = "tlsid.dev/rotate-from";
/// `Emergency` or `Normal` (default).
pub const ROTATE_MODE_ANNOTATION: &str = "tlsid.dev/rotate-mode";
pub const ROTATE_HANDLED_ANNOTATION: &str = "tlsid.dev/rotate-handled";

/// Keys of the CA Secret besides `tls.crt`, `tls.key`, `ca.crt`.
pub const NEXT_CRT: &str = "next.crt";
pub const NEXT_KEY: &str = "next.key";
pub const NEXT_CA: &str = "next-ca.crt";
pub const PREVIOUS_CRT: &str = "previous.crt";
pub const PREVIOUS_CA: &str = "previous-ca.crt";

/// The rollover as recorded in the CA Secret's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub phase: Phase,
    /// When the phase was entered (whole seconds).
    pub since: Option<jiff::Timestamp>,
    pub mode: Mode,
    pub trigger: Option<Trigger>,
    /// Normal mode: the latest a leaf of the previous CA can expire (set at the switch).
    pub old_leaves_until: Option<jiff::Timestamp>,
    /// The last `tlsid.dev/rotate` value acted upon.
    pub handled_request: Option<String>,
    /// The next CA brings a root the bundle did not hold (false: an intermediate-only change under
    /// a root already trusted, which needs no propagation).
    pub new_trust: bool,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            phase: Phase::Stable,
            since: None,
            mode: Mode::Normal,
            trigger: None,
            old_leaves_until: None,
            handled_request: None,
            new_trust: true,
        }
    }
}

impl Record {
    /// Read the record; a value that cannot be read is an error naming the annotation (the CA
    /// Secret is then unusable as a whole and the last good state keeps going).
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Result<Self, String> {
        let time = |key: &str| -> Result<Option<jiff::Timestamp>, String> {
            a.get(key)
                .map(|v| {
                    v.parse::<jiff::Timestamp>()
                        .map_err(|_| format!("annotation {key} is not an RFC 3339 time: {v:?}"))
                })
                .transpose()
        };
        let phase = match a.get(PHASE_ANNOTATION) {
            None => Phase::Stable,
            Some(v) => Phase::parse(v).ok_or_else(|| {
                format!("annotation {PHASE_ANNOTATION} has an unknown phase {v:?}")
            })?,
        };
        let mode = match a.get(MODE_ANNOTATION) {
            None => Mode::Normal,
            Some(v) => Mode::parse(v)
                .ok_or_else(|| format!("annotation {MODE_ANNOTATION} has an unknown mode {v:?}"))?,
        };
        Ok(Self {
            phase,
            since: time(SINCE_ANNOTATION)?,
            mode,
            trigger: a.get(TRIGGER_ANNOTATION).and_then(|v| Trigger::parse(v)),
            old_leaves_until: time(OLD_LEAVES_UNTIL_ANNOTATION)?,
            handled_request: a.get(ROTATE_HANDLED_ANNOTATION).cloned(),
            new_trust: a.get(NEW_TRUST_ANNOTATION).is_none_or(|v| v != "false"),
        })
    }

    /// The annotations that record this state (every key, `None` for one to remove).
    pub fn to_annotations(&self) -> BTreeMap<&'static str, Option<String>> {
        let stable = self.phase == Phase::Stable;
        BTreeMap::from([
            (
                PHASE_ANNOTATION,
                (!stable).then(|| self.phase.as_str().to_string()),
            ),
            (
                SINCE_ANNOTATION,
                self.since.filter(|_| !stable).map(|t| t.to_string()),
            ),
            (
                MODE_ANNOTATION,
                (!stable).then(|| self.mode.as_str().to_string()),
            ),
            (
                TRIGGER_ANNOTATION,
                self.trigger
                    .filter(|_| !stable)
                    .map(|t| t.as_str().to_string()),
            ),
            (
                OLD_LEAVES_UNTIL_ANNOTATION,
                self.old_leaves_until
                    .filter(|_| !stable)
                    .map(|t| t.to_string()),
            ),
            (ROTATE_HANDLED_ANNOTATION, self.handled_request.clone()),
            (
                NEW_TRUST_ANNOTATION,
                (!stable && !self.new_trust).then(|| "false".to_string()),
            ),
        ])
    }
}

/// What the leader knows about one CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFacts {
    pub fingerprint: String,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    /// tlsid generated it (rolled over automatically; a user's CA only gets warnings).
    pub generated: bool,
}

/// Where the next CA comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Generate,
    /// A `kubernetes.io/tls` Secret in the install's namespace.
    Secret(String),
    /// The content someone wrote into the CA Secret itself.
    Edited,
}

/// An unanswered request for a rollover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub token: String,
    pub source: Source,
    pub mode: Mode,
}

/// Consumers tlsid can observe (its own demo pods report the roots they loaded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consumers {
    /// Observation is on (`--observe-demo-trust`).
    pub observed: bool,
    pub total: u64,
    /// How many of them report that they trust the next root.
    pub trusting_next: u64,
}

/// Everything one step needs, read once.
#[derive(Clone, Debug)]
pub struct World<'a> {
    pub now: jiff::Timestamp,
    pub record: &'a Record,
    pub current: &'a CaFacts,
    /// The next CA, stored in the Secret (Publish, WaitForTrust).
    pub next: Option<&'a CaFacts>,
    /// Fingerprint of the previous signer (Switch, Drain).
    pub previous: Option<&'a str>,
    /// An unanswered rollover request.
    pub request: Option<&'a Request>,
    /// Places that do not hold the CA's bundle yet: identity Secrets (of identities being
    /// served) and the webhook configuration's caBundle.
    pub secrets_awaiting_bundle: u64,
    /// Trust bundles published for workloads without an identity (the trust ConfigMaps of
    /// selected namespaces, the ClusterTrustBundle) that do not hold the CA's bundle yet.
    pub trust_bundles_awaiting: u64,
    pub consumers: Consumers,
    /// Workloads that load certificates only at start and have not yet restarted onto the
    /// bundle with the next root (the gate of restart orchestration; 0 while tlsid restarts no
    /// workload).
    pub awaiting_restart: u64,
    /// Identities whose current leaf the previous CA signed.
    pub leaves_on_previous: u64,
    /// The longest lifetime any served identity asks for.
    pub longest_leaf: Duration,
}

/// Settings of the install.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// How long after every identity Secret holds a new bundle until every consumer can have
    /// loaded it (kubelet sync of mounted Secrets, plus the app's reload).
    pub propagation_delay: Duration,
    /// Fraction of a generated root's lifetime after which it is rolled over (0 < f < 1).
    pub rotate_at: f64,
}

/// Default for `--trust-propagation-delay`: the kubelet rewrites a mounted Secret's files on its
/// periodic pod sync (syncFrequency 1 m, up to 50 % jitter: ≤ 90 s) once its copy of the Secret
/// changed (the default `Watch` strategy: seconds; `Cache`: up to a 1 m TTL more), so a file
/// changes at most ~2.5 m after the Secret; an app polling its files every minute adds one more;
/// 5 m covers both with a margin.
pub const DEFAULT_PROPAGATION_DELAY: Duration = Duration::from_secs(300);
/// Default rotation point of a generated root: two thirds of its life.
pub const DEFAULT_ROTATE_AT: f64 = 2.0 / 3.0;
/// Leaves issued under the previous CA shortly before the switch are backdated this much; added
/// to the old-leaf horizon.
const LEAF_MARGIN: Duration = Duration::from_secs(60);
/// How often to look again while waiting on something no watch reports (Secrets catching up,
/// demo pods, leaves being re-issued).
pub const POLL: Duration = Duration::from_secs(2);

/// What to do with the CA Secret now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Store the next CA (from `source`), add its roots to the bundle, enter `Publish`.
    Begin {
        trigger: Trigger,
        mode: Mode,
        source: Source,
    },
    /// Enter this phase (WaitForTrust or Drain), nothing else changes.
    Enter(Phase),
    /// The next CA signs; the current one becomes the previous (its key is destroyed);
    /// `old_leaves_until` is recorded (Normal mode).
    Switch {
        old_leaves_until: Option<jiff::Timestamp>,
    },
    /// The previous CA's roots leave the bundle (unless they anchor the signer); back to Stable.
    Retire,
    /// A rollover is in progress: an emergency request makes it an emergency one.
    Escalate,
    /// A request that cannot start anything (a rollover is in progress): answer it, with why.
    Decline(String),
    /// The recorded phase lacks what it needs (e.g. Publish without a next CA): back to Stable,
    /// keeping the signer and bundle as they are.
    Reset(String),
}

/// A step: the action, what the machine waits for (shown in status), and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    pub waiting_for: Option<String>,
    pub recheck: Option<jiff::Timestamp>,
    /// A user-supplied CA past its rotation point: tlsid waits for the user's next CA.
    pub expiring_user_ca: bool,
}

impl Step {
    fn act(action: Action) -> Self {
        Self {
            action,
            waiting_for: None,
            recheck: None,
            expiring_user_ca: false,
        }
    }
    fn wait(why: String, until: jiff::Timestamp) -> Self {
        Self {
            action: Action::Nothing,
            waiting_for: Some(why),
            recheck: Some(until),
            expiring_user_ca: false,
        }
    }
}

/// When a CA reaches its rotation point.
pub fn rotation_point(ca: &CaFacts, rotate_at: f64) -> jiff::Timestamp {
    let life = ca.not_after.as_second() - ca.not_before.as_second();
    let f = if rotate_at.is_finite() && rotate_at > 0.0 && rotate_at < 1.0 {
        rotate_at
    } else {
        DEFAULT_ROTATE_AT
    };
    let offset = (life.max(0) as f64 * f) as i64;
    jiff::Timestamp::from_second(ca.not_before.as_second().saturating_add(offset))
        .unwrap_or(ca.not_after)
}

fn plus(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
}

/// Decide the next step of the rollover.
pub fn step(w: &World<'_>, s: &Settings) -> Step {
    let r = w.record;
    let since = r.since.unwrap_or(w.now);
    let poll = plus(w.now, POLL);
    if r.phase != Phase::Stable
        && let Some(req) = w.request
    {
        return Step::act(if req.mode == Mode::Emergency && r.mode == Mode::Normal {
            Action::Escalate
        } else {
            Action::Decline(format!(
                "a rollover is already in progress (phase {}); this request starts nothing",
                r.phase.as_str()
            ))
        });
    }
    if r.phase != Phase::Stable && r.since.is_none() {
        // The phase's start was lost (an annotation removed by hand): record it now rather than
        // count every wait from "now" forever.
        return Step::act(Action::Enter(r.phase));
    }
    match r.phase {
        Phase::Stable => {
            if let Some(req) = w.request {
                return Step::act(Action::Begin {
                    trigger: if req.source == Source::Edited {
                        Trigger::SecretEdited
                    } else {
                        Trigger::Requested
                    },
                    mode: req.mode,
                    source: req.source.clone(),
                });
            }
            let due = rotation_point(w.current, s.rotate_at);
            if w.now < due {
                return Step {
                    recheck: w.current.generated.then_some(due),
                    ..Step::act(Action::Nothing)
                };
            }
            if w.current.generated {
                Step::act(Action::Begin {
                    trigger: Trigger::Automatic,
                    mode: Mode::Normal,
                    source: Source::Generate,
                })
            } else {
                Step {
                    action: Action::Nothing,
                    waiting_for: Some(format!(
                        "the CA you supplied expires at {}; tlsid never replaces it by itself: start a rollover to your next CA (tlsid ca rotate --from-secret NAME)",
                        w.current.not_after
                    )),
                    recheck: None,
                    expiring_user_ca: true,
                }
            }
        }
        Phase::Publish | Phase::WaitForTrust => {
            if w.next.is_none() {
                return Step::act(Action::Reset(format!(
                    "phase {} recorded without a next CA in the Secret",
                    r.phase.as_str()
                )));
            }
            if let Some(next) = w.next
                && next.not_after < plus(plus(w.now, w.longest_leaf), s.propagation_delay)
            {
                return Step::wait(
                    format!(
                        "a next CA that lasts longer: this one expires at {}, before a certificate of the longest lifetime served ({} s) issued now would",
                        next.not_after,
                        w.longest_leaf.as_secs()
                    ),
                    poll,
                );
            }
            if r.phase == Phase::Publish {
                if !r.new_trust {
                    // Nothing to propagate: the next CA chains to a root trusted before this
                    // rollover began (an intermediate-only change).
                    return Step::act(Action::Switch {
                        old_leaves_until: old_leaves_until(w, r.mode),
                    });
                }
                if w.secrets_awaiting_bundle > 0 || w.trust_bundles_awaiting > 0 {
                    let mut parts = Vec::new();
                    if w.secrets_awaiting_bundle > 0 {
                        parts.push(format!(
                            "{} identity Secret(s) or webhook caBundle",
                            w.secrets_awaiting_bundle
                        ));
                    }
                    if w.trust_bundles_awaiting > 0 {
                        parts.push(format!(
                            "{} trust ConfigMap(s) or ClusterTrustBundle",
                            w.trust_bundles_awaiting
                        ));
                    }
                    return Step::wait(
                        format!(
                            "{} to take the bundle with the next root",
                            parts.join(" and ")
                        ),
                        poll,
                    );
                }
                return Step::act(Action::Enter(Phase::WaitForTrust));
            }
            if w.secrets_awaiting_bundle > 0 || w.trust_bundles_awaiting > 0 {
                // A Secret that fell behind (restored, recreated): wait for it again, from zero.
                return Step::act(Action::Enter(Phase::Publish));
            }
            let trusted_at = plus(since, s.propagation_delay);
            if w.now < trusted_at {
                return Step::wait(
                    format!("the trust propagation delay, until {trusted_at}"),
                    trusted_at,
                );
            }
            let c = w.consumers;
            if c.observed && c.trusting_next < c.total {
                return Step::wait(
                    format!(
                        "{} of {} demo pod(s) to report that they trust the next root",
                        c.total - c.trusting_next,
                        c.total
                    ),
                    poll,
                );
            }
            if w.awaiting_restart > 0 {
                return Step::wait(
                    format!(
                        "{} workload(s) that load certificates only at start to restart with the next root",
                        w.awaiting_restart
                    ),
                    poll,
                );
            }
            Step::act(Action::Switch {
                old_leaves_until: old_leaves_until(w, r.mode),
            })
        }
        Phase::Switch | Phase::Drain => {
            if w.previous.is_none() {
                return Step::act(Action::Reset(format!(
                    "phase {} recorded without a previous CA in the Secret",
                    r.phase.as_str()
                )));
            }
            if w.leaves_on_previous > 0 {
                let step = Step::wait(
                    format!(
                        "{} leaf certificate(s) signed by the previous CA to be re-issued",
                        w.leaves_on_previous
                    ),
                    poll,
                );
                return if r.phase == Phase::Drain {
                    Step::act(Action::Enter(Phase::Switch))
                } else {
                    step
                };
            }
            if r.phase == Phase::Switch {
                return Step::act(Action::Enter(Phase::Drain));
            }
            let mut retire_at = plus(since, s.propagation_delay);
            if r.mode == Mode::Normal
                && let Some(until) = r.old_leaves_until
            {
                retire_at = retire_at.max(plus(until, s.propagation_delay));
            }
            if w.now < retire_at {
                return Step::wait(
                    format!("the previous root to be unused by every peer, until {retire_at}"),
                    retire_at,
                );
            }
            Step::act(Action::Retire)
        }
    }
}

fn old_leaves_until(w: &World<'_>, mode: Mode) -> Option<jiff::Timestamp> {
    (mode == Mode::Normal).then(|| plus(plus(w.now, w.longest_leaf), LEAF_MARGIN))
}

/// The record after `action` is applied at `now` (the write the controller makes).
pub fn next_record(
    r: &Record,
    action: &Action,
    now: jiff::Timestamp,
    request: Option<&Request>,
) -> Record {
    let mut out = r.clone();
    match action {
        Action::Nothing => {}
        Action::Begin { trigger, mode, .. } => {
            out = Record {
                phase: Phase::Publish,
                since: Some(now),
                mode: *mode,
                trigger: Some(*trigger),
                old_leaves_until: None,
                handled_request: r.handled_request.clone(),
                new_trust: true,
            };
        }
        Action::Enter(p) => {
            out.phase = *p;
            out.since = Some(now);
        }
        Action::Switch { old_leaves_until } => {
            out.phase = Phase::Switch;
            out.since = Some(now);
            out.old_leaves_until = *old_leaves_until;
        }
        Action::Retire | Action::Reset(_) => {
            out = Record {
                handled_request: r.handled_request.clone(),
                ..Record::default()
            };
        }
        Action::Escalate => out.mode = Mode::Emergency,
        Action::Decline(_) => {}
    }
    // A hand edit is not a `tlsid.dev/rotate` request: recording it as answered would make an
    // older request look unanswered again.
    if let Some(req) = request.filter(|r| r.source != Source::Edited)
        && matches!(
            action,
            Action::Begin { .. } | Action::Escalate | Action::Decline(_)
        )
    {
        out.handled_request = Some(req.token.clone());
    }
    out
}

#[cfg(test)]
#[path = "rollover_tests.rs"]
mod tests;
