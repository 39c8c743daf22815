//! Self-service: reading, changing and deleting one's own account. Changing the email,
//! password or passphrase needs the current password; role, lock, id and verification state
//! cannot be changed here whatever the body says.

use super::register::verification_mail;
use super::{
    audit, authenticated, blocking, event, fields, parse_json, user_view, ApiRequest, ApiResponse,
};
use crate::app::AppState;
use crate::auth::password::normalize_password;
use crate::email::compose;
use crate::error::Error;
use serde::Deserialize;
use std::sync::Arc;

#[utoipa::path(get, path = "/my_account/", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, description = "The caller's account", body = super::openapi::UserView), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn show(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let (_, user) = authenticated(state, req).await?;
    Ok(ApiResponse::ok(user_view(state, &user, req.now)))
}

/// Fields a user may change; anything else in the body is ignored.
#[derive(Deserialize, utoipa::ToSchema)]
struct UpdateBody {
    nickname: Option<String>,
    email: Option<String>,
    password: Option<String>,
    customer_account: Option<String>,
    passphrase: Option<String>,
    current_password: Option<String>,
}

#[utoipa::path(put, path = "/my_account/", tag = "self-service", security(("bearer" = [])), request_body = UpdateBody,
    responses((status = 200, description = "Updated", body = super::openapi::Message), (status = 400, description = "A rule is broken", body = super::openapi::Detail), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn update(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let (identity, user) = authenticated(state, req).await?;
    let body: UpdateBody = parse_json(&req.body)?;
    let policy = &state.config.passwords;
    let fields::ProfileChanges {
        nickname,
        email,
        customer_account,
        passphrase,
        password,
    } = fields::ProfileChanges::validate(
        policy,
        &user,
        body.nickname.as_deref(),
        body.email.as_deref(),
        body.customer_account.as_deref(),
        body.passphrase.as_deref(),
        body.password.as_deref(),
    )?;
    let email_changes = email
        .as_ref()
        .is_some_and(|e| !e.eq_ignore_ascii_case(&user.email));
    if email_changes || password.is_some() || passphrase.is_some() {
        let current = body.current_password.as_deref().ok_or_else(|| {
            Error::Invalid(
                "current_password is required to change the email, password or passphrase".into(),
            )
        })?;
        fields::password_size(current, policy.max_length)
            .map_err(|_| Error::Invalid("Current password is incorrect".into()))?;
        let ok = state
            .hasher
            .verify(
                normalize_password(current),
                Some(user.password_hash.clone()),
            )
            .await?
            .ok;
        if !ok {
            let mut ev = event(req, "account_update", "failure", Some(&user.id));
            ev.detail = Some("wrong_current_password".into());
            audit(state, vec![ev]).await;
            return Err(Error::Invalid("Current password is incorrect".into()));
        }
    }
    let password_hash = state.hasher.hash_opt(password).await?;
    let passphrase_hash = state.hasher.hash_opt(passphrase).await?;
    let now = req.now;
    let mut mails = Vec::new();
    let mut changed = Vec::new();
    if password_hash.is_some() {
        changed.push("password");
        mails.push(compose(
            &user.email,
            "Your password was changed",
            &format!("Hello {},\n\nthe password of your account was changed and your other sessions were signed out.\nIf this was not you, recover your account at once.\n", user.nickname),
            now,
        ));
    }
    if passphrase_hash.is_some() {
        changed.push("passphrase");
    }
    let mut verification = None;
    if email_changes {
        changed.push("email");
        mails.push(compose(
            &user.email,
            "Your email address was changed",
            &format!("Hello {},\n\nthe email address of your account was changed. If this was not you, contact your administrator.\n", user.nickname),
            now,
        ));
        let mut moved = user.clone();
        moved.email = email.clone().unwrap_or_default();
        let (mail, hash, v) = verification_mail(state, &moved, now);
        mails.push(mail);
        verification = Some((hash, v));
    }
    if nickname.is_some() {
        changed.push("nickname");
    }
    if customer_account.is_some() {
        changed.push("customer_account");
    }
    let id = user.id.clone();
    blocking(state, move |s| {
        s.update_user::<Error>(&id, &mails, |u| {
            fields::apply_profile(
                u,
                nickname,
                customer_account,
                password_hash,
                passphrase_hash,
            );
            if email_changes {
                u.email = email.unwrap_or_default();
                u.email_verified = false;
            }
            u.updated_at = now;
            Ok(())
        })?;
        if let Some((hash, v)) = verification {
            s.put_verification(&hash, &v, &[])?;
        }
        Ok(())
    })
    .await?;
    if changed.contains(&"password") {
        state
            .revoke_sessions(&user.id, Some(&identity.session_id))
            .await?;
    }
    state.wake_mailer();
    let mut ev = event(req, "account_update", "success", Some(&user.id));
    ev.detail = Some(changed.join(","));
    audit(state, vec![ev]).await;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "Account updated successfully" }),
    ))
}

#[utoipa::path(delete, path = "/my_account/delete", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, description = "Account deleted", body = super::openapi::Detail), (status = 400, description = "A rule is broken", body = super::openapi::Detail), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn delete(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let (_, user) = authenticated(state, req).await?;
    if user.is_admin() {
        let id = user.id.clone();
        let others = blocking(state, move |s| Ok(s.count_active_admins_except(&id)?)).await?;
        if others == 0 {
            return Err(Error::Invalid("The last admin cannot delete itself".into()));
        }
    }
    let mail = compose(
        &user.email,
        "Your account was deleted",
        &format!(
            "Hello {},\n\nyour account and its data were deleted.\n",
            user.nickname
        ),
        req.now,
    );
    let id = user.id.clone();
    let ended = blocking(state, move |s| Ok(s.delete_user(&id, &[mail])?)).await?;
    state.sessions.remove(&ended);
    state.wake_mailer();
    audit(
        state,
        vec![event(req, "account_delete", "success", Some(&user.id))],
    )
    .await;
    Ok(ApiResponse::ok(
        serde_json::json!({ "detail": "Account deleted" }),
    ))
}
