//! Inter-service token verification: another service, identified by its service token, asks
//! who a bearer token belongs to. A missing or unknown service token gets 404, as in the
//! original service.

use super::{audit, authenticated, event, ApiRequest, ApiResponse};
use crate::app::AppState;
use crate::error::Error;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The name of the configured service token equal to `presented`. Every configured token is
/// compared in constant time, so timing reveals neither which one matched nor how much.
fn service_name(state: &AppState, presented: &[u8]) -> Option<String> {
    let mut found = None;
    for t in &state.live().service_tokens {
        let equal: bool = t.token.as_bytes().ct_eq(presented).into();
        if equal && found.is_none() {
            found = Some(t.name.clone());
        }
    }
    found
}

#[utoipa::path(post, path = "/verify", tag = "inter-service", security(("bearer" = [], "service_token" = [])),
    responses((status = 200, description = "Who the bearer token belongs to; counts as activity", body = super::openapi::VerifyResponse),
        (status = 404, description = "Missing or unknown X-Service-Token", body = super::openapi::Detail), (status = 401, description = "No valid token or session", body = super::openapi::Detail)))]
pub async fn verify(state: &Arc<AppState>, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let presented = req
        .headers
        .get("x-service-token")
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    let Some(service) = service_name(state, presented) else {
        let mut ev = event(req, "service_token_rejected", "failure", None);
        ev.detail = Some(
            if presented.is_empty() {
                "missing"
            } else {
                "unknown"
            }
            .into(),
        );
        audit(state, vec![ev]).await;
        return Err(Error::NotFound);
    };
    let (_, user) = authenticated(state, req).await?;
    let mut ev = event(req, "verify", "success", Some(&user.id));
    ev.actor = Some(format!("service:{service}"));
    audit(state, vec![ev]).await;
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
