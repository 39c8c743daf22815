//! The accounts domain, free of HTTP and pingora: registration and email verification, login
//! and logout, recovery, self-service and admin changes (with the last-admin rule), and the
//! audit events of each. It decides with `auth` (tokens, passwords, sessions, limits), keeps
//! state through `store` and queues mail through `email`; `now` is always a parameter.

mod admin;
pub mod fields;
mod guard;
mod login;
mod mail;
mod profile;
mod recovery;
mod register;

pub use admin::{AdminChanges, NewUser};
pub use login::LoginGrant;
pub use profile::ProfileInput;
pub use register::{create_admin, new_account, NewAccount, Registration};

use crate::auth::limiter::{Decision, KeyedLimiter, LoginGuard};
use crate::auth::password::{HashError, Hasher};
use crate::auth::sessions::{Identity, NewSession, Principal, SessionTable};
use crate::auth::tokens::{TokenError, TokenService};
use crate::clock::Clock;
use crate::config::{AccountSettings, Config, LiveLimits, PasswordSettings};
use crate::metrics::Metrics;
use crate::store::models::{
    AuditEvent, AuditFilter, AuditKind, Outcome, SessionOwner, StoredSession, User,
};
use crate::store::{Store, StoreError};
use arc_swap::ArcSwap;
use std::net::IpAddr;
use std::sync::Arc;

/// Where and when a domain operation happens: read once at the edge.
#[derive(Debug, Clone)]
pub struct Context {
    /// Unix seconds.
    pub now: i64,
    pub request_id: String,
    pub client_ip: IpAddr,
    /// What per-address limits count the client by (its network, for IPv6).
    pub client_key: IpAddr,
}

impl Context {
    /// An audit event about `user_id` from this request.
    pub fn event(&self, kind: AuditKind, outcome: Outcome, user_id: Option<&str>) -> AuditEvent {
        AuditEvent {
            seq: 0,
            at: self.now,
            kind,
            outcome,
            user_id: user_id.map(str::to_string),
            actor: None,
            request_id: self.request_id.clone(),
            client_ip: self.client_ip.to_string(),
            detail: None,
        }
    }
}

/// Why an account operation was refused; mapped to HTTP once, in `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A value breaks a rule; the message is public.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A unique field is taken: "email" or "nickname".
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// Unknown email or wrong password: indistinguishable.
    #[error("bad credentials")]
    BadCredentials,
    /// The caller's session or account is gone; the reason is for logs only.
    #[error("not authenticated: {0}")]
    Unauthenticated(&'static str),
    #[error("account locked")]
    Locked,
    #[error("email not verified")]
    EmailNotVerified,
    /// Authenticated, but not allowed (not an admin).
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    /// A limit refused the request; with what to tell the client about it, if anything.
    #[error("throttled")]
    Throttled(Decision, Option<String>),
    /// The store cannot be reached now; nothing happened.
    #[error("storage unavailable")]
    Unavailable,
    /// Anything unexpected; the detail is logged, never shown.
    #[error("internal: {0}")]
    Internal(String),
}

impl AccountError {
    /// A short stable label for metrics and audit details.
    pub fn reason(&self) -> &'static str {
        match self {
            AccountError::Invalid(_) => "invalid",
            AccountError::Duplicate(_) => "duplicate",
            AccountError::BadCredentials => "bad_credentials",
            AccountError::Unauthenticated(why) => why,
            AccountError::Locked => "account_locked",
            AccountError::EmailNotVerified => "email_not_verified",
            AccountError::Forbidden => "forbidden",
            AccountError::NotFound => "not_found",
            AccountError::Throttled(..) => "throttled",
            AccountError::Unavailable => "unavailable",
            AccountError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> AccountError {
        match e {
            StoreError::Duplicate(field) => AccountError::Duplicate(field),
            StoreError::NotFound => AccountError::NotFound,
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "storage unavailable");
                AccountError::Unavailable
            }
            other => AccountError::Internal(other.to_string()),
        }
    }
}

impl From<HashError> for AccountError {
    fn from(e: HashError) -> AccountError {
        AccountError::Internal(e.to_string())
    }
}

impl From<TokenError> for AccountError {
    fn from(e: TokenError) -> AccountError {
        AccountError::Internal(e.to_string())
    }
}

/// The limits of account operations a reload may change.
pub struct AccountLimits {
    /// New accounts per client IP.
    pub registrations: KeyedLimiter,
    /// Recovery attempts per account (email).
    pub recovery: KeyedLimiter,
    /// Verification resends per account (email).
    pub resend: KeyedLimiter,
}

impl AccountLimits {
    pub fn new(limits: &LiveLimits, max_keys: usize, clock: &Arc<dyn Clock>) -> AccountLimits {
        let keyed = |q| KeyedLimiter::new(q, clock.clone(), max_keys);
        AccountLimits {
            registrations: keyed(limits.registrations_per_ip),
            recovery: keyed(limits.recovery_per_account),
            resend: keyed(limits.resend_per_account),
        }
    }

    pub fn evict_idle(&self) {
        for l in [&self.registrations, &self.recovery, &self.resend] {
            l.evict_idle();
        }
    }
}

/// The settings account operations follow.
struct Settings {
    passwords: PasswordSettings,
    accounts: AccountSettings,
    /// Base of the links mailed out: `server.public_url` + `api.prefix`.
    link_base: String,
}

/// The accounts service: every operation of the domain, over shared handles.
pub struct Accounts {
    store: Arc<dyn Store>,
    hasher: Hasher,
    tokens: Arc<TokenService>,
    sessions: Arc<SessionTable>,
    guard: LoginGuard,
    limits: ArcSwap<AccountLimits>,
    settings: Settings,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Woken when mail is queued, so that it goes out at once.
    mail_queued: Arc<tokio::sync::Notify>,
}

/// The handles the accounts service works with.
pub struct Handles {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<TokenService>,
    pub sessions: Arc<SessionTable>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub mail_queued: Arc<tokio::sync::Notify>,
}

impl Accounts {
    pub fn new(config: &Config, h: Handles) -> Result<Accounts, String> {
        let hasher = Hasher::new(
            &config.passwords,
            crate::auth::password::HashMetrics {
                seconds: Some(h.metrics.hash_seconds.clone()),
                in_flight: Some(h.metrics.hashes_in_flight.clone()),
            },
        )?;
        Ok(Accounts {
            store: h.store,
            hasher,
            tokens: h.tokens,
            sessions: h.sessions,
            guard: LoginGuard::new(
                config.limits.login_failures,
                config.limits.login_failure_window,
                config.limits.max_tracked_keys,
            ),
            limits: ArcSwap::from_pointee(AccountLimits::new(
                &config.live.limits,
                config.limits.max_tracked_keys,
                &h.clock,
            )),
            settings: Settings {
                passwords: config.passwords.clone(),
                accounts: config.accounts.clone(),
                link_base: format!("{}{}", config.server.public_url, config.api.prefix),
            },
            metrics: h.metrics,
            clock: h.clock,
            mail_queued: h.mail_queued,
        })
    }

    /// Replace the reloadable limits (SIGHUP).
    pub fn set_limits(&self, limits: AccountLimits) {
        self.limits.store(Arc::new(limits));
    }

    /// Forget idle rate-limit and login-guard state (in the shared store too).
    pub async fn evict_idle(&self, now: i64) {
        self.limits.load().evict_idle();
        self.guard.evict_idle(now);
        if let Some(shared) = self.store.shared_counters() {
            if let Err(e) = shared.purge_counters(now, self.guard.window_secs()).await {
                tracing::warn!(error = %e, "cannot purge shared counters");
            }
        }
    }

    /// The user behind an authenticated caller, who must still exist and not be locked.
    pub async fn caller(&self, identity: &Identity) -> Result<User, AccountError> {
        match self.store.user_by_id(identity.user_id()).await? {
            Some(u) if !u.locked => Ok(u),
            _ => Err(AccountError::Unauthenticated("user_gone")),
        }
    }

    /// Like `caller`, and the user must be an admin.
    pub async fn admin_caller(&self, identity: &Identity) -> Result<User, AccountError> {
        let user = self.caller(identity).await?;
        if !user.is_admin() {
            return Err(AccountError::Forbidden);
        }
        Ok(user)
    }

    /// Last activity of the user's most recent live session, if any.
    pub fn last_seen(&self, user_id: &str, now: i64) -> Option<i64> {
        self.sessions.last_seen_of(user_id, now)
    }

    /// Write audit events; a failure is logged and counted, never shown to the client.
    pub async fn audit(&self, events: Vec<AuditEvent>) {
        if let Err(e) = self.store.append_audit(events).await {
            self.metrics.audit_failures.inc();
            tracing::error!(error = %e, "cannot write audit events");
        }
    }

    /// Audit events matching `filter`, newest first.
    pub async fn audit_log(&self, filter: AuditFilter) -> Result<Vec<AuditEvent>, AccountError> {
        Ok(self.store.audit_events(filter).await?)
    }

    fn mail_queued(&self) {
        self.mail_queued.notify_one();
    }

    /// The user changed: end the sessions the store ended with the change, and let the others
    /// answer with the new profile.
    fn sessions_follow(&self, user: &User, ended: &[String]) {
        self.sessions.remove(ended);
        self.sessions.update_principal(principal_of(user));
    }
}

/// Who a user's sessions say they are.
pub fn principal_of(user: &User) -> Principal {
    Principal {
        user_id: user.id.clone(),
        email: user.email.clone(),
        nickname: user.nickname.clone(),
        role: user.role.clone(),
    }
}

/// The principal of a stored session's owner.
pub fn principal_from(user_id: &str, owner: &SessionOwner) -> Principal {
    Principal {
        user_id: user_id.to_string(),
        email: owner.email.clone(),
        nickname: owner.nickname.clone(),
        role: owner.role.clone(),
    }
}

/// A stored session as the live table takes it.
pub fn new_session(s: &StoredSession) -> NewSession<'_> {
    NewSession {
        id: &s.session.id,
        expires_at: s.session.expires_at,
        last_seen: s.session.last_seen,
        principal: principal_from(&s.session.user_id, &s.owner),
    }
}
