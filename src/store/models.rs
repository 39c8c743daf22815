//! The records the store keeps (users, sessions, verification links, queued mail, audit events)
//! and the account change set every backend applies the same way. Plain data, free of any
//! database's types.

use serde::{Deserialize, Serialize};

pub const ROLE_USER: &str = "user";
pub const ROLE_ADMIN: &str = "admin";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    /// Opaque random id (UUID v4, simple form).
    pub id: String,
    pub email: String,
    pub nickname: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// argon2id PHC string of the normalized recovery passphrase.
    pub passphrase_hash: String,
    pub customer_account: String,
    pub role: String,
    pub locked: bool,
    pub email_verified: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped in the same transaction as every change that ends the user's sessions (password,
    /// role, lock); a session is opened only if it is still the value read before the password
    /// was checked. Records written before it existed read as 0.
    #[serde(default)]
    pub security_stamp: u64,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == ROLE_ADMIN
    }

    /// An admin who can act: counted by the last-admin rule.
    pub fn is_active_admin(&self) -> bool {
        self.is_admin() && !self.locked
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    /// The access token's expiry: the session ends then at the latest.
    pub expires_at: i64,
    /// Last activity as last written behind; the live value is in memory.
    pub last_seen: i64,
}

/// What a verification link proves, stored under the SHA-256 of its token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verification {
    pub user_id: String,
    /// The address the link was sent to; verifying a changed address needs a new link.
    pub email: String,
    pub expires_at: i64,
}

/// An email waiting to be sent; written in the same transaction as the change it reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
    pub attempts: u32,
    pub next_attempt_at: i64,
}

/// What an audit event records.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Register,
    EmailVerification,
    VerificationResent,
    Login,
    Logout,
    Recovery,
    AccountUpdate,
    AccountDelete,
    AdminCreate,
    AdminUpdate,
    AdminDelete,
    Verify,
    ServiceTokenRejected,
}

impl AuditKind {
    pub const ALL: [AuditKind; 13] = [
        AuditKind::Register,
        AuditKind::EmailVerification,
        AuditKind::VerificationResent,
        AuditKind::Login,
        AuditKind::Logout,
        AuditKind::Recovery,
        AuditKind::AccountUpdate,
        AuditKind::AccountDelete,
        AuditKind::AdminCreate,
        AuditKind::AdminUpdate,
        AuditKind::AdminDelete,
        AuditKind::Verify,
        AuditKind::ServiceTokenRejected,
    ];

    /// The name stored and shown (`login`, `admin_update`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Register => "register",
            AuditKind::EmailVerification => "email_verification",
            AuditKind::VerificationResent => "verification_resent",
            AuditKind::Login => "login",
            AuditKind::Logout => "logout",
            AuditKind::Recovery => "recovery",
            AuditKind::AccountUpdate => "account_update",
            AuditKind::AccountDelete => "account_delete",
            AuditKind::AdminCreate => "admin_create",
            AuditKind::AdminUpdate => "admin_update",
            AuditKind::AdminDelete => "admin_delete",
            AuditKind::Verify => "verify",
            AuditKind::ServiceTokenRejected => "service_token_rejected",
        }
    }

    pub fn parse(name: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// How the audited action ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Throttled,
}

/// One audit log entry. Free text fields are escaped by the JSON encoding, so user-supplied
/// text cannot forge entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Sequence number, assigned by the store.
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds, UTC.
    pub at: i64,
    pub kind: AuditKind,
    pub outcome: Outcome,
    /// The user the event is about, if any.
    pub user_id: Option<String>,
    /// Who acted, when not the user (an admin, a service).
    pub actor: Option<String>,
    pub request_id: String,
    pub client_ip: String,
    /// A short reason or detail; never a secret.
    pub detail: Option<String>,
}

/// Audit query filters.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<String>,
    pub kind: Option<AuditKind>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Return events with `seq` below this (for paging backwards, newest first).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

impl AuditFilter {
    pub fn matches(&self, e: &AuditEvent) -> bool {
        !(self.until.is_some_and(|u| e.at > u)
            || self
                .user_id
                .as_ref()
                .is_some_and(|u| e.user_id.as_deref() != Some(u.as_str()))
            || self.kind.is_some_and(|k| e.kind != k))
    }
}

/// A change to one account. Every backend applies it with `apply` inside one transaction, then
/// enforces what `apply` reports: uniqueness of a new email or nickname, the last-admin rule,
/// and the end of the user's sessions (with a new security stamp) in that same transaction.
#[derive(Debug, Clone, Default)]
pub struct AccountChange {
    pub nickname: Option<String>,
    pub email: Option<String>,
    /// With a new email: whether the new address counts as verified.
    pub email_verified: Option<bool>,
    pub customer_account: Option<String>,
    pub password_hash: Option<String>,
    pub passphrase_hash: Option<String>,
    pub role: Option<String>,
    pub locked: Option<bool>,
    /// The one session a password change leaves open (the caller's own, in self-service).
    pub keep_session: Option<String>,
    /// A verification link to store with the change (token hash, what it proves).
    pub verification: Option<(String, Verification)>,
    /// Mail queued in the same transaction.
    pub mails: Vec<Mail>,
    pub now: i64,
}

/// What applying an `AccountChange` to a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeEffects {
    /// The password, role or lock changed: the stamp was bumped and sessions must end.
    pub ends_sessions: bool,
    /// Only the password changed among those: `keep_session` may stay.
    pub password_only: bool,
    /// The user was an active admin and no longer is: another active admin must remain.
    pub removes_admin: bool,
    /// The email or nickname changed: the unique indexes must follow.
    pub email_changed: bool,
    pub nickname_changed: bool,
}

/// Emails are unique regardless of case.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Nicknames are unique regardless of case.
pub fn nickname_key(nickname: &str) -> String {
    nickname.trim().to_lowercase()
}

impl AccountChange {
    /// Apply the change to `user` (the current record) and report what the store must enforce.
    pub fn apply(&self, user: &mut User) -> ChangeEffects {
        let was_active_admin = user.is_active_admin();
        let old_email = email_key(&user.email);
        let old_nickname = nickname_key(&user.nickname);
        if let Some(n) = &self.nickname {
            user.nickname = n.clone();
        }
        if let Some(e) = &self.email {
            if email_key(e) != old_email {
                user.email = e.clone();
                if let Some(verified) = self.email_verified {
                    user.email_verified = verified;
                }
            }
        }
        if let Some(c) = &self.customer_account {
            user.customer_account = c.clone();
        }
        if let Some(h) = &self.passphrase_hash {
            user.passphrase_hash = h.clone();
        }
        let password_changed = self.password_hash.is_some();
        if let Some(h) = &self.password_hash {
            user.password_hash = h.clone();
        }
        let role_changed = self.role.as_ref().is_some_and(|r| *r != user.role);
        if let Some(r) = &self.role {
            user.role = r.clone();
        }
        let locking = self.locked == Some(true) && !user.locked;
        if let Some(l) = self.locked {
            user.locked = l;
        }
        let ends_sessions = password_changed || role_changed || locking;
        if ends_sessions {
            user.security_stamp = user.security_stamp.wrapping_add(1);
        }
        user.updated_at = self.now;
        ChangeEffects {
            ends_sessions,
            password_only: ends_sessions && !role_changed && !locking,
            removes_admin: was_active_admin && !user.is_active_admin(),
            email_changed: email_key(&user.email) != old_email,
            nickname_changed: nickname_key(&user.nickname) != old_nickname,
        }
    }

    /// The session that survives this change, given its effects.
    pub fn surviving_session(&self, effects: &ChangeEffects) -> Option<&str> {
        if effects.password_only {
            self.keep_session.as_deref()
        } else {
            None
        }
    }
}

/// Who a session belongs to, as the live-session table needs it (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    pub email: String,
    pub nickname: String,
    pub role: String,
}

impl SessionOwner {
    pub fn of(user: &User) -> SessionOwner {
        SessionOwner {
            email: user.email.clone(),
            nickname: user.nickname.clone(),
            role: user.role.clone(),
        }
    }
}

/// A session as it is loaded: the record and who it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub session: Session,
    pub owner: SessionOwner,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: &str) -> User {
        User {
            id: "u".into(),
            email: "a@example.com".into(),
            nickname: "a".into(),
            password_hash: "h".into(),
            passphrase_hash: "p".into(),
            customer_account: "none".into(),
            role: role.into(),
            locked: false,
            email_verified: true,
            created_at: 0,
            updated_at: 0,
            security_stamp: 7,
        }
    }

    #[test]
    fn revocation_worthy_changes_bump_the_stamp() {
        for change in [
            AccountChange {
                password_hash: Some("new".into()),
                ..Default::default()
            },
            AccountChange {
                role: Some(ROLE_ADMIN.into()),
                ..Default::default()
            },
            AccountChange {
                locked: Some(true),
                ..Default::default()
            },
        ] {
            let mut u = user(ROLE_USER);
            let effects = change.apply(&mut u);
            assert!(effects.ends_sessions, "{change:?}");
            assert_eq!(u.security_stamp, 8);
        }
        let mut u = user(ROLE_USER);
        let effects = AccountChange {
            nickname: Some("b".into()),
            role: Some(ROLE_USER.into()),
            locked: Some(false),
            email: Some("A@EXAMPLE.com".into()),
            email_verified: Some(false),
            ..Default::default()
        }
        .apply(&mut u);
        assert!(!effects.ends_sessions);
        assert!(effects.nickname_changed && !effects.email_changed);
        assert_eq!(u.email, "a@example.com", "a case change is no change");
        assert!(u.email_verified);
        assert_eq!(u.security_stamp, 7);
    }

    #[test]
    fn demoting_or_locking_an_active_admin_removes_an_admin() {
        for change in [
            AccountChange {
                role: Some(ROLE_USER.into()),
                ..Default::default()
            },
            AccountChange {
                locked: Some(true),
                ..Default::default()
            },
        ] {
            let mut u = user(ROLE_ADMIN);
            let effects = change.apply(&mut u);
            assert!(effects.removes_admin && !effects.password_only);
            assert_eq!(change.surviving_session(&effects), None);
        }
        let mut u = user(ROLE_ADMIN);
        let change = AccountChange {
            password_hash: Some("x".into()),
            keep_session: Some("s".into()),
            ..Default::default()
        };
        let effects = change.apply(&mut u);
        assert!(!effects.removes_admin && effects.password_only);
        assert_eq!(change.surviving_session(&effects), Some("s"));
    }

    #[test]
    fn audit_kinds_round_trip_by_name() {
        for k in AuditKind::ALL {
            assert_eq!(AuditKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(AuditKind::parse("nope"), None);
    }
}
