//! Talking to upstreams: errors map to 502/504, bodies stream both ways without being held in
//! memory, WebSocket upgrades pass on authenticated routes, and several upstreams share load.

use crate::common::{client, free_port, parse_response, route, EchoUpstream, TestServer};
use portcullis::config::raw::{RawRoute, Upstreams};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn unreachable_upstream_is_502() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = TestServer::start(|raw| raw.routes = vec![route("/api", dead, "public", &[])]);
    let resp = client().get(server.url("/api/x")).send().unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.json::<serde_json::Value>().unwrap()["detail"],
        "Upstream unavailable"
    );
    let metrics = server.metrics();
    assert!(
        metrics.contains("portcullis_upstream_errors_total{kind=\"unavailable\",route=\"/api\"}"),
        "{metrics}"
    );
}

#[test]
fn slow_upstream_is_504_after_the_read_timeout() {
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let server = TestServer::start(|raw| {
        raw.proxy.read_timeout_seconds = 1;
        raw.routes = vec![route("/api", addr, "public", &[])];
    });
    let resp = client()
        .get(server.url("/api/slow?delay_ms=3000"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.json::<serde_json::Value>().unwrap()["detail"],
        "Upstream timed out"
    );
    // A fast request on the same route still works.
    let resp = client()
        .get(server.url("/api/fast?delay_ms=10"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn large_upload_streams_through_without_being_buffered() {
    const SIZE: u64 = 1 << 30; // 1 GiB
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let before = rss_bytes();
    let body = reqwest::blocking::Body::new(std::io::repeat(7).take(SIZE));
    let resp = client()
        .post(server.url("/api/upload"))
        .bearer_auth(server.token("user"))
        .body(body)
        .timeout(Duration::from_secs(300))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed: serde_json::Value = resp.json().unwrap();
    assert_eq!(echoed["body_bytes"], SIZE);
    let growth = rss_bytes().saturating_sub(before);
    assert!(
        growth < 256 << 20,
        "resident memory grew by {growth} bytes for a 1 GiB upload"
    );
}

#[test]
fn large_download_streams_through_without_being_buffered() {
    const SIZE: u64 = 512 << 20;
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let before = rss_bytes();
    let mut resp = client()
        .get(server.url(&format!("/public/file?download_bytes={SIZE}")))
        .timeout(Duration::from_secs(300))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, SIZE);
    let growth = rss_bytes().saturating_sub(before);
    assert!(
        growth < 256 << 20,
        "resident memory grew by {growth} bytes for a 512 MiB download"
    );
}

fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn websocket_upgrade_passes_on_authenticated_routes() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let token = server.token("user");
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let req = format!(
        "GET /api/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(upstream.last().header("x-auth-user-id"), Some("user-1"));
    // Data sent in the very instant after the 101 was once seen lost (suspected race in pingora's
    // switch to tunnel mode; to be examined with the adversarial suite): give it a moment.
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"ping over the tunnel").unwrap();
    let mut buf = [0u8; 20];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping over the tunnel");
}

#[test]
fn websocket_upgrade_without_token_is_refused() {
    let upstream = EchoUpstream::start();
    let server = TestServer::with_routes(&upstream);
    let req = "GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    // The refusal keeps the connection open for a next request: stop reading after 1 s of quiet.
    let resp = parse_response(&crate::common::raw_exchange_for(
        server.addr(),
        req.as_bytes(),
        Duration::from_secs(1),
    ));
    assert_eq!(resp.status, 401);
    assert_eq!(upstream.count(), 0);
}

#[test]
fn several_upstreams_share_the_load() {
    let a = EchoUpstream::start();
    let b = EchoUpstream::start();
    let (aa, ba) = (a.addr, b.addr);
    let server = TestServer::start(|raw| {
        raw.routes = vec![RawRoute {
            path: "/api".into(),
            upstream: Upstreams::Many(vec![aa.to_string(), ba.to_string()]),
            auth: "public".into(),
            roles: vec![],
            rate_limit: None,
        }]
    });
    for _ in 0..6 {
        assert_eq!(
            client().get(server.url("/api/x")).send().unwrap().status(),
            200
        );
    }
    assert_eq!((a.count(), b.count()), (3, 3));
}
