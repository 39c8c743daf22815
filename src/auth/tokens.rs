//! Access tokens: issuing and validating signed JWTs (RFC 9068 profile, RFC 8725 practices).
//! Validation takes `now` as a parameter; only the edges read the clock.

use crate::config::{AuthSettings, SigningAlgorithm};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `typ` header of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Longest token accepted before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims portcullis puts in an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    /// Unique per token.
    pub jti: String,
    /// The session this token belongs to.
    pub sid: String,
    pub role: String,
    pub email: String,
    pub nickname: String,
}

/// What a valid token proves: a session of a user, until when. Who the user is (role, email,
/// nickname) is read from the live session, never from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub user_id: String,
    pub session_id: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Why a token is not valid; the reason is for logs and metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid token: {0}")]
pub struct TokenError(pub &'static str);

/// The user fields a token is issued for.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub nickname: &'a str,
    pub role: &'a str,
    pub session_id: &'a str,
}

/// Only these claims are read back; iss and aud are checked by jsonwebtoken, and the identity
/// claims (role, email, nickname) are informational: the gate uses the live session's.
#[derive(Deserialize)]
struct ReadClaims {
    sub: String,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nbf: Option<i64>,
    sid: String,
}

/// Signing and validation with one key and one algorithm.
pub struct TokenService {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_secs: i64,
    leeway_secs: i64,
}

impl TokenService {
    pub fn new(settings: &AuthSettings, key: &[u8]) -> TokenService {
        let algorithm = match settings.algorithm {
            SigningAlgorithm::Hs256 => Algorithm::HS256,
            SigningAlgorithm::Hs384 => Algorithm::HS384,
            SigningAlgorithm::Hs512 => Algorithm::HS512,
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        // exp/nbf/iat are checked against the caller's `now` in `validate`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        TokenService {
            algorithm,
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl_secs: settings.access_token_ttl.as_secs() as i64,
            leeway_secs: settings.leeway.as_secs() as i64,
        }
    }

    /// Lifetime of an issued token, in seconds.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// Issue an access token valid from `now` for the configured lifetime.
    pub fn issue(&self, subject: &Subject<'_>, now: i64) -> Result<String, TokenError> {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.user_id.to_string(),
            exp: now + self.ttl_secs,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            sid: subject.session_id.to_string(),
            role: subject.role.to_string(),
            email: subject.email.to_string(),
            nickname: subject.nickname.to_string(),
        };
        let mut header = Header::new(self.algorithm);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_string());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| {
            tracing::error!(error = %e, "token signing failed");
            TokenError("signing_failed")
        })
    }

    /// Validate a token's signature, algorithm, type and claims at time `now` (unix seconds).
    pub fn validate(&self, token: &str, now: i64) -> Result<TokenClaims, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError("malformed"));
        }
        let data = jsonwebtoken::decode::<ReadClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError(reason(e.kind())))?;
        let typ_ok = data.header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
                || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(TokenError("wrong_type"));
        }
        let c = data.claims;
        if c.exp <= now - self.leeway_secs {
            return Err(TokenError("expired"));
        }
        if c.nbf.is_some_and(|nbf| nbf > now + self.leeway_secs) {
            return Err(TokenError("not_yet_valid"));
        }
        if c.iat > now + self.leeway_secs {
            return Err(TokenError("issued_in_future"));
        }
        if c.sub.is_empty() || c.sid.is_empty() {
            return Err(TokenError("missing_claim"));
        }
        Ok(TokenClaims {
            user_id: c.sub,
            session_id: c.sid,
            issued_at: c.iat,
            expires_at: c.exp,
        })
    }
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => "wrong_algorithm",
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => "missing_claim",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        _ => "malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RawConfig};

    fn service() -> TokenService {
        let config = Config::from_raw(&RawConfig::default()).unwrap();
        TokenService::new(&config.auth, b"0123456789abcdef0123456789abcdef")
    }

    fn subject() -> Subject<'static> {
        Subject {
            user_id: "u1",
            email: "a@example.com",
            nickname: "a",
            role: "user",
            session_id: "s1",
        }
    }

    #[test]
    fn issued_token_validates_until_expiry_plus_leeway() {
        let s = service();
        let t = s.issue(&subject(), 1_000_000).unwrap();
        let id = s.validate(&t, 1_000_000).unwrap();
        assert_eq!(id.user_id, "u1");
        assert_eq!(id.session_id, "s1");
        let exp = 1_000_000 + s.ttl_secs();
        assert!(s.validate(&t, exp + 4).is_ok(), "within the 5 s leeway");
        assert!(matches!(
            s.validate(&t, exp + 5),
            Err(TokenError("expired"))
        ));
    }

    #[test]
    fn token_from_the_future_is_refused() {
        let s = service();
        let t = s.issue(&subject(), 2_000_000).unwrap();
        assert!(matches!(
            s.validate(&t, 2_000_000 - 60),
            Err(TokenError("not_yet_valid"))
        ));
    }

    #[test]
    fn each_token_has_its_own_jti() {
        let s = service();
        assert_ne!(
            s.issue(&subject(), 1).unwrap(),
            s.issue(&subject(), 1).unwrap()
        );
    }
}
