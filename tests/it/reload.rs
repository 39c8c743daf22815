//! Reloading the configuration (SIGHUP): routes, limits, service tokens and log level change
//! without dropping connections; an invalid configuration is refused and the old one serves on.

use crate::common::{client, route, EchoUpstream, TestServer, TEST_KEY};
use portcullis::config::{Config, Sources};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One keep-alive GET on an open connection; returns the status.
fn get_on(stream: &mut TcpStream, path: &str) -> u16 {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    status_line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn reload_swaps_routes_and_tokens_and_keeps_connections() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| raw.routes = vec![route("/old", addr, "public", &[])]);
    let mut conn = TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(get_on(&mut conn, "/old/x"), 200);
    assert_eq!(get_on(&mut conn, "/new/x"), 404);

    let mut raw = crate::common::test_raw_config(&server.data_dir());
    raw.routes = vec![route("/new", addr, "public", &[])];
    raw.auth.service_tokens = vec![portcullis::config::raw::RawServiceToken {
        name: "svc".into(),
        token: "a-new-service-token-123".into(),
    }];
    portcullis::reload::reload(&server.server.state, &Config::from_raw(&raw).unwrap()).unwrap();

    // The same connection, after the reload: the new routes are in force.
    assert_eq!(get_on(&mut conn, "/new/x"), 200);
    assert_eq!(get_on(&mut conn, "/old/x"), 404);
    assert_eq!(server.server.state.live().service_tokens[0].name, "svc");
}

#[test]
fn an_invalid_reload_is_refused_and_counted() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| raw.routes = vec![route("/old", addr, "public", &[])]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[routes]]\npath = \"no-slash\"\nupstream = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let sources = Sources {
        file: Some(file),
        file_required: true,
        ..Sources::default()
    };
    let err = portcullis::reload::reload_from(&server.server.state, &sources).unwrap_err();
    assert!(err.contains("routes[0].path"), "{err}");
    assert_eq!(
        client().get(server.url("/old/x")).send().unwrap().status(),
        200,
        "the old configuration serves on"
    );
    let metrics = server.metrics();
    assert!(
        metrics.contains("portcullis_config_reloads_total{outcome=\"failure\"} 1"),
        "{metrics}"
    );
}

#[test]
fn sighup_reloads_the_config_file() {
    let upstream = EchoUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = crate::common::free_port_pair();
    let config = dir.path().join("portcullis.toml");
    let write = |routes: &str, level: &str| {
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n{routes}\n[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\ngrace_period_seconds = 0\n[auth]\nsecret_key = \"{TEST_KEY}\"\n[log]\nlevel = \"{level}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap()
    };
    write(
        &format!(
            "routes = [{{path = \"/old\", upstream = \"{}\", auth = \"public\"}}]",
            upstream.addr
        ),
        "info",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let log = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let base = format!("http://127.0.0.1:{listen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client()
        .get(format!("{base}/old/x"))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let logged = |id: &str| {
        client()
            .get(format!("{base}/old/x"))
            .header("x-request-id", id)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(logged("before-reload"), 200);
    // The access line is written just after the answer: wait for it before reloading.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("\"request_id\":\"before-reload\""))
    {
        assert!(Instant::now() < deadline, "no access line at level info");
        std::thread::sleep(Duration::from_millis(20));
    }
    write(
        &format!(
            "routes = [{{path = \"/new\", upstream = \"{}\", auth = \"public\"}}]",
            upstream.addr
        ),
        "warn",
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while client()
        .get(format!("{base}/new/x"))
        .send()
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "the reload did not take effect");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(logged("after-reload"), 404);
    // A broken file: refused, and the server keeps serving what it had.
    std::fs::write(&config, "this is not toml").unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client()
        .get(&metrics_url)
        .send()
        .unwrap()
        .text()
        .unwrap()
        .contains("portcullis_config_reloads_total{outcome=\"failure\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "the failed reload was not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        client()
            .get(format!("{base}/new/x"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap();
    // The log level changed with the reload: info-level access lines stopped.
    log.join().unwrap();
    let lines = lines.lock().unwrap();
    assert!(
        !lines.iter().any(|l| l.contains("after-reload")),
        "{lines:#?}"
    );
}
