//! Talking to a running server's admin listener from the command line: `healthcheck` and
//! `backup`. A plain HTTP/1.1 exchange over loopback, so the commands need no HTTP client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Send `method path` to the admin listener; returns the status and body. An unspecified listen
/// address (0.0.0.0 / ::) is reached on loopback.
pub fn request(
    admin_listen: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut addr = admin_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let fail = |e: std::io::Error| format!("{addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `Ok` only when the server answers `/readyz` with 200.
pub fn probe_ready(admin_listen: SocketAddr) -> Result<(), String> {
    match request(admin_listen, "GET", "/readyz", Duration::from_secs(3))? {
        (200, _) => Ok(()),
        (status, _) => Err(format!("{admin_listen} answered {status}")),
    }
}

/// Ask the server for a consistent backup; returns the directory it wrote.
pub fn request_backup(admin_listen: SocketAddr) -> Result<String, String> {
    let (status, body) = request(admin_listen, "POST", "/backup", Duration::from_secs(600))?;
    if status != 200 {
        return Err(format!("the server answered {status}: {}", body.trim()));
    }
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["path"].as_str().map(str::to_string))
        .ok_or_else(|| "the server's answer names no backup".to_string())
}
