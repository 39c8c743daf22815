//! The inter-service /verify endpoint and the audit log.

use crate::common::{client, route, EchoUpstream, TestServer};
use portcullis::config::raw::RawServiceToken;
use serde_json::{json, Value};

const PW: &str = "Tr1cky-Horse!";
const SERVICE: &str = "billing-service-token-0123456789";

fn setup() -> (EchoUpstream, TestServer) {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.bootstrap.first_user_admin = true;
        raw.auth.idle_minutes = 10;
        raw.auth.service_tokens = vec![
            RawServiceToken {
                name: "billing".into(),
                token: SERVICE.into(),
            },
            RawServiceToken {
                name: "search".into(),
                token: "search-service-token-abcdefgh".into(),
            },
        ];
        raw.routes = vec![route("/api", addr, "required", &[])];
    });
    (upstream, server)
}

fn verify(server: &TestServer, bearer: Option<&str>, service: Option<&str>) -> (u16, Value) {
    let mut req = client().post(server.url("/auth/verify"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(s) = service {
        req = req.header("x-service-token", s);
    }
    let resp = req.send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

crate::on_both_backends! {
    fn verify_tells_a_service_who_the_token_belongs_to() {
        let (_u, server) = setup();
        server.register("boss@example.com", "boss", PW);
        let id = server.register("user@example.com", "user", PW);
        let token = server.login("user@example.com", PW);
        let (status, body) = verify(&server, Some(&token), Some(SERVICE));
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"id": id, "email": "user@example.com", "nickname": "user", "role": "user", "valid": true, "lock": false, "customer_account": "none"})
        );
        assert_eq!(
            verify(&server, Some(&token), Some("search-service-token-abcdefgh")).0,
            200
        );
        // A missing or wrong service token: 404, as in the original, even with a good bearer.
        for bad in [
            None,
            Some(""),
            Some("billing-service-token-012345678"),
            Some("billing-service-token-01234567890"),
        ] {
            assert_eq!(verify(&server, Some(&token), bad).0, 404, "{bad:?}");
        }
        // A bad bearer with a good service token: 401.
        assert_eq!(verify(&server, None, Some(SERVICE)).0, 401);
        assert_eq!(verify(&server, Some("garbage"), Some(SERVICE)).0, 401);
    }
}

crate::on_both_backends! {
    fn verify_counts_as_activity() {
        let (_u, server) = setup();
        server.register("boss@example.com", "boss", PW);
        server.register("user@example.com", "user", PW);
        let token = server.login("user@example.com", PW);
        for _ in 0..3 {
            server.clock.advance(9 * 60);
            assert_eq!(verify(&server, Some(&token), Some(SERVICE)).0, 200);
        }
        server.clock.advance(10 * 60);
        assert_eq!(
            verify(&server, Some(&token), Some(SERVICE)).0,
            401,
            "idle after 10 minutes"
        );
    }
}

crate::on_both_backends! {
    fn the_audit_log_records_who_did_what_without_secrets() {
        let (_u, server) = setup();
        let boss = server.register("boss@example.com", "boss", PW);
        let admin = server.login("boss@example.com", PW);
        let uid = server.register("evil@example.com", "evil\",\"kind\":\"forged", PW);
        let _ = server.api(
            "POST",
            "/login",
            None,
            Some(json!({"email": "evil@example.com", "password": "Wr0ng-pass!"})),
        );
        let user = server.login("evil@example.com", PW);
        let _ = verify(&server, Some(&user), Some(SERVICE));
        let _ = verify(&server, Some(&user), Some("not-the-token-at-all-xxxx"));
        let _ = server.api(
            "PUT",
            &format!("/accounts_management/{uid}"),
            Some(&admin),
            Some(json!({"customer_account": "acme"})),
        );
        let _ = server.api("POST", "/logout", Some(&user), None);

        let (status, log) = server.api("GET", "/audit?limit=100", Some(&admin), None);
        assert_eq!(status, 200);
        let events = log["events"].as_array().unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        for kind in [
            "register",
            "login",
            "verify",
            "service_token_rejected",
            "admin_update",
            "logout",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        assert!(!kinds.contains(&"forged"));
        let failed_login = events
            .iter()
            .find(|e| e["kind"] == "login" && e["outcome"] == "failure")
            .unwrap();
        assert_eq!(failed_login["detail"], "bad_credentials");
        assert_eq!(failed_login["client_ip"], "127.0.0.1");
        assert!(!failed_login["request_id"].as_str().unwrap().is_empty());
        let admin_update = events.iter().find(|e| e["kind"] == "admin_update").unwrap();
        assert_eq!(
            (
                admin_update["actor"].as_str(),
                admin_update["user_id"].as_str()
            ),
            (Some(boss.as_str()), Some(uid.as_str()))
        );
        let verify_event = events.iter().find(|e| e["kind"] == "verify").unwrap();
        assert_eq!(verify_event["actor"], "service:billing");
        assert!(
            events
                .windows(2)
                .all(|w| w[0]["seq"].as_u64() > w[1]["seq"].as_u64()),
            "newest first"
        );
        assert!(
            events
                .iter()
                .all(|e| e["at"].as_i64().unwrap() > 1_700_000_000),
            "UTC unix seconds"
        );
        let text = log.to_string();
        for secret in [PW, "Wr0ng-pass!", "correct horse", SERVICE, user.as_str()] {
            assert!(!text.contains(secret), "{secret} in the audit log");
        }

        // Filters and paging.
        let (_, mine) = server.api("GET", &format!("/audit?user={uid}"), Some(&admin), None);
        assert!(mine["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["user_id"] == uid.as_str()));
        let (_, logins) = server.api("GET", "/audit?kind=login", Some(&admin), None);
        assert_eq!(logins["events"].as_array().unwrap().len(), 3);
        let (_, page1) = server.api("GET", "/audit?limit=2", Some(&admin), None);
        let before = page1["next_before"].as_u64().unwrap();
        let (_, page2) = server.api(
            "GET",
            &format!("/audit?limit=2&before={before}"),
            Some(&admin),
            None,
        );
        assert!(page2["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["seq"].as_u64().unwrap() < before));
        let (_, future) = server.api("GET", "/audit?since=4000000000", Some(&admin), None);
        assert_eq!(future["events"].as_array().unwrap().len(), 0);
        for bad in ["limit=5000", "since=yesterday", "before=x"] {
            assert_eq!(
                server
                    .api("GET", &format!("/audit?{bad}"), Some(&admin), None)
                    .0,
                422,
                "{bad}"
            );
        }
    }
}
