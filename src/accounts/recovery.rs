//! Password recovery by passphrase: a new password for the right email and passphrase, every
//! session ended in the same transaction, a notification sent. A wrong passphrase and an
//! unknown email look the same.

use super::{fields, mail, AccountError, Accounts, Context};
use crate::auth::password::{check_policy, normalize_passphrase, normalize_password};
use crate::store::models::{AccountChange, AuditKind, Outcome};

const MISMATCH: &str = "Invalid email or passphrase";

impl Accounts {
    /// Replace the password of the account with this email and passphrase.
    pub async fn recover(
        &self,
        ctx: &Context,
        email: &str,
        passphrase: &str,
        new_password: &str,
    ) -> Result<(), AccountError> {
        let policy = &self.settings.passwords;
        fields::password_size(new_password, policy.max_length)?;
        if passphrase.len() > 1024 {
            return Err(AccountError::Invalid(MISMATCH.into()));
        }
        let email = email.trim();
        let admitted = self
            .admit("recovery", |l| &l.recovery, &email.to_lowercase())
            .await;
        if let Err(throttled @ AccountError::Throttled(..)) = admitted {
            let mut ev = ctx.event(AuditKind::Recovery, Outcome::Throttled, None);
            ev.detail = Some("too many attempts for this account".into());
            self.audit(vec![ev]).await;
            return Err(throttled);
        }
        admitted?;
        let user = if email.len() <= 254 {
            self.store.user_by_email(email).await?
        } else {
            None
        };
        let verified = self
            .hasher
            .verify(
                normalize_passphrase(passphrase),
                user.as_ref().map(|u| u.passphrase_hash.clone()),
            )
            .await?;
        let Some(user) = user.filter(|_| verified.ok) else {
            let mut ev = ctx.event(AuditKind::Recovery, Outcome::Failure, None);
            ev.detail = Some("mismatch".into());
            self.audit(vec![ev]).await;
            return Err(AccountError::Invalid(MISMATCH.into()));
        };
        let password = normalize_password(new_password);
        check_policy(policy, &password, &[&user.email, &user.nickname])
            .map_err(AccountError::Invalid)?;
        let hash = self.hasher.hash(password).await?;
        let changed = self
            .store
            .change_account(
                &user.id,
                AccountChange {
                    password_hash: Some(hash),
                    mails: vec![mail::password_reset(&user, ctx.now)],
                    now: ctx.now,
                    ..AccountChange::default()
                },
            )
            .await?;
        self.sessions_follow(&changed.user, &changed.ended_sessions);
        self.mail_queued();
        self.audit(vec![ctx.event(
            AuditKind::Recovery,
            Outcome::Success,
            Some(&user.id),
        )])
        .await;
        Ok(())
    }
}
