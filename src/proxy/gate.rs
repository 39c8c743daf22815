//! The gate: decides whether a request may pass to a route's upstream, from its bearer token
//! and the route's rules. Pure and allocation-light: it runs on every proxied request.

use super::route::Route;
use crate::auth::sessions::SessionTable;
use crate::auth::tokens::{Identity, TokenService};
use crate::config::RouteAuth;
use crate::error::Error;
use http::HeaderMap;

/// The bearer token of a request (RFC 6750 §2.1), from its one `Authorization` header. Other
/// schemes count as no token; the query string is never consulted.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::BadRequest("Duplicate Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| Error::InvalidToken("malformed"))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::InvalidToken("malformed"));
    }
    Ok(Some(token))
}

/// Who the caller is at time `now`: a valid bearer token whose session is live (not logged out,
/// revoked, idle or expired). Counts as activity of that session.
pub fn authenticate(
    tokens: &TokenService,
    sessions: &SessionTable,
    headers: &HeaderMap,
    now: i64,
) -> Result<Identity, Error> {
    let token = bearer_token(headers)?.ok_or(Error::MissingToken)?;
    let identity = tokens.validate(token, now)?;
    sessions
        .check_and_touch(&identity.session_id, &identity.user_id, now)
        .map_err(|dead| Error::InvalidToken(dead.reason()))?;
    Ok(identity)
}

/// Decide a request to `route` at time `now`: `Ok(Some(identity))` on an authenticated route,
/// `Ok(None)` on a public one, or the error to answer with.
pub fn authorize(
    tokens: &TokenService,
    sessions: &SessionTable,
    route: &Route,
    headers: &HeaderMap,
    now: i64,
) -> Result<Option<Identity>, Error> {
    if route.auth == RouteAuth::Public {
        return Ok(None);
    }
    let identity = authenticate(tokens, sessions, headers, now)?;
    if !route.allows_role(&identity.role) {
        return Err(Error::Forbidden);
    }
    Ok(Some(identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h).unwrap(), None);
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(bearer_token(&h).unwrap(), None);
        h.insert(
            "authorization",
            HeaderValue::from_static("bearer abc.def.ghi"),
        );
        assert_eq!(bearer_token(&h).unwrap(), Some("abc.def.ghi"));
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert!(bearer_token(&h).is_err());
        h.append("authorization", HeaderValue::from_static("Bearer x"));
        assert!(matches!(bearer_token(&h), Err(Error::BadRequest(_))));
    }
}
