//! Self-service: changing and deleting one's own account. Changing the email, password or
//! passphrase needs the current password; a new email is verified again; a new password ends
//! the other sessions in the same transaction. Role, lock, id and verification state cannot be
//! changed here.

use super::fields::ProfileChanges;
use super::{mail, AccountError, Accounts, Context};
use crate::auth::password::normalize_password;
use crate::auth::sessions::Identity;
use crate::store::models::{AccountChange, AuditKind, Outcome, User};
use crate::store::StoreError;

/// The fields a user may change about themselves; each `None` stays as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProfileInput<'a> {
    pub nickname: Option<&'a str>,
    pub email: Option<&'a str>,
    pub password: Option<&'a str>,
    pub customer_account: Option<&'a str>,
    pub passphrase: Option<&'a str>,
    /// Needed to change the email, password or passphrase.
    pub current_password: Option<&'a str>,
}

impl Accounts {
    /// Change the caller's own account.
    pub async fn update_profile(
        &self,
        ctx: &Context,
        identity: &Identity,
        user: &User,
        input: ProfileInput<'_>,
    ) -> Result<(), AccountError> {
        let policy = &self.settings.passwords;
        let ProfileChanges {
            nickname,
            email,
            customer_account,
            passphrase,
            password,
        } = ProfileChanges::validate(
            policy,
            user,
            input.nickname,
            input.email,
            input.customer_account,
            input.passphrase,
            input.password,
        )?;
        let email_changes = email
            .as_ref()
            .is_some_and(|e| !e.eq_ignore_ascii_case(&user.email));
        if email_changes || password.is_some() || passphrase.is_some() {
            self.check_current_password(ctx, user, input.current_password)
                .await?;
        }
        let password_hash = self.hasher.hash_opt(password).await?;
        let passphrase_hash = self.hasher.hash_opt(passphrase).await?;
        let mut change = AccountChange {
            keep_session: Some(identity.session_id.clone()),
            now: ctx.now,
            ..AccountChange::default()
        };
        let mut changed = Vec::new();
        if password_hash.is_some() {
            changed.push("password");
            change.mails.push(mail::password_changed(user, ctx.now));
        }
        if passphrase_hash.is_some() {
            changed.push("passphrase");
        }
        if email_changes {
            changed.push("email");
            change.mails.push(mail::email_changed(user, ctx.now));
            let mut moved = user.clone();
            moved.email = email.clone().unwrap_or_default();
            let (link, verification) = self.verification_mail(&moved, ctx.now);
            change.mails.push(link);
            change.verification = Some(verification);
            change.email = email;
            change.email_verified = Some(false);
        }
        if nickname.is_some() {
            changed.push("nickname");
        }
        if customer_account.is_some() {
            changed.push("customer_account");
        }
        change.nickname = nickname;
        change.customer_account = customer_account;
        change.password_hash = password_hash;
        change.passphrase_hash = passphrase_hash;
        let done = self.store.change_account(&user.id, change).await?;
        self.sessions_follow(&done.user, &done.ended_sessions);
        self.mail_queued();
        let mut ev = ctx.event(AuditKind::AccountUpdate, Outcome::Success, Some(&user.id));
        ev.detail = Some(changed.join(","));
        self.audit(vec![ev]).await;
        Ok(())
    }

    async fn check_current_password(
        &self,
        ctx: &Context,
        user: &User,
        current: Option<&str>,
    ) -> Result<(), AccountError> {
        let current = current.ok_or_else(|| {
            AccountError::Invalid(
                "current_password is required to change the email, password or passphrase".into(),
            )
        })?;
        let wrong = || AccountError::Invalid("Current password is incorrect".into());
        super::fields::password_size(current, self.settings.passwords.max_length)
            .map_err(|_| wrong())?;
        let ok = self
            .hasher
            .verify(
                normalize_password(current),
                Some(user.password_hash.clone()),
            )
            .await?
            .ok;
        if !ok {
            let mut ev = ctx.event(AuditKind::AccountUpdate, Outcome::Failure, Some(&user.id));
            ev.detail = Some("wrong_current_password".into());
            self.audit(vec![ev]).await;
            return Err(wrong());
        }
        Ok(())
    }

    /// Delete the caller's own account (the last active admin cannot).
    pub async fn delete_own(&self, ctx: &Context, user: &User) -> Result<(), AccountError> {
        let ended = self
            .store
            .delete_account(&user.id, vec![mail::account_deleted(user, ctx.now)])
            .await
            .map_err(|e| match e {
                StoreError::LastAdmin => {
                    AccountError::Invalid("The last admin cannot delete itself".into())
                }
                other => other.into(),
            })?;
        self.sessions.remove(&ended);
        self.mail_queued();
        self.audit(vec![ctx.event(
            AuditKind::AccountDelete,
            Outcome::Success,
            Some(&user.id),
        )])
        .await;
        Ok(())
    }
}
