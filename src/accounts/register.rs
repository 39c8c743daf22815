//! Creating accounts: self-registration with a single-use verification link (and its resend),
//! verifying the address, and the admin the command line creates.

use super::mail::token_hash;
use super::{fields, AccountError, Accounts, Context};
use crate::auth::password::{check_policy, normalize_password, Hasher};
use crate::config::PasswordSettings;
use crate::store::models::{AuditEvent, AuditKind, Outcome, User, ROLE_ADMIN, ROLE_USER};
use crate::store::Store;

/// What a person registering sends.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub email: &'a str,
    pub nickname: &'a str,
    pub password: &'a str,
    pub passphrase: &'a str,
    pub customer_account: Option<&'a str>,
}

/// Validated and hashed fields of a new account.
pub struct NewAccount {
    pub email: String,
    pub nickname: String,
    pub password_hash: String,
    pub passphrase_hash: String,
    pub customer_account: String,
}

impl NewAccount {
    /// The user record for this account, with a fresh opaque id.
    pub fn into_user(self, role: &str, locked: bool, email_verified: bool, now: i64) -> User {
        User {
            id: uuid::Uuid::new_v4().simple().to_string(),
            email: self.email,
            nickname: self.nickname,
            password_hash: self.password_hash,
            passphrase_hash: self.passphrase_hash,
            customer_account: self.customer_account,
            role: role.to_string(),
            locked,
            email_verified,
            created_at: now,
            updated_at: now,
            security_stamp: 0,
        }
    }
}

/// Validate and hash the fields every new account needs (registration, admin create, CLI).
pub async fn new_account(
    policy: &PasswordSettings,
    hasher: &Hasher,
    r: Registration<'_>,
) -> Result<NewAccount, AccountError> {
    let email = fields::email(r.email)?;
    let nickname = fields::nickname(r.nickname)?;
    let customer_account = fields::customer_account(r.customer_account.unwrap_or("none"))?;
    fields::password_size(r.password, policy.max_length)?;
    let password = normalize_password(r.password);
    check_policy(policy, &password, &[&email, &nickname]).map_err(AccountError::Invalid)?;
    let passphrase = fields::passphrase(r.passphrase)?;
    let password_hash = hasher.hash(password).await?;
    let passphrase_hash = hasher.hash(passphrase).await?;
    Ok(NewAccount {
        email,
        nickname,
        password_hash,
        passphrase_hash,
        customer_account,
    })
}

/// Create an admin (the command line, with the server stopped): no default admin with a known
/// password ever exists. Returns the new user.
pub async fn create_admin(
    store: &dyn Store,
    policy: &PasswordSettings,
    hasher: &Hasher,
    r: Registration<'_>,
    now: i64,
) -> Result<User, AccountError> {
    let user = new_account(policy, hasher, r)
        .await?
        .into_user(ROLE_ADMIN, false, true, now);
    let user = store.create_user(user, false, None, Vec::new()).await?;
    store
        .append_audit(vec![AuditEvent {
            seq: 0,
            at: now,
            kind: AuditKind::AdminCreate,
            outcome: Outcome::Success,
            user_id: Some(user.id.clone()),
            actor: Some("cli".into()),
            request_id: String::new(),
            client_ip: String::new(),
            detail: Some("portcullis admin create".into()),
        }])
        .await?;
    Ok(user)
}

/// The longest verification token accepted before hashing it.
const MAX_LINK_TOKEN: usize = 128;

impl Accounts {
    /// Register an account (limited per client IP) and mail its verification link.
    pub async fn register(&self, ctx: &Context, r: Registration<'_>) -> Result<User, AccountError> {
        self.admit(
            "registration",
            |l| &l.registrations,
            &ctx.client_key.to_string(),
        )
        .await?;
        let rejected = |e: AccountError| {
            self.metrics
                .registrations
                .with_label_values(&["rejected"])
                .inc();
            e
        };
        let account = new_account(&self.settings.passwords, &self.hasher, r)
            .await
            .map_err(rejected)?;
        let user = account.into_user(ROLE_USER, false, false, ctx.now);
        let (mail, verification) = self.verification_mail(&user, ctx.now);
        let created = self
            .store
            .create_user(
                user,
                self.settings.accounts.first_user_admin,
                Some(verification),
                vec![mail],
            )
            .await
            .map_err(AccountError::from);
        let user = match created {
            Ok(u) => u,
            Err(e) => {
                let e = rejected(e);
                let mut ev = ctx.event(AuditKind::Register, Outcome::Failure, None);
                ev.detail = Some(e.reason().to_string());
                self.audit(vec![ev]).await;
                return Err(e);
            }
        };
        self.mail_queued();
        self.metrics
            .registrations
            .with_label_values(&["created"])
            .inc();
        let mut ev = ctx.event(AuditKind::Register, Outcome::Success, Some(&user.id));
        ev.detail = Some(format!("role={}", user.role));
        self.audit(vec![ev]).await;
        Ok(user)
    }

    /// Use a verification link; an unknown, used or expired link is refused.
    pub async fn verify_email(&self, ctx: &Context, token: &str) -> Result<User, AccountError> {
        let invalid = || AccountError::Invalid("Invalid or expired verification link".into());
        if token.is_empty() || token.len() > MAX_LINK_TOKEN {
            return Err(invalid());
        }
        match self
            .store
            .consume_verification(&token_hash(token), ctx.now)
            .await?
        {
            Some(user) => {
                self.audit(vec![ctx.event(
                    AuditKind::EmailVerification,
                    Outcome::Success,
                    Some(&user.id),
                )])
                .await;
                Ok(user)
            }
            None => {
                self.audit(vec![ctx.event(
                    AuditKind::EmailVerification,
                    Outcome::Failure,
                    None,
                )])
                .await;
                Err(invalid())
            }
        }
    }

    /// Send a new verification link to an unverified address (limited per address). Says
    /// nothing about whether the address is registered.
    pub async fn resend_verification(
        &self,
        ctx: &Context,
        email: &str,
    ) -> Result<(), AccountError> {
        let email = fields::email(email)?;
        self.admit("resend", |l| &l.resend, &email.to_lowercase())
            .await?;
        let user = self.store.user_by_email(&email).await?;
        if let Some(user) = user.filter(|u| !u.email_verified) {
            let (mail, (hash, v)) = self.verification_mail(&user, ctx.now);
            self.store.put_verification(hash, v, vec![mail]).await?;
            self.mail_queued();
            self.audit(vec![ctx.event(
                AuditKind::VerificationResent,
                Outcome::Success,
                Some(&user.id),
            )])
            .await;
        }
        Ok(())
    }
}
