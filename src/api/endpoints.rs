//! The endpoint table of the accounts API: one line per operation, naming its handler, who may
//! call it and which request limit counts it. Path and method come from the handler's
//! `#[utoipa::path]` annotation (the OpenAPI document is built from the same lines); the few
//! undocumented endpoints (welcome, the document itself, the docs page) name theirs here.
//! Adding an endpoint: write the handler with its annotation, add one line below.

use super::openapi::{self, Doc};
use super::{account, admin, login, recovery, register, verify};
use super::{ApiResponse, Call};
use crate::error::Error;
use http::Method;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use utoipa::openapi::path::HttpMethod;

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A caller with a live session whose account exists and is not locked.
    User,
    /// Such a caller who is an admin (403 otherwise).
    Admin,
    /// Another service presenting its `X-Service-Token` (404 without one, as in the original)
    /// on behalf of a user's bearer token.
    Service,
}

/// Which request limit counts an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The public limit, per client IP.
    PerClient,
    /// The private limit, per user (callers without a valid token: per client IP).
    PerUser,
}

pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<ApiResponse, Error>> + Send + 'a>>;
pub type Handler = for<'a> fn(Call<'a>) -> Answer<'a>;

pub struct Endpoint {
    /// As documented, e.g. `/my_account/` or `/accounts_management/{id}` (`{id}` is one path
    /// segment; a trailing slash is optional when matching).
    pub path: String,
    pub methods: Vec<Method>,
    pub access: Access,
    pub limit: Limit,
    pub handler: Handler,
    pub doc: Option<Doc>,
}

/// A handler function as a table entry.
macro_rules! handler {
    ($f:path) => {{
        fn run(call: Call<'_>) -> Answer<'_> {
            Box::pin($f(call))
        }
        run as Handler
    }};
}

/// An endpoint described by its handler's `#[utoipa::path]` annotation (type `P`).
fn documented<P>(access: Access, limit: Limit, handler: Handler) -> Endpoint
where
    P: utoipa::Path + utoipa::__dev::SchemaReferences,
{
    Endpoint {
        path: P::path(),
        methods: P::methods().iter().map(http_method).collect(),
        access,
        limit,
        handler,
        doc: Some(Doc::of::<P>()),
    }
}

/// An endpoint left out of the OpenAPI document.
fn plain(
    path: &str,
    methods: &[Method],
    access: Access,
    limit: Limit,
    handler: Handler,
) -> Endpoint {
    Endpoint {
        path: path.to_string(),
        methods: methods.to_vec(),
        access,
        limit,
        handler,
        doc: None,
    }
}

fn http_method(m: &HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// Every endpoint of the API.
pub fn endpoints() -> &'static [Endpoint] {
    use Access::*;
    use Limit::*;
    static TABLE: OnceLock<Vec<Endpoint>> = OnceLock::new();
    TABLE.get_or_init(|| {
        vec![
            plain(
                "/",
                &[Method::GET, Method::HEAD],
                Public,
                PerClient,
                handler!(welcome),
            ),
            documented::<register::__path_register>(
                Public,
                PerClient,
                handler!(register::register),
            ),
            documented::<register::__path_verify_email>(
                Public,
                PerClient,
                handler!(register::verify_email),
            ),
            documented::<register::__path_resend>(Public, PerClient, handler!(register::resend)),
            documented::<login::__path_login>(Public, PerClient, handler!(login::login)),
            documented::<login::__path_logout>(User, PerUser, handler!(login::logout)),
            documented::<recovery::__path_recover>(Public, PerClient, handler!(recovery::recover)),
            documented::<account::__path_show>(User, PerUser, handler!(account::show)),
            documented::<account::__path_update>(User, PerUser, handler!(account::update)),
            documented::<account::__path_delete>(User, PerUser, handler!(account::delete)),
            documented::<admin::__path_list>(Admin, PerUser, handler!(admin::list)),
            documented::<admin::__path_create>(Admin, PerUser, handler!(admin::create)),
            documented::<admin::__path_show>(Admin, PerUser, handler!(admin::show)),
            documented::<admin::__path_update>(Admin, PerUser, handler!(admin::update)),
            documented::<admin::__path_delete>(Admin, PerUser, handler!(admin::delete)),
            documented::<admin::__path_audit_log>(Admin, PerUser, handler!(admin::audit_log)),
            documented::<verify::__path_verify>(Service, PerUser, handler!(verify::verify)),
            plain(
                "/openapi.json",
                &[Method::GET],
                Public,
                PerClient,
                handler!(serve_document),
            ),
            plain(
                "/docs",
                &[Method::GET],
                Public,
                PerClient,
                handler!(serve_docs),
            ),
            plain(
                "/docs/swagger-ui.css",
                &[Method::GET],
                Public,
                PerClient,
                handler!(serve_docs),
            ),
            plain(
                "/docs/swagger-ui-bundle.js",
                &[Method::GET],
                Public,
                PerClient,
                handler!(serve_docs),
            ),
            plain(
                "/docs/init.js",
                &[Method::GET],
                Public,
                PerClient,
                handler!(serve_docs),
            ),
        ]
    })
}

async fn welcome(_: Call<'_>) -> Result<ApiResponse, Error> {
    Ok(ApiResponse::ok(serde_json::json!({
        "message": "Welcome to portcullis, the authentication gateway"
    })))
}

/// The OpenAPI document of this table.
async fn serve_document(call: Call<'_>) -> Result<ApiResponse, Error> {
    let docs = endpoints().iter().filter_map(|e| e.doc.as_ref());
    Ok(ApiResponse::ok(openapi::document(
        &call.state.config.api.prefix,
        docs,
    )))
}

/// The interactive documentation page and its assets.
async fn serve_docs(call: Call<'_>) -> Result<ApiResponse, Error> {
    Ok(openapi::docs_page(
        &call.req.path,
        &call.state.config.api.prefix,
    ))
}

/// The endpoints at one path, and its `{id}` segment if the pattern has one.
pub struct Found<'a> {
    at: Vec<&'static Endpoint>,
    pub id: Option<&'a str>,
}

impl Found<'_> {
    pub fn endpoint_for(&self, method: &Method) -> Option<&'static Endpoint> {
        self.at.iter().copied().find(|e| e.methods.contains(method))
    }

    pub fn methods(&self) -> Vec<Method> {
        self.at
            .iter()
            .flat_map(|e| e.methods.iter().cloned())
            .collect()
    }

    pub fn limit(&self) -> Limit {
        self.at.first().map_or(Limit::PerClient, |e| e.limit)
    }
}

fn trim_slash(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// Match `path` against `pattern`: `Some(id)` with the `{id}` segment if it has one.
fn matches<'a>(pattern: &str, path: &'a str) -> Option<Option<&'a str>> {
    let (pattern, path) = (trim_slash(pattern), trim_slash(path));
    match pattern.strip_suffix("/{id}") {
        Some(base) => {
            let id = path.strip_prefix(base)?.strip_prefix('/')?;
            (!id.is_empty() && !id.contains('/')).then_some(Some(id))
        }
        None => (pattern == path).then_some(None),
    }
}

/// Does an endpoint serve `path`?
pub fn serves(path: &str) -> bool {
    endpoints().iter().any(|e| matches(&e.path, path).is_some())
}

/// The endpoints serving `path` (a trailing slash is ignored).
pub fn find(path: &str) -> Option<Found<'_>> {
    let mut id = None;
    let mut pattern: Option<&str> = None;
    let mut at = Vec::new();
    for e in endpoints() {
        if pattern.is_some_and(|p| p != e.path) {
            continue;
        }
        if let Some(segment) = matches(&e.path, path) {
            pattern = Some(&e.path);
            id = segment;
            at.push(e);
        }
    }
    (!at.is_empty()).then_some(Found { at, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(path: &str) -> Option<(String, Option<&str>)> {
        find(path).map(|f| (f.at[0].path.clone(), f.id))
    }

    #[test]
    fn endpoints_match_with_or_without_trailing_slash() {
        assert_eq!(pattern("/my_account/").unwrap().0, "/my_account/");
        assert_eq!(pattern("/my_account").unwrap().0, "/my_account/");
        assert_eq!(
            pattern("/accounts_management/abc"),
            Some(("/accounts_management/{id}".to_string(), Some("abc")))
        );
        assert_eq!(
            pattern("/accounts_management").unwrap().0,
            "/accounts_management/"
        );
        assert!(pattern("/accounts_management/a/b").is_none());
        assert!(pattern("/nope").is_none());
        assert!(serves("/login") && serves("/accounts_management/x/") && !serves("/nope"));
        assert_eq!(
            find("/my_account").unwrap().methods(),
            vec![Method::GET, Method::PUT]
        );
    }

    #[test]
    fn every_operation_is_listed_once_and_a_paths_operations_share_a_limit() {
        let mut seen = std::collections::HashSet::new();
        for e in endpoints() {
            for m in &e.methods {
                assert!(
                    seen.insert((trim_slash(&e.path).to_string(), m.clone())),
                    "{m} {} twice",
                    e.path
                );
            }
            let concrete = e.path.replace("{id}", "x");
            let found = find(&concrete).unwrap();
            assert!(found.at.iter().all(|o| o.limit == e.limit), "{}", e.path);
            if e.access != Access::Public {
                assert_eq!(e.limit, Limit::PerUser, "{}", e.path);
            }
        }
    }
}
