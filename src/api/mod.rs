//! The accounts HTTP API, independent of pingora: an `ApiRequest` in, an `ApiResponse` or an
//! `Error` out. `endpoints.rs` holds the one table of endpoints (path, methods, access, limit
//! class, handler) from which dispatch, 404/405 and the OpenAPI document derive; handlers are
//! thin adapters (parse, call `accounts`, render a view).

mod account;
mod admin;
mod endpoints;
mod login;
pub mod openapi;
mod recovery;
mod register;
mod verify;
pub mod views;

pub use endpoints::{endpoints, Access, Endpoint, Limit};

use crate::accounts::Context;
use crate::auth::gate;
use crate::auth::limiter::Decision;
use crate::auth::sessions::Identity;
use crate::error::Error;
use crate::state::{AppState, Live};
use crate::store::models::User;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use std::net::IpAddr;

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
    /// What per-address limits count the client by (its network, for IPv6).
    pub client_key: IpAddr,
    pub request_id: String,
    /// Unix seconds, read once at the edge.
    pub now: i64,
}

impl ApiRequest {
    /// The domain's view of where and when this request happens.
    pub fn context(&self) -> Context {
        Context {
            now: self.now,
            request_id: self.request_id.clone(),
            client_ip: self.client_ip,
            client_key: self.client_key,
        }
    }
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
        ApiResponse::with_status(StatusCode::OK, body)
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

/// Who is calling, as the endpoint's access rule established it.
pub struct Caller {
    pub identity: Identity,
    pub user: User,
    /// The service that presented its token (`Access::Service`).
    pub service: Option<String>,
}

/// What a handler gets: the state, the request, the domain context, the caller (for every
/// access rule but `Public`) and the `{id}` path segment, if the endpoint has one.
pub struct Call<'a> {
    pub state: &'a AppState,
    pub req: &'a ApiRequest,
    pub ctx: Context,
    pub caller: Option<Caller>,
    pub id: Option<&'a str>,
}

impl Call<'_> {
    /// The authenticated caller (present on every endpoint whose access is not `Public`).
    pub fn caller(&self) -> Result<&Caller, Error> {
        self.caller
            .as_ref()
            .ok_or_else(|| Error::Internal("endpoint without a caller".into()))
    }
}

/// Answer one API request: find its endpoint (404; 405 for another method), establish the
/// caller its access rule needs (401/403), then run the handler.
pub async fn handle(state: &AppState, req: ApiRequest) -> Result<ApiResponse, Error> {
    let found = endpoints::find(&req.path).ok_or(Error::NotFound)?;
    let endpoint = found
        .endpoint_for(&req.method)
        .ok_or(Error::MethodNotAllowed)?;
    let caller = match endpoint.access {
        Access::Public => None,
        Access::User => Some(user_caller(state, &req, false).await?),
        Access::Admin => Some(user_caller(state, &req, true).await?),
        Access::Service => {
            let service = verify::service_name(state, &req).await?;
            let mut caller = user_caller(state, &req, false).await?;
            caller.service = Some(service);
            Some(caller)
        }
    };
    let call = Call {
        state,
        ctx: req.context(),
        req: &req,
        caller,
        id: found.id,
    };
    (endpoint.handler)(call).await
}

/// Any authenticated caller.
const ANY_USER: gate::Rule = gate::Rule {
    auth: crate::config::RouteAuth::Required,
    roles: Vec::new(),
};

/// The caller's live session and current user record (401), an admin if `admin` (403).
async fn user_caller(state: &AppState, req: &ApiRequest, admin: bool) -> Result<Caller, Error> {
    let credential = gate::credential(&req.headers)?;
    let identity = state.authorize(&ANY_USER, credential, req.now).await?;
    let user = if admin {
        state.accounts.admin_caller(&identity).await?
    } else {
        state.accounts.caller(&identity).await?
    };
    Ok(Caller {
        identity,
        user,
        service: None,
    })
}

/// Does the API serve `path`? Asked for every request when the API is mounted at the root, so
/// it allocates nothing.
pub fn owns(path: &str) -> bool {
    endpoints::serves(path)
}

/// The methods `path` accepts, for `Allow` on a 405.
pub fn allowed_methods(path: &str) -> Vec<Method> {
    endpoints::find(path)
        .map(|found| found.methods())
        .unwrap_or_default()
}

/// Count an API request against its endpoint's limit class: per user (from a valid token) on
/// `PerUser` endpoints, per client IP on the others and for callers without a valid token.
/// Runs before the body is read.
pub async fn admit(
    state: &AppState,
    live: &Live,
    path: &str,
    headers: &HeaderMap,
    client_key: Option<IpAddr>,
    now: i64,
) -> Result<Decision, Error> {
    let per_user = endpoints::find(path).is_some_and(|f| f.limit() == Limit::PerUser);
    if per_user {
        let user = gate::credential(headers)
            .ok()
            .flatten()
            .map(|gate::Credential::Bearer(token)| token)
            .and_then(|t| state.tokens.validate(t, now).ok());
        if let Some(claims) = user {
            return state
                .admit(
                    "api_private",
                    "",
                    &live.limits.private,
                    claims.user_id.as_str(),
                )
                .await
                .map_err(|d| Error::Throttled(d, None));
        }
    }
    let ip = client_key.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    state
        .admit("api_public", "", &live.limits.public, ip)
        .await
        .map_err(|d| Error::Throttled(d, None))
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
