//! What account operations are limited by: the login guard (failed logins per account) and the
//! per-key limits of registration, recovery and resend. One instance counts in memory; replicas
//! count in the shared store, so a lockout holds on every replica and across restarts. The
//! policy (thresholds, back-off, quotas) is the same either way.

use super::{AccountError, AccountLimits, Accounts};
use crate::store::models::User;

/// The login guard's view of an account before its password is checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct LoginGuardState {
    /// Seconds to wait, if the account is blocked.
    pub wait: Option<u64>,
    /// Whether failures are counted (a success then clears them).
    pub failures: bool,
}
use crate::auth::limiter::{Decision, KeyedLimiter};

impl Accounts {
    /// The login guard's view of `account` and the user with `email` (if the address can name
    /// one), read together: one round trip when replicas share the guard.
    pub(super) async fn login_lookup(
        &self,
        account: &str,
        email: Option<&str>,
        now: i64,
    ) -> Result<(LoginGuardState, Option<User>), AccountError> {
        match (self.store.shared_counters(), email) {
            (Some(shared), Some(email)) => {
                let (until, user) = shared.login_lookup(account, email).await?;
                Ok((Self::guard_state(until, now), user))
            }
            (Some(shared), None) => {
                let until = shared.login_blocked_until(account).await?;
                Ok((Self::guard_state(until, now), None))
            }
            (None, email) => {
                let guard = LoginGuardState {
                    wait: self.guard.blocked_for(account, now),
                    failures: true,
                };
                let user = match email {
                    Some(email) if guard.wait.is_none() => self.store.user_by_email(email).await?,
                    _ => None,
                };
                Ok((guard, user))
            }
        }
    }

    fn guard_state(until: Option<i64>, now: i64) -> LoginGuardState {
        LoginGuardState {
            wait: until.filter(|u| *u > now).map(|u| (u - now) as u64),
            failures: until.is_some(),
        }
    }

    /// Count a failed login; returns the block it starts, in seconds, if any.
    pub(super) async fn login_failed(
        &self,
        account: &str,
        now: i64,
    ) -> Result<Option<u64>, AccountError> {
        let Some(shared) = self.store.shared_counters() else {
            return Ok(self.guard.failure(account, now));
        };
        let count = shared
            .record_login_failure(account, now, self.guard.window_secs())
            .await?;
        let block = self.guard.backoff(count);
        if let Some(secs) = block {
            shared.block_login(account, now + secs as i64).await?;
        }
        Ok(block)
    }

    /// A successful login forgets the account's failures (`guard`: what `login_blocked` said
    /// before the password was checked; nothing to forget, no round trip).
    pub(super) async fn login_succeeded(
        &self,
        account: &str,
        guard: LoginGuardState,
    ) -> Result<(), AccountError> {
        match self.store.shared_counters() {
            Some(shared) if guard.failures => Ok(shared.clear_login_failures(account).await?),
            Some(_) => Ok(()),
            None => {
                self.guard.success(account);
                Ok(())
            }
        }
    }

    /// Count a request against one of the account limits (`scope`, keyed by `key`), counted
    /// in the metrics; refused with `Throttled`.
    pub(super) async fn admit(
        &self,
        scope: &str,
        pick: impl FnOnce(&AccountLimits) -> &KeyedLimiter,
        key: &str,
    ) -> Result<Decision, AccountError> {
        let limits = self.limits.load();
        let limiter = pick(&limits);
        let decisions = &self.metrics.rate_limits;
        let refused =
            |d: Decision| AccountError::Throttled(d, limit_detail(scope, limiter.quota()));
        let Some(shared) = self.store.shared_counters() else {
            return limiter.admit(key, scope, decisions).map_err(refused);
        };
        let quota = limiter.quota();
        let now_ms = self.clock.since_epoch().as_millis() as i64;
        let admission = shared
            .admit(
                &format!("{scope}:{key}"),
                quota.requests,
                quota.period.as_millis() as i64,
                now_ms,
            )
            .await?;
        Decision::from_gcra(quota, admission.allowed, admission.tat_ms, now_ms)
            .counted(scope, decisions)
            .map_err(refused)
    }
}

/// What a client refused by an account limit is told: which limit, and the setting that sets it
/// (so that an operator reading the answer knows what happened). Nothing for other scopes.
fn limit_detail(scope: &str, quota: crate::config::Quota) -> Option<String> {
    let (what, setting) = match scope {
        "registration" => (
            "registrations from this address",
            "limits.registrations_per_ip",
        ),
        "recovery" => (
            "recovery attempts for this account",
            "limits.recovery_per_account",
        ),
        "resend" => (
            "verification emails for this address",
            "limits.resend_per_account",
        ),
        _ => return None,
    };
    Some(format!(
        "Too many {what}: at most {} ({setting})",
        quota.describe()
    ))
}
