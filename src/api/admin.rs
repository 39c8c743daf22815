//! Administration endpoints (admins only): accounts and the audit log.

use super::views::{user_view, AuditPage, Detail, Message, UserView};
use super::{parse_json, query_param, ApiRequest, ApiResponse, Call};
use crate::accounts::{AdminChanges, NewUser, Registration};
use crate::error::Error;
use crate::store::models::{AuditFilter, AuditKind};
use http::StatusCode;
use serde::Deserialize;

fn number(req: &ApiRequest, name: &str, default: u64, max: u64) -> Result<u64, Error> {
    match query_param(req, name) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(Error::Unprocessable(format!(
                "{name} must be an integer from 0 to {max}"
            ))),
        },
    }
}

/// The `{id}` of the path (the table only routes here with one).
fn target<'a>(call: &Call<'a>) -> &'a str {
    call.id.unwrap_or_default()
}

#[utoipa::path(get, path = "/accounts_management/", tag = "administration", security(("bearer" = [])),
    params(("skip" = Option<u64>, Query, description = "Accounts to skip"), ("limit" = Option<u64>, Query, description = "At most accounts.max_page_size")),
    responses((status = 200, description = "Accounts in id order", body = Vec<UserView>), (status = 401, description = "No valid token or session", body = Detail), (status = 403, description = "Not an admin", body = Detail), (status = 422, description = "Malformed body", body = Detail)))]
pub async fn list(call: Call<'_>) -> Result<ApiResponse, Error> {
    let max = call.state.config.accounts.max_page_size as u64;
    let skip = number(call.req, "skip", 0, u64::from(u32::MAX))? as usize;
    let limit = number(call.req, "limit", max, max)? as usize;
    let accounts = &call.state.accounts;
    let users = accounts.list_users(skip, limit).await?;
    let views: Vec<_> = users
        .iter()
        .map(|u| user_view(accounts, u, call.req.now))
        .collect();
    Ok(ApiResponse::ok(serde_json::Value::Array(views)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CreateBody {
    email: String,
    nickname: String,
    password: String,
    passphrase: String,
    #[serde(default)]
    customer_account: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    lock: Option<bool>,
}

#[utoipa::path(post, path = "/accounts_management/", tag = "administration", security(("bearer" = [])), request_body = CreateBody,
    responses((status = 201, description = "Created", body = UserView), (status = 400, description = "A rule is broken", body = Detail), (status = 401, description = "No valid token or session", body = Detail), (status = 403, description = "Not an admin", body = Detail), (status = 422, description = "Malformed body", body = Detail)))]
pub async fn create(call: Call<'_>) -> Result<ApiResponse, Error> {
    let admin = &call.caller()?.user;
    let body: CreateBody = parse_json(&call.req.body)?;
    let accounts = &call.state.accounts;
    let user = accounts
        .create_user(
            &call.ctx,
            admin,
            NewUser {
                account: Registration {
                    email: &body.email,
                    nickname: &body.nickname,
                    password: &body.password,
                    passphrase: &body.passphrase,
                    customer_account: body.customer_account.as_deref(),
                },
                role: body.role.as_deref(),
                lock: body.lock,
            },
        )
        .await?;
    Ok(ApiResponse::with_status(
        StatusCode::CREATED,
        user_view(accounts, &user, call.req.now),
    ))
}

#[utoipa::path(get, path = "/accounts_management/{id}", tag = "administration", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "The account", body = UserView), (status = 401, description = "No valid token or session", body = Detail), (status = 403, description = "Not an admin", body = Detail), (status = 404, description = "No such user", body = Detail)))]
pub async fn show(call: Call<'_>) -> Result<ApiResponse, Error> {
    let accounts = &call.state.accounts;
    let user = accounts.user(target(&call)).await?;
    Ok(ApiResponse::ok(user_view(accounts, &user, call.req.now)))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct AdminUpdateBody {
    nickname: Option<String>,
    email: Option<String>,
    password: Option<String>,
    customer_account: Option<String>,
    passphrase: Option<String>,
    role: Option<String>,
    lock: Option<bool>,
}

#[utoipa::path(put, path = "/accounts_management/{id}", tag = "administration", security(("bearer" = [])), request_body = AdminUpdateBody,
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "Updated; role, lock and password changes end the user's sessions", body = Message), (status = 400, description = "A rule is broken", body = Detail), (status = 401, description = "No valid token or session", body = Detail), (status = 403, description = "Not an admin", body = Detail), (status = 404, description = "No such user", body = Detail), (status = 422, description = "Malformed body", body = Detail)))]
pub async fn update(call: Call<'_>) -> Result<ApiResponse, Error> {
    let admin = &call.caller()?.user;
    let accounts = &call.state.accounts;
    // An unknown account is 404 whatever the body says.
    let user = accounts.user(target(&call)).await?;
    let body: AdminUpdateBody = parse_json(&call.req.body)?;
    accounts
        .update_user(
            &call.ctx,
            admin,
            &user,
            AdminChanges {
                nickname: body.nickname.as_deref(),
                email: body.email.as_deref(),
                password: body.password.as_deref(),
                customer_account: body.customer_account.as_deref(),
                passphrase: body.passphrase.as_deref(),
                role: body.role.as_deref(),
                lock: body.lock,
            },
        )
        .await?;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "User updated successfully" }),
    ))
}

#[utoipa::path(delete, path = "/accounts_management/{id}", tag = "administration", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "Deleted", body = Message), (status = 400, description = "A rule is broken", body = Detail), (status = 401, description = "No valid token or session", body = Detail), (status = 403, description = "Not an admin", body = Detail), (status = 404, description = "No such user", body = Detail)))]
pub async fn delete(call: Call<'_>) -> Result<ApiResponse, Error> {
    let admin = &call.caller()?.user;
    let accounts = &call.state.accounts;
    let user = accounts.user(target(&call)).await?;
    accounts.delete_user(&call.ctx, admin, &user).await?;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "User deleted successfully" }),
    ))
}

/// `GET /audit?user=&kind=&since=&until=&before=&limit=`, newest first.
#[utoipa::path(get, path = "/audit", tag = "administration", security(("bearer" = [])),
    params(("user" = Option<String>, Query, description = "User id"), ("kind" = Option<AuditKind>, Query, description = "Event kind"),
        ("since" = Option<i64>, Query, description = "Unix seconds"), ("until" = Option<i64>, Query, description = "Unix seconds"),
        ("before" = Option<u64>, Query, description = "Sequence number to page before"), ("limit" = Option<u64>, Query, description = "At most 1000")),
    responses((status = 200, description = "Events, newest first", body = AuditPage), (status = 401, description = "No valid token or session", body = Detail), (status = 403, description = "Not an admin", body = Detail), (status = 422, description = "Malformed body", body = Detail)))]
pub async fn audit_log(call: Call<'_>) -> Result<ApiResponse, Error> {
    let req = call.req;
    let opt_number = |name: &str| -> Result<Option<i64>, Error> {
        query_param(req, name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Error::Unprocessable(format!("{name} must be unix seconds")))
            })
            .transpose()
    };
    let kind = match query_param(req, "kind").filter(|k| !k.is_empty()) {
        None => None,
        Some(k) => Some(
            AuditKind::parse(&k)
                .ok_or_else(|| Error::Unprocessable(format!("unknown event kind {k:?}")))?,
        ),
    };
    let filter = AuditFilter {
        user_id: query_param(req, "user").filter(|u| !u.is_empty()),
        kind,
        since: opt_number("since")?,
        until: opt_number("until")?,
        before_seq: query_param(req, "before")
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::Unprocessable("before must be an event sequence number".into())
                })
            })
            .transpose()?,
        limit: number(req, "limit", 100, 1000)? as usize,
    };
    let limit = filter.limit;
    let events = call.state.accounts.audit_log(filter).await?;
    let next = if events.len() == limit {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(ApiResponse::ok(
        serde_json::json!({ "events": events, "next_before": next }),
    ))
}
