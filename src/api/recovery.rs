//! The recovery endpoint: a new password for the right email and passphrase.

use super::views::{Detail, Message};
use super::{parse_json, ApiResponse, Call};
use crate::error::Error;
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
struct RecoveryBody {
    email: String,
    passphrase: String,
    new_password: String,
}

#[utoipa::path(post, path = "/recovery", tag = "recovery", request_body = RecoveryBody,
    responses((status = 200, description = "Password replaced; every session ended", body = Message),
        (status = 400, description = "Wrong passphrase or unknown email (indistinguishable), or a weak password", body = Detail), (status = 422, description = "Malformed body", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn recover(call: Call<'_>) -> Result<ApiResponse, Error> {
    let body: RecoveryBody = parse_json(&call.req.body)?;
    call.state
        .accounts
        .recover(&call.ctx, &body.email, &body.passphrase, &body.new_password)
        .await?;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "Password updated successfully" }),
    ))
}
