//! The CA Secret as a whole: the signer and bundle every identity uses, plus what a rollover keeps
//! beside them (the next CA, the previous signer) and its [`Record`]. Pure: parsed from and
//! written back to the Secret's data and annotations; each rollover action is a function from one
//! state to the next.
//!
//! Keys: `tls.crt`/`tls.key` (signer chain and key), `ca.crt` (the published bundle),
//! `next.crt`/`next.key`/`next-ca.crt` (the next CA while it is published but not signing),
//! `previous.crt`/`previous-ca.crt` (the previous signer and its roots, from the switch until
//! they are retired; its key is destroyed at the switch: nothing signs with it again).

use super::rollover::{
    Action, CaFacts, GENERATED_ANNOTATION, Mode, NEXT_CA, NEXT_CRT, NEXT_KEY, PREVIOUS_CA,
    PREVIOUS_CRT, ROTATE_ANNOTATION, ROTATE_FROM_ANNOTATION, ROTATE_MODE_ANNOTATION, Record,
    Request, SIGNER_ANNOTATION, Source,
};
use crate::pki::{Authority, CaError, certs_to_pem, fingerprint, parse_pem_certs};
use std::{collections::BTreeMap, sync::Arc};

/// One CA certificate, as status and the CLI show it.
pub fn cert_view(der: &[u8]) -> crate::api::CaCertificate {
    crate::api::CaCertificate {
        fingerprint: fingerprint(der),
        subject: crate::pki::subject_of(der),
        not_after: crate::pki::not_after_of(der)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

/// How many times tlsid has written the CA Secret's state (each rollover step adds one): a signer
/// change is tlsid's own only when it comes with a higher count than the state held, so a backup
/// of an older Secret restored over it, or a hand edit that kept the annotations, is not taken
/// for one.
pub const GENERATION_ANNOTATION: &str = "tlsid.dev/ca-generation";

/// `"true"` on a CA Secret whose next CA tlsid generated.
pub const NEXT_GENERATED_ANNOTATION: &str = "tlsid.dev/next-ca-generated";

/// The previous signer, kept from the switch until its roots are retired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previous {
    pub fingerprint: String,
    pub signer: Vec<u8>,
    pub anchors: Vec<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct CaState {
    /// Signs leaves; its bundle is what every identity's `ca.crt` holds.
    pub current: Arc<Authority>,
    pub generated: bool,
    pub next: Option<Arc<Authority>>,
    pub next_generated: bool,
    pub previous: Option<Previous>,
    pub record: Record,
    /// See [`GENERATION_ANNOTATION`].
    pub generation: u64,
}

/// What the Secret says besides the state: how it was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The signer tlsid last wrote (`tlsid.dev/signer`): a different one in `tls.crt` is a hand
    /// edit.
    pub recorded_signer: Option<String>,
    /// An unanswered `tlsid.dev/rotate` request.
    pub request: Option<Request>,
}

impl CaState {
    /// A state with just a signer (a new install, a CA the user supplied, a legacy Secret).
    pub fn stable(current: Authority, generated: bool) -> Self {
        Self {
            current: Arc::new(current),
            generated,
            next: None,
            next_generated: false,
            previous: None,
            record: Record::default(),
            generation: 0,
        }
    }

    /// Whether `seen` (just parsed from the Secret, written as `provenance` says) is a hand edit
    /// of the signer rather than a state tlsid wrote after this one.
    pub fn edited_into(&self, seen: &CaState, provenance: &Provenance) -> bool {
        let signer = seen.current.fingerprint();
        signer != self.current.fingerprint()
            && !(seen.generation > self.generation
                && provenance.recorded_signer.as_deref() == Some(signer))
    }

    /// Parse the CA Secret's data and annotations.
    pub fn parse(
        data: &BTreeMap<&str, &[u8]>,
        annotations: &BTreeMap<String, String>,
        now: jiff::Timestamp,
    ) -> Result<(Self, Provenance), CaError> {
        let get = |k: &'static str| data.get(k).copied();
        let current = Authority::from_pem(
            get("tls.crt").ok_or(CaError::Missing("tls.crt"))?,
            get("tls.key").ok_or(CaError::Missing("tls.key"))?,
            get("ca.crt"),
            now,
        )?;
        let next = match (get(NEXT_CRT), get(NEXT_KEY)) {
            (Some(crt), Some(key)) => Some(Arc::new(
                Authority::from_pem(crt, key, get(NEXT_CA), now).map_err(|e| {
                    CaError::Malformed {
                        key: NEXT_CRT,
                        reason: e.to_string(),
                    }
                })?,
            )),
            _ => None,
        };
        let previous = match get(PREVIOUS_CRT) {
            Some(crt) => {
                let certs = parse_pem_certs(crt).map_err(|reason| CaError::Malformed {
                    key: PREVIOUS_CRT,
                    reason,
                })?;
                let signer = certs
                    .into_iter()
                    .next()
                    .ok_or(CaError::Missing("certificate in previous.crt"))?;
                let anchors = match get(PREVIOUS_CA) {
                    Some(b) => parse_pem_certs(b).map_err(|reason| CaError::Malformed {
                        key: PREVIOUS_CA,
                        reason,
                    })?,
                    None => Vec::new(),
                };
                Some(Previous {
                    fingerprint: fingerprint(&signer),
                    signer,
                    anchors,
                })
            }
            None => None,
        };
        let record =
            Record::from_annotations(annotations).map_err(|reason| CaError::Malformed {
                key: "metadata.annotations",
                reason,
            })?;
        let flag = |k: &str| annotations.get(k).is_some_and(|v| v == "true");
        let request = annotations
            .get(ROTATE_ANNOTATION)
            .filter(|token| record.handled_request.as_ref() != Some(*token))
            .map(|token| Request {
                token: token.clone(),
                source: annotations
                    .get(ROTATE_FROM_ANNOTATION)
                    .filter(|n| !n.is_empty())
                    .map_or(Source::Generate, |n| Source::Secret(n.clone())),
                mode: annotations
                    .get(ROTATE_MODE_ANNOTATION)
                    .and_then(|m| Mode::parse(m))
                    .unwrap_or_default(),
            });
        Ok((
            Self {
                current: Arc::new(current),
                generated: flag(GENERATED_ANNOTATION),
                next,
                next_generated: flag(NEXT_GENERATED_ANNOTATION),
                previous,
                record,
                generation: annotations
                    .get(GENERATION_ANNOTATION)
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(0),
            },
            Provenance {
                recorded_signer: annotations.get(SIGNER_ANNOTATION).cloned(),
                request,
            },
        ))
    }

    /// The Secret's data for this state.
    pub fn data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = self.current.to_secret_data();
        if let Some(next) = &self.next {
            out.insert(NEXT_CRT.into(), next.chain_pem().into_bytes());
            out.insert(NEXT_KEY.into(), next.key_pem().as_bytes().to_vec());
            out.insert(NEXT_CA.into(), certs_to_pem(next.anchors()).into_bytes());
        }
        if let Some(p) = &self.previous {
            out.insert(PREVIOUS_CRT.into(), certs_to_pem([&p.signer]).into_bytes());
            out.insert(PREVIOUS_CA.into(), certs_to_pem(&p.anchors).into_bytes());
        }
        out
    }

    /// The annotations tlsid keeps on the CA Secret (`None`: remove).
    pub fn annotations(&self) -> BTreeMap<&'static str, Option<String>> {
        let mut out = self.record.to_annotations();
        out.insert(
            SIGNER_ANNOTATION,
            Some(self.current.fingerprint().to_string()),
        );
        out.insert(
            GENERATED_ANNOTATION,
            self.generated.then(|| "true".to_string()),
        );
        out.insert(GENERATION_ANNOTATION, Some(self.generation.to_string()));
        out.insert(
            NEXT_GENERATED_ANNOTATION,
            (self.next.is_some() && self.next_generated).then(|| "true".to_string()),
        );
        out
    }

    /// What the state says about itself, as `TlsAuthority` status fields (the controller adds
    /// what it counted and waits for; `tlsid ca status` prints the same).
    pub fn summary(&self) -> crate::api::TlsAuthorityStatus {
        let r = &self.record;
        let rolling = r.phase != super::rollover::Phase::Stable;
        crate::api::TlsAuthorityStatus {
            phase: Some(r.phase.as_str().into()),
            phase_since: r.since.filter(|_| rolling).map(|t| t.to_string()),
            mode: rolling.then(|| r.mode.as_str().to_string()),
            trigger: r
                .trigger
                .filter(|_| rolling)
                .map(|t| t.as_str().to_string()),
            signer: Some(cert_view(self.current.signer_der())),
            generated: Some(self.generated),
            next: self.next.as_ref().map(|n| cert_view(n.signer_der())),
            previous: self.previous.as_ref().map(|p| cert_view(&p.signer)),
            roots: self.current.roots().iter().map(|r| cert_view(r)).collect(),
            root_count: Some(self.current.roots().len() as i64),
            ..Default::default()
        }
    }

    pub fn facts(ca: &Authority, generated: bool) -> CaFacts {
        CaFacts {
            fingerprint: ca.fingerprint().to_string(),
            not_before: ca.not_before(),
            not_after: ca.not_after(),
            generated,
        }
    }

    /// Why `next` cannot be the next CA, if it cannot: it must not share a subject with a
    /// different certificate already trusted or signing (a peer holding the other one would
    /// report a bad signature instead of an unknown issuer, and path building picks the wrong
    /// one), and it must outlive the longest leaf it will sign plus `margin`.
    pub fn refuse_next(
        &self,
        next: &Authority,
        longest_leaf: std::time::Duration,
        margin: std::time::Duration,
        now: jiff::Timestamp,
    ) -> Option<String> {
        use crate::pki::subject_of;
        if next.fingerprint() == self.current.fingerprint() {
            return Some(
                "the next CA is the CA that signs now; a rollover needs another CA".into(),
            );
        }
        let mut trusted: Vec<Vec<u8>> = vec![self.current.signer_der().to_vec()];
        trusted.extend(self.current.roots().iter().cloned());
        let mut theirs: Vec<Vec<u8>> = vec![next.signer_der().to_vec()];
        theirs.extend(next.anchors().iter().cloned());
        for t in &theirs {
            for o in &trusted {
                if t != o && subject_of(t) == subject_of(o) {
                    return Some(format!(
                        "the next CA's certificate {:?} has the same subject as a different certificate already in use; give it a distinct subject",
                        subject_of(t)
                    ));
                }
            }
        }
        let horizon = now
            .checked_add(
                jiff::SignedDuration::try_from(longest_leaf + margin)
                    .unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(jiff::Timestamp::MAX);
        if next.not_after() < horizon {
            return Some(format!(
                "the next CA expires at {}, before a certificate of the longest lifetime served ({} s) issued now would (with {} s of margin); supply a CA that lasts longer",
                next.not_after(),
                longest_leaf.as_secs(),
                margin.as_secs()
            ));
        }
        None
    }

    /// The roots the next CA adds to the bundle.
    fn new_roots(&self, next: &Authority) -> Vec<Vec<u8>> {
        next.anchors()
            .iter()
            .filter(|r| !self.current.roots().contains(r))
            .cloned()
            .collect()
    }

    /// The state after `action`, whose record is `record` (from
    /// [`super::rollover::next_record`]). `next` is the CA a `Begin` stages (generated, read from
    /// a Secret, or the hand-edited content).
    pub fn apply(
        &self,
        action: &Action,
        record: Record,
        next: Option<(Arc<Authority>, bool)>,
        now: jiff::Timestamp,
    ) -> Result<Self, CaError> {
        let mut out = self.clone();
        out.record = record;
        out.generation = self.generation.saturating_add(1);
        match action {
            Action::Begin { .. } => {
                let (next, generated) = next.ok_or(CaError::Missing("next CA"))?;
                let added = self.new_roots(&next);
                out.record.new_trust = !added.is_empty();
                let mut roots = self.current.roots().to_vec();
                roots.extend(added);
                out.current = Arc::new(self.current.with_roots(&roots, now)?);
                out.next = Some(next);
                out.next_generated = generated;
            }
            Action::Switch { .. } => {
                let next = self.next.as_ref().ok_or(CaError::Missing("next CA"))?;
                let roots = self.current.roots().to_vec();
                out.previous = Some(Previous {
                    fingerprint: self.current.fingerprint().to_string(),
                    signer: self.current.signer_der().to_vec(),
                    anchors: self.current.anchors().to_vec(),
                });
                out.current = Arc::new(next.with_roots(&roots, now)?);
                out.generated = self.next_generated;
                out.next = None;
                out.next_generated = false;
            }
            Action::Retire => {
                if let Some(p) = &self.previous {
                    let keep: Vec<Vec<u8>> = self
                        .current
                        .roots()
                        .iter()
                        .filter(|r| !p.anchors.contains(r) || self.current.anchors().contains(r))
                        .cloned()
                        .collect();
                    out.current = Arc::new(self.current.with_roots(&keep, now)?);
                }
                out.previous = None;
            }
            Action::Reset(_) => {
                out.next = None;
                out.next_generated = false;
                out.previous = None;
            }
            Action::Nothing | Action::Enter(_) | Action::Escalate | Action::Decline(_) => {}
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::rollover::{Phase, Trigger, next_record};

    fn now() -> jiff::Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn parse_back(s: &CaState) -> CaState {
        let data = s.data();
        let view: BTreeMap<&str, &[u8]> = data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let ann: BTreeMap<String, String> = s
            .annotations()
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect();
        let (back, prov) = CaState::parse(&view, &ann, now()).unwrap();
        assert_eq!(
            prov.recorded_signer.as_deref(),
            Some(s.current.fingerprint())
        );
        back
    }

    #[test]
    fn a_rollover_publishes_switches_and_retires_through_the_secret() {
        let a = Authority::generate_root(now()).unwrap();
        let a_root = a.roots()[0].clone();
        let b = Authority::generate_root(now()).unwrap();
        let b_root = b.roots()[0].clone();
        let s0 = CaState::stable(a, true);
        let begin = Action::Begin {
            trigger: Trigger::Requested,
            mode: Mode::Normal,
            source: Source::Generate,
        };
        let r1 = next_record(&s0.record, &begin, now(), None);
        let s1 = s0
            .apply(&begin, r1, Some((Arc::new(b), true)), now())
            .unwrap();
        let s1 = parse_back(&s1);
        assert_eq!(s1.record.phase, Phase::Publish);
        assert!(s1.record.new_trust);
        assert_eq!(s1.current.roots(), &[a_root.clone(), b_root.clone()]);
        assert_eq!(s1.current.fingerprint(), s0.current.fingerprint());
        assert!(s1.next.is_some() && s1.next_generated);

        let switch = Action::Switch {
            old_leaves_until: None,
        };
        let r2 = next_record(&s1.record, &switch, now(), None);
        let s2 = parse_back(&s1.apply(&switch, r2, None, now()).unwrap());
        assert_eq!(s2.record.phase, Phase::Switch);
        assert_eq!(
            s2.current.fingerprint(),
            s1.next.as_ref().unwrap().fingerprint()
        );
        assert_eq!(s2.current.roots().len(), 2, "both roots stay trusted");
        assert_eq!(
            s2.previous.as_ref().unwrap().fingerprint,
            s0.current.fingerprint()
        );
        assert!(s2.generated && s2.next.is_none());
        assert!(
            !s2.data()
                .values()
                .any(|v| v == s0.current.key_pem().as_bytes()),
            "the previous key is destroyed at the switch"
        );

        let r3 = next_record(&s2.record, &Action::Retire, now(), None);
        let s3 = parse_back(&s2.apply(&Action::Retire, r3, None, now()).unwrap());
        assert_eq!(s3.record.phase, Phase::Stable);
        assert_eq!(s3.current.roots(), &[b_root]);
        assert!(s3.previous.is_none());
        assert_eq!(s3.data().len(), 3, "{:?}", s3.data().keys());
    }

    /// A CA signed by `root`'s key (an intermediate under the root in use).
    fn intermediate_under(root: &Authority, cn: &str) -> Authority {
        Authority::generate_intermediate(
            root,
            cn,
            now(),
            std::time::Duration::from_secs(300 * 86400),
        )
        .unwrap()
    }

    #[test]
    fn only_a_newer_state_tlsid_wrote_changes_the_signer() {
        let a = Authority::generate_root(now()).unwrap();
        let b = Authority::generate_root(now()).unwrap();
        let s0 = CaState::stable(a, true);
        let begin = Action::Begin {
            trigger: Trigger::Requested,
            mode: Mode::Normal,
            source: Source::Generate,
        };
        let s1 = s0
            .apply(
                &begin,
                next_record(&s0.record, &begin, now(), None),
                Some((Arc::new(b), true)),
                now(),
            )
            .unwrap();
        let switch = Action::Switch {
            old_leaves_until: None,
        };
        let s2 = s1
            .apply(
                &switch,
                next_record(&s1.record, &switch, now(), None),
                None,
                now(),
            )
            .unwrap();
        let written = |s: &CaState| Provenance {
            recorded_signer: Some(s.current.fingerprint().to_string()),
            request: None,
        };
        // tlsid's own switch, seen by a replica holding the state before it (or two before).
        assert!(!s1.edited_into(&s2, &written(&s2)));
        assert!(!s0.edited_into(&s2, &written(&s2)));
        // A backup of the older Secret restored over the newer one: not tlsid's write.
        assert!(s2.edited_into(&s0, &written(&s0)));
        // A hand edit that kept tlsid's annotations (kubectl edit): same generation.
        let mut edited = parse_back(&s1);
        edited.current = s2.current.clone();
        let kept_annotations = Provenance {
            recorded_signer: Some(s1.current.fingerprint().to_string()),
            request: None,
        };
        assert!(s1.edited_into(&edited, &kept_annotations));
        // Only the bundle changed (a root added by hand): not a signer change.
        assert!(!s1.edited_into(&s1, &written(&s1)));
    }

    #[test]
    fn an_intermediate_under_a_trusted_root_adds_no_trust() {
        let a = Authority::generate_root(now()).unwrap();
        let same = intermediate_under(&a, "next intermediate");
        let s0 = CaState::stable(a, false);
        let begin = Action::Begin {
            trigger: Trigger::Requested,
            mode: Mode::Normal,
            source: Source::Secret("next".into()),
        };
        let r = next_record(&s0.record, &begin, now(), None);
        let s1 = s0
            .apply(&begin, r, Some((Arc::new(same), false)), now())
            .unwrap();
        assert!(!s1.record.new_trust);
        assert_eq!(s1.current.roots().len(), 1);
    }

    fn root_named(cn: &str, now: jiff::Timestamp, days: i64) -> Authority {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(now.as_second() - 60).unwrap();
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(now.as_second() + days * 86400).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Authority::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            None,
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_next_ca_must_have_its_own_subject_and_outlive_the_leaves() {
        let day = std::time::Duration::from_secs(86400);
        let s = CaState::stable(root_named("corp CA", now(), 365), false);
        let same_name = root_named("corp CA", now(), 365);
        assert!(
            s.refuse_next(&same_name, day, day, now())
                .unwrap()
                .contains("same subject")
        );
        let short = root_named("corp CA 2", now(), 1);
        assert!(
            s.refuse_next(&short, day, day, now())
                .unwrap()
                .contains("before a certificate of the longest lifetime")
        );
        let good = root_named("corp CA 2", now(), 365);
        assert_eq!(s.refuse_next(&good, day, day, now()), None);
        // The CA that signs now, handed back: nothing to roll over to (it would never drain).
        let data = s.current.to_secret_data();
        let again = Authority::from_pem(&data["tls.crt"], &data["tls.key"], None, now()).unwrap();
        assert!(
            s.refuse_next(&again, day, day, now())
                .unwrap()
                .contains("signs now")
        );
        // An intermediate under the root in use is a valid next CA.
        let under = intermediate_under(&s.current, "corp intermediate");
        assert_eq!(s.refuse_next(&under, day, day, now()), None);
    }

    #[test]
    fn requests_are_read_once() {
        let a = Authority::generate_root(now()).unwrap();
        let s = CaState::stable(a, true);
        let data = s.data();
        let view: BTreeMap<&str, &[u8]> = data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let mut ann = BTreeMap::from([
            (ROTATE_ANNOTATION.to_string(), "2026-06-01".to_string()),
            (ROTATE_FROM_ANNOTATION.to_string(), "my-next-ca".to_string()),
            (ROTATE_MODE_ANNOTATION.to_string(), "Emergency".to_string()),
        ]);
        let (_, p) = CaState::parse(&view, &ann, now()).unwrap();
        assert_eq!(
            p.request,
            Some(Request {
                token: "2026-06-01".into(),
                source: Source::Secret("my-next-ca".into()),
                mode: Mode::Emergency
            })
        );
        ann.insert(
            super::super::rollover::ROTATE_HANDLED_ANNOTATION.into(),
            "2026-06-01".into(),
        );
        let (_, p) = CaState::parse(&view, &ann, now()).unwrap();
        assert_eq!(p.request, None);
    }
}
