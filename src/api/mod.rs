//! The accounts API, independent of pingora: an `ApiRequest` in, an `ApiResponse` or an
//! `Error` out. The proxy side (`proxy::respond`) writes either to the client.

use crate::error::Error;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
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
    pub request_id: String,
    /// Unix seconds, read once at the edge.
    pub now: i64,
}

/// A successful API answer: a status and a JSON body.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: serde_json::Value,
    /// Token responses must not be cached (RFC 6749 §5.1).
    pub no_store: bool,
}

impl ApiResponse {
    pub fn ok(body: serde_json::Value) -> ApiResponse {
        ApiResponse {
            status: StatusCode::OK,
            body,
            no_store: false,
        }
    }
}

/// The API's endpoints, as (path, allowed methods).
const ENDPOINTS: &[(&str, &[Method])] = &[("/", &[Method::GET, Method::HEAD])];

/// Does the API serve `path` (relative to its prefix)? Used when it is mounted at the root.
pub fn owns(path: &str) -> bool {
    ENDPOINTS.iter().any(|(p, _)| *p == path)
}

/// The methods an endpoint accepts, for `Allow` on a 405.
pub fn allowed_methods(path: &str) -> Option<&'static [Method]> {
    ENDPOINTS.iter().find(|(p, _)| *p == path).map(|(_, m)| *m)
}

/// Answer one API request.
pub async fn handle(req: ApiRequest) -> Result<ApiResponse, Error> {
    let methods = allowed_methods(&req.path).ok_or(Error::NotFound)?;
    if !methods.contains(&req.method) {
        return Err(Error::MethodNotAllowed);
    }
    match req.path.as_str() {
        "/" => Ok(ApiResponse::ok(serde_json::json!({
            "message": "Welcome to portcullis, the authentication gateway"
        }))),
        _ => Err(Error::NotFound),
    }
}
