//! What the upstream receives: spoofed identity and forwarding headers never, in any spelling;
//! the real identity, request id and forwarding headers always.

use crate::common::{
    client, parse_response, raw_exchange, raw_get, route, EchoUpstream, TestServer,
};

const SPOOFS: &str = "X-Auth-User-Id: evil\r\n\
x-auth-user-id: evil2\r\n\
X-AUTH-ROLE: admin\r\n\
X_Auth_User_Id: evil3\r\n\
x_auth_email: evil@example.com\r\n\
X-Auth-Anything-Else: evil\r\n\
X-Service-Token: stolen\r\n\
X-Original-URL: /admin\r\n\
X-Forwarded-Uri: /admin\r\n\
X-Rewrite-URL: /admin\r\n\
Forwarded: for=1.2.3.4\r\n\
X-Real-IP: 1.2.3.4\r\n";

fn assert_no_spoof(seen: &crate::common::echo::Seen) {
    for (name, value) in &seen.headers {
        let canon = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !(canon.starts_with("x-auth-") && value.contains("evil")),
            "spoofed {name}: {value} reached the upstream"
        );
        assert!(!value.contains("stolen"), "{name} reached the upstream");
        assert!(
            !matches!(
                canon.as_str(),
                "x-original-url" | "x-forwarded-uri" | "x-rewrite-url" | "forwarded"
            ),
            "{name} reached the upstream"
        );
        assert_ne!(
            value, "1.2.3.4",
            "{name} carried the client's claimed address"
        );
    }
}

#[test]
fn spoofed_identity_headers_are_stripped_on_protected_routes() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let token = server.token("user");
    let resp = raw_get(
        server.addr(),
        "/api/x",
        &format!("Authorization: Bearer {token}\r\n{SPOOFS}"),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    let seen = upstream.last();
    assert_no_spoof(&seen);
    assert_eq!(seen.all("x-auth-user-id"), vec!["user-1"]);
    assert_eq!(seen.all("x-auth-role"), vec!["user"]);
}

#[test]
fn spoofed_identity_headers_are_stripped_on_public_routes() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let resp = raw_get(server.addr(), "/public/x", SPOOFS);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let seen = upstream.last();
    assert_no_spoof(&seen);
    assert!(seen.header("x-auth-user-id").is_none());
}

#[test]
fn connection_header_cannot_remove_injected_identity() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let token = server.token("user");
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Connection: close, X-Auth-User-Id, X-Auth-Role, X-Request-Id\r\nX-Auth-User-Id: evil\r\n\r\n"
    );
    let resp = parse_response(&raw_exchange(server.addr(), req.as_bytes()));
    assert_eq!(resp.status, 200, "{}", resp.body);
    let seen = upstream.last();
    assert_eq!(seen.all("x-auth-user-id"), vec!["user-1"]);
    assert_eq!(seen.all("x-auth-role"), vec!["user"]);
    assert_eq!(seen.all("x-request-id").len(), 1);

    // Nominating a forwarding header for removal is refused outright (pingora's policy).
    let before = upstream.count();
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Connection: close, X-Forwarded-For\r\n\r\n"
    );
    let resp = parse_response(&raw_exchange(server.addr(), req.as_bytes()));
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(upstream.count(), before);
}

#[test]
fn identity_values_are_header_safe() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let token = server.token_for(
        "u-2",
        "zoë@example.com",
        "Zoë\r\nX-Auth-Role: admin",
        "user",
    );
    let resp = client()
        .get(server.url("/api/x"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.header("x-auth-email"), Some("zo%C3%AB@example.com"));
    assert_eq!(
        seen.header("x-auth-nickname"),
        Some("Zo%C3%AB%0D%0AX-Auth-Role: admin")
    );
    assert_eq!(seen.all("x-auth-role"), vec!["user"]);
}

#[test]
fn request_id_is_kept_when_well_formed_and_generated_otherwise() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let resp = raw_get(
        server.addr(),
        "/public/x",
        "X-Request-Id: trace-abc.123\r\n",
    );
    assert_eq!(resp.header("x-request-id"), Some("trace-abc.123"));
    assert_eq!(upstream.last().all("x-request-id"), vec!["trace-abc.123"]);

    let resp = raw_get(
        server.addr(),
        "/public/x",
        "X-Request-Id: bad id with spaces\r\n",
    );
    let generated = resp.header("x-request-id").unwrap().to_string();
    assert_eq!(generated.len(), 36, "{generated}");
    assert_eq!(
        upstream.last().all("x-request-id"),
        vec![generated.as_str()]
    );

    let resp = raw_get(server.addr(), "/public/x", "");
    let a = resp.header("x-request-id").unwrap().to_string();
    let b = raw_get(server.addr(), "/public/x", "")
        .header("x-request-id")
        .unwrap()
        .to_string();
    assert_ne!(a, b);
    // Refusals carry one too.
    let refused = raw_get(server.addr(), "/api/x", "X-Request-Id: denied-1\r\n");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("x-request-id"), Some("denied-1"));
}

#[test]
fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let resp = raw_get(
        server.addr(),
        "/public/x",
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n",
    );
    assert_eq!(resp.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(server.addr().to_string().as_str())
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
}

#[test]
fn forwarding_headers_from_a_trusted_proxy_are_extended() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        raw.routes = vec![route("/public", addr, "public", &[])];
    });
    let resp = raw_get(
        server.addr(),
        "/public/x",
        "X-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.com\r\n",
    );
    assert_eq!(resp.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.all("x-forwarded-for"), vec!["203.0.113.5, 127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("app.example.com"));
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.5"));
}

#[test]
fn identity_header_names_are_configurable() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.proxy.identity_header_prefix = "X-Portcullis-".into();
        raw.proxy.user_id_header = "X-Portcullis-Uid".into();
        raw.proxy.email_header = "X-Portcullis-Mail".into();
        raw.proxy.nickname_header = "X-Portcullis-Nick".into();
        raw.proxy.role_header = "X-Portcullis-Role".into();
        raw.routes = vec![route("/api", addr, "required", &[])];
    });
    let token = server.token("user");
    let resp = raw_get(
        server.addr(),
        "/api/x",
        &format!("Authorization: Bearer {token}\r\nX-Portcullis-Role: admin\r\nX_PORTCULLIS_UID: evil\r\n"),
    );
    assert_eq!(resp.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.all("x-portcullis-uid"), vec!["user-1"]);
    assert_eq!(seen.all("x-portcullis-role"), vec!["user"]);
    assert!(seen.all("x_portcullis_uid").is_empty());
}

/// Headers other proxies and servers use for the client's address and scheme, or for the user.
const CLAIMS: &str = "X-Client-IP: 1.2.3.4\r\n\
True-Client-IP: 1.2.3.4\r\n\
CF-Connecting-IP: 1.2.3.4\r\n\
X-Cluster-Client-IP: 1.2.3.4\r\n\
Fastly-Client-IP: 1.2.3.4\r\n\
Client-IP: 1.2.3.4\r\n\
X-Forwarded-Server: evil.example\r\n\
X-Forwarded-Scheme: https\r\n\
X-Forwarded-Ssl: on\r\n\
Front-End-Https: on\r\n\
X-Url-Scheme: https\r\n\
X-Host: evil.example\r\n\
X-Forwarded-User: admin\r\n\
X_Forwarded_Email: ceo@victim.example\r\n\
Remote-User: admin\r\n\
X-Tenant: other-tenant\r\n";

const CLIENT_CLAIMS: &[&str] = &[
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "client-ip",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "front-end-https",
    "x-url-scheme",
    "x-host",
];

fn seen_names(seen: &crate::common::echo::Seen) -> Vec<String> {
    seen.headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase().replace('_', "-"))
        .collect()
}

#[test]
fn address_scheme_and_user_claims_are_stripped_from_untrusted_clients() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.proxy.strip_headers = vec!["X-Tenant".into()];
        raw.routes = vec![route("/public", addr, "public", &[])];
    });
    let resp = raw_get(server.addr(), "/public/x", CLAIMS);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let names = seen_names(&upstream.last());
    for claim in CLIENT_CLAIMS.iter().chain(&[
        "x-forwarded-user",
        "x-forwarded-email",
        "remote-user",
        "x-tenant",
    ]) {
        assert!(
            !names.contains(&claim.to_string()),
            "{claim} reached the upstream"
        );
    }
}

#[test]
fn a_trusted_proxy_may_vouch_for_the_address_but_never_for_the_user() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        raw.proxy.strip_headers = vec!["x-tenant".into()];
        raw.routes = vec![route("/public", addr, "public", &[])];
    });
    let resp = raw_get(server.addr(), "/public/x", CLAIMS);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let seen = upstream.last();
    assert_eq!(seen.header("cf-connecting-ip"), Some("1.2.3.4"));
    let names = seen_names(&seen);
    for claim in [
        "x-forwarded-user",
        "x-forwarded-email",
        "remote-user",
        "x-tenant",
    ] {
        assert!(
            !names.contains(&claim.to_string()),
            "{claim} reached the upstream"
        );
    }
}
