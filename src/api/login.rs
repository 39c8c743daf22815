//! Login (opening a session and issuing its token) and logout (ending it).

use super::{audit, blocking, event, parse_json, ApiRequest, ApiResponse};
use crate::app::AppState;
use crate::auth::password::normalize_password;
use crate::auth::tokens::Subject;
use crate::error::Error;
use crate::store::models::Session;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginBody {
    email: String,
    password: String,
}

#[utoipa::path(post, path = "/login", tag = "sessions", request_body = LoginBody,
    responses((status = 200, description = "A new session and its access token", body = super::openapi::LoginResponse),
        (status = 401, description = "Unknown email or wrong password (indistinguishable)", body = super::openapi::Detail),
        (status = 403, description = "Account locked or email not verified", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn login(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let body: LoginBody = parse_json(&req.body)?;
    let max = state.config.passwords.max_length;
    if body.password.len() > max * 4 || body.password.chars().count() > max {
        return Err(Error::Invalid(format!(
            "Password must be at most {max} characters"
        )));
    }
    let email = body.email.trim().to_string();
    let account = email.to_lowercase();
    if let Some(wait) = state.login_guard.blocked_for(&account, req.now) {
        state
            .metrics
            .rate_limits
            .with_label_values(&["login_account", "throttle"])
            .inc();
        state.metrics.logins.with_label_values(&["throttled"]).inc();
        let mut ev = event(req, "login", "throttled", None);
        ev.detail = Some(format!("retry_after={wait}"));
        audit(state, vec![ev]).await;
        return Err(Error::Throttled(crate::auth::limiter::Decision {
            allowed: false,
            limit: state.config.limits.login_failures,
            remaining: 0,
            reset_secs: wait,
            retry_after_secs: wait,
        }));
    }
    state
        .metrics
        .rate_limits
        .with_label_values(&["login_account", "allow"])
        .inc();
    let user = if email.len() <= 254 {
        let lookup = email.clone();
        blocking(state, move |s| Ok(s.user_by_email(&lookup)?)).await?
    } else {
        None
    };
    let password = normalize_password(&body.password);
    let verified = state
        .hasher
        .verify(
            password.clone(),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await?;
    let Some(user) = user.filter(|_| verified.ok) else {
        state
            .metrics
            .logins
            .with_label_values(&["bad_credentials"])
            .inc();
        let blocked = state.login_guard.failure(&account, req.now);
        let mut ev = event(req, "login", "failure", None);
        ev.detail = Some(match blocked {
            Some(secs) => format!("bad_credentials; account throttled for {secs}s"),
            None => "bad_credentials".into(),
        });
        audit(state, vec![ev]).await;
        return Err(Error::BadCredentials);
    };
    state.login_guard.success(&account);
    let refuse = if user.locked {
        Some(Error::AccountLocked)
    } else if state.config.accounts.require_email_verification && !user.email_verified {
        Some(Error::EmailNotVerified)
    } else {
        None
    };
    if let Some(err) = refuse {
        state
            .metrics
            .logins
            .with_label_values(&[err.reason()])
            .inc();
        let mut ev = event(req, "login", "failure", Some(&user.id));
        ev.detail = Some(err.reason().into());
        audit(state, vec![ev]).await;
        return Err(err);
    }
    if verified.needs_rehash {
        let fresh = state.hasher.hash(password).await?;
        let id = user.id.clone();
        let now = req.now;
        let upgraded = blocking(state, move |s| {
            s.update_user::<Error>(&id, &[], |u| {
                u.password_hash = fresh;
                u.updated_at = now;
                Ok(())
            })
            .map(|_| ())
        })
        .await;
        if let Err(e) = upgraded {
            tracing::warn!(error = %e, "cannot upgrade password hash");
        }
    }
    let now = req.now;
    let session = Session {
        id: uuid::Uuid::new_v4().simple().to_string(),
        user_id: user.id.clone(),
        created_at: now,
        expires_at: now + state.tokens.ttl_secs(),
        last_seen: now,
    };
    let token = state.tokens.issue(
        &Subject {
            user_id: &user.id,
            email: &user.email,
            nickname: &user.nickname,
            role: &user.role,
            session_id: &session.id,
        },
        now,
    )?;
    let stored = session.clone();
    blocking(state, move |s| Ok(s.open_session(&stored)?)).await?;
    state.sessions.insert(&session);
    state.metrics.logins.with_label_values(&["success"]).inc();
    audit(state, vec![event(req, "login", "success", Some(&user.id))]).await;
    Ok(ApiResponse {
        no_store: true,
        ..ApiResponse::ok(serde_json::json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": state.tokens.ttl_secs(),
            "user": { "id": user.id, "nickname": user.nickname, "email": user.email, "role": user.role },
        }))
    })
}

#[utoipa::path(post, path = "/logout", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, description = "This session ended", body = super::openapi::Detail), (status = 401, description = "No valid token or session", body = super::openapi::Detail)))]
pub async fn logout(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let identity = state.authenticate(&req.headers, req.now)?;
    let sid = identity.session_id.clone();
    blocking(state, move |s| Ok(s.end_session(&sid)?)).await?;
    state
        .sessions
        .remove(std::slice::from_ref(&identity.session_id));
    audit(
        state,
        vec![event(req, "logout", "success", Some(&identity.user_id))],
    )
    .await;
    Ok(ApiResponse::ok(
        serde_json::json!({ "detail": "Successfully logged out" }),
    ))
}
