//! Rate limiting: exact per-key GCRA limits (governor) and the per-account guard against
//! password guessing. Both take time from the injected `Clock`, and both bound their memory.
//!
//! Why governor's GCRA: it is exact per key (no sketch collisions, so two clients never share a
//! bucket), needs one timestamp per key, and its keyed store can evict keys whose state has
//! fully replenished (`retain_recent`). pingora-limits' count-min sketch is approximate by design.

use crate::clock::Clock;
use crate::config::Quota;
use governor::clock::{Clock as GovernorClock, ReasonablyRealtime};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// governor's view of our clock: time since the epoch.
#[derive(Clone)]
pub struct LimiterClock(pub Arc<dyn Clock>);

impl GovernorClock for LimiterClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.0.since_epoch()
    }
}

impl ReasonablyRealtime for LimiterClock {}

/// What a limiter decided, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the key's allowance is whole again.
    pub reset_secs: u64,
    /// Seconds to wait before the next request can pass (0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    /// The decision of a GCRA limiter with `quota` whose theoretical arrival time, after this
    /// request if it was `allowed`, is `tat_ms` at `now_ms` (both ms since the epoch).
    pub fn from_gcra(quota: Quota, allowed: bool, tat_ms: i64, now_ms: i64) -> Decision {
        let limit = quota.requests.max(1);
        let period_ms = quota.period.as_millis() as i64;
        let cell_ms = (period_ms / i64::from(limit)).max(1);
        let ahead_ms = (tat_ms - now_ms).max(0);
        let secs = |ms: i64| (ms.max(0) as u64).div_ceil(1000);
        if allowed {
            let used = (ahead_ms as u64)
                .div_ceil(cell_ms as u64)
                .min(u64::from(limit)) as u32;
            Decision {
                allowed: true,
                limit,
                remaining: limit - used,
                reset_secs: secs(ahead_ms),
                retry_after_secs: 0,
            }
        } else {
            let wait_ms = ahead_ms + cell_ms - period_ms;
            Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_secs: secs(ahead_ms),
                retry_after_secs: secs(wait_ms).max(1),
            }
        }
    }

    /// Record the decision under `scope` in `decisions` (labels scope and `allow`/`throttle`);
    /// `Err` when it refuses.
    pub fn counted(
        self,
        scope: &str,
        decisions: &prometheus::IntCounterVec,
    ) -> Result<Decision, Decision> {
        let outcome = if self.allowed { "allow" } else { "throttle" };
        decisions.with_label_values(&[scope, outcome]).inc();
        if self.allowed {
            Ok(self)
        } else {
            Err(self)
        }
    }

    /// The `RateLimit-Limit`, `-Remaining`, `-Reset` (and on refusal `Retry-After`) headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
        ];
        if !self.allowed {
            h.push(("retry-after", self.retry_after_secs.max(1).to_string()));
        }
        h
    }
}

type Governor =
    governor::RateLimiter<u64, DashMapStateStore<u64>, LimiterClock, StateInformationMiddleware>;

/// `quota.requests` per `quota.period` for each key, exactly. Keys are hashed with a random
/// seed (so they cannot be chosen to collide). At most `max_keys` are tracked: past that, after
/// evicting idle keys, new keys share one overflow bucket, so a flood of distinct keys costs
/// bounded memory and is still limited as a whole.
pub struct KeyedLimiter {
    governor: Governor,
    quota: Quota,
    hasher: RandomState,
    max_keys: usize,
    /// When (clock seconds) the store was last swept because it was full: a full store is
    /// swept at most once a second, so a flood cannot make every request pay for a sweep.
    last_sweep: std::sync::atomic::AtomicI64,
}

const OVERFLOW_KEY: u64 = 0;

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl KeyedLimiter {
    pub fn new(quota: Quota, clock: Arc<dyn Clock>, max_keys: usize) -> KeyedLimiter {
        let burst = NonZeroU32::new(quota.requests.max(1)).unwrap_or(NonZeroU32::MIN);
        let per_cell = quota.period / burst.get();
        let gq = governor::Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| governor::Quota::per_second(burst))
            .allow_burst(burst);
        KeyedLimiter {
            governor: governor::RateLimiter::dashmap_with_clock(gq, LimiterClock(clock))
                .with_middleware::<StateInformationMiddleware>(),
            quota,
            hasher: RandomState::new(),
            max_keys: max_keys.max(1),
            last_sweep: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    fn key_of(&self, key: impl Hash) -> u64 {
        match self.hasher.hash_one(key) {
            OVERFLOW_KEY => 1,
            k => k,
        }
    }

    /// Count one request for `key` and decide.
    pub fn check(&self, key: impl Hash) -> Decision {
        let mut k = self.key_of(key);
        if self.governor.len() >= self.max_keys {
            let now = self.clock().0.now();
            let last = self.last_sweep.load(std::sync::atomic::Ordering::Relaxed);
            if now > last
                && self
                    .last_sweep
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                self.governor.retain_recent();
            }
            if self.governor.len() >= self.max_keys {
                k = OVERFLOW_KEY;
            }
        }
        let per_cell = self.quota.period / self.quota.requests.max(1);
        match self.governor.check_key(&k) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.quota.requests.saturating_sub(remaining);
                Decision {
                    allowed: true,
                    limit: self.quota.requests,
                    remaining,
                    reset_secs: ceil_secs(per_cell * used),
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                let now = self.governor_clock_now();
                let wait = not_until.wait_time_from(now);
                Decision {
                    allowed: false,
                    limit: self.quota.requests,
                    remaining: 0,
                    reset_secs: ceil_secs(wait + per_cell * self.quota.requests.saturating_sub(1)),
                    retry_after_secs: ceil_secs(wait),
                }
            }
        }
    }

    fn governor_clock_now(&self) -> Duration {
        // The limiter was built with a LimiterClock; ask the same source.
        governor::clock::Clock::now(self.clock())
    }

    fn clock(&self) -> &LimiterClock {
        self.governor.clock()
    }

    /// Forget keys whose allowance is whole again.
    pub fn evict_idle(&self) {
        self.governor.retain_recent();
        self.governor.shrink_to_fit();
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.governor.len()
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Count one request for `key` and decide, recording the decision under `scope` in
    /// `decisions` (labels scope and `allow`/`throttle`). `Err` carries the refusal's details.
    pub fn admit(
        &self,
        key: impl Hash,
        scope: &str,
        decisions: &prometheus::IntCounterVec,
    ) -> Result<Decision, Decision> {
        self.check(key).counted(scope, decisions)
    }
}

/// Failed-login state of one account.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last_failure: i64,
    blocked_until: i64,
}

/// Counts failed logins per account, independent of the client's address: after `threshold`
/// failures within `window`, the account refuses attempts (even with the right password) for a
/// back-off that doubles with each further failure, up to `window`. The count is forgotten once
/// `window` passes without a failure, and reset by a successful login. Unknown accounts are
/// counted exactly like real ones.
pub struct LoginGuard {
    threshold: u32,
    window_secs: i64,
    base_backoff_secs: i64,
    max_keys: usize,
    hasher: RandomState,
    accounts: Mutex<HashMap<u64, Failures>>,
}

impl LoginGuard {
    pub fn new(threshold: u32, window: Duration, max_keys: usize) -> LoginGuard {
        LoginGuard {
            threshold: threshold.max(1),
            window_secs: window.as_secs().max(1) as i64,
            base_backoff_secs: 30,
            max_keys: max_keys.max(1),
            hasher: RandomState::new(),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, account: &str) -> u64 {
        self.hasher.hash_one(account.trim().to_lowercase())
    }

    /// Failures after which an account is throttled.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Seconds the account must wait before an attempt is evaluated, if it is throttled.
    pub fn blocked_for(&self, account: &str, now: i64) -> Option<u64> {
        let map = self.accounts.lock().ok()?;
        let f = map.get(&self.key(account))?;
        (f.blocked_until > now).then(|| (f.blocked_until - now) as u64)
    }

    /// Record a failed attempt; returns the block it starts, in seconds, if any.
    pub fn failure(&self, account: &str, now: i64) -> Option<u64> {
        let key = self.key(account);
        let mut map = self.accounts.lock().ok()?;
        if map.len() >= self.max_keys && !map.contains_key(&key) {
            let window = self.window_secs;
            map.retain(|_, f| now - f.last_failure < window || f.blocked_until > now);
        }
        let f = map.entry(key).or_insert(Failures {
            count: 0,
            last_failure: now,
            blocked_until: 0,
        });
        if now - f.last_failure >= self.window_secs {
            f.count = 0;
        }
        f.count += 1;
        f.last_failure = now;
        let backoff = self.backoff(f.count)?;
        f.blocked_until = now + backoff as i64;
        Some(backoff)
    }

    /// How long an account with `failures` recent failures is blocked, if at all: from the
    /// threshold on, a back-off that doubles with each further failure, up to the window. (The
    /// policy; where the count lives is the caller's.)
    pub fn backoff(&self, failures: u32) -> Option<u64> {
        if failures < self.threshold {
            return None;
        }
        let doublings = (failures - self.threshold).min(20);
        Some((self.base_backoff_secs << doublings).min(self.window_secs) as u64)
    }

    /// The window after which failures are forgotten, in seconds.
    pub fn window_secs(&self) -> i64 {
        self.window_secs
    }

    /// A successful login forgets the account's failures.
    pub fn success(&self, account: &str) {
        if let Ok(mut map) = self.accounts.lock() {
            map.remove(&self.key(account));
        }
    }

    /// Forget accounts with no recent failure and no active block.
    pub fn evict_idle(&self, now: i64) {
        if let Ok(mut map) = self.accounts.lock() {
            let window = self.window_secs;
            map.retain(|_, f| now - f.last_failure < window || f.blocked_until > now);
        }
    }

    pub fn tracked(&self) -> usize {
        self.accounts.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod gcra_tests {
    use super::*;

    #[test]
    fn gcra_decisions_from_an_arrival_time() {
        let quota = Quota {
            requests: 5,
            period: Duration::from_secs(60),
        };
        // First request: one cell (12 s) ahead.
        let d = Decision::from_gcra(quota, true, 1_012_000, 1_000_000);
        assert_eq!((d.remaining, d.reset_secs), (4, 12));
        // Fifth request: the whole period ahead.
        let d = Decision::from_gcra(quota, true, 1_060_000, 1_000_000);
        assert_eq!((d.remaining, d.reset_secs), (0, 60));
        // Refused with the burst used up: the next cell frees in 12 s.
        let d = Decision::from_gcra(quota, false, 1_060_000, 1_000_000);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 12);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limiter(
        requests: u32,
        period_secs: u64,
        max_keys: usize,
    ) -> (Arc<ManualClock>, KeyedLimiter) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let quota = Quota {
            requests,
            period: Duration::from_secs(period_secs),
        };
        (clock.clone(), KeyedLimiter::new(quota, clock, max_keys))
    }

    #[test]
    fn exact_per_key_and_replenishing() {
        let (clock, l) = limiter(3, 60, 1000);
        for remaining in [2, 1, 0] {
            let d = l.check("a");
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        let refused = l.check("a");
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 20);
        assert!(l.check("b").allowed, "another key has its own bucket");
        clock.advance(20);
        assert!(l.check("a").allowed);
        assert!(!l.check("a").allowed);
        clock.advance(60);
        assert_eq!(l.check("a").remaining, 2);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let (clock, l) = limiter(5, 60, 10_000);
        for i in 0..100_000u32 {
            l.check(i);
        }
        assert!(l.tracked() <= 10_001, "{}", l.tracked());
        clock.advance(120);
        l.evict_idle();
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn login_guard_backs_off_and_resets() {
        let g = LoginGuard::new(5, Duration::from_secs(900), 1000);
        let t = 10_000;
        for i in 0..4 {
            assert_eq!(g.failure("a@x.io", t + i), None);
        }
        assert_eq!(g.failure("A@X.io", t + 4), Some(30));
        assert_eq!(g.blocked_for("a@x.io", t + 5), Some(29));
        assert_eq!(
            g.blocked_for("b@x.io", t + 5),
            None,
            "other accounts unaffected"
        );
        assert_eq!(g.failure("a@x.io", t + 40), Some(60), "back-off doubles");
        assert_eq!(g.failure("a@x.io", t + 200), Some(120));
        g.success("a@x.io");
        assert_eq!(g.blocked_for("a@x.io", t + 201), None);
        for i in 0..4 {
            g.failure("c@x.io", t + i);
        }
        assert_eq!(
            g.failure("c@x.io", t + 1000),
            None,
            "the window passed: counting starts over"
        );
    }
}
