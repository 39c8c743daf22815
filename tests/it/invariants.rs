//! The account invariants that must hold whatever the interleaving of requests and crashes:
//! the last admin stays, a password reset and the end of the old sessions are one change, and a
//! login that is still checking its password when the account is locked or demoted never yields a
//! usable token. Interleavings are forced, not hoped for: the password-hashing pool has one
//! thread and `portcullis_password_hashes_in_flight` shows when a request has passed its checks
//! and waits for that thread.

use crate::common::{client, route, EchoUpstream, TestServer, TEST_KEY};
use rand::Rng;
use serde_json::json;
use std::time::{Duration, Instant};

const PW: &str = "Tr1cky-Horse!";
const NEW_PW: &str = "N3w-Tr1cky-Horse!";
const PASSPHRASE: &str = "correct horse battery staple";

/// One hashing thread with slow hashes, so that a request waiting for it stays waiting while
/// the test acts; the first registered user ("boss") is an admin.
fn slow_hashing_server(upstream: &EchoUpstream) -> TestServer {
    let addr = upstream.addr;
    TestServer::start(|raw| {
        raw.bootstrap.first_user_admin = true;
        raw.passwords.max_concurrent_hashes = 1;
        raw.passwords.argon2_iterations = 12;
        raw.routes = vec![
            route("/api", addr, "required", &[]),
            route("/ops", addr, "required", &["admin"]),
        ];
    })
}

fn hashes_in_flight(server: &TestServer) -> i64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_password_hashes_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Wait until at least `n` hashes are queued or running.
fn wait_for_hashes(server: &TestServer, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while hashes_in_flight(server) < n {
        assert!(Instant::now() < deadline, "fewer than {n} hashes in flight");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Send `method path` with a token and body on another thread; join for (status, body).
fn send(
    server: &TestServer,
    method: &'static str,
    path: String,
    token: Option<String>,
    body: serde_json::Value,
) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    let url = server.url(&format!("{}{}", server.prefix(), path));
    std::thread::spawn(move || {
        let mut req = client()
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(120))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(serde_json::Value::Null))
    })
}

fn admins(server: &TestServer, emails: &[&str]) -> Vec<String> {
    emails
        .iter()
        .filter(|email| {
            [PW, NEW_PW].iter().any(|password| {
                let (status, body) = server.api(
                    "POST",
                    "/login",
                    None,
                    Some(json!({"email": email, "password": password})),
                );
                status == 200 && body["user"]["role"] == "admin"
            })
        })
        .map(|e| e.to_string())
        .collect()
}

crate::on_both_backends! {
    fn two_admins_demoting_each_other_at_once_leave_one_admin() {
        let upstream = EchoUpstream::start();
        let server = slow_hashing_server(&upstream);
        server.register("a@example.com", "a", PW);
        let a = server.login("a@example.com", PW);
        let (status, _) = server.api(
            "POST",
            "/accounts_management/",
            Some(&a),
            Some(
                json!({"email": "b@example.com", "nickname": "b", "password": PW,
                        "passphrase": PASSPHRASE, "role": "admin"}),
            ),
        );
        assert_eq!(status, 201);
        let b = server.login("b@example.com", PW);
        let id_of = |token: &str| {
            server.api("GET", "/my_account/", Some(token), None).1["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (a_id, b_id) = (id_of(&a), id_of(&b));
        // Each demotes the other and sets a new password, so each request hashes after its checks:
        // both pass every check before either writes.
        let demote = json!({"role": "user", "password": NEW_PW});
        let first = send(
            &server,
            "PUT",
            format!("/accounts_management/{b_id}"),
            Some(a.clone()),
            demote.clone(),
        );
        wait_for_hashes(&server, 1);
        let second = send(
            &server,
            "PUT",
            format!("/accounts_management/{a_id}"),
            Some(b.clone()),
            demote,
        );
        wait_for_hashes(&server, 2);
        let (s1, b1) = first.join().unwrap();
        let (s2, b2) = second.join().unwrap();
        let mut statuses = [s1, s2];
        statuses.sort();
        assert_eq!(statuses, [200, 400], "one demotion wins: {b1} / {b2}");
        let left = admins(&server, &["a@example.com", "b@example.com"]);
        assert_eq!(left.len(), 1, "admins left: {left:?}");
    }
}

/// Occupy the one hashing thread, then queue a login of `email` behind it: once this returns,
/// the account has been read and the password not yet checked. Join the handle for the login's
/// answer.
fn login_waiting_for_the_hasher(
    server: &TestServer,
    email: &str,
) -> std::thread::JoinHandle<(u16, serde_json::Value)> {
    let blocker = send(
        server,
        "POST",
        "/login".into(),
        None,
        json!({"email": "nobody@example.com", "password": PW}),
    );
    wait_for_hashes(server, 1);
    let login = send(
        server,
        "POST",
        "/login".into(),
        None,
        json!({"email": email, "password": PW}),
    );
    wait_for_hashes(server, 2);
    std::thread::spawn(move || {
        blocker.join().unwrap();
        login.join().unwrap()
    })
}

crate::on_both_backends! {
    fn a_login_waiting_for_its_password_check_when_the_account_is_locked_gets_no_usable_token() {
        let upstream = EchoUpstream::start();
        let server = slow_hashing_server(&upstream);
        server.register("boss@example.com", "boss", PW);
        let boss = server.login("boss@example.com", PW);
        let uid = server.register("eve@example.com", "eve", PW);
        let login = login_waiting_for_the_hasher(&server, "eve@example.com");
        let (status, body) = server.api(
            "PUT",
            &format!("/accounts_management/{uid}"),
            Some(&boss),
            Some(json!({"lock": true})),
        );
        assert_eq!(status, 200, "{body}");
        let (status, body) = login.join().unwrap();
        if status == 200 {
            let token = body["access_token"].as_str().unwrap();
            let before = upstream.count();
            let proxied = client()
                .get(server.url("/api/x"))
                .bearer_auth(token)
                .send()
                .unwrap()
                .status();
            assert_eq!(proxied, 401, "a locked account's fresh token was accepted");
            assert_eq!(upstream.count(), before);
            let (status, _) = server.api("GET", "/my_account/", Some(token), None);
            assert_eq!(status, 401);
        } else {
            assert_eq!(status, 403, "{body}");
            assert_eq!(body["detail"], "Account locked");
        }
    }
}

crate::on_both_backends! {
    fn a_login_waiting_for_its_password_check_when_the_user_is_demoted_never_gets_the_old_role() {
        let upstream = EchoUpstream::start();
        let server = slow_hashing_server(&upstream);
        server.register("boss@example.com", "boss", PW);
        let boss = server.login("boss@example.com", PW);
        let (status, created) = server.api(
            "POST",
            "/accounts_management/",
            Some(&boss),
            Some(
                json!({"email": "deputy@example.com", "nickname": "deputy", "password": PW,
                        "passphrase": PASSPHRASE, "role": "admin"}),
            ),
        );
        assert_eq!(status, 201);
        let deputy_id = created["id"].as_str().unwrap().to_string();
        let login = login_waiting_for_the_hasher(&server, "deputy@example.com");
        let (status, body) = server.api(
            "PUT",
            &format!("/accounts_management/{deputy_id}"),
            Some(&boss),
            Some(json!({"role": "user"})),
        );
        assert_eq!(status, 200, "{body}");
        let (status, body) = login.join().unwrap();
        assert_eq!(status, 200, "the password was right all along: {body}");
        assert_eq!(body["user"]["role"], "user", "{body}");
        let token = body["access_token"].as_str().unwrap();
        let before = upstream.count();
        let status = client()
            .get(server.url("/ops/x"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status();
        assert_eq!(status, 403, "the demoted deputy passed an admin-only route");
        assert_eq!(upstream.count(), before);
    }
}

crate::on_both_backends! {
    fn a_token_whose_role_claim_was_raised_and_re_signed_gets_the_sessions_role() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let upstream = EchoUpstream::start();
        let server = slow_hashing_server(&upstream);
        server.register("boss@example.com", "boss", PW);
        server.register("mallory@example.com", "mallory", PW);
        let token = server.login("mallory@example.com", PW);
        // Whoever holds the signing key (a service verifying tokens offline, say) raises the role.
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&engine.decode(payload).unwrap()).unwrap();
        claims["role"] = json!("admin");
        claims["email"] = json!("boss@example.com");
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(TEST_KEY.as_bytes()),
        )
        .unwrap();
        let status = client()
            .get(server.url("/ops/x"))
            .bearer_auth(&forged)
            .send()
            .unwrap()
            .status();
        assert_eq!(status, 403, "the raised role claim was believed");
        let status = client()
            .get(server.url("/api/x"))
            .bearer_auth(&forged)
            .send()
            .unwrap()
            .status();
        assert_eq!(status, 200);
        let seen = upstream.last();
        assert_eq!(seen.header("x-auth-role"), Some("user"));
        assert_eq!(seen.header("x-auth-email"), Some("mallory@example.com"));
    }
}

crate::on_both_backends! {
    /// Password resets run while the server is killed at random moments. After every restart,
    /// an account whose reset took effect (the new password logs in) has none of its old
    /// sessions.
    fn sigkill_during_password_resets_never_leaves_an_old_session_alive() {
        const USERS: usize = 6;
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rng();
        // (email, token from before the reset) of the previous round, checked after the restart.
        let mut pending: Vec<(String, String)> = Vec::new();
        let mut effective = 0;
        let mut failures = Vec::new();
        for round in 0..16 {
            let (listen, admin) = crate::common::free_port_pair();
            // Cheap hashing: a reset is then mostly its database writes, which is where a crash
            // must not split it.
            let mut child = crate::common::spawn_portcullis(
                dir.path(),
                listen,
                admin,
                &[
                    ("PORTCULLIS_LIMITS__RECOVERY_PER_ACCOUNT", "1000000/1hour"),
                    ("PORTCULLIS_PASSWORDS__ARGON2_MEMORY_KIB", "64"),
                    ("PORTCULLIS_PASSWORDS__ARGON2_ITERATIONS", "1"),
                ],
            );
            let base = format!("http://127.0.0.1:{listen}/auth");
            crate::common::wait_until_serving(&base);
            crate::common::wait_until_ready(admin);
            let c = client();
            for (email, old_token) in pending.drain(..) {
                let reset = c
                    .post(format!("{base}/login"))
                    .json(&json!({"email": email, "password": NEW_PW}))
                    .send()
                    .unwrap()
                    .status()
                    == 200;
                if reset {
                    effective += 1;
                    let status = c
                        .get(format!("{base}/my_account/"))
                        .bearer_auth(&old_token)
                        .send()
                        .unwrap()
                        .status();
                    if status != 401 {
                        failures.push(format!(
                            "{email}: reset took effect, old session answered {status}"
                        ));
                    }
                }
            }
            if round == 15 {
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            for i in 0..USERS {
                let email = format!("r{round}u{i}@example.com");
                let body = json!({"email": email, "nickname": format!("r{round}u{i}"),
                                  "password": PW, "passphrase": PASSPHRASE});
                let status = c
                    .post(format!("{base}/register"))
                    .json(&body)
                    .send()
                    .unwrap()
                    .status();
                assert_eq!(status, 201);
                let login: serde_json::Value = c
                    .post(format!("{base}/login"))
                    .json(&json!({"email": email, "password": PW}))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                pending.push((email, login["access_token"].as_str().unwrap().to_string()));
            }
            let resets: Vec<_> = pending
                .iter()
                .map(|(email, _)| {
                    let (url, email) = (format!("{base}/recovery"), email.clone());
                    std::thread::spawn(move || {
                        let _ = client()
                            .post(url)
                            .timeout(Duration::from_secs(10))
                            .json(&json!({"email": email, "passphrase": PASSPHRASE, "new_password": NEW_PW}))
                            .send();
                    })
                })
                .collect();
            if round == 14 {
                // One round lets every reset finish first, so some resets surely take effect.
                for r in resets {
                    r.join().unwrap();
                }
                child.kill().unwrap();
                child.wait().unwrap();
                continue;
            }
            std::thread::sleep(Duration::from_micros(rng.random_range(0..30_000)));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            for r in resets {
                r.join().unwrap();
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        assert!(effective >= USERS, "{effective} resets took effect");
    }
}
