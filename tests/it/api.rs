//! The accounts API's mount point: its prefix, methods, and how it shares the listener with
//! routes. (The endpoints themselves arrive with the accounts module.)

use crate::common::{client, parse_response, raw_exchange_for, route, EchoUpstream, TestServer};

#[test]
fn welcome_under_the_default_prefix() {
    let server = TestServer::start(|_| {});
    for path in ["/auth", "/auth/", "/AUTH/"] {
        let resp = client().get(server.url(path)).send().unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: serde_json::Value = resp.json().unwrap();
        assert!(body["message"].as_str().unwrap().contains("portcullis"));
    }
    let head = client().head(server.url("/auth/")).send().unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.text().unwrap(), "");
    let resp = client()
        .get(server.url("/auth/no-such-endpoint"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<serde_json::Value>().unwrap()["detail"],
        "Not Found"
    );
}

#[test]
fn other_methods_get_405_with_allow() {
    let server = TestServer::start(|_| {});
    for method in ["TRACE", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let resp = client()
            .request(method.parse().unwrap(), server.url("/auth/"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 405, "{method}");
        assert_eq!(resp.headers()["allow"], "GET, HEAD", "{method}");
    }
}

#[test]
fn root_mount_shares_the_listener_with_routes() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.api.prefix = String::new();
        raw.routes = vec![route("/", addr, "public", &[])];
    });
    let resp = client().get(server.url("/")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<serde_json::Value>().unwrap()["message"].is_string());
    assert_eq!(upstream.count(), 0, "the API's own path is not proxied");
    let resp = client().get(server.url("/auth/")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.count(), 1, "everything else goes to the routes");
}

#[test]
fn an_unread_body_is_never_parsed_as_a_second_request() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    for target in ["/api/x", "/auth/"] {
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        // A kept-alive connection stays open after the answer: stop reading after 1 s of quiet.
        let text = raw_exchange_for(
            server.addr(),
            req.as_bytes(),
            std::time::Duration::from_secs(1),
        );
        let resp = parse_response(&text);
        assert!(resp.status == 401 || resp.status == 405, "{target}: {text}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{target}: second response in {text}"
        );
    }
    assert_eq!(upstream.count(), 0);
}
