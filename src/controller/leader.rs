//! Leader election: one writer per install, the others warm standbys.
//!
//! The Lease (`<install>-leader` in the install's namespace) is held with kube-lease-manager,
//! which acquires it, renews it `grace` seconds before it expires, takes over an expired one, and
//! releases it when we stop (SIGTERM). Every replica watches, caches and is ready; only the one
//! whose leadership is **confirmed** writes:
//!
//! - kube-lease-manager says we hold the Lease, and
//! - our own watch of the Lease shows us as the holder with a renewal recent enough that no other
//!   replica can have taken over yet (`renewTime + duration − margin > now`).
//!
//! The second check is what makes a paused or partitioned leader stop writing by its own clock,
//! without waiting to hear from the apiserver; the resourceVersion preconditions on every write
//! cover the rest (a write based on a read from before the takeover is refused).
//!
//! Why kube-lease-manager: of the Lease crates (kube-lease-manager, kubert's `lease`,
//! kube-leader-election) it is the one released for kube 5 / k8s-openapi 0.29; it locks with
//! server-side apply (a conflicting claim fails instead of overwriting), tolerates `grace` seconds
//! of clock skew, and releases on drop. What it does not do, this module adds: it never tells a
//! holder that cannot reach the apiserver that it may have lost the Lease (hence the confirmation
//! deadline), and a standby sleeps until the holder's expiry even after a release (hence a new
//! term when the watch sees the Lease released).

use super::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};
use tracing::{debug, info, warn};

/// Lease timing (seconds). With the defaults a leader renews every 7 s; after a crash another
/// replica notices the Lease expired 10 s after its last renewal and takes it within 1 s more
/// (a random pause against collisions), so a SIGKILLed leader is replaced within about 12 s.
/// A leader stops writing `margin` seconds before its Lease could be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    pub duration: u64,
    pub grace: u64,
}

impl LeaseTiming {
    pub const DEFAULT: LeaseTiming = LeaseTiming {
        duration: 10,
        grace: 3,
    };

    /// Checked: the lease crate panics on anything else.
    pub fn new(duration: u64, grace: u64) -> Result<Self, String> {
        if grace == 0 || duration <= grace {
            return Err(format!(
                "--lease-duration ({duration}s) must be longer than --lease-renew-grace ({grace}s), which must be at least 1s"
            ));
        }
        Ok(Self { duration, grace })
    }

    /// How long before the Lease's expiry a leader stops writing: half the grace (the renewal is
    /// attempted a full grace before expiry), at least a second.
    fn margin_ms(&self) -> i64 {
        (self.grace as i64 * 1000 / 2).max(1000)
    }

    /// Until when (Unix ms) a holder that renewed at `renew_ms` may write.
    pub fn writable_until(&self, renew_ms: i64) -> i64 {
        renew_ms
            .saturating_add(self.duration as i64 * 1000)
            .saturating_sub(self.margin_ms())
    }
}

/// This replica's view of the election.
pub struct Leadership {
    /// Our holder identity (the pod name, else host name and process id).
    pub identity: String,
    /// Whether elections run at all (`--leader-election=false`: always the writer).
    enabled: bool,
    timing: LeaseTiming,
    /// What kube-lease-manager last said.
    elected: AtomicBool,
    /// Unix ms until which our own Lease watch confirms us as the holder.
    confirmed_until: AtomicI64,
}

/// What a reconcile may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Confirmed leader: read and write.
    Leader,
    /// Elected but the confirming Lease watch is behind (or a renewal is in flight): try again
    /// shortly instead of dropping the work.
    Unconfirmed,
    /// Standby: caches stay warm, nothing is written.
    Follower,
}

impl Leadership {
    pub fn new(identity: String, enabled: bool, timing: LeaseTiming) -> Self {
        Self {
            identity,
            enabled,
            timing,
            elected: AtomicBool::new(!enabled),
            confirmed_until: AtomicI64::new(if enabled { 0 } else { i64::MAX }),
        }
    }

    pub fn role(&self) -> Role {
        role(
            self.elected.load(Ordering::Acquire),
            self.confirmed_until.load(Ordering::Acquire),
            jiff::Timestamp::now().as_millisecond(),
        )
    }

    pub fn is_leader(&self) -> bool {
        self.role() == Role::Leader
    }

    fn set_elected(&self, elected: bool) {
        self.elected.store(elected, Ordering::Release);
        if !elected {
            self.confirmed_until.store(0, Ordering::Release);
        }
    }
}

/// Pure: the role from the election's word, our confirmation deadline, and the clock.
pub fn role(elected: bool, confirmed_until_ms: i64, now_ms: i64) -> Role {
    match (elected, now_ms < confirmed_until_ms) {
        (true, true) => Role::Leader,
        (true, false) => Role::Unconfirmed,
        (false, _) => Role::Follower,
    }
}

/// Lease name for an install.
pub fn lease_name(install: &str) -> String {
    format!("{install}-leader")
}

/// A replica's holder identity: the pod name (unique among live pods), else host and pid.
pub fn holder_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "tlsid".into());
            format!("{host}-{}", std::process::id())
        })
}

/// Run the election until `stop` resolves, then release the Lease (so a successor takes over at
/// once). `became_leader` is signalled each time this replica gains the Lease, so that every
/// identity is reconciled by the new leader.
pub async fn run(
    ctx: Arc<Context>,
    mut became_leader: futures::channel::mpsc::Sender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let lead = &ctx.leadership;
    if !lead.enabled {
        ctx.metrics.leader.set(1);
        let _ = futures::SinkExt::send(&mut became_leader, ()).await;
        return;
    }
    let name = lease_name(&ctx.config.install);
    let api = Api::<Lease>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let restart = Arc::new(tokio::sync::Notify::new());
    let confirm = tokio::spawn(confirm_from_watch(
        ctx.clone(),
        api,
        name.clone(),
        restart.clone(),
    ));
    let mut stop_rx = stop.clone();
    // One term per manager. A term ends, and a new one starts at once, when:
    // - the holder released the Lease (a SIGTERMed leader): kube-lease-manager would sleep
    //   until the old expiry;
    // - the Lease was deleted: the crate creates it only when built, and would retry the
    //   missing object forever while still calling itself leader;
    // - we are elected but have not seen our Lease renewed for a whole lease duration (the crate
    //   keeps retrying a renewal that does not land, or our watch is stuck);
    // - the crate's task ended.
    // A term that ends right after it began waits a second before the next: no spin if the
    // Lease keeps vanishing or the crate keeps failing.
    let mut last_start: Option<std::time::Instant> = None;
    'terms: loop {
        if last_start.is_some_and(|t| t.elapsed() < Duration::from_secs(2))
            && wait_or_stop(&stop, Duration::from_secs(1)).await
        {
            break 'terms;
        }
        last_start = Some(std::time::Instant::now());
        // Building the manager creates the Lease if needed: retry while the apiserver is away.
        let mut delay = Duration::from_millis(500);
        let manager = loop {
            let built = kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &name)
                .with_namespace(&ctx.config.namespace)
                .with_identity(&lead.identity)
                .with_duration(lead.timing.duration)
                .with_grace(lead.timing.grace)
                .with_field_manager(format!("tlsid-leader-{}", lead.identity))
                .build()
                .await;
            match built {
                Ok(m) => break m,
                Err(e) => {
                    warn!(lease = name, error = %e, "cannot set up the leader Lease; retrying");
                    if wait_or_stop(&stop, delay).await {
                        break 'terms;
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        // The manager has just made sure the Lease exists: a restart asked for before that (a
        // Lease not there yet at our watch's first list) is stale.
        let _ = tokio::time::timeout(Duration::ZERO, restart.notified()).await;
        let (mut elected, handle) = manager.watch().await;
        debug!(
            lease = name,
            identity = lead.identity,
            "standing for election"
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut unconfirmed_since: Option<std::time::Instant> = None;
        let why = loop {
            tokio::select! {
                changed = elected.changed() => {
                    if changed.is_err() {
                        break Some("the election task ended");
                    }
                    let now = { *elected.borrow_and_update() };
                    lead.set_elected(now);
                    ctx.metrics.leader.set(i64::from(now));
                    if now {
                        info!(lease = name, identity = lead.identity, "became the leader");
                        let _ = futures::SinkExt::send(&mut became_leader, ()).await;
                    } else {
                        warn!(lease = name, identity = lead.identity, "lost the leadership; standing by");
                    }
                }
                _ = restart.notified() => break Some("the Lease was released or deleted"),
                _ = tick.tick() => {
                    if lead.role() == Role::Unconfirmed {
                        let since = *unconfirmed_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() > Duration::from_secs(lead.timing.duration) {
                            break Some("elected, but the Lease was not seen renewed for a whole lease duration");
                        }
                    } else {
                        unconfirmed_since = None;
                    }
                }
                _ = async { let _ = stop_rx.wait_for(|s| *s).await; } => break None,
            }
        };
        // Stop writing first, in every case.
        lead.set_elected(false);
        ctx.metrics.leader.set(0);
        let Some(why) = why else {
            // SIGTERM: hand the Lease over (dropping the receiver makes the manager release it).
            drop(elected);
            match tokio::time::timeout(Duration::from_secs(5), handle).await {
                Ok(Ok(Ok(_))) => info!(lease = name, "leader Lease released"),
                Ok(Ok(Err(e))) => {
                    warn!(lease = name, error = %e, "could not release the leader Lease")
                }
                _ => warn!(lease = name, "timed out releasing the leader Lease"),
            }
            break 'terms;
        };
        // A new term: end this one without releasing anything (a release here could clear a
        // lock just taken by a peer, or by our own next term).
        info!(lease = name, reason = why, "standing for election again");
        handle.abort();
        let _ = handle.await;
        drop(elected);
    }
    confirm.abort();
}

/// Resolves true if `stop` fired within `delay`.
async fn wait_or_stop(stop: &tokio::sync::watch::Receiver<bool>, delay: Duration) -> bool {
    let mut stop = stop.clone();
    tokio::time::timeout(delay, async {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
    .is_ok()
}

/// Follow the Lease: confirm our own renewals (see the module docs), count every renewal (the
/// one kind of write an idle install makes), and ask for a new term when the Lease is released by
/// its holder while we stand by, or is gone (deleted, or missing from a relist).
async fn confirm_from_watch(
    ctx: Arc<Context>,
    api: Api<Lease>,
    name: String,
    restart: Arc<tokio::sync::Notify>,
) {
    let lead = &ctx.leadership;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config)
        .backoff(super::WatchBackoff::new())
        .boxed();
    let mut last_renew: Option<i64> = None;
    let mut listed = false;
    while let Some(event) = events.next().await {
        let lease = match event {
            Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                listed = true;
                lease
            }
            Ok(watcher::Event::Init) => {
                listed = false;
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if !listed {
                    lead.confirmed_until.store(0, Ordering::Release);
                    restart.notify_one();
                }
                continue;
            }
            Ok(watcher::Event::Delete(_)) => {
                warn!(lease = name, "the leader Lease was deleted");
                lead.confirmed_until.store(0, Ordering::Release);
                restart.notify_one();
                continue;
            }
            Err(_) => continue,
        };
        let Some(spec) = lease.spec else { continue };
        let renew = spec.renew_time.map(|t| t.0.as_millisecond());
        if renew.is_some() && renew != last_renew {
            if last_renew.is_some() {
                ctx.metrics.lease_renewals.inc();
            }
            last_renew = renew;
        }
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        if holder.is_none() && !lead.elected.load(Ordering::Acquire) {
            restart.notify_one();
        }
        let ours = holder == Some(lead.identity.as_str());
        let until = match (ours, renew) {
            (true, Some(r)) => lead.timing.writable_until(r),
            _ => 0,
        };
        lead.confirmed_until.store(until, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_is_checked_before_the_crate_can_panic() {
        assert!(LeaseTiming::new(10, 3).is_ok());
        assert!(LeaseTiming::new(3, 3).is_err());
        assert!(LeaseTiming::new(10, 0).is_err());
    }

    #[test]
    fn a_leader_stops_writing_before_its_lease_can_be_taken() {
        let t = LeaseTiming::DEFAULT;
        let renew = 1_000_000;
        let until = t.writable_until(renew);
        // Renewal is attempted 3 s before expiry (at +7 s); writes stop at +8.5 s; another replica
        // can take over only after +10 s.
        assert_eq!(until, renew + 8_500);
        assert!(until < renew + t.duration as i64 * 1000);
        assert!(until > renew + (t.duration - t.grace) as i64 * 1000);
    }

    #[test]
    fn roles() {
        assert_eq!(role(true, 2_000, 1_000), Role::Leader);
        assert_eq!(role(true, 2_000, 2_000), Role::Unconfirmed);
        assert_eq!(role(true, 0, 1_000), Role::Unconfirmed);
        assert_eq!(role(false, 2_000, 1_000), Role::Follower);
        assert_eq!(role(false, 0, 1_000), Role::Follower);
    }

    #[test]
    fn disabled_election_always_leads() {
        let l = Leadership::new("x".into(), false, LeaseTiming::DEFAULT);
        assert_eq!(l.role(), Role::Leader);
    }
}
