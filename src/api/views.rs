//! What the API answers with: the JSON views of accounts, and the response shapes the OpenAPI
//! document describes.

use crate::accounts::Accounts;
use crate::store::models::{AuditEvent, User};
use serde::Serialize;
use utoipa::ToSchema;

/// `{"detail": "…"}`: every error.
#[derive(Serialize, ToSchema)]
pub struct Detail {
    pub detail: String,
}

/// `{"message": "…"}`.
#[derive(Serialize, ToSchema)]
pub struct Message {
    pub message: String,
}

/// Answer of a registration.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub id: String,
    pub nickname: String,
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginUser {
    pub id: String,
    pub nickname: String,
    pub email: String,
    pub role: String,
}

/// Answer of a login (sent with `Cache-Control: no-store`).
#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
    pub user: LoginUser,
}

/// A user as the API shows it; never a hash or a passphrase.
#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub nickname: String,
    pub customer_account: String,
    /// `user` or `admin`.
    pub role: String,
    pub lock: bool,
    pub email_verified: bool,
    /// Unix seconds.
    pub created_at: i64,
    pub is_logged_in: bool,
    /// Unix seconds of the last activity of a live session.
    pub last_seen: Option<i64>,
    /// Time since `last_seen` as the original service wrote it: `5 sec`, `1 min 5 sec`,
    /// `2 hour 0 min 7 sec`.
    pub idle_duration: Option<String>,
}

/// Answer of `/verify`.
#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    pub id: String,
    pub email: String,
    pub nickname: String,
    pub role: String,
    pub valid: bool,
    pub lock: bool,
    pub customer_account: String,
}

/// A page of audit events, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<u64>,
}

/// A number of seconds the way the original service wrote `idle_duration` (its clients parse
/// it): from the largest unit present down to seconds — `5 sec`, `1 min 5 sec`,
/// `2 hour 0 min 7 sec`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h} hour {m} min {s} sec")
    } else if m > 0 {
        format!("{m} min {s} sec")
    } else {
        format!("{s} sec")
    }
}

/// The public view of a user (never a hash), with its activity.
pub fn user_view(accounts: &Accounts, user: &User, now: i64) -> serde_json::Value {
    let last_seen = accounts.last_seen(&user.id, now);
    serde_json::json!({
        "id": user.id,
        "email": user.email,
        "nickname": user.nickname,
        "customer_account": user.customer_account,
        "role": user.role,
        "lock": user.locked,
        "email_verified": user.email_verified,
        "created_at": user.created_at,
        "is_logged_in": last_seen.is_some(),
        "last_seen": last_seen,
        "idle_duration": last_seen.map(|seen| human_duration(now - seen)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(-3), "0 sec");
        assert_eq!(human_duration(5), "5 sec");
        assert_eq!(human_duration(65), "1 min 5 sec");
        assert_eq!(human_duration(120), "2 min 0 sec");
        assert_eq!(human_duration(3725), "1 hour 2 min 5 sec");
        assert_eq!(human_duration(90_007), "25 hour 0 min 7 sec");
    }
}
