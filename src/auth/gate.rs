//! The gate: decides from a request's credential whether its caller may pass a rule (public,
//! or authenticated with an allowed role). Pure and allocation-light: it runs on every proxied
//! request. The caller's identity comes from the live session, never from the token's claims.

use super::sessions::{Dead, Identity, SessionTable};
use super::tokens::TokenService;
use crate::config::RouteAuth;
use http::HeaderMap;

/// What a request presents to prove who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <access token>` (RFC 6750 §2.1).
    Bearer(&'a str),
}

/// Why the gate refused; mapped to an HTTP answer in one place (`crate::error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// No credential where one is required.
    #[error("missing credential")]
    Missing,
    /// The credential is not valid (bad token, dead session); the reason is for logs only.
    #[error("invalid credential: {0}")]
    Invalid(&'static str),
    /// Authenticated, but the role is not allowed here.
    #[error("insufficient role")]
    Forbidden,
    /// The request is ambiguous (e.g. two `Authorization` headers); the message is public.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// No session can be vouched for now (the live-session table is being resynchronized).
    #[error("sessions unavailable")]
    Unavailable,
    /// A token issued moments ago names a session this replica has not heard of yet (opened on
    /// another one): wait for it (`SessionTable::wait_for`), then decide again.
    #[error("session not known yet")]
    Pending(String),
}

/// How new a token must be for its unknown session to be waited for rather than refused.
pub const PENDING_WINDOW_SECS: i64 = 5;

/// Who may pass: anyone, or an authenticated caller with one of `roles` (any when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub auth: RouteAuth,
    pub roles: Vec<String>,
}

impl Rule {
    /// Anyone may pass: no credential is looked at.
    pub fn is_public(&self) -> bool {
        self.auth == RouteAuth::Public
    }

    pub fn allows_role(&self, role: &str) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| r == role)
    }
}

/// The credential of a request: its one `Authorization: Bearer` header. Other schemes count
/// as none; the query string is never consulted.
pub fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, GateError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GateError::Malformed("Duplicate Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| GateError::Invalid("malformed"))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(GateError::Invalid("malformed"));
    }
    Ok(Some(Credential::Bearer(token)))
}

/// Who presents `credential` at time `now`: a valid token whose session is live (not logged
/// out, revoked, idle or expired). Counts as activity of that session.
pub fn authenticate(
    tokens: &TokenService,
    sessions: &SessionTable,
    credential: Credential<'_>,
    now: i64,
) -> Result<Identity, GateError> {
    let Credential::Bearer(token) = credential;
    let claims = tokens
        .validate(token, now)
        .map_err(|e| GateError::Invalid(e.0))?;
    let principal = sessions
        .check_and_touch(&claims.session_id, &claims.user_id, now)
        .map_err(|dead| match dead {
            Dead::Unknown => GateError::Unavailable,
            Dead::Unseen
                if sessions.is_shared()
                    && (now - claims.issued_at).abs() <= PENDING_WINDOW_SECS =>
            {
                GateError::Pending(claims.session_id.clone())
            }
            dead => GateError::Invalid(dead.reason()),
        })?;
    Ok(Identity {
        session_id: claims.session_id,
        expires_at: claims.expires_at,
        principal,
    })
}

/// Decide an authenticated rule at time `now`: the caller presenting `credential`, if their
/// role is allowed. (A public rule needs no decision: see `Rule::is_public`.)
pub fn authorize(
    tokens: &TokenService,
    sessions: &SessionTable,
    rule: &Rule,
    credential: Option<Credential<'_>>,
    now: i64,
) -> Result<Identity, GateError> {
    let identity = authenticate(tokens, sessions, credential.ok_or(GateError::Missing)?, now)?;
    if !rule.allows_role(&identity.principal.role) {
        return Err(GateError::Forbidden);
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sessions::{NewSession, Principal};
    use crate::auth::tokens::Subject;
    use http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h).unwrap(), None);
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(credential(&h).unwrap(), None);
        h.insert(
            "authorization",
            HeaderValue::from_static("bearer abc.def.ghi"),
        );
        assert_eq!(
            credential(&h).unwrap(),
            Some(Credential::Bearer("abc.def.ghi"))
        );
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert!(credential(&h).is_err());
        h.append("authorization", HeaderValue::from_static("Bearer x"));
        assert!(matches!(credential(&h), Err(GateError::Malformed(_))));
    }

    #[test]
    fn the_role_comes_from_the_session_not_the_token() {
        let config = crate::config::Config::from_raw(&crate::config::RawConfig::default()).unwrap();
        let tokens = TokenService::new(&config.auth, b"0123456789abcdef0123456789abcdef");
        let sessions = SessionTable::new(600);
        sessions.insert(NewSession {
            id: "s",
            expires_at: 10_000,
            last_seen: 1000,
            principal: Principal {
                user_id: "u".into(),
                email: "u@example.com".into(),
                nickname: "u".into(),
                role: "user".into(),
            },
        });
        let token = tokens
            .issue(
                &Subject {
                    user_id: "u",
                    email: "boss@example.com",
                    nickname: "boss",
                    role: "admin",
                    session_id: "s",
                },
                1000,
            )
            .unwrap();
        let admin_only = Rule {
            auth: RouteAuth::Required,
            roles: vec!["admin".into()],
        };
        let cred = Some(Credential::Bearer(&token));
        assert_eq!(
            authorize(&tokens, &sessions, &admin_only, cred, 1001),
            Err(GateError::Forbidden)
        );
        let anyone = Rule {
            auth: RouteAuth::Required,
            roles: vec![],
        };
        let who = authorize(&tokens, &sessions, &anyone, cred, 1001).unwrap();
        assert_eq!(who.principal.role, "user");
        assert_eq!(who.principal.email, "u@example.com");
        assert_eq!(
            authorize(&tokens, &sessions, &anyone, None, 1001),
            Err(GateError::Missing)
        );
    }
}
