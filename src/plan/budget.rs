//! The install's issuance budget: a token bucket (rate per second, burst) that every issuance
//! passes, so that a bulk re-issue (a CA replacement, a renewal storm, a restore) reaches the
//! apiserver at a steady pace instead of all at once.
//!
//! An identity that finds the bucket empty gets a **reservation**: a slot at a future time,
//! kept for it. When it comes back at that time it goes ahead without taking another token. So
//! waiting identities are served in order of arrival, each at its own time (no herd of retries
//! at the moment the bucket refills), and the pace never exceeds the rate. An identity that no
//! longer needs to issue gives its slot back ([`Budget::cancel`]).
//!
//! Pure: the clock is passed in (Unix milliseconds).

use std::{collections::HashMap, time::Duration};

/// Default issuance rate (certificates per second) and burst.
pub const DEFAULT_RATE: f64 = 100.0;
pub const DEFAULT_BURST: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Come back after this long; a slot is reserved.
    Wait(Duration),
}

#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: Option<i64>,
    reserved: HashMap<String, i64>,
}

impl Budget {
    /// `rate` per second (> 0), `burst` (≥ 1): both checked by the caller's flag parsing; this
    /// clamps anyway so no input can divide by zero.
    pub fn new(rate: f64, burst: u32) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            DEFAULT_RATE
        };
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            last_ms: None,
            reserved: HashMap::new(),
        }
    }

    /// May `key` issue now?
    pub fn admit(&mut self, key: &str, now_ms: i64) -> Admit {
        if let Some(&at) = self.reserved.get(key) {
            if now_ms >= at {
                self.reserved.remove(key);
                return Admit::Go;
            }
            return Admit::Wait(Duration::from_millis((at - now_ms) as u64));
        }
        self.refill(now_ms);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            return Admit::Go;
        }
        // In debt: the slot comes when the debt is paid back at `rate`.
        let wait_ms = ((-self.tokens) / self.rate * 1000.0).ceil().max(1.0) as i64;
        let at = now_ms.saturating_add(wait_ms);
        self.reserved.insert(key.to_string(), at);
        Admit::Wait(Duration::from_millis(wait_ms as u64))
    }

    /// `key` no longer needs its reserved slot (it was deleted, or no longer needs to issue). A
    /// slot still in the future goes back to the bucket (never beyond the burst); one already due
    /// was paid for by the refill and is simply dropped.
    pub fn cancel(&mut self, key: &str, now_ms: i64) {
        if let Some(at) = self.reserved.remove(key)
            && at > now_ms
        {
            self.tokens = (self.tokens + 1.0).min(self.burst);
        }
    }

    /// Drop the reservations of keys not in `live` (identities deleted while waiting).
    pub fn retain(&mut self, live: impl Fn(&str) -> bool, now_ms: i64) {
        let gone: Vec<String> = self.reserved.keys().filter(|k| !live(k)).cloned().collect();
        for k in gone {
            self.cancel(&k, now_ms);
        }
    }

    /// Drop every reservation (this replica stopped leading: the next leader has its own).
    pub fn clear(&mut self, now_ms: i64) {
        self.retain(|_| false, now_ms);
    }

    /// Identities holding a reservation.
    pub fn waiting(&self) -> usize {
        self.reserved.len()
    }

    fn refill(&mut self, now_ms: i64) {
        let last = self.last_ms.unwrap_or(now_ms);
        if now_ms > last {
            let add = (now_ms - last) as f64 * self.rate / 1000.0;
            self.tokens = (self.tokens + add).min(self.burst);
        }
        self.last_ms = Some(now_ms.max(last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let mut b = Budget::new(10.0, 5);
        for i in 0..5 {
            assert_eq!(b.admit(&format!("a{i}"), 0), Admit::Go);
        }
        // The next ones get consecutive slots 100 ms apart.
        assert_eq!(b.admit("b0", 0), Admit::Wait(Duration::from_millis(100)));
        assert_eq!(b.admit("b1", 0), Admit::Wait(Duration::from_millis(200)));
        assert_eq!(b.waiting(), 2);
        // Coming back early: still waiting, no second slot taken.
        assert_eq!(b.admit("b1", 150), Admit::Wait(Duration::from_millis(50)));
        assert_eq!(b.admit("b0", 100), Admit::Go);
        assert_eq!(b.admit("b1", 200), Admit::Go);
        assert_eq!(b.waiting(), 0);
        // Newcomers queue behind what was already handed out.
        assert!(matches!(b.admit("c", 200), Admit::Wait(_)));
    }

    #[test]
    fn the_pace_never_exceeds_the_rate_whatever_the_order_of_retries() {
        // 1,000 identities hammering every 7 ms: admissions over any window stay within
        // burst + rate × window.
        let (rate, burst) = (50.0, 20);
        let mut b = Budget::new(rate, burst);
        let mut admitted: Vec<i64> = Vec::new();
        let mut pending: Vec<String> = (0..1000).map(|i| format!("id{i}")).collect();
        let mut now = 0;
        while !pending.is_empty() && now < 60_000 {
            pending.retain(|k| match b.admit(k, now) {
                Admit::Go => {
                    admitted.push(now);
                    false
                }
                Admit::Wait(_) => true,
            });
            now += 7;
        }
        assert!(pending.is_empty(), "all admitted within a minute at 50/s");
        for (i, &t) in admitted.iter().enumerate() {
            let within_1s = admitted[i..].iter().take_while(|&&u| u < t + 1000).count();
            assert!(
                within_1s as f64 <= burst as f64 + rate + 1.0,
                "{within_1s} in 1 s"
            );
        }
    }

    #[test]
    fn a_cancelled_slot_is_given_back() {
        let mut b = Budget::new(1.0, 1);
        assert_eq!(b.admit("a", 0), Admit::Go);
        assert_eq!(b.admit("b", 0), Admit::Wait(Duration::from_secs(1)));
        b.cancel("b", 0);
        b.cancel("b", 0);
        assert_eq!(b.waiting(), 0);
        assert_eq!(b.admit("c", 0), Admit::Wait(Duration::from_secs(1)));
    }

    #[test]
    fn cancelling_never_mints_tokens_beyond_the_burst() {
        // Reservations far in the past (a leader that stood by, then came back): cancelling
        // them gives nothing back, and the next admissions stay within burst + rate.
        let mut b = Budget::new(1.0, 2);
        for i in 0..10 {
            b.admit(&format!("k{i}"), 0);
        }
        b.clear(60_000);
        assert_eq!(b.waiting(), 0);
        let now = 60_000;
        let go = (0..10)
            .filter(|i| b.admit(&format!("n{i}"), now) == Admit::Go)
            .count();
        assert!(go <= 2, "{go} admitted at once with a burst of 2");
        // Deleted identities' reservations are swept.
        b.admit("live", now);
        b.admit("dead", now);
        b.retain(|k| k == "live", now);
        assert_eq!(b.waiting(), 1);
    }

    #[test]
    fn nonsense_settings_cannot_divide_by_zero() {
        let mut b = Budget::new(0.0, 0);
        assert_eq!(b.admit("a", 0), Admit::Go);
        assert!(matches!(b.admit("b", 0), Admit::Wait(_)));
        let mut b = Budget::new(f64::NAN, 1);
        assert_eq!(b.admit("a", 0), Admit::Go);
    }

    #[test]
    fn a_clock_going_back_does_not_mint_tokens() {
        let mut b = Budget::new(1.0, 1);
        assert_eq!(b.admit("a", 10_000), Admit::Go);
        assert!(matches!(b.admit("b", 5_000), Admit::Wait(_)));
    }
}
