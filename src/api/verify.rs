//! Inter-service token verification: another service, identified by its service token, asks
//! who a bearer token belongs to. A missing or unknown service token gets 404, as in the
//! original service.

use super::views::{Detail, VerifyResponse};
use super::{ApiRequest, ApiResponse, Call};
use crate::error::Error;
use crate::state::AppState;
use crate::store::models::{AuditKind, Outcome};
use subtle::ConstantTimeEq;

/// The name of the configured service token the request presents; audited and 404 when there
/// is none. Every configured token is compared in constant time, so timing reveals neither
/// which one matched nor how much.
pub async fn service_name(state: &AppState, req: &ApiRequest) -> Result<String, Error> {
    let presented = req
        .headers
        .get("x-service-token")
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    let mut found = None;
    for t in &state.live().service_tokens {
        let equal: bool = t.token.as_bytes().ct_eq(presented).into();
        if equal && found.is_none() {
            found = Some(t.name.clone());
        }
    }
    if let Some(name) = found {
        return Ok(name);
    }
    let mut ev = req
        .context()
        .event(AuditKind::ServiceTokenRejected, Outcome::Failure, None);
    ev.detail = Some(
        if presented.is_empty() {
            "missing"
        } else {
            "unknown"
        }
        .into(),
    );
    state.accounts.audit(vec![ev]).await;
    Err(Error::NotFound)
}

#[utoipa::path(post, path = "/verify", tag = "inter-service", security(("bearer" = [], "service_token" = [])),
    responses((status = 200, description = "Who the bearer token belongs to; counts as activity", body = VerifyResponse),
        (status = 404, description = "Missing or unknown X-Service-Token", body = Detail), (status = 401, description = "No valid token or session", body = Detail)))]
pub async fn verify(call: Call<'_>) -> Result<ApiResponse, Error> {
    let caller = call.caller()?;
    let user = &caller.user;
    let mut ev = call
        .ctx
        .event(AuditKind::Verify, Outcome::Success, Some(&user.id));
    ev.actor = caller.service.as_ref().map(|s| format!("service:{s}"));
    call.state.accounts.audit(vec![ev]).await;
    Ok(ApiResponse::ok(serde_json::json!({
        "id": user.id,
        "email": user.email,
        "nickname": user.nickname,
        "role": user.role,
        "valid": true,
        "lock": user.locked,
        "customer_account": user.customer_account,
    })))
}
