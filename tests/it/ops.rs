//! Operations: the admin listener's metrics and health endpoints, the access log, and a SIGTERM
//! that drains in-flight requests before a clean exit. Log and signal tests run the real binary.

use crate::common::{client, free_port, EchoUpstream, TestServer, TEST_KEY};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn admin_listener_serves_metrics_health_and_readiness() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let c = client();
    assert_eq!(c.get(server.url("/api/x")).send().unwrap().status(), 401);
    let ok = c
        .get(server.url("/api/x"))
        .bearer_auth(server.token("user"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(c.get(server.url("/public/x")).send().unwrap().status(), 200);

    let needles = [
        "portcullis_requests_total{route=\"/api\",status=\"2xx\"} 1",
        "portcullis_requests_total{route=\"/api\",status=\"4xx\"} 1",
        "portcullis_requests_total{route=\"/public\",status=\"2xx\"} 1",
        "portcullis_gate_decisions_total{decision=\"allow\",reason=\"valid\"} 1",
        "portcullis_gate_decisions_total{decision=\"deny\",reason=\"missing_token\"} 1",
        "portcullis_request_duration_seconds_bucket{route=\"/api\"",
        "portcullis_build_info{version=\"",
    ];
    // Requests are counted in pingora's logging phase, just after the answer was sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = c.get(server.admin_url("/metrics")).send().unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = resp.text().unwrap();
        let missing: Vec<&&str> = needles.iter().filter(|n| !text.contains(**n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        c.get(server.admin_url("/healthz")).send().unwrap().status(),
        200
    );
    let ready = c.get(server.admin_url("/readyz")).send().unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().unwrap()["status"],
        "ready"
    );
    assert_eq!(
        c.get(server.admin_url("/nope")).send().unwrap().status(),
        404
    );
}

#[test]
fn public_listener_never_serves_metrics() {
    let server = TestServer::start(|_| {});
    for path in ["/metrics", "/healthz", "/readyz"] {
        let resp = client().get(server.url(path)).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(!resp.text().unwrap().contains("portcullis_"), "{path}");
    }
}

/// The real binary with its configuration in the environment, stdout captured.
fn spawn_binary(
    upstream: &EchoUpstream,
    data_dir: &std::path::Path,
    listen: u16,
    admin: u16,
) -> Child {
    let routes = format!(
        "[{{path = \"/api\", upstream = \"{}\", auth = \"required\"}}]",
        upstream.addr
    );
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("serve")
        .current_dir(data_dir)
        .env_clear()
        .env("PORTCULLIS_SERVER__LISTEN", format!("127.0.0.1:{listen}"))
        .env(
            "PORTCULLIS_SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        )
        .env("PORTCULLIS_SERVER__GRACE_PERIOD_SECONDS", "3")
        .env("PORTCULLIS_SERVER__THREADS", "2")
        .env("PORTCULLIS_DATA_DIR", data_dir.join("data"))
        .env("PORTCULLIS_ROUTES", routes)
        .env("SECRET_KEY", TEST_KEY)
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "portcullis did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Register and log in through the running binary's API: (access token, user id).
fn login(listen: u16) -> (String, String) {
    let base = format!("http://127.0.0.1:{listen}/auth");
    let resp = client()
        .post(format!("{base}/register"))
        .json(&serde_json::json!({
            "email": "u7@example.com", "nickname": "u7", "password": "Tr1cky-Horse!",
            "passphrase": "correct horse battery staple"
        }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = client()
        .post(format!("{base}/login"))
        .json(&serde_json::json!({"email": "u7@example.com", "password": "Tr1cky-Horse!"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token = resp.json::<serde_json::Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    (token, id)
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let upstream = EchoUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = crate::common::free_port_pair();
    let mut child = spawn_binary(&upstream, dir.path(), listen, admin);
    wait_listening(listen);
    let url = format!("http://127.0.0.1:{listen}/api/slow?delay_ms=1500");
    let (token, _) = login(listen);
    let in_flight = std::thread::spawn(move || {
        client()
            .get(url)
            .bearer_auth(token)
            .send()
            .map(|r| r.status().as_u16())
    });
    // Let the request reach the upstream, then ask for a graceful stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped_at = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(
        in_flight.join().unwrap().expect("in-flight request failed"),
        200
    );
    // New connections are no longer accepted while draining (the listener closes promptly,
    // however long that takes on this machine: polled, not slept on).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections while draining"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(15),
        "took {:?}",
        stopped_at.elapsed()
    );
}

#[test]
fn access_log_is_one_json_line_per_request_without_secrets() {
    let upstream = EchoUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = crate::common::free_port_pair();
    let mut child = spawn_binary(&upstream, dir.path(), listen, admin);
    wait_listening(listen);
    let (token, user_id) = login(listen);
    let resp = client()
        .get(format!(
            "http://127.0.0.1:{listen}/api/items?access_token=leak-me"
        ))
        .bearer_auth(&token)
        .header("x-request-id", "log-test-42")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    child.wait().unwrap();
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["request_id"] == "log-test-42")
        .collect();
    assert_eq!(access.len(), 1, "{lines:#?}");
    let line = &access[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/items");
    assert_eq!(line["route"], "/api");
    assert_eq!(line["status"], 200);
    assert_eq!(line["user_id"], user_id.as_str());
    assert!(line["latency_ms"].as_f64().is_some());
    assert!(line["timestamp"].as_str().is_some());
    let all = lines.join("\n");
    assert!(!all.contains(&token), "token in the log");
    assert!(!all.contains("leak-me"), "query string in the log");
    assert!(!all.contains(TEST_KEY), "secret key in the log");
    assert!(!all.contains("Tr1cky-Horse!"), "password in the log");
    assert!(!all.contains("correct horse"), "passphrase in the log");
}

#[test]
fn healthcheck_command_reflects_readiness() {
    let server = TestServer::start(|_| {});
    let run = |admin: String| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("healthcheck")
            .env_clear()
            .env("PORTCULLIS_SERVER__ADMIN_LISTEN", admin)
            .current_dir(server.data_dir())
            .output()
            .unwrap()
    };
    let ok = run(server.server.admin_listen.to_string());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let down = run(format!("127.0.0.1:{}", free_port()));
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("not ready"));
}
