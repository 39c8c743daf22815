//! Administration: the admin-only endpoints, the rules that keep an admin in charge, and the
//! command that creates the first admin.

use crate::common::{client, route, EchoUpstream, TestServer};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};

const PW: &str = "Tr1cky-Horse!";

/// A server whose first registered user ("boss") is an admin, with a protected /api route and an
/// admin-only /ops route.
fn setup() -> (EchoUpstream, TestServer, String) {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.bootstrap.first_user_admin = true;
        raw.routes = vec![
            route("/api", addr, "required", &[]),
            route("/ops", addr, "required", &["admin"]),
        ];
    });
    server.register("boss@example.com", "boss", PW);
    let admin = server.login("boss@example.com", PW);
    (upstream, server, admin)
}

crate::on_both_backends! {
    fn every_admin_endpoint_refuses_anonymous_and_plain_users() {
        let (_u, server, admin) = setup();
        let uid = server.register("user@example.com", "user", PW);
        let user = server.login("user@example.com", PW);
        let body = json!({"email": "x@example.com", "nickname": "x", "password": PW, "passphrase": "long enough phrase"});
        let endpoints = [
            ("GET", "/accounts_management/".to_string()),
            ("POST", "/accounts_management/".to_string()),
            ("GET", format!("/accounts_management/{uid}")),
            ("PUT", format!("/accounts_management/{uid}")),
            ("DELETE", format!("/accounts_management/{uid}")),
            ("GET", "/audit".to_string()),
        ];
        for (method, path) in &endpoints {
            let (status, _) = server.api(method, path, None, Some(body.clone()));
            assert_eq!(status, 401, "{method} {path} without a token");
            let (status, answer) = server.api(method, path, Some(&user), Some(body.clone()));
            assert_eq!(status, 403, "{method} {path} as a user: {answer}");
        }
        // Nothing changed, and the admin still can.
        let (status, me) = server.api(
            "GET",
            &format!("/accounts_management/{uid}"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(me["nickname"], "user");
    }
}

crate::on_both_backends! {
    fn admin_creates_lists_reads_and_updates_accounts() {
        let (_u, server, admin) = setup();
        let (status, created) = server.api(
            "POST",
            "/accounts_management/",
            Some(&admin),
            Some(json!({"email": "new@example.com", "nickname": "new", "password": PW, "passphrase": "long enough phrase", "role": "user"})),
        );
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(created["role"], "user");
        assert_eq!(created["is_logged_in"], false);
        assert!(!created.to_string().contains("argon2"));
        let (status, _) = server.api(
            "POST",
            "/accounts_management/",
            Some(&admin),
            Some(json!({"email": "NEW@example.com", "nickname": "other", "password": PW, "passphrase": "long enough phrase"})),
        );
        assert_eq!(status, 400, "duplicate email");
        let (status, _) = server.api(
            "POST",
            "/accounts_management/",
            Some(&admin),
            Some(json!({"email": "r@example.com", "nickname": "r", "password": PW, "passphrase": "long enough phrase", "role": "root"})),
        );
        assert_eq!(status, 400, "unknown role");

        let (status, list) = server.api("GET", "/accounts_management/", Some(&admin), None);
        assert_eq!(status, 200);
        assert_eq!(list.as_array().unwrap().len(), 2);
        let boss = list
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["nickname"] == "boss")
            .unwrap();
        assert_eq!(boss["is_logged_in"], true);
        assert!(boss["idle_duration"].is_string());
        assert_eq!(
            server
                .api(
                    "GET",
                    "/accounts_management/?skip=1&limit=1",
                    Some(&admin),
                    None
                )
                .1
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            server
                .api("GET", "/accounts_management/?skip=5", Some(&admin), None)
                .1
                .as_array()
                .unwrap()
                .len(),
            0
        );
        for bad in ["limit=101", "limit=-1", "skip=abc", "limit=1e3"] {
            assert_eq!(
                server
                    .api(
                        "GET",
                        &format!("/accounts_management/?{bad}"),
                        Some(&admin),
                        None
                    )
                    .0,
                422,
                "{bad}"
            );
        }
        assert_eq!(
            server
                .api("GET", "/accounts_management/nope", Some(&admin), None)
                .0,
            404
        );
        assert_eq!(
            server
                .api(
                    "PUT",
                    "/accounts_management/nope",
                    Some(&admin),
                    Some(json!({"nickname": "x"}))
                )
                .0,
            404
        );
        assert_eq!(
            server
                .api("DELETE", "/accounts_management/nope", Some(&admin), None)
                .0,
            404
        );

        let (status, _) = server.api(
            "PUT",
            &format!("/accounts_management/{id}"),
            Some(&admin),
            Some(json!({"nickname": "renamed", "customer_account": "acme"})),
        );
        assert_eq!(status, 200);
        let (_, view) = server.api(
            "GET",
            &format!("/accounts_management/{id}"),
            Some(&admin),
            None,
        );
        assert_eq!(
            (view["nickname"].as_str(), view["customer_account"].as_str()),
            (Some("renamed"), Some("acme"))
        );
        server.login("new@example.com", PW);
    }
}

crate::on_both_backends! {
    fn lock_role_change_and_delete_take_effect_on_the_next_request() {
        let (upstream, server, admin) = setup();
        let uid = server.register("u@example.com", "u", PW);
        let get = |path: &str, t: &str| {
            client()
                .get(server.url(path))
                .bearer_auth(t)
                .send()
                .unwrap()
                .status()
                .as_u16()
        };
        let user = server.login("u@example.com", PW);
        assert_eq!(get("/api/x", &user), 200);
        assert_eq!(get("/ops/x", &user), 403);

        // Promotion ends the old sessions; the next login carries the new role.
        assert_eq!(
            server
                .api(
                    "PUT",
                    &format!("/accounts_management/{uid}"),
                    Some(&admin),
                    Some(json!({"role": "admin"}))
                )
                .0,
            200
        );
        assert_eq!(get("/api/x", &user), 401);
        let promoted = server.login("u@example.com", PW);
        assert_eq!(get("/ops/x", &promoted), 200);
        // Demotion: the admin token dies at once.
        assert_eq!(
            server
                .api(
                    "PUT",
                    &format!("/accounts_management/{uid}"),
                    Some(&admin),
                    Some(json!({"role": "user"}))
                )
                .0,
            200
        );
        assert_eq!(get("/ops/x", &promoted), 401);
        assert_eq!(get("/api/x", &promoted), 401);

        let user = server.login("u@example.com", PW);
        assert_eq!(
            server
                .api(
                    "PUT",
                    &format!("/accounts_management/{uid}"),
                    Some(&admin),
                    Some(json!({"lock": true}))
                )
                .0,
            200
        );
        assert_eq!(get("/api/x", &user), 401);
        let (status, body) = server.api(
            "POST",
            "/login",
            None,
            Some(json!({"email": "u@example.com", "password": PW})),
        );
        assert_eq!(
            (status, body["detail"].as_str()),
            (403, Some("Account locked"))
        );
        assert_eq!(
            server
                .api(
                    "PUT",
                    &format!("/accounts_management/{uid}"),
                    Some(&admin),
                    Some(json!({"lock": false}))
                )
                .0,
            200
        );
        let user = server.login("u@example.com", PW);

        assert_eq!(
            server
                .api(
                    "DELETE",
                    &format!("/accounts_management/{uid}"),
                    Some(&admin),
                    None
                )
                .0,
            200
        );
        assert_eq!(get("/api/x", &user), 401);
        assert_eq!(
            server
                .api(
                    "POST",
                    "/login",
                    None,
                    Some(json!({"email": "u@example.com", "password": PW}))
                )
                .0,
            401
        );
        // Requests that the gate refused never reached the upstream.
        assert_eq!(upstream.count(), 2);
    }
}

crate::on_both_backends! {
    fn the_last_admin_stays_an_admin() {
        let (_u, server, admin) = setup();
        let (_, me) = server.api("GET", "/my_account/", Some(&admin), None);
        let boss = me["id"].as_str().unwrap().to_string();
        for change in [json!({"role": "user"}), json!({"lock": true})] {
            let (status, body) = server.api(
                "PUT",
                &format!("/accounts_management/{boss}"),
                Some(&admin),
                Some(change.clone()),
            );
            assert_eq!(status, 400, "{change}: {body}");
        }
        assert_eq!(
            server
                .api(
                    "DELETE",
                    &format!("/accounts_management/{boss}"),
                    Some(&admin),
                    None
                )
                .0,
            400,
            "an admin cannot delete itself"
        );
        assert_eq!(
            server
                .api("DELETE", "/my_account/delete", Some(&admin), None)
                .0,
            400,
            "the last admin cannot delete itself"
        );
        assert_eq!(
            server.api("GET", "/my_account/", Some(&admin), None).1["role"],
            "admin"
        );
        // With a second admin, the first may step down.
        let second = server.register("second@example.com", "second", PW);
        assert_eq!(
            server
                .api(
                    "PUT",
                    &format!("/accounts_management/{second}"),
                    Some(&admin),
                    Some(json!({"role": "admin"}))
                )
                .0,
            200
        );
        assert_eq!(
            server
                .api(
                    "PUT",
                    &format!("/accounts_management/{boss}"),
                    Some(&admin),
                    Some(json!({"role": "user"}))
                )
                .0,
            200
        );
    }
}

#[test]
fn admin_create_command_reads_secrets_from_stdin_not_argv() {
    let dir = tempfile::tempdir().unwrap();
    let run = |stdin: &str, env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args([
            "admin",
            "create",
            "--email",
            "root@example.com",
            "--nickname",
            "root",
        ])
        .current_dir(dir.path())
        .env_clear()
        .env("PORTCULLIS_DATA_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let weak = run("weak\nlong enough phrase\n", &[]);
    assert_eq!(weak.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&weak.stderr).contains("Password"),
        "{}",
        String::from_utf8_lossy(&weak.stderr)
    );
    let missing = run("", &[]);
    assert_eq!(missing.status.code(), Some(1));
    let ok = run(&format!("{PW}\nlong enough phrase\n"), &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("created admin root@example.com"));

    let server = TestServer::start_in(dir, |_| {});
    let token = server.login("root@example.com", PW);
    assert_eq!(
        server.api("GET", "/my_account/", Some(&token), None).1["role"],
        "admin"
    );
    // With the server running the data dir is locked: the command says so and changes nothing.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    let busy = cmd
        .args([
            "admin",
            "create",
            "--email",
            "two@example.com",
            "--nickname",
            "two",
        ])
        .env_clear()
        .env("PORTCULLIS_DATA_DIR", server.data_dir())
        .env("PORTCULLIS_ADMIN_PASSWORD", PW)
        .env("PORTCULLIS_ADMIN_PASSPHRASE", "long enough phrase")
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("already open"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
}

#[test]
fn idle_duration_is_written_as_the_original_service_wrote_it() {
    let (_u, server, admin) = setup();
    let uid = server.register("idle@example.com", "idle", PW);
    server.login("idle@example.com", PW);
    server.clock.advance(65);
    let (status, view) = server.api(
        "GET",
        &format!("/accounts_management/{uid}"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["idle_duration"], "1 min 5 sec");
    let (_, list) = server.api("GET", "/accounts_management/", Some(&admin), None);
    let idle = list
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == uid.as_str())
        .unwrap();
    assert_eq!(idle["idle_duration"], "1 min 5 sec");
}
