//! Path confusion: the route decision is made on exactly the path the upstream receives, and
//! anything ambiguous is refused with 400 before any upstream request.

use crate::common::{parse_response, raw_exchange, raw_get, route, EchoUpstream, TestServer};

/// `/admin` needs the admin role; `/public` is open; the user token is not an admin.
fn setup() -> (EchoUpstream, TestServer) {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.routes = vec![
            route("/admin", addr, "required", &["admin"]),
            route("/public", addr, "public", &[]),
            route("/", addr, "required", &[]),
        ];
    });
    (upstream, server)
}

#[test]
fn dot_segments_and_slashes_are_resolved_before_the_decision() {
    let (upstream, server) = setup();
    // Each of these would reach /admin on a naive upstream: after normalization they are /admin
    // and need the admin role, so an anonymous caller gets 401 and the upstream sees nothing.
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin/",
        "/public/./../admin/x",
        "//admin",
        "/public//..//admin",
        "/ADMIN",
        "/Admin/x",
        "/%61dmin",
    ] {
        let resp = raw_get(server.addr(), target, "");
        assert_eq!(resp.status, 401, "{target}: {}", resp.body);
    }
    assert_eq!(upstream.count(), 0);

    // The upstream receives the normalized path it was judged on.
    let resp = raw_get(server.addr(), "/admin/../public/./a//b?x=%2F&y=1", "");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(upstream.last().target, "/public/a/b?x=%2F&y=1");
}

#[test]
fn ambiguous_encodings_are_refused() {
    let (upstream, server) = setup();
    for target in [
        "/public%2f..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/..%2fadmin",
        "/public%252f..%252fadmin",
        "/public/%252e%252e/admin",
        "/public%25%32%66..%25%32%66admin",
        "/public\\..\\admin",
        "/public/%5c../admin",
        "/public/%00/admin",
        "/admin;jsessionid=1",
        "/public;/../admin",
        "/../admin",
        "/public/%zz",
        // Encoded delimiters, once and twice, and segments some servers trim: each would be
        // judged as another path than the one an upstream may act on.
        "/admin%3Bx",
        "/admin%3bx",
        "/admin%3Fx",
        "/admin%23x",
        "/admin%253Bx",
        "/admin%253Fx",
        "/admin%2523x",
        "/public/x%3B/../../admin",
        "/admin.",
        "/admin./x",
        "/admin%2E/x",
        "/admin%20",
        "/admin%20/x",
        "/public/x.",
    ] {
        let resp = raw_get(server.addr(), target, "");
        assert!(
            resp.status == 400,
            "{target}: expected 400, got {} {}",
            resp.status,
            resp.body
        );
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{target}"
        );
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn absolute_form_must_agree_with_host() {
    let (upstream, server) = setup();
    let addr = server.addr();
    let req = format!(
        "GET http://evil.example/public/x HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let resp = parse_response(&raw_exchange(addr, req.as_bytes()));
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(upstream.count(), 0);

    let req = format!("GET http://{addr}/public/../public/y HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = parse_response(&raw_exchange(addr, req.as_bytes()));
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(upstream.last().target, "/public/y");
}

#[test]
fn duplicate_host_is_refused() {
    let (upstream, server) = setup();
    let resp = raw_get(server.addr(), "/public/x", "Host: evil.example\r\n");
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn rewrite_headers_do_not_change_the_decision() {
    let (upstream, server) = setup();
    for header in [
        "X-Original-URL: /public/x",
        "X-Rewrite-URL: /public/x",
        "X-Forwarded-Uri: /public/x",
    ] {
        let resp = raw_get(server.addr(), "/admin/x", &format!("{header}\r\n"));
        assert_eq!(resp.status, 401, "{header}");
    }
    assert_eq!(upstream.count(), 0);
}

#[test]
fn unrouted_paths_get_404_json() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| raw.routes = vec![route("/api", addr, "public", &[])]);
    for target in ["/", "/apix", "/other/api"] {
        let resp = raw_get(server.addr(), target, "");
        assert_eq!(resp.status, 404, "{target}");
        assert_eq!(resp.json()["detail"], "Not Found");
    }
    assert_eq!(upstream.count(), 0);
}
