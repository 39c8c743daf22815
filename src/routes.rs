//! The route table and classification: a pure function from a normalized path to where the
//! request goes (the accounts API, a configured route, or nowhere). Prefixes match on segment
//! boundaries, ASCII case-insensitively, and the longest prefix wins. Free of pingora: the
//! proxy turns a route's upstream address into a peer.

use crate::auth::gate::Rule;
use crate::auth::limiter::KeyedLimiter;
use crate::config::RouteSpec;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A configured route.
pub struct Route {
    pub path: String,
    /// Who may pass.
    pub rule: Rule,
    /// Resolved when the configuration was validated: never DNS on the request path.
    pub upstreams: Vec<SocketAddr>,
    /// Per user on required routes, per client IP on public ones.
    pub limiter: Option<KeyedLimiter>,
    next: AtomicUsize,
}

impl Route {
    pub fn new(spec: &RouteSpec, limiter: Option<KeyedLimiter>) -> Route {
        Route {
            path: spec.path.clone(),
            rule: Rule {
                auth: spec.auth,
                roles: spec.roles.clone(),
            },
            upstreams: spec.upstreams.clone(),
            limiter,
            next: AtomicUsize::new(0),
        }
    }

    /// The next upstream, round robin (`None` only for a route without upstreams, which the
    /// configuration check refuses).
    pub fn next_upstream(&self) -> Option<SocketAddr> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len().max(1);
        self.upstreams.get(i).copied()
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Destination<'a> {
    /// The accounts API; the path relative to the API prefix (always starts with `/`).
    Api(&'a str),
    /// The route at this index of the table.
    Route(usize),
    NotFound,
}

/// The routes and the API prefix, ready to classify paths.
pub struct RouteTable {
    api_prefix: String,
    /// Routes ordered longest path first.
    routes: Vec<Route>,
}

/// Does `path` lie under `prefix` on a segment boundary (ASCII case-insensitive)?
/// Returns the remainder, starting with `/`.
fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix == "/" {
        return Some(path);
    }
    let head = path.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &path[prefix.len()..];
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

impl RouteTable {
    pub fn new(api_prefix: &str, mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        RouteTable {
            api_prefix: api_prefix.to_string(),
            routes,
        }
    }

    pub fn route(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Classify a normalized path. `api_owns` says which root-relative paths the API serves
    /// when it is mounted at the root (prefix `""`).
    pub fn classify<'a>(&self, path: &'a str, api_owns: impl Fn(&str) -> bool) -> Destination<'a> {
        if self.api_prefix.is_empty() {
            if api_owns(path) {
                return Destination::Api(path);
            }
        } else if let Some(rest) = strip_segment_prefix(path, &self.api_prefix) {
            return Destination::Api(rest);
        }
        for (i, route) in self.routes.iter().enumerate() {
            if strip_segment_prefix(path, &route.path).is_some() {
                return Destination::Route(i);
            }
        }
        Destination::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::RouteAuth;

    fn table(prefix: &str, paths: &[&str]) -> RouteTable {
        let routes = paths
            .iter()
            .map(|p| {
                Route::new(
                    &RouteSpec {
                        path: p.to_string(),
                        upstreams: vec!["127.0.0.1:1".parse().unwrap()],
                        auth: RouteAuth::Required,
                        roles: vec![],
                        rate_limit: None,
                    },
                    None,
                )
            })
            .collect();
        RouteTable::new(prefix, routes)
    }

    fn route_path(t: &RouteTable, path: &str) -> Option<String> {
        match t.classify(path, |_| false) {
            Destination::Route(i) => Some(t.route(i).path.clone()),
            _ => None,
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table("/auth", &["/", "/api", "/api/admin"]);
        assert_eq!(route_path(&t, "/api").as_deref(), Some("/api"));
        assert_eq!(route_path(&t, "/api/").as_deref(), Some("/api"));
        assert_eq!(
            route_path(&t, "/api/admin/x").as_deref(),
            Some("/api/admin")
        );
        assert_eq!(route_path(&t, "/API/ADMIN").as_deref(), Some("/api/admin"));
        assert_eq!(route_path(&t, "/apix").as_deref(), Some("/"));
        assert_eq!(route_path(&t, "/api/adminx").as_deref(), Some("/api"));
    }

    #[test]
    fn api_prefix_wins_and_yields_relative_path() {
        let t = table("/auth", &["/"]);
        assert_eq!(t.classify("/auth", |_| false), Destination::Api("/"));
        assert_eq!(
            t.classify("/auth/login", |_| false),
            Destination::Api("/login")
        );
        assert_eq!(t.classify("/authx", |_| false), Destination::Route(0));
        let root = table("", &["/"]);
        assert_eq!(
            root.classify("/login", |p| p == "/login"),
            Destination::Api("/login")
        );
        assert_eq!(
            root.classify("/other", |p| p == "/login"),
            Destination::Route(0)
        );
        let none = table("/auth", &["/api"]);
        assert_eq!(none.classify("/x", |_| false), Destination::NotFound);
    }
}
