//! Registration and email verification: creating an account, the single-use verification link
//! and its resend.

use super::{
    audit, blocking, event, fields, parse_json, query_param, random_token, token_hash, ApiRequest,
    ApiResponse,
};
use crate::app::AppState;
use crate::auth::password::{check_policy, normalize_password};
use crate::email::compose;
use crate::error::Error;
use crate::store::models::{Mail, User, Verification, ROLE_USER};
use http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, utoipa::ToSchema)]
struct RegisterBody {
    email: String,
    nickname: String,
    password: String,
    #[serde(default)]
    customer_account: Option<String>,
    passphrase: String,
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
        }
    }
}

/// Validate and hash the fields every new account needs (registration, admin create, CLI).
pub async fn new_account(
    policy: &crate::config::PasswordSettings,
    hasher: &crate::auth::password::Hasher,
    email: &str,
    nickname: &str,
    password: &str,
    passphrase: &str,
    customer_account: Option<&str>,
) -> Result<NewAccount, Error> {
    let email = fields::email(email)?;
    let nickname = fields::nickname(nickname)?;
    let customer_account = fields::customer_account(customer_account.unwrap_or("none"))?;
    fields::password_size(password, policy.max_length)?;
    let password = normalize_password(password);
    check_policy(policy, &password, &[&email, &nickname]).map_err(Error::Invalid)?;
    let passphrase = fields::passphrase(passphrase)?;
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

/// A verification link for `user`'s current address: the mail to send and what to store.
pub(super) fn verification_mail(
    state: &AppState,
    user: &User,
    now: i64,
) -> (Mail, String, Verification) {
    let (token, hash) = random_token();
    let link = format!(
        "{}{}/verify-email?token={}",
        state.config.server.public_url, state.config.api.prefix, token
    );
    let hours = state.config.accounts.verification_ttl.as_secs() / 3600;
    let mail = compose(
        &user.email,
        "Verify your email address",
        &format!(
            "Hello {},\n\nplease confirm your email address by opening this link within {hours} hours:\n\n{link}\n\nIf you did not create this account, ignore this message.\n",
            user.nickname
        ),
        now,
    );
    let v = Verification {
        user_id: user.id.clone(),
        email: user.email.clone(),
        expires_at: now + state.config.accounts.verification_ttl.as_secs() as i64,
    };
    (mail, hash, v)
}

#[utoipa::path(post, path = "/register", tag = "registration", request_body = RegisterBody,
    responses((status = 201, description = "Account created; a verification link is mailed", body = super::openapi::Created), (status = 400, description = "A rule is broken", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn register(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    state.rate_check(
        "registration",
        &state.live().limits.registrations,
        req.client_ip,
    )?;
    let body: RegisterBody = parse_json(&req.body)?;
    let account = match new_account(
        &state.config.passwords,
        &state.hasher,
        &body.email,
        &body.nickname,
        &body.password,
        &body.passphrase,
        body.customer_account.as_deref(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            state
                .metrics
                .registrations
                .with_label_values(&["rejected"])
                .inc();
            return Err(e);
        }
    };
    let now = req.now;
    let user = account.into_user(ROLE_USER, false, false, now);
    let (mail, hash, verification) = verification_mail(state, &user, now);
    let first_admin = state.config.accounts.first_user_admin;
    let created = blocking(state, move |s| {
        Ok(s.create_user(user, first_admin, &[mail], Some((&hash, &verification)))?)
    })
    .await;
    let user = match created {
        Ok(u) => u,
        Err(e) => {
            state
                .metrics
                .registrations
                .with_label_values(&["rejected"])
                .inc();
            let mut ev = event(req, "register", "failure", None);
            ev.detail = Some(e.reason().to_string());
            audit(state, vec![ev]).await;
            return Err(e);
        }
    };
    state.wake_mailer();
    state
        .metrics
        .registrations
        .with_label_values(&["created"])
        .inc();
    let mut ev = event(req, "register", "success", Some(&user.id));
    ev.detail = Some(format!("role={}", user.role));
    audit(state, vec![ev]).await;
    Ok(ApiResponse::with_status(
        StatusCode::CREATED,
        serde_json::json!({ "id": user.id, "nickname": user.nickname, "email": user.email }),
    ))
}

#[utoipa::path(get, path = "/verify-email", tag = "registration",
    params(("token" = String, Query, description = "The token from the emailed link")),
    responses((status = 200, description = "Address verified", body = super::openapi::Message), (status = 400, description = "Unknown, used or expired link", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn verify_email(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let token = query_param(req, "token").unwrap_or_default();
    if token.is_empty() || token.len() > 128 {
        return Err(Error::Invalid(
            "Invalid or expired verification link".into(),
        ));
    }
    let hash = token_hash(&token);
    let now = req.now;
    let verified = blocking(state, move |s| Ok(s.consume_verification(&hash, now)?)).await?;
    match verified {
        Some(user) => {
            audit(
                state,
                vec![event(req, "email_verification", "success", Some(&user.id))],
            )
            .await;
            Ok(ApiResponse::ok(
                serde_json::json!({ "message": "Email verified" }),
            ))
        }
        None => {
            audit(
                state,
                vec![event(req, "email_verification", "failure", None)],
            )
            .await;
            Err(Error::Invalid(
                "Invalid or expired verification link".into(),
            ))
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ResendBody {
    email: String,
}

/// Always answers the same, whether or not the address is registered.
#[utoipa::path(post, path = "/verify-email/resend", tag = "registration", request_body = ResendBody,
    responses((status = 202, description = "Same answer whether or not the address is registered", body = super::openapi::Message), (status = 422, description = "Malformed body", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn resend(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let body: ResendBody = parse_json(&req.body)?;
    let email = fields::email(&body.email)?;
    state.rate_check("resend", &state.live().limits.resend, email.to_lowercase())?;
    let user = blocking(state, move |s| Ok(s.user_by_email(&email)?)).await?;
    if let Some(user) = user.filter(|u| !u.email_verified) {
        let (mail, hash, v) = verification_mail(state, &user, req.now);
        blocking(state, move |s| {
            Ok(s.put_verification(&hash, &v, &[mail])?)
        })
        .await?;
        state.wake_mailer();
        audit(
            state,
            vec![event(req, "verification_resent", "success", Some(&user.id))],
        )
        .await;
    }
    Ok(ApiResponse::with_status(
        StatusCode::ACCEPTED,
        serde_json::json!({ "message": "If the address is registered and not yet verified, a new link has been sent" }),
    ))
}
