//! The OpenAPI 3.1 description of the accounts API, built from the endpoint table (each line's
//! handler annotation) and served at `{prefix}/openapi.json`, with the interactive docs page.

use super::views::{Detail, Message};
use super::ApiResponse;
use utoipa::openapi::path::{HttpMethod, Operation, PathItem, PathsBuilder};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::openapi::ServerBuilder;
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

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
    modifiers(&Security)
)]
struct ApiDoc;

/// The OpenAPI description of an endpoint, from its handler's `#[utoipa::path]` annotation.
#[derive(Clone, Copy)]
pub struct Doc {
    pub path: fn() -> String,
    pub methods: fn() -> Vec<HttpMethod>,
    pub operation: fn() -> Operation,
    pub schemas: fn(&mut Vec<(String, RefOr<Schema>)>),
}

impl Doc {
    /// The description of the handler whose annotation generated `P`.
    pub fn of<P: utoipa::Path + utoipa::__dev::SchemaReferences>() -> Doc {
        Doc {
            path: P::path,
            methods: P::methods,
            operation: P::operation,
            schemas: P::schemas,
        }
    }
}

/// The document of the endpoints described by `docs`, with the API prefix as its server.
pub fn document<'a>(prefix: &str, docs: impl Iterator<Item = &'a Doc>) -> serde_json::Value {
    let mut doc = ApiDoc::openapi();
    let mut paths = PathsBuilder::new();
    let mut schemas = vec![
        (Detail::name().into_owned(), Detail::schema()),
        (Message::name().into_owned(), Message::schema()),
    ];
    for d in docs {
        paths = paths.path(
            (d.path)(),
            PathItem::from_http_methods((d.methods)(), (d.operation)()),
        );
        (d.schemas)(&mut schemas);
    }
    doc.paths = paths.build();
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
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
pub fn docs_page(path: &str, prefix: &str) -> ApiResponse {
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
    ApiResponse {
        raw: Some(super::RawBody {
            content_type,
            bytes,
            headers,
        }),
        ..ApiResponse::ok(serde_json::Value::Null)
    }
}
