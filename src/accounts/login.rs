//! Login (checking the password, opening a session, issuing its token) and logout. A session is
//! opened only if nothing revocation-worthy happened to the account while its password was being
//! checked: the transaction that opens it compares the security stamp read before the check.

use super::{fields, principal_of, AccountError, Accounts, Context};
use crate::auth::limiter::Decision;
use crate::auth::password::normalize_password;
use crate::auth::sessions::{Identity, NewSession};
use crate::auth::tokens::Subject;
use crate::store::models::{AuditKind, Outcome, Session, User};
use crate::store::StoreError;

/// A new session: its access token and the user as it was when the session opened.
#[derive(Debug)]
pub struct LoginGrant {
    pub access_token: String,
    pub expires_in: i64,
    pub user: User,
}

/// How often a login retries opening its session when the account changed meanwhile in a way
/// that leaves the password valid (a role change, say).
const OPEN_ATTEMPTS: usize = 3;

impl Accounts {
    /// Log in with an email and password.
    pub async fn login(
        &self,
        ctx: &Context,
        email: &str,
        password: &str,
    ) -> Result<LoginGrant, AccountError> {
        fields::password_size(password, self.settings.passwords.max_length)?;
        let email = email.trim();
        let account = email.to_lowercase();
        let (guard, user) = self
            .login_lookup(&account, (email.len() <= 254).then_some(email), ctx.now)
            .await?;
        if let Some(wait) = guard.wait {
            self.metrics
                .rate_limits
                .with_label_values(&["login_account", "throttle"])
                .inc();
            self.metrics.logins.with_label_values(&["throttled"]).inc();
            let mut ev = ctx.event(AuditKind::Login, Outcome::Throttled, None);
            ev.detail = Some(format!("retry_after={wait}"));
            self.audit(vec![ev]).await;
            return Err(AccountError::Throttled(
                Decision {
                    allowed: false,
                    limit: self.guard.threshold(),
                    remaining: 0,
                    reset_secs: wait,
                    retry_after_secs: wait,
                },
                None,
            ));
        }
        self.metrics
            .rate_limits
            .with_label_values(&["login_account", "allow"])
            .inc();
        let password = normalize_password(password);
        let verified = self
            .hasher
            .verify(
                password.clone(),
                user.as_ref().map(|u| u.password_hash.clone()),
            )
            .await?;
        let Some(user) = user.filter(|_| verified.ok) else {
            self.metrics
                .logins
                .with_label_values(&["bad_credentials"])
                .inc();
            let blocked = self.login_failed(&account, ctx.now).await?;
            let mut ev = ctx.event(AuditKind::Login, Outcome::Failure, None);
            ev.detail = Some(match blocked {
                Some(secs) => format!("bad_credentials; account throttled for {secs}s"),
                None => "bad_credentials".into(),
            });
            self.audit(vec![ev]).await;
            return Err(AccountError::BadCredentials);
        };
        self.login_succeeded(&account, guard).await?;
        self.may_log_in(ctx, &user).await?;
        // The hashes that prove this password: the one checked, and a stronger one written now.
        let mut proven = vec![user.password_hash.clone()];
        if verified.needs_rehash {
            let fresh = self.hasher.hash(password).await?;
            match self
                .store
                .upgrade_password_hash(&user.id, &user.password_hash, &fresh)
                .await
            {
                Ok(_) => proven.push(fresh),
                Err(e) => tracing::warn!(error = %e, "cannot upgrade password hash"),
            }
        }
        let (session, user) = self.open_session(ctx, user, &proven).await?;
        let token = self.tokens.issue(
            &Subject {
                user_id: &user.id,
                email: &user.email,
                nickname: &user.nickname,
                role: &user.role,
                session_id: &session.id,
            },
            ctx.now,
        );
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                // Never leave a session no token names.
                let _ = self.store.end_session(&session.id).await;
                self.sessions.remove(std::slice::from_ref(&session.id));
                return Err(e.into());
            }
        };
        self.metrics.logins.with_label_values(&["success"]).inc();
        self.audit(vec![ctx.event(
            AuditKind::Login,
            Outcome::Success,
            Some(&user.id),
        )])
        .await;
        Ok(LoginGrant {
            access_token: token,
            expires_in: self.tokens.ttl_secs(),
            user,
        })
    }

    /// Refuse a locked or (when required) unverified account, counted and audited.
    async fn may_log_in(&self, ctx: &Context, user: &User) -> Result<(), AccountError> {
        let refuse = if user.locked {
            AccountError::Locked
        } else if self.settings.accounts.require_email_verification && !user.email_verified {
            AccountError::EmailNotVerified
        } else {
            return Ok(());
        };
        self.metrics
            .logins
            .with_label_values(&[refuse.reason()])
            .inc();
        let mut ev = ctx.event(AuditKind::Login, Outcome::Failure, Some(&user.id));
        ev.detail = Some(refuse.reason().into());
        self.audit(vec![ev]).await;
        Err(refuse)
    }

    /// Open a session for `user` as read before the password check. The live table learns of
    /// it before the store commits it, so a revocation committed after it finds it there; the
    /// commit itself is refused if the account changed meanwhile, and then the login is decided
    /// again on the account as it is now.
    async fn open_session(
        &self,
        ctx: &Context,
        mut user: User,
        proven: &[String],
    ) -> Result<(Session, User), AccountError> {
        for _ in 0..OPEN_ATTEMPTS {
            let session = Session {
                id: uuid::Uuid::new_v4().simple().to_string(),
                user_id: user.id.clone(),
                created_at: ctx.now,
                expires_at: ctx.now + self.tokens.ttl_secs(),
                last_seen: ctx.now,
            };
            let seen = self.sessions.insert(NewSession {
                id: &session.id,
                expires_at: session.expires_at,
                last_seen: session.last_seen,
                principal: principal_of(&user),
            });
            let ended = || self.sessions.remove(std::slice::from_ref(&session.id));
            match self
                .store
                .open_session(session.clone(), user.security_stamp)
                .await
            {
                Ok(current) => {
                    self.sessions
                        .refresh_principal(&seen, principal_of(&current));
                    return Ok((session, current));
                }
                Err(StoreError::StampChanged) => {
                    ended();
                    let current = self.store.user_by_id(&user.id).await?;
                    match current {
                        Some(c) if proven.contains(&c.password_hash) => {
                            self.may_log_in(ctx, &c).await?;
                            user = c;
                        }
                        _ => return Err(self.changed_meanwhile(ctx).await),
                    }
                }
                Err(StoreError::NotFound) => {
                    ended();
                    return Err(self.changed_meanwhile(ctx).await);
                }
                Err(e) => {
                    ended();
                    return Err(e.into());
                }
            }
        }
        Err(AccountError::Internal(
            "the account kept changing while a session was being opened".into(),
        ))
    }

    /// The password or the account itself changed while the password was being checked.
    async fn changed_meanwhile(&self, ctx: &Context) -> AccountError {
        self.metrics
            .logins
            .with_label_values(&["bad_credentials"])
            .inc();
        let mut ev = ctx.event(AuditKind::Login, Outcome::Failure, None);
        ev.detail = Some("bad_credentials; the account changed during the login".into());
        self.audit(vec![ev]).await;
        AccountError::BadCredentials
    }

    /// End the caller's session.
    pub async fn logout(&self, ctx: &Context, identity: &Identity) -> Result<(), AccountError> {
        self.store.end_session(&identity.session_id).await?;
        self.sessions
            .remove(std::slice::from_ref(&identity.session_id));
        self.audit(vec![ctx.event(
            AuditKind::Logout,
            Outcome::Success,
            Some(identity.user_id()),
        )])
        .await;
        Ok(())
    }
}
