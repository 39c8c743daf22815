//! The gate on protected routes: every way a token can be wrong gets 401 with the right
//! challenge and never reaches the upstream; a valid token passes with its identity.

use crate::common::{client, unix_now, EchoUpstream, TestServer, TEST_KEY};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn good_claims() -> Value {
    let now = unix_now();
    json!({
        "iss": "portcullis", "aud": "portcullis", "sub": "user-1",
        "exp": now + 600, "iat": now, "nbf": now,
        "jti": "j1", "sid": "s1", "role": "user",
        "email": "alice@example.com", "nickname": "alice"
    })
}

fn sign(alg: Algorithm, key: &[u8], typ: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.typ = typ.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).unwrap()
}

/// The routes of `TestServer::with_routes`, and the live session the forged tokens name.
fn setup() -> (EchoUpstream, TestServer) {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    server.open_session("user-1", "s1");
    (upstream, server)
}

fn good_token(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        TEST_KEY.as_bytes(),
        Some("at+jwt"),
        claims,
    )
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// GET /api/x with the given Authorization header value; returns status, challenge, body.
fn call(server: &TestServer, auth: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = client().get(server.url("/api/x"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, challenge, resp.json().unwrap())
}

fn assert_invalid(server: &TestServer, upstream: &EchoUpstream, token: &str, case: &str) {
    let before = upstream.count();
    let (status, challenge, body) = call(server, Some(&format!("Bearer {token}")));
    assert_eq!(status, 401, "{case}: {body}");
    let challenge = challenge.unwrap_or_else(|| panic!("{case}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer realm=\"portcullis\""),
        "{case}: {challenge}"
    );
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{case}: {challenge}"
    );
    assert_eq!(
        body,
        json!({"detail": "Could not validate credentials"}),
        "{case}"
    );
    assert_eq!(
        upstream.count(),
        before,
        "{case}: request reached the upstream"
    );
}

#[test]
fn valid_token_passes_with_identity_headers() {
    let (upstream, server) = setup();
    let resp = client()
        .get(server.url("/api/things?x=1"))
        .bearer_auth(server.token("user"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.target, "/api/things?x=1");
    assert_eq!(seen.header("x-auth-user-id"), Some("user-1"));
    assert_eq!(seen.header("x-auth-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-auth-nickname"), Some("alice"));
    assert_eq!(seen.header("x-auth-role"), Some("user"));
    // The token itself still reaches the upstream only as the client sent it.
    assert!(seen.header("authorization").unwrap().starts_with("Bearer "));
}

#[test]
fn missing_token_gets_bare_challenge_and_no_upstream_request() {
    let (upstream, server) = setup();
    for auth in [None, Some("Basic dXNlcjpwYXNz"), Some("Token abc")] {
        let (status, challenge, body) = call(&server, auth);
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"portcullis\""),
            "{auth:?}"
        );
        assert_eq!(body, json!({"detail": "Not authenticated"}));
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn token_in_query_string_is_ignored() {
    let (upstream, server) = setup();
    let token = server.token("user");
    for q in ["access_token", "token", "jwt"] {
        let resp = client()
            .get(server.url(&format!("/api/x?{q}={token}")))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401, "{q}");
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn alg_none_in_any_casing_is_refused() {
    let (upstream, server) = setup();
    let claims = good_claims();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt"});
        let unsigned = format!("{}.{}.", b64(&header), b64(&claims));
        assert_invalid(&server, &upstream, &unsigned, alg);
        let with_sig = format!("{}.{}.c2lnbmF0dXJl", b64(&header), b64(&claims));
        assert_invalid(&server, &upstream, &with_sig, alg);
    }
}

#[test]
fn other_algorithms_and_keys_are_refused() {
    let (upstream, server) = setup();
    let claims = good_claims();
    let key = TEST_KEY.as_bytes();
    assert_invalid(
        &server,
        &upstream,
        &sign(Algorithm::HS384, key, Some("at+jwt"), &claims),
        "HS384",
    );
    assert_invalid(
        &server,
        &upstream,
        &sign(Algorithm::HS512, key, Some("at+jwt"), &claims),
        "HS512",
    );
    let foreign = b"another-secret-key-0123456789abcdef-0123";
    assert_invalid(
        &server,
        &upstream,
        &sign(Algorithm::HS256, foreign, Some("at+jwt"), &claims),
        "foreign key",
    );
    // A header naming a key to fetch, or a hostile kid, changes nothing.
    let header = json!({"alg": "HS256", "typ": "at+jwt", "jku": "http://127.0.0.1:1/jwks", "kid": "../../etc/passwd"});
    let forged = format!("{}.{}.c2ln", b64(&header), b64(&claims));
    assert_invalid(&server, &upstream, &forged, "jku/kid");
}

#[test]
fn tampered_or_truncated_tokens_are_refused() {
    let (upstream, server) = setup();
    let token = good_token(&good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut escalated = good_claims();
    escalated["role"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&escalated), parts[2]);
    assert_invalid(&server, &upstream, &tampered, "tampered payload");
    assert_invalid(
        &server,
        &upstream,
        &format!("{}.{}.", parts[0], parts[1]),
        "empty signature",
    );
    assert_invalid(
        &server,
        &upstream,
        &format!("{}.{}", parts[0], parts[1]),
        "two parts",
    );
    assert_invalid(&server, &upstream, "not-a-jwt", "garbage");
    assert_invalid(&server, &upstream, &"a".repeat(9000), "oversized");
}

#[test]
fn time_claims_are_enforced() {
    let (upstream, server) = setup();
    let now = unix_now();
    let mut c = good_claims();
    c["exp"] = json!(now - 60);
    assert_invalid(&server, &upstream, &good_token(&c), "exp in the past");
    let mut c = good_claims();
    c["nbf"] = json!(now + 600);
    assert_invalid(&server, &upstream, &good_token(&c), "nbf in the future");
    let mut c = good_claims();
    c["iat"] = json!(now + 600);
    assert_invalid(&server, &upstream, &good_token(&c), "iat in the future");
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_invalid(&server, &upstream, &good_token(&c), "missing exp");
    let mut c = good_claims();
    c["exp"] = json!((now + 600).to_string());
    assert_invalid(&server, &upstream, &good_token(&c), "exp as string");
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("iat");
    assert_invalid(&server, &upstream, &good_token(&c), "missing iat");
}

#[test]
fn leeway_is_small_and_bounded() {
    let (upstream, server) = setup();
    let now = unix_now();
    // Expired 2 s ago: inside the default 5 s leeway.
    let mut c = good_claims();
    c["exp"] = json!(now - 2);
    let (status, _, _) = call(&server, Some(&format!("Bearer {}", good_token(&c))));
    assert_eq!(status, 200);
    // Expired 31 s ago: beyond any allowed leeway.
    c["exp"] = json!(now - 31);
    assert_invalid(&server, &upstream, &good_token(&c), "31 s expired");
}

#[test]
fn issuer_audience_and_type_must_match() {
    let (upstream, server) = setup();
    let mut c = good_claims();
    c["iss"] = json!("someone-else");
    assert_invalid(&server, &upstream, &good_token(&c), "wrong iss");
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_invalid(&server, &upstream, &good_token(&c), "missing iss");
    let mut c = good_claims();
    c["aud"] = json!("other-service");
    assert_invalid(&server, &upstream, &good_token(&c), "wrong aud");
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_invalid(&server, &upstream, &good_token(&c), "missing aud");
    let c = good_claims();
    let key = TEST_KEY.as_bytes();
    assert_invalid(
        &server,
        &upstream,
        &sign(Algorithm::HS256, key, Some("JWT"), &c),
        "typ JWT",
    );
    assert_invalid(
        &server,
        &upstream,
        &sign(Algorithm::HS256, key, None, &c),
        "no typ",
    );
    assert_invalid(
        &server,
        &upstream,
        &sign(Algorithm::HS256, key, Some("reset+jwt"), &c),
        "reset token type",
    );
}

#[test]
fn role_rules_give_403_with_insufficient_scope() {
    let (upstream, server) = setup();
    let resp = client()
        .get(server.url("/admin/panel"))
        .bearer_auth(server.token("user"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(
        resp.json::<Value>().unwrap(),
        json!({"detail": "Not enough permissions"})
    );
    assert_eq!(upstream.count(), 0);
    let resp = client()
        .get(server.url("/admin/panel"))
        .bearer_auth(server.token("admin"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().header("x-auth-role"), Some("admin"));
}

#[test]
fn duplicate_authorization_headers_are_refused() {
    let (upstream, server) = setup();
    let token = server.token("user");
    let resp = crate::common::raw_get(
        server.addr(),
        "/api/x",
        &format!("Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n"),
    );
    assert_eq!(resp.status, 400);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn public_routes_need_no_token() {
    let (upstream, server) = setup();
    let resp = client().get(server.url("/public/page")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().header("x-auth-user-id"), None);
}
