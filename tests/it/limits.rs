//! Rate limits and abuse protection, black-box. Windows pass by moving the injected clock.

use crate::common::{client, parse_response, route, EchoUpstream, TestServer};
use reqwest::blocking::Response;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

const PW: &str = "Tr1cky-Horse!";

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// GET through the API as client `ip` (the server trusts 127.0.0.1 as a proxy).
fn get_as(server: &TestServer, path: &str, ip: &str) -> Response {
    client()
        .get(server.url(path))
        .header("x-forwarded-for", ip)
        .send()
        .unwrap()
}

fn post_as(server: &TestServer, path: &str, ip: &str, body: Value) -> Response {
    client()
        .post(server.url(path))
        .header("x-forwarded-for", ip)
        .json(&body)
        .send()
        .unwrap()
}

#[test]
fn the_originals_public_limit_is_per_client_ip() {
    let server = TestServer::start(|raw| {
        raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        raw.rate_limits.public_routes = 3;
        raw.rate_limits.public_time_unit = "10minute".into();
    });
    for remaining in ["2", "1", "0"] {
        let resp = get_as(&server, "/auth/", "203.0.113.1");
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(
            header(&resp, "ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert!(header(&resp, "ratelimit-reset").is_some());
    }
    let refused = get_as(&server, "/auth/", "203.0.113.1");
    assert_eq!(refused.status(), 429);
    assert_eq!(
        header(&refused, "retry-after").as_deref(),
        Some("200"),
        "one request per 200 s"
    );
    assert_eq!(
        header(&refused, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        refused.json::<Value>().unwrap(),
        json!({"detail": "Too many requests"})
    );
    // Another client has its own bucket.
    assert_eq!(get_as(&server, "/auth/", "203.0.113.2").status(), 200);
    server.clock.advance(200);
    assert_eq!(get_as(&server, "/auth/", "203.0.113.1").status(), 200);
    assert_eq!(get_as(&server, "/auth/", "203.0.113.1").status(), 429);
    let metrics = server.metrics();
    assert!(
        metrics.contains(
            "portcullis_rate_limit_decisions_total{outcome=\"throttle\",scope=\"api_public\"} 2"
        ),
        "{metrics}"
    );
}

#[test]
fn an_untrusted_client_cannot_change_its_bucket() {
    let server = TestServer::start(|raw| raw.rate_limits.public_routes = 2);
    assert_eq!(get_as(&server, "/auth/", "198.51.100.1").status(), 200);
    assert_eq!(get_as(&server, "/auth/", "198.51.100.2").status(), 200);
    let third = client()
        .get(server.url("/auth/"))
        .header("x-forwarded-for", "198.51.100.3")
        .header("x-real-ip", "198.51.100.4")
        .send()
        .unwrap();
    assert_eq!(
        third.status(),
        429,
        "X-Forwarded-For from an untrusted peer is ignored"
    );
}

#[test]
fn the_originals_private_limit_is_per_user() {
    let server = TestServer::start(|raw| {
        raw.auth.idle_minutes = 120;
        raw.auth.access_token_expire_minutes = 120;
        raw.rate_limits.private_routes = 2;
        raw.rate_limits.private_time_unit = "60minute".into();
    });
    server.register("a@example.com", "a", PW);
    server.register("b@example.com", "b", PW);
    let a = server.login("a@example.com", PW);
    let b = server.login("b@example.com", PW);
    assert_eq!(server.api("GET", "/my_account/", Some(&a), None).0, 200);
    assert_eq!(server.api("GET", "/my_account/", Some(&a), None).0, 200);
    assert_eq!(server.api("GET", "/my_account/", Some(&a), None).0, 429);
    assert_eq!(
        server.api("GET", "/my_account/", Some(&b), None).0,
        200,
        "another user, same address"
    );
    server.clock.advance(1800);
    assert_eq!(server.api("GET", "/my_account/", Some(&a), None).0, 200);
}

#[test]
fn routes_limit_per_user_or_per_ip_and_the_default_applies_elsewhere() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        raw.limits.route_default = "1/1minute".into();
        let mut api = route("/api", addr, "required", &[]);
        api.rate_limit = Some("2/1minute".into());
        let mut public = route("/public", addr, "public", &[]);
        public.rate_limit = Some("2/1minute".into());
        raw.routes = vec![api, public, route("/other", addr, "public", &[])];
    });
    let a = server.token_for("ua", "a@example.com", "a", "user");
    let b = server.token_for("ub", "b@example.com", "b", "user");
    let call = |path: &str, token: Option<&str>, ip: &str| {
        let mut req = client().get(server.url(path)).header("x-forwarded-for", ip);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().unwrap()
    };
    let first = call("/api/x", Some(&a), "203.0.113.1");
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header(&first, "ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(
        call("/api/x", Some(&a), "203.0.113.2").status(),
        200,
        "per user, whatever the address"
    );
    let refused = call("/api/x", Some(&a), "203.0.113.3");
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("30"));
    assert_eq!(
        call("/api/x", Some(&b), "203.0.113.1").status(),
        200,
        "user b has its own bucket"
    );
    assert_eq!(
        upstream.count(),
        3,
        "a throttled request never reaches the upstream"
    );

    assert_eq!(call("/public/x", None, "203.0.113.9").status(), 200);
    assert_eq!(call("/public/x", None, "203.0.113.9").status(), 200);
    assert_eq!(call("/public/x", None, "203.0.113.9").status(), 429);
    assert_eq!(
        call("/public/x", None, "203.0.113.10").status(),
        200,
        "per client IP"
    );

    assert_eq!(call("/other/x", None, "203.0.113.20").status(), 200);
    assert_eq!(
        call("/other/x", None, "203.0.113.20").status(),
        429,
        "the global default"
    );
    server.clock.advance(60);
    assert_eq!(call("/other/x", None, "203.0.113.20").status(), 200);
}

crate::on_both_backends! {
    fn password_guessing_throttles_the_account_not_the_address() {
        let server = TestServer::start(|raw| raw.server.trusted_proxies = vec!["127.0.0.1/32".into()]);
        server.register("victim@example.com", "victim", PW);
        server.register("bystander@example.com", "bystander", PW);
        let login = |email: &str, password: &str, ip: &str| {
            post_as(
                &server,
                "/auth/login",
                ip,
                json!({"email": email, "password": password}),
            )
        };
        for i in 0..5 {
            assert_eq!(
                login(
                    "victim@example.com",
                    "Wr0ng-guess!",
                    &format!("198.51.100.{i}")
                )
                .status(),
                401
            );
        }
        // Even the right password, from a new address, is refused while the block lasts.
        let blocked = login("victim@example.com", PW, "198.51.100.77");
        assert_eq!(blocked.status(), 429);
        assert_eq!(header(&blocked, "retry-after").as_deref(), Some("30"));
        // Other accounts are not affected.
        assert_eq!(
            login("bystander@example.com", PW, "198.51.100.1").status(),
            200
        );
        // An unknown account is throttled exactly like a real one.
        for i in 0..5 {
            assert_eq!(
                login(
                    "ghost@example.com",
                    "Wr0ng-guess!",
                    &format!("198.51.100.{i}")
                )
                .status(),
                401
            );
        }
        let ghost = login("ghost@example.com", PW, "198.51.100.77");
        assert_eq!(ghost.status(), 429);
        assert_eq!(header(&ghost, "retry-after"), Some("30".to_string()));
        assert_eq!(
            ghost.text().unwrap(),
            login("victim@example.com", PW, "198.51.100.78")
                .text()
                .unwrap()
        );
        // The back-off grows with each further failure.
        server.clock.advance(30);
        assert_eq!(
            login("victim@example.com", "Wr0ng-guess!", "198.51.100.5").status(),
            401
        );
        assert_eq!(
            header(
                &login("victim@example.com", PW, "198.51.100.5"),
                "retry-after"
            )
            .as_deref(),
            Some("60")
        );
        // When the block has passed, the right password works and resets the count.
        server.clock.advance(60);
        assert_eq!(
            login("victim@example.com", PW, "198.51.100.5").status(),
            200
        );
        for _ in 0..4 {
            assert_eq!(
                login("victim@example.com", "Wr0ng-guess!", "198.51.100.5").status(),
                401
            );
        }
        assert_eq!(
            login("victim@example.com", PW, "198.51.100.5").status(),
            200,
            "four failures after a success do not block"
        );
        // Throttles are audited and counted.
        let metrics = server.metrics();
        assert!(
            metrics.contains(
                "portcullis_rate_limit_decisions_total{outcome=\"throttle\",scope=\"login_account\"}"
            ),
            "{metrics}"
        );
        let events = crate::common::block_on(server.store().audit_events(
            portcullis::store::models::AuditFilter {
                kind: Some(portcullis::store::models::AuditKind::Login),
                limit: 100,
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(events
            .iter()
            .any(|e| e.outcome == portcullis::store::models::Outcome::Throttled));
    }
}

crate::on_both_backends! {
    fn recovery_registration_and_resend_have_their_own_limits() {
        let server = TestServer::start(|raw| {
            raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
            raw.limits.recovery_per_account = "2/1hour".into();
            raw.limits.registrations_per_ip = "2/1hour".into();
            raw.limits.resend_per_account = "1/1hour".into();
        });
        let reg = |email: &str, nick: &str, ip: &str| {
            post_as(&server, "/auth/register", ip, json!({"email": email, "nickname": nick, "password": PW, "passphrase": "correct horse battery staple"})).status()
        };
        assert_eq!(reg("r1@example.com", "r1", "203.0.113.1"), 201);
        assert_eq!(reg("r2@example.com", "r2", "203.0.113.1"), 201);
        let refused = post_as(&server, "/auth/register", "203.0.113.1", json!({"email": "r3@example.com", "nickname": "r3", "password": PW, "passphrase": "correct horse battery staple"}));
        assert_eq!(refused.status(), 429);
        assert!(header(&refused, "retry-after").is_some());
        assert_eq!(
            refused.json::<Value>().unwrap()["detail"],
            "Too many registrations from this address: at most 2 per 1 hour (limits.registrations_per_ip)",
            "the answer names the limit"
        );
        assert_eq!(
            reg("r3@example.com", "r3", "203.0.113.2"),
            201,
            "per address"
        );

        let recover = |email: &str, phrase: &str| {
            post_as(
                &server,
                "/auth/recovery",
                "203.0.113.5",
                json!({"email": email, "passphrase": phrase, "new_password": "N3w-Stable-Horse!"}),
            )
            .status()
        };
        assert_eq!(recover("r1@example.com", "wrong phrase guess"), 400);
        assert_eq!(recover("r1@example.com", "wrong phrase guess"), 400);
        assert_eq!(
            recover("r1@example.com", "correct horse battery staple"),
            429,
            "even the right passphrase"
        );
        assert_eq!(
            recover("r2@example.com", "correct horse battery staple"),
            200,
            "another account"
        );
        let events = crate::common::block_on(server.store().audit_events(
            portcullis::store::models::AuditFilter {
                kind: Some(portcullis::store::models::AuditKind::Recovery),
                limit: 100,
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(events
            .iter()
            .any(|e| e.outcome == portcullis::store::models::Outcome::Throttled));

        let resend = || {
            post_as(
                &server,
                "/auth/verify-email/resend",
                "203.0.113.5",
                json!({"email": "r3@example.com"}),
            )
            .status()
        };
        assert_eq!(resend(), 202);
        assert_eq!(resend(), 429);
        let refused = post_as(&server, "/auth/verify-email/resend", "203.0.113.5", json!({"email": "r3@example.com"}));
        assert_eq!(
            refused.json::<Value>().unwrap()["detail"],
            "Too many verification emails for this address: at most 1 per 1 hour (limits.resend_per_account)"
        );
    }
}

#[test]
fn oversized_headers_get_431_and_slow_bodies_are_cut_off() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.limits.max_header_bytes = 4096;
        raw.limits.body_read_timeout_seconds = 1;
        raw.routes = vec![route("/public", addr, "public", &[])];
    });
    let big = "x".repeat(5000);
    let resp = client()
        .get(server.url("/public/x"))
        .header("x-big", &big)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(
        client()
            .get(server.url("/auth/"))
            .header("x-big", &big)
            .send()
            .unwrap()
            .status(),
        431
    );
    assert_eq!(
        client()
            .get(server.url("/public/x"))
            .header("x-fine", "y".repeat(1000))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(upstream.count(), 1);

    // A client that sends part of its body and then stalls is answered 408 and cut off.
    for path in ["/auth/register", "/public/upload"] {
        let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"email\":"
                )
                .as_bytes(),
            )
            .unwrap();
        let started = std::time::Instant::now();
        let text = raw_exchange_for_stream(stream);
        let resp = parse_response(&text);
        assert_eq!(resp.status, 408, "{path}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn clients_that_dribble_their_request_head_are_cut_off() {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Instant;
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.limits.header_read_timeout_seconds = 1;
        raw.limits.body_read_timeout_seconds = 5;
        raw.routes = vec![route("/public", addr, "public", &[])];
    });
    let closed_within = |mut stream: TcpStream, limit: Duration| {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut out = Vec::new();
        let started = Instant::now();
        let read = stream.read_to_end(&mut out);
        assert!(read.is_ok(), "still open after {limit:?}: {read:?}");
        (
            started.elapsed(),
            String::from_utf8_lossy(&out).into_owned(),
        )
    };

    // One header byte every 200 ms: every single read is quick, the head as a whole is not.
    let mut slow = TcpStream::connect(server.addr()).unwrap();
    let started = Instant::now();
    let head = b"GET /public/slow HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for byte in head {
        if slow.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (_, answer) = closed_within(slow, Duration::from_secs(5));
    assert!(cut || started.elapsed() < Duration::from_secs(10));
    assert!(
        answer.is_empty(),
        "no answer to a head never finished: {answer}"
    );

    // A connection that never sends anything is closed too.
    let (took, _) = closed_within(
        TcpStream::connect(server.addr()).unwrap(),
        Duration::from_secs(10),
    );
    assert!(
        took < Duration::from_secs(5),
        "idle connection kept {took:?}"
    );

    let metrics = server.metrics();
    assert!(
        metrics.contains("portcullis_header_timeouts_total 2"),
        "{metrics}"
    );

    // Ordinary clients are untouched: a kept-alive connection may idle between requests for
    // longer than the head timeout, and a body may take longer than it (after a prompt head).
    let mut alive = TcpStream::connect(server.addr()).unwrap();
    alive
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let read_response = |stream: &mut TcpStream| {
        let mut buf = vec![0u8; 65536];
        let n = stream.read(&mut buf).unwrap();
        parse_response(&String::from_utf8_lossy(&buf[..n])).status
    };
    alive
        .write_all(b"GET /public/one HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut alive), 200);
    std::thread::sleep(Duration::from_millis(1600));
    alive
        .write_all(b"POST /public/two HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        alive.write_all(b"ab").unwrap();
    }
    assert_eq!(read_response(&mut alive), 200);
    assert_eq!(
        upstream.count(),
        2,
        "only the two complete requests went upstream"
    );
}

/// Read what the server sends on an already-written stream until it closes (10 s at most).
fn raw_exchange_for_stream(mut stream: std::net::TcpStream) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_flood_of_distinct_addresses_keeps_the_tracked_keys_bounded() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        raw.limits.max_tracked_keys = 200;
        let mut public = route("/public", addr, "public", &[]);
        public.rate_limit = Some("5/1minute".into());
        raw.routes = vec![public];
    });
    let c = client();
    for i in 0..1500u32 {
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        let status = c
            .get(server.url("/public/x"))
            .header("x-forwarded-for", ip)
            .send()
            .unwrap()
            .status();
        assert!(status == 200 || status == 429);
    }
    let live = server.server.state.live();
    let limiter = live.routes.routes()[0].limiter.as_ref().unwrap();
    assert!(
        limiter.tracked() <= 201,
        "tracked {} keys",
        limiter.tracked()
    );
    // Once the window has passed, idle keys are evicted.
    server.clock.advance(180);
    crate::common::block_on(server.server.state.evict_idle_limits());
    assert_eq!(limiter.tracked(), 0);
}

crate::on_both_backends! {
    fn a_flood_of_made_up_addresses_does_not_throttle_known_ones() {
        // Resend is keyed by an address the client chooses. Once the limiter is full, a new
        // address may share one allowance with other new ones, but an address it already
        // tracks keeps its own.
        let server = TestServer::start(|raw| {
            raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
            raw.limits.max_tracked_keys = 100;
            raw.limits.resend_per_account = "2/1hour".into();
            raw.rate_limits.public_routes = 100_000;
        });
        let resend = |email: &str| {
            post_as(&server, "/auth/verify-email/resend", "203.0.113.9", json!({"email": email}))
                .status()
                .as_u16()
        };
        assert_eq!(resend("victim@example.com"), 202);
        // (On one instance the flood shares one allowance once the limiter is full; on
        // PostgreSQL each address has its row.)
        for i in 0..400 {
            let status = resend(&format!("fake{i}@example.com"));
            assert!(status == 202 || status == 429, "flood answered {status}");
        }
        assert_eq!(resend("victim@example.com"), 202, "the known address kept its allowance");
        assert_eq!(resend("victim@example.com"), 429, "and only its allowance");
    }
}

#[test]
fn ipv6_clients_are_limited_per_network_not_per_address() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        raw.rate_limits.public_routes = 2;
        raw.rate_limits.public_time_unit = "10minute".into();
        raw.limits.registrations_per_ip = "1/1hour".into();
        let mut public = route("/public", addr, "public", &[]);
        public.rate_limit = Some("1/1minute".into());
        raw.routes = vec![public];
    });
    // The public API limit: three addresses of one /64 share it; another /64 has its own.
    assert_eq!(get_as(&server, "/auth/", "2001:db8:1:2::1").status(), 200);
    assert_eq!(get_as(&server, "/auth/", "2001:db8:1:2::2").status(), 200);
    assert_eq!(
        get_as(&server, "/auth/", "2001:db8:1:2:ffff::3").status(),
        429
    );
    assert_eq!(get_as(&server, "/auth/", "2001:db8:1:3::1").status(), 200);
    // Registrations per address.
    let reg = |n: u32, ip: &str| {
        post_as(
            &server,
            "/auth/register",
            ip,
            json!({"email": format!("v6-{n}@example.com"),
            "nickname": format!("v6n{n}"), "password": PW,
            "passphrase": "correct horse battery staple"}),
        )
        .status()
    };
    assert_eq!(reg(1, "2001:db8:9:9::1"), 201);
    assert_eq!(reg(2, "2001:db8:9:9::abcd"), 429);
    // A public route's limit.
    assert_eq!(
        get_as(&server, "/public/x", "2001:db8:7:7::1").status(),
        200
    );
    assert_eq!(
        get_as(&server, "/public/x", "2001:db8:7:7::2").status(),
        429
    );
    assert_eq!(
        get_as(&server, "/public/x", "2001:db8:7:8::1").status(),
        200
    );
    // An IPv4-mapped address is the IPv4 address.
    assert_eq!(get_as(&server, "/public/x", "198.51.100.7").status(), 200);
    assert_eq!(
        get_as(&server, "/public/x", "::ffff:198.51.100.7").status(),
        429
    );

    // The prefix is a setting: /128 counts each address.
    let per_address = TestServer::start(|raw| {
        raw.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        raw.rate_limits.public_routes = 1;
        raw.limits.ipv6_prefix = 128;
    });
    assert_eq!(
        get_as(&per_address, "/auth/", "2001:db8:1:2::1").status(),
        200
    );
    assert_eq!(
        get_as(&per_address, "/auth/", "2001:db8:1:2::2").status(),
        200
    );
}
