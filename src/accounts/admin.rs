//! Administration: listing, creating, reading, changing and deleting accounts. The callers are
//! admins (checked by `Accounts::admin_caller`). An admin cannot delete itself, and the last
//! active admin cannot be demoted, locked or deleted: the store checks that inside the
//! transaction of the change.

use super::fields::{self, ProfileChanges};
use super::register::new_account;
use super::{AccountError, Accounts, Context, Registration};
use crate::store::models::{AccountChange, AuditEvent, AuditKind, Outcome, User, ROLE_USER};
use crate::store::StoreError;

/// An account an admin creates.
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    pub account: Registration<'a>,
    pub role: Option<&'a str>,
    pub lock: Option<bool>,
}

/// What an admin may change about an account; each `None` stays as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminChanges<'a> {
    pub nickname: Option<&'a str>,
    pub email: Option<&'a str>,
    pub password: Option<&'a str>,
    pub customer_account: Option<&'a str>,
    pub passphrase: Option<&'a str>,
    pub role: Option<&'a str>,
    pub lock: Option<bool>,
}

fn admin_event(ctx: &Context, kind: AuditKind, actor: &User, target: &str) -> AuditEvent {
    let mut ev = ctx.event(kind, Outcome::Success, Some(target));
    ev.actor = Some(actor.id.clone());
    ev
}

/// Ids are opaque and short; anything longer names no account.
const MAX_ID: usize = 64;

impl Accounts {
    /// Accounts in id order, `skip` then at most `limit`.
    pub async fn list_users(&self, skip: usize, limit: usize) -> Result<Vec<User>, AccountError> {
        Ok(self.store.list_users(skip, limit).await?)
    }

    /// One account.
    pub async fn user(&self, id: &str) -> Result<User, AccountError> {
        if id.len() > MAX_ID {
            return Err(AccountError::NotFound);
        }
        self.store
            .user_by_id(id)
            .await?
            .ok_or(AccountError::NotFound)
    }

    /// Create an account (verified, with the given role and lock).
    pub async fn create_user(
        &self,
        ctx: &Context,
        admin: &User,
        new: NewUser<'_>,
    ) -> Result<User, AccountError> {
        let role = fields::role(new.role.unwrap_or(ROLE_USER))?;
        let account = new_account(&self.settings.passwords, &self.hasher, new.account).await?;
        let user = account.into_user(&role, new.lock.unwrap_or(false), true, ctx.now);
        let user = self
            .store
            .create_user(user, false, None, Vec::new())
            .await?;
        self.metrics
            .registrations
            .with_label_values(&["admin_created"])
            .inc();
        self.audit(vec![admin_event(
            ctx,
            AuditKind::AdminCreate,
            admin,
            &user.id,
        )])
        .await;
        Ok(user)
    }

    /// Change an account; a new password, role or lock ends its sessions.
    pub async fn update_user(
        &self,
        ctx: &Context,
        admin: &User,
        user: &User,
        changes: AdminChanges<'_>,
    ) -> Result<(), AccountError> {
        let role = changes.role.map(fields::role).transpose()?;
        let ProfileChanges {
            nickname,
            email,
            customer_account,
            passphrase,
            password,
        } = ProfileChanges::validate(
            &self.settings.passwords,
            user,
            changes.nickname,
            changes.email,
            changes.customer_account,
            changes.passphrase,
            changes.password,
        )?;
        let change = AccountChange {
            nickname,
            email,
            customer_account,
            password_hash: self.hasher.hash_opt(password).await?,
            passphrase_hash: self.hasher.hash_opt(passphrase).await?,
            role,
            locked: changes.lock,
            now: ctx.now,
            ..AccountChange::default()
        };
        let done = self
            .store
            .change_account(&user.id, change)
            .await
            .map_err(|e| match e {
                StoreError::LastAdmin => {
                    AccountError::Invalid("The last admin cannot be demoted or locked".into())
                }
                other => other.into(),
            })?;
        self.sessions_follow(&done.user, &done.ended_sessions);
        self.audit(vec![admin_event(
            ctx,
            AuditKind::AdminUpdate,
            admin,
            &user.id,
        )])
        .await;
        Ok(())
    }

    /// Delete an account (not one's own).
    pub async fn delete_user(
        &self,
        ctx: &Context,
        admin: &User,
        user: &User,
    ) -> Result<(), AccountError> {
        if user.id == admin.id {
            return Err(AccountError::Invalid(
                "An admin cannot delete itself".into(),
            ));
        }
        let ended = self
            .store
            .delete_account(&user.id, Vec::new())
            .await
            .map_err(|e| match e {
                StoreError::LastAdmin => {
                    AccountError::Invalid("The last admin cannot be deleted".into())
                }
                other => other.into(),
            })?;
        self.sessions.remove(&ended);
        self.audit(vec![admin_event(
            ctx,
            AuditKind::AdminDelete,
            admin,
            &user.id,
        )])
        .await;
        Ok(())
    }
}
