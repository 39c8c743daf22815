//! Login and logout endpoints.

use super::views::{Detail, LoginResponse};
use super::{parse_json, ApiResponse, Call};
use crate::error::Error;
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginBody {
    email: String,
    password: String,
}

#[utoipa::path(post, path = "/login", tag = "sessions", request_body = LoginBody,
    responses((status = 200, description = "A new session and its access token", body = LoginResponse),
        (status = 401, description = "Unknown email or wrong password (indistinguishable)", body = Detail),
        (status = 403, description = "Account locked or email not verified", body = Detail), (status = 422, description = "Malformed body", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn login(call: Call<'_>) -> Result<ApiResponse, Error> {
    let body: LoginBody = parse_json(&call.req.body)?;
    let grant = call
        .state
        .accounts
        .login(&call.ctx, &body.email, &body.password)
        .await?;
    let user = &grant.user;
    Ok(ApiResponse {
        no_store: true,
        ..ApiResponse::ok(serde_json::json!({
            "access_token": grant.access_token,
            "token_type": "bearer",
            "expires_in": grant.expires_in,
            "user": { "id": user.id, "nickname": user.nickname, "email": user.email, "role": user.role },
        }))
    })
}

#[utoipa::path(post, path = "/logout", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, description = "This session ended", body = Detail), (status = 401, description = "No valid token or session", body = Detail)))]
pub async fn logout(call: Call<'_>) -> Result<ApiResponse, Error> {
    let caller = call.caller()?;
    call.state
        .accounts
        .logout(&call.ctx, &caller.identity)
        .await?;
    Ok(ApiResponse::ok(
        serde_json::json!({ "detail": "Successfully logged out" }),
    ))
}
