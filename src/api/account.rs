//! Self-service endpoints: reading, changing and deleting one's own account. Anything in the
//! body besides the listed fields (role, lock, id, verification state) is ignored.

use super::views::{user_view, Detail, Message, UserView};
use super::{parse_json, ApiResponse, Call};
use crate::accounts::ProfileInput;
use crate::error::Error;
use serde::Deserialize;

#[utoipa::path(get, path = "/my_account/", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, description = "The caller's account", body = UserView), (status = 401, description = "No valid token or session", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn show(call: Call<'_>) -> Result<ApiResponse, Error> {
    let caller = call.caller()?;
    Ok(ApiResponse::ok(user_view(
        &call.state.accounts,
        &caller.user,
        call.req.now,
    )))
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
    responses((status = 200, description = "Updated", body = Message), (status = 400, description = "A rule is broken", body = Detail), (status = 401, description = "No valid token or session", body = Detail), (status = 422, description = "Malformed body", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn update(call: Call<'_>) -> Result<ApiResponse, Error> {
    let caller = call.caller()?;
    let body: UpdateBody = parse_json(&call.req.body)?;
    call.state
        .accounts
        .update_profile(
            &call.ctx,
            &caller.identity,
            &caller.user,
            ProfileInput {
                nickname: body.nickname.as_deref(),
                email: body.email.as_deref(),
                password: body.password.as_deref(),
                customer_account: body.customer_account.as_deref(),
                passphrase: body.passphrase.as_deref(),
                current_password: body.current_password.as_deref(),
            },
        )
        .await?;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "Account updated successfully" }),
    ))
}

#[utoipa::path(delete, path = "/my_account/delete", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, description = "Account deleted", body = Detail), (status = 400, description = "A rule is broken", body = Detail), (status = 401, description = "No valid token or session", body = Detail), (status = 429, description = "Rate limited", body = Detail)))]
pub async fn delete(call: Call<'_>) -> Result<ApiResponse, Error> {
    let caller = call.caller()?;
    call.state
        .accounts
        .delete_own(&call.ctx, &caller.user)
        .await?;
    Ok(ApiResponse::ok(
        serde_json::json!({ "detail": "Account deleted" }),
    ))
}
