//! Rate limiting: exact per-key GCRA limits and the per-account guard against password
//! guessing. Both take time from the injected `Clock`, and both bound their memory without
//! letting new keys displace or throttle the ones already tracked.
//!
//! Why GCRA: it is exact per key (no sketch collisions, so two clients never share a bucket),
//! needs one timestamp per key, and a key whose allowance is whole again can be forgotten
//! without changing any decision. pingora-limits' count-min sketch is approximate by design.

use super::bounded::{BoundedMap, Entry};
use crate::clock::Clock;
use crate::config::Quota;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The key a client address is limited by: an IPv4 address as is (also when written as an
/// IPv4-mapped IPv6 address); an IPv6 address as its network of `v6_prefix` bits, since one
/// subscriber or server usually holds a whole /64 and could otherwise take 2^64 allowances.
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

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

/// `quota.requests` per `quota.period` for each key, exactly (GCRA: one theoretical arrival
/// time per key). Keys are hashed with a random seed (so they cannot be chosen to collide). At
/// most `max_keys` are tracked, and a key tracked keeps its own allowance whatever happens to
/// others: a new key takes the place of the stalest key whose allowance is whole again (nothing
/// is lost by forgetting it), and only when there is none does it share one overflow allowance
/// with the other new keys, so a flood of distinct keys costs bounded memory, is limited as a
/// whole, and never throttles the keys already known.
pub struct KeyedLimiter {
    keys: BoundedMap<i64>,
    /// The theoretical arrival time (ns since the epoch) of the keys that have no room.
    overflow: Mutex<i64>,
    quota: Quota,
    /// `quota.period / quota.requests`, in ns.
    cell_ns: i64,
    period_ns: i64,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl KeyedLimiter {
    pub fn new(quota: Quota, clock: Arc<dyn Clock>, max_keys: usize) -> KeyedLimiter {
        let requests = i64::from(quota.requests.max(1));
        let period_ns = i64::try_from(quota.period.as_nanos()).unwrap_or(i64::MAX / 4);
        KeyedLimiter {
            keys: BoundedMap::new(max_keys),
            overflow: Mutex::new(0),
            quota,
            cell_ns: (period_ns / requests).max(1),
            period_ns: period_ns.max(1),
            hasher: RandomState::new(),
            clock,
        }
    }

    /// One GCRA step on a key's arrival time `tat` at `now` (ns): the new arrival time if the
    /// request passes.
    fn step(&self, tat: i64, now: i64) -> Option<i64> {
        let next = tat.max(now).saturating_add(self.cell_ns);
        (next - now <= self.period_ns).then_some(next)
    }

    /// Count one request for `key` and decide.
    pub fn check(&self, key: impl Hash) -> Decision {
        let key = self.hasher.hash_one(key);
        let now = i64::try_from(self.clock.since_epoch().as_nanos()).unwrap_or(i64::MAX / 2);
        let decide = |tat: &mut i64| match self.step(*tat, now) {
            Some(next) => {
                *tat = next;
                (true, next)
            }
            None => (false, *tat),
        };
        let (allowed, tat) = self.keys.update(
            key,
            |tat| *tat <= now,
            || now,
            |entry| match entry {
                Entry::Own(tat) => decide(tat),
                Entry::Full => decide(
                    &mut self
                        .overflow
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ),
            },
        );
        const NS_PER_MS: i64 = 1_000_000;
        // Rounded so that a refusal's wait is never reported short.
        Decision::from_gcra(
            self.quota,
            allowed,
            (tat + NS_PER_MS - 1) / NS_PER_MS,
            now / NS_PER_MS,
        )
    }

    /// Forget keys whose allowance is whole again.
    pub fn evict_idle(&self) {
        let now = i64::try_from(self.clock.since_epoch().as_nanos()).unwrap_or(i64::MAX / 2);
        self.keys.retain(|tat| *tat > now);
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.keys.len()
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
/// counted exactly like real ones. At most `max_keys` accounts are tracked: a new one takes the
/// place of the stalest account that is not blocked (or, when every one looked at is, of the
/// stalest), with bounded work per failure.
pub struct LoginGuard {
    threshold: u32,
    window_secs: i64,
    base_backoff_secs: i64,
    hasher: RandomState,
    accounts: BoundedMap<Failures>,
}

impl LoginGuard {
    pub fn new(threshold: u32, window: Duration, max_keys: usize) -> LoginGuard {
        LoginGuard {
            threshold: threshold.max(1),
            window_secs: window.as_secs().max(1) as i64,
            base_backoff_secs: 30,
            hasher: RandomState::new(),
            accounts: BoundedMap::new(max_keys),
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
        let until = self.accounts.get(self.key(account), |f| f.blocked_until)?;
        (until > now).then(|| (until - now) as u64)
    }

    /// Record a failed attempt; returns the block it starts, in seconds, if any.
    pub fn failure(&self, account: &str, now: i64) -> Option<u64> {
        let key = self.key(account);
        let fresh = || Failures {
            count: 0,
            last_failure: now,
            blocked_until: 0,
        };
        let count = |entry: Entry<'_, Failures>| match entry {
            Entry::Own(f) => {
                if now - f.last_failure >= self.window_secs {
                    f.count = 0;
                }
                f.count += 1;
                f.last_failure = now;
                let backoff = self.backoff(f.count);
                if let Some(secs) = backoff {
                    f.blocked_until = now + secs as i64;
                }
                Some(backoff)
            }
            Entry::Full => None,
        };
        self.accounts
            .update(key, |f| f.blocked_until <= now, fresh, count)
            .or_else(|| self.accounts.update(key, |_| true, fresh, count))
            .flatten()
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
        self.accounts.remove(self.key(account));
    }

    /// Forget accounts with no recent failure and no active block.
    pub fn evict_idle(&self, now: i64) {
        let window = self.window_secs;
        self.accounts
            .retain(|f| now - f.last_failure < window || f.blocked_until > now);
    }

    pub fn tracked(&self) -> usize {
        self.accounts.len()
    }
}

#[cfg(test)]
mod gcra_tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_network() {
        let key = |ip: &str, prefix| client_key(ip.parse().unwrap(), prefix).to_string();
        assert_eq!(key("203.0.113.7", 64), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7", 64), "203.0.113.7");
        assert_eq!(
            key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64),
            "2001:db8:1:2::"
        );
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 48), "2001:db8:1::");
        assert_eq!(
            key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 128),
            "2001:db8:1:2:aaaa:bbbb:cccc:dddd"
        );
    }

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
    fn a_full_limiter_keeps_the_keys_it_tracks() {
        let (clock, l) = limiter(2, 60, 100);
        assert!(l.check("known").allowed);
        for i in 0..10_000u32 {
            l.check(i);
        }
        assert!(l.tracked() <= 100, "{}", l.tracked());
        let d = l.check("known");
        assert!(d.allowed, "the tracked key kept its own allowance");
        assert_eq!(d.remaining, 0);
        assert!(!l.check("known").allowed);
        // New keys share the overflow allowance, used up by the flood.
        assert!(!l.check("newcomer").allowed);
        // Once allowances are whole again, new keys take the place of the stalest.
        clock.advance(61);
        assert!(l.check("newcomer").allowed);
        assert_eq!(l.check("newcomer").remaining, 0, "its own bucket");
    }

    #[test]
    fn a_full_login_guard_stays_bounded_and_keeps_blocks() {
        let g = LoginGuard::new(5, Duration::from_secs(900), 100);
        let t = 10_000;
        for i in 0..5 {
            g.failure("victim@x.io", t + i);
        }
        assert!(g.blocked_for("victim@x.io", t + 5).is_some());
        for i in 0..10_000 {
            g.failure(&format!("fake{i}@x.io"), t + 5);
        }
        assert!(g.tracked() <= 100, "{}", g.tracked());
        assert!(
            g.blocked_for("victim@x.io", t + 6).is_some(),
            "a flood of other accounts does not lift a block"
        );
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
