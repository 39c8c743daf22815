//! Registration, login, sessions and logout, black-box: what a front-end and an operator notice.

use crate::common::{client, link_token, route, EchoUpstream, TestServer};
use portcullis::server::RunningServer;
use portcullis::state::AppState;
use serde_json::{json, Value};
use std::sync::Arc;

const PW: &str = "Tr1cky-Horse!";

fn reg_body(email: &str, nickname: &str, password: &str) -> Value {
    json!({"email": email, "nickname": nickname, "password": password, "passphrase": "correct horse battery staple"})
}

crate::on_both_backends! {
    fn register_then_login_like_the_original() {
        let server = TestServer::start(|_| {});
        let (status, body) = server.api(
            "POST",
            "/register",
            None,
            Some(json!({
                "email": "Alice@Example.com", "nickname": "alice", "password": PW,
                "customer_account": "acme", "passphrase": "correct horse battery staple"
            })),
        );
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "opaque id: {id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            body,
            json!({"id": id, "nickname": "alice", "email": "Alice@Example.com"})
        );

        let resp = client()
            .post(server.url("/auth/login"))
            .json(&json!({"email": "alice@example.com", "password": PW}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let login: Value = resp.json().unwrap();
        assert_eq!(login["token_type"], "bearer");
        assert_eq!(login["expires_in"], 1800);
        assert_eq!(
            login["user"],
            json!({"id": id, "nickname": "alice", "email": "Alice@Example.com", "role": "user"})
        );
        let token = login["access_token"].as_str().unwrap();
        let (status, me) = server.api("GET", "/my_account/", Some(token), None);
        assert_eq!(status, 200);
        assert_eq!(me["customer_account"], "acme");
        assert_eq!(me["role"], "user");
        assert_eq!(me["is_logged_in"], true);
        let text = me.to_string();
        assert!(
            !text.contains("argon2") && !text.contains("correct horse"),
            "{text}"
        );
    }
}

crate::on_both_backends! {
    fn registration_errors() {
        let server = TestServer::start(|_| {});
        server.register("taken@example.com", "taken", PW);
        let cases: Vec<(Value, u16, &str)> = vec![
            (json!({"email": "a@example.com"}), 422, "missing field"),
            (
                json!({"email": 5, "nickname": "n", "password": PW, "passphrase": "correct horse battery"}),
                422,
                "invalid type",
            ),
            (reg_body("b@example.com", "b", "Sh0rt!"), 400, "at least 8"),
            (
                reg_body("b@example.com", "b", "alllowercase1!"),
                400,
                "upper-case",
            ),
            (
                reg_body("b@example.com", "b", "NoDigitsHere!"),
                400,
                "digit",
            ),
            (
                reg_body("b@example.com", "b", "NoSpecial123"),
                400,
                "special",
            ),
            (
                reg_body("b@example.com", "b", "P@ssw0rd"),
                400,
                "too common",
            ),
            (
                reg_body("b@example.com", "b", &format!("A1!{}", "x".repeat(126))),
                400,
                "at most 128",
            ),
            (
                reg_body("b@example.com\r\nBcc: evil@example.com", "b", PW),
                400,
                "Invalid email",
            ),
            (reg_body("not-an-email", "b", PW), 400, "Invalid email"),
            (
                reg_body("TAKEN@example.com", "other", PW),
                400,
                "Email already registered",
            ),
            (
                reg_body("c@example.com", "Taken", PW),
                400,
                "Nickname already taken",
            ),
            (reg_body("c@example.com", "", PW), 400, "Nickname"),
            (
                json!({"email": "d@example.com", "nickname": "d", "password": PW, "passphrase": "short"}),
                400,
                "Passphrase",
            ),
        ];
        for (body, status, needle) in cases {
            let (got, answer) = server.api("POST", "/register", None, Some(body.clone()));
            assert_eq!(got, status, "{body} -> {answer}");
            assert!(
                answer["detail"].as_str().unwrap().contains(needle),
                "{body} -> {answer}"
            );
        }
        // Malformed JSON and an empty body.
        for raw in ["{not json", "", "[]", "null"] {
            let resp = client()
                .post(server.url("/auth/register"))
                .body(raw)
                .send()
                .unwrap();
            assert_eq!(resp.status(), 422, "{raw:?}");
            assert!(resp.json::<Value>().unwrap()["detail"].is_string());
        }
        // Over the body limit: 413 before it is read whole.
        let big = json!({"email": "e@example.com", "nickname": "e", "password": PW, "passphrase": "x".repeat(20_000)});
        let resp = client()
            .post(server.url("/auth/register"))
            .json(&big)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 413);
        // Nothing above created an account.
        assert_eq!(
            crate::common::block_on(server.store().count_users()).unwrap(),
            1
        );
    }
}

#[test]
fn long_unicode_passwords_work_and_are_not_truncated() {
    let server = TestServer::start(|raw| raw.passwords.require_mixed = false);
    let long = "this is a long passphrase-like password with spaces 🐎 and emoji, one hundred chars long!!";
    let long = format!("{long}{}", "z".repeat(100 - long.chars().count()));
    assert_eq!(long.chars().count(), 100);
    server.register("long@example.com", "long", &long);
    server.login("long@example.com", &long);
    for prefix_len in [64, 72] {
        let prefix: String = long.chars().take(prefix_len).collect();
        let (status, _) = server.api(
            "POST",
            "/login",
            None,
            Some(json!({"email": "long@example.com", "password": prefix})),
        );
        assert_eq!(status, 401, "first {prefix_len} characters must not log in");
    }
    // NFC and NFD spellings of the same password are the same password.
    let nfc = "Caf\u{e9}-au-lait-42";
    let nfd = "Cafe\u{301}-au-lait-42";
    server.register("cafe@example.com", "cafe", nfc);
    server.login("cafe@example.com", nfd);
}

crate::on_both_backends! {
    fn unknown_email_and_wrong_password_look_the_same() {
        let server = TestServer::start(|_| {});
        server.register("real@example.com", "real", PW);
        let wrong = client()
            .post(server.url("/auth/login"))
            .json(&json!({"email": "real@example.com", "password": "Wr0ng-pass!"}))
            .send()
            .unwrap();
        let unknown = client()
            .post(server.url("/auth/login"))
            .json(&json!({"email": "ghost@example.com", "password": "Wr0ng-pass!"}))
            .send()
            .unwrap();
        assert_eq!(wrong.status(), 401);
        assert_eq!(unknown.status(), 401);
        assert_eq!(
            wrong.headers().get("www-authenticate"),
            unknown.headers().get("www-authenticate")
        );
        assert_eq!(wrong.text().unwrap(), unknown.text().unwrap());
        let m = server.metrics();
        assert!(
            m.contains("portcullis_logins_total{outcome=\"bad_credentials\"} 2"),
            "{m}"
        );
        assert!(m.contains("portcullis_password_hash_seconds_count"), "{m}");
        server.login("real@example.com", PW);
        let m = server.metrics();
        assert!(m.contains("portcullis_sessions_active 1"), "{m}");
    }
}

crate::on_both_backends! {
    fn fifty_concurrent_registrations_of_one_email_make_one_account() {
        let server = Arc::new(TestServer::start(|_| {}));
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let server = server.clone();
                std::thread::spawn(move || {
                    server
                        .api(
                            "POST",
                            "/register",
                            None,
                            Some(reg_body("race@example.com", &format!("racer{i}"), PW)),
                        )
                        .0
                })
            })
            .collect();
        let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 400),
            "{statuses:?}"
        );
        assert_eq!(
            crate::common::block_on(server.store().count_users()).unwrap(),
            1
        );
    }
}

crate::on_both_backends! {
    fn each_login_is_its_own_session_and_logout_ends_only_that_one() {
        let upstream = EchoUpstream::start();
        let addr = upstream.addr;
        let server = TestServer::start(|raw| {
            raw.auth.service_tokens = vec![portcullis::config::raw::RawServiceToken {
                name: "billing".into(),
                token: "service-token-0123456789".into(),
            }];
            raw.routes = vec![route("/api", addr, "required", &[])];
        });
        server.register("two@example.com", "two", PW);
        let a = server.login("two@example.com", PW);
        let b = server.login("two@example.com", PW);
        assert_ne!(a, b);
        let sid = |t: &str| {
            let claims: Value =
                serde_json::from_slice(&base64_decode(t.split('.').nth(1).unwrap())).unwrap();
            claims["sid"].as_str().unwrap().to_string()
        };
        assert_ne!(sid(&a), sid(&b), "a new session id per login");

        let (status, body) = server.api("POST", "/logout", Some(&a), None);
        assert_eq!(
            (status, body["detail"].as_str()),
            (200, Some("Successfully logged out"))
        );
        // The logged-out token is dead everywhere: API, proxy, /verify.
        assert_eq!(server.api("GET", "/my_account/", Some(&a), None).0, 401);
        let proxied = client()
            .get(server.url("/api/x"))
            .bearer_auth(&a)
            .send()
            .unwrap();
        assert_eq!(proxied.status(), 401);
        assert!(proxied.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        let verify = client()
            .post(server.url("/auth/verify"))
            .bearer_auth(&a)
            .header("x-service-token", "service-token-0123456789")
            .send()
            .unwrap();
        assert_eq!(verify.status(), 401);
        assert_eq!(server.api("POST", "/logout", Some(&a), None).0, 401);
        // The other session lives on.
        assert_eq!(server.api("GET", "/my_account/", Some(&b), None).0, 200);
        assert_eq!(
            client()
                .get(server.url("/api/x"))
                .bearer_auth(&b)
                .send()
                .unwrap()
                .status(),
            200
        );
        assert_eq!(upstream.count(), 1);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

crate::on_both_backends! {
    fn idle_sessions_die_and_activity_keeps_them_alive_up_to_expiry() {
        let upstream = EchoUpstream::start();
        let addr = upstream.addr;
        let server = TestServer::start(|raw| {
            raw.auth.idle_minutes = 10;
            raw.auth.access_token_expire_minutes = 30;
            raw.routes = vec![route("/api", addr, "required", &[])];
        });
        server.register("idle@example.com", "idle", PW);
        let token = server.login("idle@example.com", PW);
        let get = |t: &str| {
            client()
                .get(server.url("/api/x"))
                .bearer_auth(t)
                .send()
                .unwrap()
                .status()
                .as_u16()
        };
        // Activity every 9 minutes keeps the session alive...
        for _ in 0..3 {
            server.clock.advance(9 * 60);
            assert_eq!(get(&token), 200);
        }
        // ...until the token's absolute expiry (30 min) however active it is.
        server.clock.advance(4 * 60);
        assert_eq!(get(&token), 401, "31 minutes after login");

        let token = server.login("idle@example.com", PW);
        server.clock.advance(10 * 60);
        assert_eq!(get(&token), 401, "10 idle minutes end the session");
        assert_eq!(server.api("GET", "/my_account/", Some(&token), None).0, 401);
    }
}

#[test]
fn everything_survives_a_restart_and_a_second_process_is_refused() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| raw.routes = vec![route("/api", addr, "required", &[])]);
    let id = server.register("keep@example.com", "keep", PW);
    let token = server.login("keep@example.com", PW);
    let config = server.server.state.config.clone();

    // A second instance on the same files fails at once, naming the problem.
    let err = AppState::new(config.clone(), server.clock.clone())
        .err()
        .expect("second open refused");
    assert!(
        matches!(
            err,
            portcullis::state::StartError::Store(portcullis::store::StoreError::AlreadyOpen(_))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("already open"), "{err}");

    let TestServer {
        server: running,
        clock,
        dir,
    } = server;
    running.stop_with(pingora_core::server::ShutdownSignal::GracefulTerminate);
    let state = AppState::new(config, clock.clone()).expect("reopen");
    let restarted = TestServer {
        server: RunningServer::start(Arc::new(state)).unwrap(),
        clock,
        dir,
    };
    let (status, me) = restarted.api("GET", "/my_account/", Some(&token), None);
    assert_eq!(status, 200, "the session survived: {me}");
    assert_eq!(me["id"], id.as_str());
    assert_eq!(
        client()
            .get(restarted.url("/api/x"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .status(),
        200
    );
    restarted.login("keep@example.com", PW);
}

crate::on_both_backends! {
    fn email_verification_when_required() {
        let server = TestServer::start(|raw| {
            raw.accounts.require_email_verification = true;
            raw.server.public_url = "https://id.example.com".into();
        });
        server.register("ver@example.com", "ver", PW);
        let (status, body) = server.api(
            "POST",
            "/login",
            None,
            Some(json!({"email": "ver@example.com", "password": PW})),
        );
        assert_eq!(
            (status, body["detail"].as_str()),
            (403, Some("Email not verified"))
        );
        let mail =
            server.wait_for_mail(|m| m.contains("To: ver@example.com") && m.contains("verify-email"));
        assert!(
            mail.contains("https://id.example.com/auth/verify-email?token="),
            "{mail}"
        );
        let token = link_token(&mail);
        assert!(token.len() >= 43, "at least 256 bits: {token}");
        // A wrong token, then the right one, then the right one again (single use).
        assert_eq!(
            server.api("GET", "/verify-email?token=nope", None, None).0,
            400
        );
        let (status, _) = server.api("GET", &format!("/verify-email?token={token}"), None, None);
        assert_eq!(status, 200);
        assert_eq!(
            server
                .api("GET", &format!("/verify-email?token={token}"), None, None)
                .0,
            400
        );
        server.login("ver@example.com", PW);
    }
}

crate::on_both_backends! {
    fn verification_links_expire_and_resend_never_reveals_accounts() {
        let server = TestServer::start(|raw| raw.accounts.require_email_verification = true);
        server.register("late@example.com", "late", PW);
        let first = server.wait_for_mail(|m| m.contains("To: late@example.com"));
        server.clock.advance(24 * 3600 + 1);
        assert_eq!(
            server
                .api(
                    "GET",
                    &format!("/verify-email?token={}", link_token(&first)),
                    None,
                    None
                )
                .0,
            400
        );
        let (a, body_a) = server.api(
            "POST",
            "/verify-email/resend",
            None,
            Some(json!({"email": "late@example.com"})),
        );
        let (b, body_b) = server.api(
            "POST",
            "/verify-email/resend",
            None,
            Some(json!({"email": "nobody@example.com"})),
        );
        assert_eq!((a, &body_a), (b, &body_b));
        assert_eq!(a, 202);
        let second = server.wait_for_mail(|m| {
            m.contains("To: late@example.com") && link_token(m) != link_token(&first)
        });
        assert_eq!(
            server
                .api(
                    "GET",
                    &format!("/verify-email?token={}", link_token(&second)),
                    None,
                    None
                )
                .0,
            200
        );
    }
}

#[test]
fn links_use_the_configured_public_url_whatever_the_host_header() {
    let server = TestServer::start(|raw| raw.server.public_url = "https://id.example.com/".into());
    let resp = client()
        .post(server.url("/auth/register"))
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .json(&reg_body("host@example.com", "host", PW))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let mail = server.wait_for_mail(|m| m.contains("To: host@example.com"));
    assert!(
        mail.contains("https://id.example.com/auth/verify-email?token="),
        "{mail}"
    );
    assert!(!mail.contains("evil"), "{mail}");
}

crate::on_both_backends! {
    fn first_user_admin_only_when_turned_on() {
        let server = TestServer::start(|_| {});
        server.register("first@example.com", "first", PW);
        let t = server.login("first@example.com", PW);
        assert_eq!(
            server.api("GET", "/my_account/", Some(&t), None).1["role"],
            "user"
        );

        let compat = TestServer::start(|raw| raw.bootstrap.first_user_admin = true);
        compat.register("first@example.com", "first", PW);
        compat.register("second@example.com", "second", PW);
        let t1 = compat.login("first@example.com", PW);
        let t2 = compat.login("second@example.com", PW);
        assert_eq!(
            compat.api("GET", "/my_account/", Some(&t1), None).1["role"],
            "admin"
        );
        assert_eq!(
            compat.api("GET", "/my_account/", Some(&t2), None).1["role"],
            "user"
        );
    }
}

crate::on_both_backends! {
    fn hashes_are_upgraded_at_login_when_the_parameters_change() {
        let server = TestServer::start(|raw| raw.passwords.argon2_iterations = 1);
        server.register("old@example.com", "old", PW);
        let TestServer {
            server: running,
            dir,
            ..
        } = server;
        running.stop_with(pingora_core::server::ShutdownSignal::FastShutdown);
        let server = TestServer::start_in(dir, |raw| raw.passwords.argon2_iterations = 3);
        let hash = |s: &TestServer| {
            crate::common::block_on(s.store().user_by_email("old@example.com"))
                .unwrap()
                .unwrap()
                .password_hash
        };
        assert!(hash(&server).contains("t=1"), "{}", hash(&server));
        server.login("old@example.com", PW);
        assert!(hash(&server).contains("t=3"), "{}", hash(&server));
        server.login("old@example.com", PW);
    }
}

crate::on_both_backends! {
    fn session_activity_is_written_behind_and_survives_a_restart() {
        let upstream = EchoUpstream::start();
        let addr = upstream.addr;
        let configure = move |raw: &mut portcullis::config::RawConfig| {
            raw.auth.idle_minutes = 10;
            raw.routes = vec![route("/api", addr, "required", &[])];
        };
        let server = TestServer::start(configure);
        server.register("active@example.com", "active", PW);
        let token = server.login("active@example.com", PW);
        server.clock.advance(9 * 60);
        assert_eq!(
            client()
                .get(server.url("/api/x"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .status(),
            200
        );
        let TestServer {
            server: running,
            clock,
            dir,
        } = server;
        running.stop_with(pingora_core::server::ShutdownSignal::GracefulTerminate);
        clock.advance(9 * 60);
        let config = {
            let mut raw = crate::common::test_raw_config(dir.path());
            configure(&mut raw);
            portcullis::config::Config::from_raw(&raw).unwrap()
        };
        let state = AppState::new(config, clock.clone()).unwrap();
        let restarted = TestServer {
            server: RunningServer::start(Arc::new(state)).unwrap(),
            clock,
            dir,
        };
        // 18 minutes after login but 9 after the last activity: alive only if activity was kept.
        assert_eq!(
            client()
                .get(restarted.url("/api/x"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .status(),
            200
        );
    }
}

#[test]
fn mail_is_readable_in_the_outbox_and_non_ascii_names_are_encoded() {
    let server = TestServer::start(|_| {});
    server.register("plain@example.com", "plain", PW);
    server.register("zoe@example.com", "Zoë", PW);
    let raw = |to: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let dir = server.data_dir().join("outbox");
            let found = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .find_map(|e| {
                    if e.path().extension().is_none_or(|x| x != "eml") {
                        return None;
                    }
                    let text = std::fs::read_to_string(e.path()).ok()?;
                    text.contains(&format!("To: {to}")).then_some(text)
                });
            if let Some(text) = found {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "no mail to {to}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let plain = raw("plain@example.com");
    assert!(plain.contains("Content-Transfer-Encoding: 7bit"), "{plain}");
    assert!(
        plain.contains("/auth/verify-email?token="),
        "the link is copyable as is: {plain}"
    );
    let zoe = raw("zoe@example.com");
    assert!(!zoe.contains("Zoë"), "non-ASCII is transfer-encoded: {zoe}");
    assert!(
        crate::common::decode_quoted_printable(&zoe).contains("Zoë") || zoe.contains("base64"),
        "{zoe}"
    );
}
