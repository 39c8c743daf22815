//! The accounts API, independent of pingora: an `ApiRequest` in, an `ApiResponse` or an
//! `Error` out. One file per area; this one routes and holds the helpers they share.

mod account;
mod admin;
pub mod fields;
mod login;
pub mod openapi;
mod recovery;
mod register;

pub use register::{new_account, NewAccount};
mod verify;

use crate::app::AppState;
use crate::auth::tokens::Identity;
use crate::error::Error;
use crate::store::models::{AuditEvent, User};
use crate::store::Store;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::sync::Arc;

/// One request to the accounts API, with its path relative to `api.prefix`.
#[derive(Debug)]
pub struct ApiRequest {
    pub method: Method,
    /// Normalized, relative to the API prefix; starts with `/`.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client_ip: IpAddr,
    pub request_id: String,
    /// Unix seconds, read once at the edge.
    pub now: i64,
}

/// A successful API answer: a status and a JSON body (or, for the docs page, raw bytes).
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: serde_json::Value,
    /// Token responses must not be cached (RFC 6749 §5.1).
    pub no_store: bool,
    /// A non-JSON answer: its content type, body and extra headers.
    pub raw: Option<RawBody>,
}

#[derive(Debug)]
pub struct RawBody {
    pub content_type: &'static str,
    pub bytes: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiResponse {
    pub fn ok(body: serde_json::Value) -> ApiResponse {
        ApiResponse {
            status: StatusCode::OK,
            body,
            no_store: false,
            raw: None,
        }
    }

    pub fn with_status(status: StatusCode, body: serde_json::Value) -> ApiResponse {
        ApiResponse {
            status,
            body,
            no_store: false,
            raw: None,
        }
    }
}

/// The endpoints, as (path pattern, methods). `{id}` is one path segment.
const ENDPOINTS: &[(&str, &[Method])] = &[
    ("/", &[Method::GET, Method::HEAD]),
    ("/register", &[Method::POST]),
    ("/login", &[Method::POST]),
    ("/logout", &[Method::POST]),
    ("/recovery", &[Method::POST]),
    ("/verify-email", &[Method::GET]),
    ("/verify-email/resend", &[Method::POST]),
    ("/my_account", &[Method::GET, Method::PUT]),
    ("/my_account/delete", &[Method::DELETE]),
    ("/accounts_management", &[Method::GET, Method::POST]),
    (
        "/accounts_management/{id}",
        &[Method::GET, Method::PUT, Method::DELETE],
    ),
    ("/verify", &[Method::POST]),
    ("/audit", &[Method::GET]),
    ("/openapi.json", &[Method::GET]),
    ("/docs", &[Method::GET]),
    ("/docs/swagger-ui.css", &[Method::GET]),
    ("/docs/swagger-ui-bundle.js", &[Method::GET]),
    ("/docs/init.js", &[Method::GET]),
];

/// The endpoint pattern a path matches (a trailing slash is ignored), and the `{id}` if any.
fn endpoint(path: &str) -> Option<(&'static str, &'static [Method], Option<&str>)> {
    let p = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    for (pattern, methods) in ENDPOINTS {
        if let Some(base) = pattern.strip_suffix("/{id}") {
            if let Some(id) = p.strip_prefix(base).and_then(|r| r.strip_prefix('/')) {
                if !id.is_empty() && !id.contains('/') {
                    return Some((pattern, methods, Some(id)));
                }
            }
        } else if *pattern == p {
            return Some((pattern, methods, None));
        }
    }
    None
}

/// Is `path` one of the endpoints used without a session (limited per client IP)?
pub fn is_public(path: &str) -> bool {
    matches!(
        endpoint(path).map(|(p, _, _)| p),
        None | Some(
            "/" | "/register"
                | "/login"
                | "/recovery"
                | "/verify-email"
                | "/verify-email/resend"
                | "/openapi.json"
                | "/docs"
                | "/docs/swagger-ui.css"
                | "/docs/swagger-ui-bundle.js"
                | "/docs/init.js"
        )
    )
}

/// Does the API serve `path`? Used when it is mounted at the root.
pub fn owns(path: &str) -> bool {
    endpoint(path).is_some()
}

/// The methods an endpoint accepts, for `Allow` on a 405.
pub fn allowed_methods(path: &str) -> Option<&'static [Method]> {
    endpoint(path).map(|(_, m, _)| m)
}

/// Answer one API request.
pub async fn handle(state: &Arc<AppState>, req: ApiRequest) -> Result<ApiResponse, Error> {
    let (pattern, methods, id) = endpoint(&req.path).ok_or(Error::NotFound)?;
    if !methods.contains(&req.method) {
        return Err(Error::MethodNotAllowed);
    }
    let id = id.map(str::to_string);
    match (pattern, &req.method) {
        ("/", _) => Ok(ApiResponse::ok(serde_json::json!({
            "message": "Welcome to portcullis, the authentication gateway"
        }))),
        ("/register", _) => register::register(state, &req).await,
        ("/verify-email", _) => register::verify_email(state, &req).await,
        ("/verify-email/resend", _) => register::resend(state, &req).await,
        ("/login", _) => login::login(state, &req).await,
        ("/logout", _) => login::logout(state, &req).await,
        ("/recovery", _) => recovery::recover(state, &req).await,
        ("/my_account", &Method::GET) => account::show(state, &req).await,
        ("/my_account", _) => account::update(state, &req).await,
        ("/my_account/delete", _) => account::delete(state, &req).await,
        ("/accounts_management", &Method::GET) => admin::list(state, &req).await,
        ("/accounts_management", _) => admin::create(state, &req).await,
        ("/accounts_management/{id}", m) => {
            let id = id.unwrap_or_default();
            match *m {
                Method::GET => admin::show(state, &req, &id).await,
                Method::PUT => admin::update(state, &req, &id).await,
                _ => admin::delete(state, &req, &id).await,
            }
        }
        ("/verify", _) => verify::verify(state, &req).await,
        ("/audit", _) => admin::audit_log(state, &req).await,
        ("/openapi.json", _) => Ok(ApiResponse::ok(openapi::document(&state.config.api.prefix))),
        (docs, _) if docs.starts_with("/docs") => {
            Ok(openapi::docs_page(docs, &state.config.api.prefix))
        }
        _ => Err(Error::NotFound),
    }
}

/// Parse a JSON body; malformed JSON, wrong types and missing fields are 422.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.is_empty() {
        return Err(Error::Unprocessable(
            "Request body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => format!("Invalid request body: {e}"),
            _ => "Request body is not valid JSON".to_string(),
        };
        Error::Unprocessable(msg)
    })
}

/// Run blocking store work off the async workers.
pub async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// The caller's live session and current user record, or 401.
pub async fn authenticated(
    state: &Arc<AppState>,
    req: &ApiRequest,
) -> Result<(Identity, User), Error> {
    let identity = state.authenticate(&req.headers, req.now)?;
    let user_id = identity.user_id.clone();
    let user = blocking(state, move |s| Ok(s.user_by_id(&user_id)?)).await?;
    match user {
        Some(u) if !u.locked => Ok((identity, u)),
        _ => Err(Error::InvalidToken("user_gone")),
    }
}

/// Like `authenticated`, and the user must be an admin (403 otherwise).
pub async fn admin_caller(
    state: &Arc<AppState>,
    req: &ApiRequest,
) -> Result<(Identity, User), Error> {
    let (identity, user) = authenticated(state, req).await?;
    if !user.is_admin() {
        return Err(Error::Forbidden);
    }
    Ok((identity, user))
}

/// Build an audit event for this request.
pub fn event(req: &ApiRequest, kind: &str, outcome: &str, user_id: Option<&str>) -> AuditEvent {
    AuditEvent {
        seq: 0,
        at: req.now,
        kind: kind.to_string(),
        outcome: outcome.to_string(),
        user_id: user_id.map(str::to_string),
        actor: None,
        request_id: req.request_id.clone(),
        client_ip: req.client_ip.to_string(),
        detail: None,
    }
}

/// Write audit events; a failure is logged and counted, never shown to the client.
pub async fn audit(state: &Arc<AppState>, events: Vec<AuditEvent>) {
    if let Err(e) = state.audit_writer.append(events).await {
        state.metrics.audit_failures.inc();
        tracing::error!(error = %e, "cannot write audit events");
    }
}

/// "3h 5m 10s" for a number of seconds.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = Vec::new();
    if d > 0 {
        out.push(format!("{d}d"));
    }
    if h > 0 {
        out.push(format!("{h}h"));
    }
    if m > 0 {
        out.push(format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push(format!("{s}s"));
    }
    out.join(" ")
}

/// The public view of a user (never a hash), with its activity.
pub fn user_view(state: &AppState, user: &User, now: i64) -> serde_json::Value {
    let last_seen = state.sessions.last_seen_of(&user.id, now);
    serde_json::json!({
        "id": user.id,
        "email": user.email,
        "nickname": user.nickname,
        "customer_account": user.customer_account,
        "role": user.role,
        "lock": user.locked,
        "email_verified": user.email_verified,
        "created_at": user.created_at,
        "is_logged_in": last_seen.is_some(),
        "last_seen": last_seen,
        "idle_duration": last_seen.map(|seen| human_duration(now - seen)),
    })
}

/// A random token of 256 bits, URL-safe, and the SHA-256 (hex) it is stored under.
pub fn random_token() -> (String, String) {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    (token.clone(), token_hash(&token))
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Value of a query parameter (percent-decoded), if present.
pub fn query_param(req: &ApiRequest, name: &str) -> Option<String> {
    req.query.as_deref()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_match_with_or_without_trailing_slash() {
        assert_eq!(endpoint("/my_account/").map(|e| e.0), Some("/my_account"));
        assert_eq!(endpoint("/my_account").map(|e| e.0), Some("/my_account"));
        assert_eq!(
            endpoint("/accounts_management/abc").map(|e| (e.0, e.2)),
            Some(("/accounts_management/{id}", Some("abc")))
        );
        assert_eq!(
            endpoint("/accounts_management/").map(|e| e.0),
            Some("/accounts_management")
        );
        assert!(endpoint("/accounts_management/a/b").is_none());
        assert!(endpoint("/nope").is_none());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(3725), "1h 2m 5s");
        assert_eq!(human_duration(90_000), "1d 1h");
    }
}
