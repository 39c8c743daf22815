//! Registration and email verification endpoints.

use super::views::{Created, Detail, Message};
use super::{parse_json, query_param, ApiResponse, Call};
use crate::accounts::Registration;
use crate::error::Error;
use http::StatusCode;
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
struct RegisterBody {
    email: String,
    nickname: String,
    password: String,
    #[serde(default)]
    customer_account: Option<String>,
    passphrase: String,
}

#[utoipa::path(post, path = "/register", tag = "registration", request_body = RegisterBody,
    responses((status = 201, description = "Account created; a verification link is mailed", body = Created), (status = 400, description = "A rule is broken", body = Detail), (status = 422, description = "Malformed body", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn register(call: Call<'_>) -> Result<ApiResponse, Error> {
    let body: RegisterBody = parse_json(&call.req.body)?;
    let user = call
        .state
        .accounts
        .register(
            &call.ctx,
            Registration {
                email: &body.email,
                nickname: &body.nickname,
                password: &body.password,
                passphrase: &body.passphrase,
                customer_account: body.customer_account.as_deref(),
            },
        )
        .await?;
    Ok(ApiResponse::with_status(
        StatusCode::CREATED,
        serde_json::json!({ "id": user.id, "nickname": user.nickname, "email": user.email }),
    ))
}

#[utoipa::path(get, path = "/verify-email", tag = "registration",
    params(("token" = String, Query, description = "The token from the emailed link")),
    responses((status = 200, description = "Address verified", body = Message), (status = 400, description = "Unknown, used or expired link", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn verify_email(call: Call<'_>) -> Result<ApiResponse, Error> {
    let token = query_param(call.req, "token").unwrap_or_default();
    call.state.accounts.verify_email(&call.ctx, &token).await?;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "Email verified" }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ResendBody {
    email: String,
}

/// Always answers the same, whether or not the address is registered.
#[utoipa::path(post, path = "/verify-email/resend", tag = "registration", request_body = ResendBody,
    responses((status = 202, description = "Same answer whether or not the address is registered", body = Message), (status = 422, description = "Malformed body", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn resend(call: Call<'_>) -> Result<ApiResponse, Error> {
    let body: ResendBody = parse_json(&call.req.body)?;
    call.state
        .accounts
        .resend_verification(&call.ctx, &body.email)
        .await?;
    Ok(ApiResponse::with_status(
        StatusCode::ACCEPTED,
        serde_json::json!({ "message": "If the address is registered and not yet verified, a new link has been sent" }),
    ))
}
