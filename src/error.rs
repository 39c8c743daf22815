//! The edge error: each variant's HTTP status, public message and extra headers are decided
//! here, once, and every domain error (accounts, gate) maps into it here. Details go to the
//! log, never to the client.

use http::StatusCode;

/// The realm named in every `WWW-Authenticate` challenge (RFC 6750 §3).
pub const REALM: &str = "portcullis";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No bearer token where one is required.
    #[error("missing bearer token")]
    MissingToken,
    /// A token was sent but failed validation; the reason is for the log only.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// Authenticated, but the role is not allowed here.
    #[error("insufficient role")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request target or headers are malformed or ambiguous; the message is public.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("payload too large")]
    PayloadTooLarge,
    /// The body is not the JSON the endpoint expects; the message (serde's) is public.
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// A value breaks a rule (password policy, field format); the message is public.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A unique field is taken: "email" or "nickname".
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// Login with an unknown email or a wrong password: the two are indistinguishable.
    #[error("bad credentials")]
    BadCredentials,
    #[error("account locked")]
    AccountLocked,
    #[error("email not verified")]
    EmailNotVerified,
    /// A rate limit or the login guard refused the request; the detail names the limit when
    /// the client should know which (else "Too many requests").
    #[error("throttled")]
    Throttled(crate::auth::limiter::Decision, Option<String>),
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("request timeout")]
    RequestTimeout,
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("service shutting down")]
    Unavailable,
    /// Anything unexpected; the detail is logged, the client sees a fixed message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::MissingToken | Error::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Invalid(_) | Error::Duplicate(_) => StatusCode::BAD_REQUEST,
            Error::BadCredentials => StatusCode::UNAUTHORIZED,
            Error::AccountLocked | Error::EmailNotVerified => StatusCode::FORBIDDEN,
            Error::Throttled(..) => StatusCode::TOO_MANY_REQUESTS,
            Error::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message clients see in `{"detail": …}`.
    pub fn public_message(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::Unprocessable(msg) | Error::Invalid(msg) | Error::Throttled(_, Some(msg)) => {
                msg.clone().into()
            }
            other => other.fixed_message().into(),
        }
    }

    fn fixed_message(&self) -> &'static str {
        match self {
            Error::Unprocessable(_) | Error::Invalid(_) => "Invalid request",
            Error::Duplicate("email") => "Email already registered",
            Error::Duplicate(_) => "Nickname already taken",
            Error::BadCredentials => "Incorrect email or password",
            Error::AccountLocked => "Account locked",
            Error::EmailNotVerified => "Email not verified",
            Error::Throttled(..) => "Too many requests",
            Error::HeadersTooLarge => "Request headers too large",
            Error::RequestTimeout => "Request timed out",
            Error::MissingToken => "Not authenticated",
            Error::InvalidToken(_) => "Could not validate credentials",
            Error::Forbidden => "Not enough permissions",
            Error::NotFound => "Not Found",
            Error::MethodNotAllowed => "Method Not Allowed",
            Error::BadRequest(msg) => msg,
            Error::PayloadTooLarge => "Request body too large",
            Error::UpstreamUnavailable => "Upstream unavailable",
            Error::UpstreamTimeout => "Upstream timed out",
            Error::Unavailable => "Service unavailable",
            Error::Internal(_) => "Internal server error",
        }
    }

    /// The `WWW-Authenticate` challenge this error carries, if any (RFC 6750 §3).
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            Error::MissingToken | Error::BadCredentials => Some("Bearer realm=\"portcullis\""),
            Error::InvalidToken(_) => Some(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"The access token is invalid or expired\"",
            ),
            Error::Forbidden => Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\""),
            _ => None,
        }
    }

    /// Every header this error's response carries besides Content-Type and Content-Length.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("cache-control", "no-store".to_string())];
        if let Some(challenge) = self.challenge() {
            h.push(("www-authenticate", challenge.to_string()));
        }
        if let Error::Throttled(decision, _) = self {
            h.extend(decision.headers());
        }
        if let Error::Unavailable = self {
            h.push(("retry-after", "2".to_string()));
        }
        h
    }

    /// A short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MissingToken => "missing_token",
            Error::InvalidToken(why) => why,
            Error::Forbidden => "forbidden_role",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::BadRequest(_) => "bad_request",
            Error::PayloadTooLarge => "payload_too_large",
            Error::Unprocessable(_) => "unprocessable",
            Error::Invalid(_) => "invalid",
            Error::Duplicate(_) => "duplicate",
            Error::BadCredentials => "bad_credentials",
            Error::AccountLocked => "account_locked",
            Error::EmailNotVerified => "email_not_verified",
            Error::Throttled(..) => "throttled",
            Error::HeadersTooLarge => "headers_too_large",
            Error::RequestTimeout => "request_timeout",
            Error::UpstreamUnavailable => "upstream_unavailable",
            Error::UpstreamTimeout => "upstream_timeout",
            Error::Unavailable => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The JSON body clients see.
    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({ "detail": self.public_message() })
            .to_string()
            .into_bytes()
    }
}

impl From<crate::accounts::AccountError> for Error {
    fn from(e: crate::accounts::AccountError) -> Error {
        use crate::accounts::AccountError as A;
        match e {
            A::Invalid(msg) => Error::Invalid(msg),
            A::Duplicate(field) => Error::Duplicate(field),
            A::BadCredentials => Error::BadCredentials,
            A::Unauthenticated(why) => Error::InvalidToken(why),
            A::Locked => Error::AccountLocked,
            A::EmailNotVerified => Error::EmailNotVerified,
            A::Forbidden => Error::Forbidden,
            A::NotFound => Error::NotFound,
            A::Throttled(decision, detail) => Error::Throttled(decision, detail),
            A::Unavailable => Error::Unavailable,
            A::Internal(detail) => Error::Internal(detail),
        }
    }
}

impl From<crate::auth::gate::GateError> for Error {
    fn from(e: crate::auth::gate::GateError) -> Error {
        use crate::auth::gate::GateError as G;
        match e {
            G::Missing => Error::MissingToken,
            G::Invalid(why) => Error::InvalidToken(why),
            G::Forbidden => Error::Forbidden,
            G::Malformed(msg) => Error::BadRequest(msg),
            G::Unavailable => Error::Unavailable,
            G::Pending(_) => Error::InvalidToken("session_ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_never_reaches_the_body() {
        let e = Error::Internal("redb: /var/lib/portcullis/x.redb corrupted".into());
        let body = String::from_utf8(e.body()).unwrap();
        assert_eq!(body, r#"{"detail":"Internal server error"}"#);
        assert!(!body.contains("redb"));
    }

    #[test]
    fn challenges_follow_rfc6750() {
        assert_eq!(
            Error::MissingToken.challenge(),
            Some("Bearer realm=\"portcullis\"")
        );
        assert!(Error::InvalidToken("expired")
            .challenge()
            .unwrap()
            .contains("error=\"invalid_token\""));
        assert_eq!(Error::NotFound.challenge(), None);
        assert!(Error::MissingToken.challenge().unwrap().contains(REALM));
    }
}
