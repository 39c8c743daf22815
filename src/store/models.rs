//! The records the store keeps: users, sessions, verification tokens, queued mail, audit
//! events. Plain data, free of redb types.

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
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == ROLE_ADMIN
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

/// One audit log entry. Free text fields are escaped by the JSON encoding, so user-supplied
/// text cannot forge entries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Sequence number, assigned by the store.
    #[serde(default)]
    pub seq: u64,
    /// Unix seconds, UTC.
    pub at: i64,
    pub kind: String,
    pub outcome: String,
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
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Return events with `seq` below this (for paging backwards, newest first).
    pub before_seq: Option<u64>,
    pub limit: usize,
}
