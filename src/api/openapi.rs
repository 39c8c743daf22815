//! The OpenAPI 3.1 description of the accounts API, generated from the handlers' `utoipa::path`
//! annotations and the request types; served at `{prefix}/openapi.json`. The response shapes
//! below mirror what the handlers write.

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::ServerBuilder;
use utoipa::{Modify, OpenApi, ToSchema};

/// `{"detail": "…"}`: every error.
#[derive(Serialize, ToSchema)]
pub struct Detail {
    pub detail: String,
}

/// `{"message": "…"}`.
#[derive(Serialize, ToSchema)]
pub struct Message {
    pub message: String,
}

/// Answer of a registration.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub id: String,
    pub nickname: String,
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginUser {
    pub id: String,
    pub nickname: String,
    pub email: String,
    pub role: String,
}

/// Answer of a login (sent with `Cache-Control: no-store`).
#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
    pub user: LoginUser,
}

/// A user as the API shows it; never a hash or a passphrase.
#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub nickname: String,
    pub customer_account: String,
    /// `user` or `admin`.
    pub role: String,
    pub lock: bool,
    pub email_verified: bool,
    /// Unix seconds.
    pub created_at: i64,
    pub is_logged_in: bool,
    /// Unix seconds of the last activity of a live session.
    pub last_seen: Option<i64>,
    /// Time since `last_seen`, e.g. `1h 2m 5s`.
    pub idle_duration: Option<String>,
}

/// Answer of `/verify`.
#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    pub id: String,
    pub email: String,
    pub nickname: String,
    pub role: String,
    pub valid: bool,
    pub lock: bool,
    pub customer_account: String,
}

/// A page of audit events, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<crate::store::models::AuditEvent>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<u64>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "service_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Service-Token"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "portcullis accounts API", description = "Registration, login, sessions, recovery, self-service, administration and inter-service verification."),
    paths(
        super::register::register,
        super::register::verify_email,
        super::register::resend,
        super::login::login,
        super::login::logout,
        super::recovery::recover,
        super::account::show,
        super::account::update,
        super::account::delete,
        super::admin::list,
        super::admin::create,
        super::admin::show,
        super::admin::update,
        super::admin::delete,
        super::admin::audit_log,
        super::verify::verify,
    ),
    components(schemas(Detail, Message)),
    modifiers(&Security)
)]
struct ApiDoc;

/// The document, with the API prefix as its server.
pub fn document(prefix: &str) -> serde_json::Value {
    let mut doc = ApiDoc::openapi();
    doc.servers = Some(vec![ServerBuilder::new()
        .url(if prefix.is_empty() { "/" } else { prefix })
        .build()]);
    serde_json::to_value(&doc).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

const DOCS_HTML: &str = include_str!("../../assets/swagger-ui/index.html");
const DOCS_INIT: &str = include_str!("../../assets/swagger-ui/init.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");
const SWAGGER_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");

/// The interactive documentation page and its assets, all served by portcullis (no CDN).
pub fn docs_page(path: &str, prefix: &str) -> super::ApiResponse {
    let (content_type, bytes, cache) = match path.trim_end_matches('/') {
        "/docs/swagger-ui.css" => (
            "text/css; charset=utf-8",
            bytes::Bytes::from_static(SWAGGER_CSS),
            true,
        ),
        "/docs/swagger-ui-bundle.js" => (
            "text/javascript; charset=utf-8",
            bytes::Bytes::from_static(SWAGGER_JS),
            true,
        ),
        "/docs/init.js" => (
            "text/javascript; charset=utf-8",
            bytes::Bytes::from_static(DOCS_INIT.as_bytes()),
            true,
        ),
        _ => (
            "text/html; charset=utf-8",
            bytes::Bytes::from(DOCS_HTML.replace("PREFIX", prefix)),
            false,
        ),
    };
    let mut headers = vec![
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'".to_string(),
        ),
        ("x-content-type-options", "nosniff".to_string()),
    ];
    if cache {
        headers.push(("cache-control", "public, max-age=86400".to_string()));
    }
    super::ApiResponse {
        raw: Some(super::RawBody {
            content_type,
            bytes,
            headers,
        }),
        ..super::ApiResponse::ok(serde_json::Value::Null)
    }
}
