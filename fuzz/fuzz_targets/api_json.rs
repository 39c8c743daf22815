//! The accounts API's JSON bodies: whatever bytes arrive on registration, login, recovery,
//! resend, self-service and admin endpoints, the answer is a success or a 4xx with a fixed
//! message, never a panic or a 500. Runs the real handlers on a real store in a temp dir
//! (argon2id at its cheapest so the fuzzer spends its time on parsing and validation).

#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use portcullis::api::{self, ApiRequest};
use portcullis::state::AppState;
use portcullis::clock::ManualClock;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

const NOW: i64 = 1_900_000_000;
const PASSWORD: &str = "Fuzz-Horse-42!";

struct Fixture {
    state: Arc<AppState>,
    runtime: tokio::runtime::Runtime,
    admin_token: String,
    user_token: String,
    user_id: String,
}

fn call(
    f: &Fixture,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<api::ApiResponse, portcullis::error::Error> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(token) = token {
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("token is header-safe"),
        );
    }
    let req = ApiRequest {
        method,
        path: path.to_string(),
        query: None,
        headers,
        body: Bytes::from(body),
        client_ip: IpAddr::from([203, 0, 113, 7]),
        client_key: IpAddr::from([203, 0, 113, 7]),
        request_id: "fuzz".into(),
        now: NOW,
    };
    f.runtime.block_on(api::handle(&f.state, req))
}

fn login(f: &Fixture, email: &str) -> String {
    let body = format!(r#"{{"email":"{email}","password":"{PASSWORD}"}}"#).into_bytes();
    let resp = call(f, Method::POST, "/login", None, body).expect("login");
    resp.body["access_token"]
        .as_str()
        .expect("token")
        .to_string()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let config = common::config(&format!(
            "data_dir = {:?}\n[passwords]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\
             [rate_limits]\npublic_routes = 1000000000\nprivate_routes = 1000000000\n\
             [limits]\nregistrations_per_ip = \"1000000000/1second\"\n\
             recovery_per_account = \"1000000000/1second\"\nresend_per_account = \"1000000000/1second\"\n",
            dir.display().to_string()
        ));
        portcullis::bootstrap::create_admin(&config, "admin@example.com", "admin", PASSWORD, "fuzzing admin passphrase", NOW)
            .expect("create admin");
        let state = Arc::new(
            AppState::new(config, Arc::new(ManualClock::new(NOW))).expect("state"),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut f = Fixture {
            state,
            runtime,
            admin_token: String::new(),
            user_token: String::new(),
            user_id: String::new(),
        };
        let body = format!(
            r#"{{"email":"user@example.com","nickname":"user","password":"{PASSWORD}","passphrase":"fuzzing user passphrase"}}"#
        );
        let created = call(&f, Method::POST, "/register", None, body.into_bytes()).expect("register");
        f.user_id = created.body["id"].as_str().unwrap_or_default().to_string();
        f.admin_token = login(&f, "admin@example.com");
        f.user_token = login(&f, "user@example.com");
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let member = format!("/accounts_management/{}", f.user_id);
    let (method, path, token) = match which % 8 {
        0 => (Method::POST, "/register", None),
        1 => (Method::POST, "/login", None),
        2 => (Method::POST, "/recovery", None),
        3 => (Method::POST, "/verify-email/resend", None),
        4 => (Method::PUT, "/my_account", Some(f.user_token.as_str())),
        5 => (
            Method::POST,
            "/accounts_management",
            Some(f.admin_token.as_str()),
        ),
        6 => (Method::PUT, member.as_str(), Some(f.admin_token.as_str())),
        _ => (Method::POST, "/verify", None),
    };
    match call(f, method, path, token, body.to_vec()) {
        Ok(resp) => assert!(resp.status.as_u16() < 300, "{path}: {}", resp.status),
        Err(e) => {
            let status = e.status().as_u16();
            assert!((400..500).contains(&status), "{path}: {status} {e:?}");
        }
    }
});
