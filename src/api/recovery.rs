//! Password recovery by passphrase: a new password for the right email and passphrase, all
//! sessions ended, a notification sent. A wrong passphrase and an unknown email look the same.

use super::{audit, blocking, event, fields, parse_json, ApiRequest, ApiResponse};
use crate::app::AppState;
use crate::auth::password::{check_policy, normalize_passphrase, normalize_password};
use crate::email::compose;
use crate::error::Error;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, utoipa::ToSchema)]
struct RecoveryBody {
    email: String,
    passphrase: String,
    new_password: String,
}

const MISMATCH: &str = "Invalid email or passphrase";

#[utoipa::path(post, path = "/recovery", tag = "recovery", request_body = RecoveryBody,
    responses((status = 200, description = "Password replaced; every session ended", body = super::openapi::Message),
        (status = 400, description = "Wrong passphrase or unknown email (indistinguishable), or a weak password", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail), (status = 429, description = "Rate limited", body = super::openapi::Detail)))]
pub async fn recover(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let body: RecoveryBody = parse_json(&req.body)?;
    let policy = &state.config.passwords;
    fields::password_size(&body.new_password, policy.max_length)?;
    if body.passphrase.len() > 1024 {
        return Err(Error::Invalid(MISMATCH.into()));
    }
    let email = body.email.trim().to_string();
    if let Err(throttled) = state.rate_check(
        "recovery",
        &state.live().limits.recovery,
        email.to_lowercase(),
    ) {
        let mut ev = event(req, "recovery", "throttled", None);
        ev.detail = Some("too many attempts for this account".into());
        audit(state, vec![ev]).await;
        return Err(throttled);
    }
    let lookup = email.clone();
    let user = if email.len() <= 254 {
        blocking(state, move |s| Ok(s.user_by_email(&lookup)?)).await?
    } else {
        None
    };
    let verified = state
        .hasher
        .verify(
            normalize_passphrase(&body.passphrase),
            user.as_ref().map(|u| u.passphrase_hash.clone()),
        )
        .await?;
    let Some(user) = user.filter(|_| verified.ok) else {
        let mut ev = event(req, "recovery", "failure", None);
        ev.detail = Some("mismatch".into());
        audit(state, vec![ev]).await;
        return Err(Error::Invalid(MISMATCH.into()));
    };
    let password = normalize_password(&body.new_password);
    check_policy(policy, &password, &[&user.email, &user.nickname]).map_err(Error::Invalid)?;
    let hash = state.hasher.hash(password).await?;
    let now = req.now;
    let mail = compose(
        &user.email,
        "Your password was reset",
        &format!(
            "Hello {},\n\nthe password of your account was reset with your recovery passphrase, and every session was signed out.\nIf this was not you, contact your administrator at once.\n",
            user.nickname
        ),
        now,
    );
    let id = user.id.clone();
    blocking(state, move |s| {
        s.update_user::<Error>(&id, &[mail], |u| {
            u.password_hash = hash;
            u.updated_at = now;
            Ok(())
        })?;
        Ok(())
    })
    .await?;
    state.revoke_sessions(&user.id, None).await?;
    state.wake_mailer();
    audit(
        state,
        vec![event(req, "recovery", "success", Some(&user.id))],
    )
    .await;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "Password updated successfully" }),
    ))
}
