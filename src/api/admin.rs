//! Administration: listing, creating, reading, changing and deleting accounts, and reading the
//! audit log. Admin role only. An admin cannot delete itself, and the last active admin cannot
//! be demoted, locked or deleted.

use super::register::new_account;
use super::{
    admin_caller, audit, blocking, event, fields, parse_json, query_param, user_view, ApiRequest,
    ApiResponse,
};
use crate::app::AppState;
use crate::error::Error;
use crate::store::models::{AuditEvent, AuditFilter, User, ROLE_ADMIN, ROLE_USER};
use http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

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

fn admin_event(
    req: &ApiRequest,
    kind: &str,
    outcome: &str,
    actor: &User,
    target: Option<&str>,
) -> AuditEvent {
    let mut ev = event(req, kind, outcome, target);
    ev.actor = Some(actor.id.clone());
    ev
}

#[utoipa::path(get, path = "/accounts_management/", tag = "administration", security(("bearer" = [])),
    params(("skip" = Option<u64>, Query, description = "Accounts to skip"), ("limit" = Option<u64>, Query, description = "At most accounts.max_page_size")),
    responses((status = 200, description = "Accounts in id order", body = Vec<super::openapi::UserView>), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 403, description = "Not an admin", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail)))]
pub async fn list(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    admin_caller(state, req).await?;
    let max = state.config.accounts.max_page_size as u64;
    let skip = number(req, "skip", 0, u64::from(u32::MAX))? as usize;
    let limit = number(req, "limit", max, max)? as usize;
    let users = blocking(state, move |s| Ok(s.list_users(skip, limit)?)).await?;
    let views: Vec<_> = users.iter().map(|u| user_view(state, u, req.now)).collect();
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
    responses((status = 201, description = "Created", body = super::openapi::UserView), (status = 400, description = "A rule is broken", body = super::openapi::Detail), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 403, description = "Not an admin", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail)))]
pub async fn create(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let (_, admin) = admin_caller(state, req).await?;
    let body: CreateBody = parse_json(&req.body)?;
    let role = fields::role(body.role.as_deref().unwrap_or(ROLE_USER))?;
    let account = new_account(
        &state.config.passwords,
        &state.hasher,
        &body.email,
        &body.nickname,
        &body.password,
        &body.passphrase,
        body.customer_account.as_deref(),
    )
    .await?;
    let now = req.now;
    let user = account.into_user(&role, body.lock.unwrap_or(false), true, now);
    let user = blocking(state, move |s| Ok(s.create_user(user, false, &[], None)?)).await?;
    state
        .metrics
        .registrations
        .with_label_values(&["admin_created"])
        .inc();
    audit(
        state,
        vec![admin_event(
            req,
            "admin_create",
            "success",
            &admin,
            Some(&user.id),
        )],
    )
    .await;
    Ok(ApiResponse::with_status(
        StatusCode::CREATED,
        user_view(state, &user, now),
    ))
}

async fn target(state: &Arc<AppState>, id: &str) -> Result<User, Error> {
    if id.len() > 64 {
        return Err(Error::NotFound);
    }
    let id = id.to_string();
    blocking(state, move |s| Ok(s.user_by_id(&id)?))
        .await?
        .ok_or(Error::NotFound)
}

#[utoipa::path(get, path = "/accounts_management/{id}", tag = "administration", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "The account", body = super::openapi::UserView), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 403, description = "Not an admin", body = super::openapi::Detail), (status = 404, description = "No such user", body = super::openapi::Detail)))]
pub async fn show(state: &Arc<AppState>, req: &ApiRequest, id: &str) -> Result<ApiResponse, Error> {
    admin_caller(state, req).await?;
    let user = target(state, id).await?;
    Ok(ApiResponse::ok(user_view(state, &user, req.now)))
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
    responses((status = 200, description = "Updated; role, lock and password changes end the user's sessions", body = super::openapi::Message), (status = 400, description = "A rule is broken", body = super::openapi::Detail), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 403, description = "Not an admin", body = super::openapi::Detail), (status = 404, description = "No such user", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail)))]
pub async fn update(
    state: &Arc<AppState>,
    req: &ApiRequest,
    id: &str,
) -> Result<ApiResponse, Error> {
    let (_, admin) = admin_caller(state, req).await?;
    let user = target(state, id).await?;
    let body: AdminUpdateBody = parse_json(&req.body)?;
    let role = body.role.as_deref().map(fields::role).transpose()?;
    let fields::ProfileChanges {
        nickname,
        email,
        customer_account,
        passphrase,
        password,
    } = fields::ProfileChanges::validate(
        &state.config.passwords,
        &user,
        body.nickname.as_deref(),
        body.email.as_deref(),
        body.customer_account.as_deref(),
        body.passphrase.as_deref(),
        body.password.as_deref(),
    )?;
    let demoting = user.is_admin() && role.as_deref().is_some_and(|r| r != ROLE_ADMIN);
    let locking = body.lock == Some(true) && !user.locked;
    if user.is_admin() && (demoting || locking) {
        let uid = user.id.clone();
        let others = blocking(state, move |s| Ok(s.count_active_admins_except(&uid)?)).await?;
        if others == 0 {
            return Err(Error::Invalid(
                "The last admin cannot be demoted or locked".into(),
            ));
        }
    }
    let password_hash = state.hasher.hash_opt(password).await?;
    let passphrase_hash = state.hasher.hash_opt(passphrase).await?;
    let revoke = demoting
        || locking
        || password_hash.is_some()
        || role.as_deref().is_some_and(|r| r != user.role);
    let now = req.now;
    let uid = user.id.clone();
    let lock = body.lock;
    blocking(state, move |s| {
        s.update_user::<Error>(&uid, &[], |u| {
            fields::apply_profile(
                u,
                nickname,
                customer_account,
                password_hash,
                passphrase_hash,
            );
            if let Some(e) = email {
                if !e.eq_ignore_ascii_case(&u.email) {
                    u.email = e;
                }
            }
            if let Some(r) = role {
                u.role = r;
            }
            if let Some(l) = lock {
                u.locked = l;
            }
            u.updated_at = now;
            Ok(())
        })?;
        Ok(())
    })
    .await?;
    if revoke {
        state.revoke_sessions(&user.id, None).await?;
    }
    audit(
        state,
        vec![admin_event(
            req,
            "admin_update",
            "success",
            &admin,
            Some(&user.id),
        )],
    )
    .await;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "User updated successfully" }),
    ))
}

#[utoipa::path(delete, path = "/accounts_management/{id}", tag = "administration", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, description = "Deleted", body = super::openapi::Message), (status = 400, description = "A rule is broken", body = super::openapi::Detail), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 403, description = "Not an admin", body = super::openapi::Detail), (status = 404, description = "No such user", body = super::openapi::Detail)))]
pub async fn delete(
    state: &Arc<AppState>,
    req: &ApiRequest,
    id: &str,
) -> Result<ApiResponse, Error> {
    let (_, admin) = admin_caller(state, req).await?;
    let user = target(state, id).await?;
    if user.id == admin.id {
        return Err(Error::Invalid("An admin cannot delete itself".into()));
    }
    let uid = user.id.clone();
    let ended = blocking(state, move |s| Ok(s.delete_user(&uid, &[])?)).await?;
    state.sessions.remove(&ended);
    audit(
        state,
        vec![admin_event(
            req,
            "admin_delete",
            "success",
            &admin,
            Some(&user.id),
        )],
    )
    .await;
    Ok(ApiResponse::ok(
        serde_json::json!({ "message": "User deleted successfully" }),
    ))
}

/// `GET /audit?user=&kind=&since=&until=&before=&limit=`, newest first.
#[utoipa::path(get, path = "/audit", tag = "administration", security(("bearer" = [])),
    params(("user" = Option<String>, Query, description = "User id"), ("kind" = Option<String>, Query, description = "Event kind"),
        ("since" = Option<i64>, Query, description = "Unix seconds"), ("until" = Option<i64>, Query, description = "Unix seconds"),
        ("before" = Option<u64>, Query, description = "Sequence number to page before"), ("limit" = Option<u64>, Query, description = "At most 1000")),
    responses((status = 200, description = "Events, newest first", body = super::openapi::AuditPage), (status = 401, description = "No valid token or session", body = super::openapi::Detail), (status = 403, description = "Not an admin", body = super::openapi::Detail), (status = 422, description = "Malformed body", body = super::openapi::Detail)))]
pub async fn audit_log(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    admin_caller(state, req).await?;
    let opt_number = |name: &str| -> Result<Option<i64>, Error> {
        query_param(req, name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Error::Unprocessable(format!("{name} must be unix seconds")))
            })
            .transpose()
    };
    let filter = AuditFilter {
        user_id: query_param(req, "user").filter(|u| !u.is_empty()),
        kind: query_param(req, "kind").filter(|k| !k.is_empty()),
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
    let events = blocking(state, move |s| Ok(s.audit_events(&filter)?)).await?;
    let next = if events.len() == limit {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(ApiResponse::ok(
        serde_json::json!({ "events": events, "next_before": next }),
    ))
}
