//! Self-service and recovery: what a user can change about their own account, what it takes,
//! and what it ends.

use crate::common::{client, route, EchoUpstream, TestServer};
use serde_json::json;

const PW: &str = "Tr1cky-Horse!";
const NEW_PW: &str = "N3w-Stable-Horse!";
const PASSPHRASE: &str = "correct horse battery staple";

fn setup() -> (EchoUpstream, TestServer, String) {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| raw.routes = vec![route("/api", addr, "required", &[])]);
    let id = server.register("me@example.com", "me", PW);
    (upstream, server, id)
}

crate::on_both_backends! {
    fn mass_assignment_changes_nothing() {
        let (_u, server, id) = setup();
        let token = server.login("me@example.com", PW);
        let (status, _) = server.api(
            "PUT",
            "/my_account/",
            Some(&token),
            Some(json!({"nickname": "renamed", "role": "admin", "lock": true, "id": "other", "email_verified": true, "is_admin": true})),
        );
        assert_eq!(status, 200);
        let (_, me) = server.api("GET", "/my_account/", Some(&token), None);
        assert_eq!(me["nickname"], "renamed");
        assert_eq!(me["role"], "user");
        assert_eq!(me["lock"], false);
        assert_eq!(me["id"], id.as_str());
        assert_eq!(me["email_verified"], false);
    }
}

crate::on_both_backends! {
    fn sensitive_changes_need_the_current_password() {
        let (_u, server, _) = setup();
        let token = server.login("me@example.com", PW);
        for body in [
            json!({"password": NEW_PW}),
            json!({"password": NEW_PW, "current_password": "Wr0ng-pass!"}),
            json!({"email": "new@example.com"}),
            json!({"passphrase": "another long passphrase"}),
        ] {
            let (status, answer) = server.api("PUT", "/my_account/", Some(&token), Some(body.clone()));
            assert_eq!(status, 400, "{body} -> {answer}");
        }
        server.login("me@example.com", PW);
        let (status, _) = server.api(
            "PUT",
            "/my_account/",
            Some(&token),
            Some(json!({"password": "weak", "current_password": PW})),
        );
        assert_eq!(status, 400, "policy applies to changes too");
    }
}

crate::on_both_backends! {
    fn password_change_ends_other_sessions_and_notifies() {
        let (_u, server, _) = setup();
        let current = server.login("me@example.com", PW);
        let other = server.login("me@example.com", PW);
        let (status, body) = server.api(
            "PUT",
            "/my_account/",
            Some(&current),
            Some(json!({"password": NEW_PW, "current_password": PW})),
        );
        assert_eq!(
            (status, body["message"].as_str()),
            (200, Some("Account updated successfully"))
        );
        assert_eq!(
            server.api("GET", "/my_account/", Some(&current), None).0,
            200,
            "the session that changed it stays"
        );
        assert_eq!(
            server.api("GET", "/my_account/", Some(&other), None).0,
            401,
            "other sessions end"
        );
        assert_eq!(
            client()
                .get(server.url("/api/x"))
                .bearer_auth(&other)
                .send()
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            server
                .api(
                    "POST",
                    "/login",
                    None,
                    Some(json!({"email": "me@example.com", "password": PW}))
                )
                .0,
            401
        );
        server.login("me@example.com", NEW_PW);
        server
            .wait_for_mail(|m| m.contains("To: me@example.com") && m.contains("password was changed"));
    }
}

crate::on_both_backends! {
    fn email_change_is_verified_again() {
        let (_u, server, _) = setup();
        let token = server.login("me@example.com", PW);
        let (status, _) = server.api(
            "PUT",
            "/my_account/",
            Some(&token),
            Some(json!({"email": "moved@example.com", "current_password": PW})),
        );
        assert_eq!(status, 200);
        let (_, me) = server.api("GET", "/my_account/", Some(&token), None);
        assert_eq!(me["email"], "moved@example.com");
        assert_eq!(me["email_verified"], false);
        server.wait_for_mail(|m| {
            m.contains("To: me@example.com") && m.contains("email address of your account was changed")
        });
        let link =
            server.wait_for_mail(|m| m.contains("To: moved@example.com") && m.contains("verify-email"));
        let (status, _) = server.api(
            "GET",
            &format!("/verify-email?token={}", crate::common::link_token(&link)),
            None,
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(
            server.api("GET", "/my_account/", Some(&token), None).1["email_verified"],
            true
        );
        server.login("moved@example.com", PW);
        // The old address is free again; a taken one is refused.
        server.register("me@example.com", "again", PW);
        let (status, body) = server.api(
            "PUT",
            "/my_account/",
            Some(&token),
            Some(json!({"email": "ME@example.com", "current_password": PW})),
        );
        assert_eq!(
            (status, body["detail"].as_str()),
            (400, Some("Email already registered"))
        );
    }
}

crate::on_both_backends! {
    fn deleting_the_account_ends_everything() {
        let (upstream, server, _) = setup();
        let token = server.login("me@example.com", PW);
        let (status, body) = server.api("DELETE", "/my_account/delete", Some(&token), None);
        assert_eq!(
            (status, body["detail"].as_str()),
            (200, Some("Account deleted"))
        );
        assert_eq!(server.api("GET", "/my_account/", Some(&token), None).0, 401);
        assert_eq!(
            client()
                .get(server.url("/api/x"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            server
                .api(
                    "POST",
                    "/login",
                    None,
                    Some(json!({"email": "me@example.com", "password": PW}))
                )
                .0,
            401
        );
        assert_eq!(upstream.count(), 0);
        server.wait_for_mail(|m| m.contains("To: me@example.com") && m.contains("deleted"));
        server.register("me@example.com", "me", PW);
    }
}

crate::on_both_backends! {
    fn recovery_resets_the_password_and_ends_every_session() {
        let (_u, server, _) = setup();
        let token = server.login("me@example.com", PW);
        let (status, body) = server.api(
            "POST",
            "/recovery",
            None,
            Some(json!({"email": "ME@example.com", "passphrase": "  Correct HORSE  battery staple ", "new_password": NEW_PW})),
        );
        assert_eq!(
            (status, body["message"].as_str()),
            (200, Some("Password updated successfully")),
            "passphrase matching ignores case and spacing"
        );
        assert_eq!(server.api("GET", "/my_account/", Some(&token), None).0, 401);
        assert_eq!(
            server
                .api(
                    "POST",
                    "/login",
                    None,
                    Some(json!({"email": "me@example.com", "password": PW}))
                )
                .0,
            401
        );
        server.login("me@example.com", NEW_PW);
        server.wait_for_mail(|m| m.contains("To: me@example.com") && m.contains("reset"));
    }
}

crate::on_both_backends! {
    fn recovery_failures_reveal_nothing() {
        let (_u, server, _) = setup();
        let wrong = server.api("POST", "/recovery", None, Some(json!({"email": "me@example.com", "passphrase": "wrong passphrase here", "new_password": NEW_PW})));
        let unknown = server.api(
            "POST",
            "/recovery",
            None,
            Some(
                json!({"email": "ghost@example.com", "passphrase": PASSPHRASE, "new_password": NEW_PW}),
            ),
        );
        assert_eq!(wrong, unknown);
        assert_eq!(wrong.0, 400);
        server.login("me@example.com", PW);
        let (status, _) = server.api(
            "POST",
            "/recovery",
            None,
            Some(json!({"email": "me@example.com", "passphrase": PASSPHRASE, "new_password": "weak"})),
        );
        assert_eq!(status, 400);
        assert_eq!(
            server
                .api(
                    "POST",
                    "/recovery",
                    None,
                    Some(json!({"email": "me@example.com"}))
                )
                .0,
            422
        );
        server.login("me@example.com", PW);
    }
}
