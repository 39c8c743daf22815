//! Test harness: a real portcullis started in-process on free ports with a temp data dir and an
//! echo upstream, plus helpers for raw HTTP and tokens. Stopped when dropped.
#![allow(dead_code)]

pub mod echo;
pub mod postgres;
pub mod redis;

pub use echo::EchoUpstream;
use portcullis::auth::sessions::{NewSession, Principal};
use portcullis::auth::tokens::Subject;
use portcullis::clock::ManualClock;
use portcullis::config::raw::{RawRoute, Upstreams};
use portcullis::config::{Config, RawConfig};
use portcullis::server::RunningServer;
use portcullis::state::AppState;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The signing key every test server uses, so tests can forge tokens with it.
pub const TEST_KEY: &str = "test-secret-key-0123456789abcdef-0123456789";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Two free addresses on one random loopback IP (both bound at once).
pub fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    use rand::Rng;
    let mut rng = rand::rng();
    let ip = std::net::Ipv4Addr::new(
        127,
        rng.random_range(1..=254),
        rng.random(),
        rng.random_range(1..=254),
    );
    let a = TcpListener::bind((ip, 0)).expect("free address");
    let b = TcpListener::bind((ip, 0)).expect("free address");
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// Two distinct free ports (both bound at once, so the OS cannot hand out the same one twice).
pub fn free_port_pair() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("free port");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// Run a future (a store call, say) to completion on a small runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A route entry for `RawConfig::routes`.
pub fn route(path: &str, upstream: SocketAddr, auth: &str, roles: &[&str]) -> RawRoute {
    RawRoute {
        path: path.to_string(),
        upstream: Upstreams::One(upstream.to_string()),
        auth: auth.to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        rate_limit: None,
    }
}

/// The storage backends the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redb,
    Postgres,
}

thread_local! {
    static BACKEND: std::cell::Cell<Backend> = const { std::cell::Cell::new(Backend::Redb) };
}

/// The backend test servers of this thread use.
pub fn backend() -> Backend {
    BACKEND.with(|b| b.get())
}

/// Run `test` with test servers on `backend`; on PostgreSQL when it is installed (said once
/// and skipped otherwise; the README's test command installs it).
pub fn with_backend(backend: Backend, test: impl FnOnce()) {
    if backend == Backend::Postgres && postgres::postgres().is_none() {
        return;
    }
    BACKEND.with(|b| b.set(backend));
    test();
    BACKEND.with(|b| b.set(Backend::Redb));
}

/// A test that runs once on each storage backend: `mod <name> { redb, postgres }`.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$meta])*
            fn body() $body

            #[test]
            fn redb() {
                $crate::common::with_backend($crate::common::Backend::Redb, body)
            }

            #[test]
            fn postgres() {
                $crate::common::with_backend($crate::common::Backend::Postgres, body)
            }
        }
    };
}

/// The storage of a data dir as environment for a spawned portcullis: nothing on redb (the
/// files are in the data dir), the database URL on PostgreSQL.
pub fn storage_env(data_dir: &Path) -> Option<(&'static str, String)> {
    (backend() == Backend::Postgres)
        .then(|| ("PORTCULLIS_STORAGE__DATABASE", postgres_url(data_dir)))
}

/// The database URL of a data dir's PostgreSQL database (made on first use and remembered in
/// the data dir, so a restarted server finds its data).
fn postgres_url(data_dir: &Path) -> String {
    let file = data_dir.join(".postgres-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return url;
    }
    let url = postgres::postgres()
        .expect("PostgreSQL for a PostgreSQL test")
        .new_database();
    std::fs::write(&file, &url).expect("remember the database");
    url
}

/// Embedded defaults with free loopback ports, a temp data dir and the test key; the data in
/// the data dir, or in a database of its own on PostgreSQL (see `with_backend`).
pub fn test_raw_config(data_dir: &Path) -> RawConfig {
    let mut raw = RawConfig {
        data_dir: data_dir.to_string_lossy().into_owned(),
        ..RawConfig::default()
    };
    if backend() == Backend::Postgres {
        raw.storage.database = postgres_url(data_dir);
    }
    // A random address in 127.0.0.0/8 as well as a free port: test processes running at the
    // same time cannot end up on each other's listener even if the OS reuses a port number.
    let (listen, admin) = free_addr_pair();
    raw.server.listen = listen.to_string();
    raw.server.admin_listen = admin.to_string();
    raw.server.threads = 2;
    raw.server.grace_period_seconds = 0;
    raw.server.graceful_shutdown_timeout_seconds = 1;
    raw.auth.secret_key = TEST_KEY.to_string();
    // Tests make many requests from one address; the rate-limit tests set tight limits themselves.
    raw.rate_limits.public_routes = 1_000_000;
    raw.rate_limits.private_routes = 1_000_000;
    raw.limits.registrations_per_ip = "1000000/1hour".into();
    raw.limits.recovery_per_account = "1000/1hour".into();
    raw.limits.resend_per_account = "1000/1hour".into();
    raw
}

pub struct TestServer {
    pub server: RunningServer,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Start with the test defaults as changed by `configure`.
    pub fn start(configure: impl FnOnce(&mut RawConfig)) -> TestServer {
        TestServer::start_in(tempfile::tempdir().expect("temp dir"), configure)
    }

    /// Start on an existing data dir.
    pub fn start_in(dir: tempfile::TempDir, configure: impl FnOnce(&mut RawConfig)) -> TestServer {
        TestServer::start_with_clock(dir, Arc::new(ManualClock::new(unix_now())), configure)
    }

    /// Start on an existing data dir with a given clock (replicas share one).
    pub fn start_with_clock(
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        configure: impl FnOnce(&mut RawConfig),
    ) -> TestServer {
        let mut raw = test_raw_config(dir.path());
        configure(&mut raw);
        let config =
            Config::from_raw(&raw).unwrap_or_else(|e| panic!("test config invalid: {e:?}"));
        let state = AppState::new(config, clock.clone()).expect("app state");
        let server = RunningServer::start(Arc::new(state)).expect("server starts");
        // A shared store connects and loads the sessions in the background.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !server.state.is_ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not become ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        TestServer { server, clock, dir }
    }

    /// Another replica of `first`'s PostgreSQL store: its own data dir and listeners, the same
    /// database and the same clock (the test must run on PostgreSQL).
    pub fn replica_of(first: &TestServer, configure: impl FnOnce(&mut RawConfig)) -> TestServer {
        assert_eq!(
            backend(),
            Backend::Postgres,
            "replicas share a PostgreSQL store"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(
            first.dir.path().join(".postgres-url"),
            dir.path().join(".postgres-url"),
        )
        .expect("share the database");
        TestServer::start_with_clock(dir, first.clock.clone(), configure)
    }

    /// One protected route `/api` (any role), one admin-only `/admin`, one public `/public`,
    /// all to `upstream`.
    pub fn with_routes(upstream: &EchoUpstream) -> TestServer {
        let addr = upstream.addr;
        TestServer::start(|raw| {
            raw.routes = vec![
                route("/api", addr, "required", &[]),
                route("/admin", addr, "required", &["admin"]),
                route("/public", addr, "public", &[]),
            ];
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.listen
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.listen, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.admin_listen, path)
    }

    /// The Prometheus text from the admin listener.
    pub fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .expect("metrics")
            .text()
            .expect("metrics text")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A valid access token for a user with `role`, issued now.
    pub fn token(&self, role: &str) -> String {
        self.token_for("user-1", "alice@example.com", "alice", role)
    }

    /// A token with a live session of a user with these fields (no user record behind it:
    /// enough for the proxy gate, which takes who the caller is from the session).
    pub fn token_for(&self, id: &str, email: &str, nickname: &str, role: &str) -> String {
        use portcullis::clock::Clock;
        let sid = uuid::Uuid::new_v4().simple().to_string();
        self.open_session_as(
            &Principal {
                user_id: id.to_string(),
                email: email.to_string(),
                nickname: nickname.to_string(),
                role: role.to_string(),
            },
            &sid,
        );
        self.server
            .state
            .tokens
            .issue(
                &Subject {
                    user_id: id,
                    email,
                    nickname,
                    role,
                    session_id: &sid,
                },
                self.clock.now(),
            )
            .expect("issue token")
    }

    /// Put a live session `sid` of `user_id` (alice, a user) into the server's session table.
    pub fn open_session(&self, user_id: &str, sid: &str) {
        self.open_session_as(
            &Principal {
                user_id: user_id.to_string(),
                email: "alice@example.com".into(),
                nickname: "alice".into(),
                role: "user".into(),
            },
            sid,
        );
    }

    /// Put a live session `sid` of `principal` into the server's session table; the user's
    /// other sessions answer with `principal` from now on too.
    pub fn open_session_as(&self, principal: &Principal, sid: &str) {
        use portcullis::clock::Clock;
        let now = self.clock.now();
        let sessions = &self.server.state.sessions;
        sessions.insert(NewSession {
            id: sid,
            expires_at: now + 3600,
            last_seen: now,
            principal: principal.clone(),
        });
        sessions.update_principal(principal.clone());
    }

    /// The server's store, for checks behind the API.
    pub fn store(&self) -> &dyn portcullis::store::Store {
        self.server.state.store.as_ref()
    }

    /// Register an account through the API; returns its id.
    pub fn register(&self, email: &str, nickname: &str, password: &str) -> String {
        let resp = client()
            .post(self.url(&format!("{}/register", self.prefix())))
            .json(&serde_json::json!({
                "email": email, "nickname": nickname, "password": password,
                "passphrase": "correct horse battery staple"
            }))
            .send()
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().unwrap();
        assert_eq!(status, 201, "register {email}: {body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Log in through the API; returns the access token.
    pub fn login(&self, email: &str, password: &str) -> String {
        let resp = client()
            .post(self.url(&format!("{}/login", self.prefix())))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().unwrap();
        assert_eq!(status, 200, "login {email}: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub fn prefix(&self) -> String {
        self.server.state.config.api.prefix.clone()
    }
}

/// The portcullis binary serving the data dir `data` on 127.0.0.1:`listen` (admin: `admin`)
/// with the test key, error-level logs, request limits out of the way and the thread's storage
/// backend, plus `env`; nothing else of this process's environment reaches it.
pub fn spawn_portcullis(
    data: &Path,
    listen: u16,
    admin: u16,
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("serve")
        .current_dir(data)
        .env_clear()
        .env("PORTCULLIS_DATA_DIR", data)
        .env("PORTCULLIS_SERVER__LISTEN", format!("127.0.0.1:{listen}"))
        .env(
            "PORTCULLIS_SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        )
        .env("PORTCULLIS_LIMITS__REGISTRATIONS_PER_IP", "1000000/1hour")
        .env("RATE_LIMITS_PUBLIC_ROUTES", "1000000")
        .env("RATE_LIMITS_PRIVATE_ROUTES", "1000000")
        .env("SECRET_KEY", TEST_KEY)
        .env("LOG_LEVEL", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some((name, value)) = storage_env(data) {
        cmd.env(name, value);
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.spawn().expect("spawn portcullis")
}

/// Wait (up to a minute) until `url` answers 200.
fn wait_for_200(url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while client()
        .get(url)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never answered 200"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until a spawned portcullis with its admin listener on 127.0.0.1:`admin` is ready (on
/// PostgreSQL: connected and its sessions loaded).
pub fn wait_until_ready(admin: u16) {
    wait_for_200(&format!("http://127.0.0.1:{admin}/readyz"));
}

/// Wait until the accounts API at `base` (e.g. `http://host:port/auth`) answers.
pub fn wait_until_serving(base: &str) {
    wait_for_200(&format!("{base}/"));
}

/// A blocking HTTP client that never uses a proxy or follows redirects.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A raw HTTP response: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Send raw bytes (one request, `Connection: close` advised) and read the whole answer.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    raw_exchange_for(addr, request, Duration::from_secs(10))
}

/// Like `raw_exchange`, reading until the server closes or `quiet` passes without data.
pub fn raw_exchange_for(addr: SocketAddr, request: &[u8], quiet: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(quiet)).unwrap();
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the first response in `text`.
pub fn parse_response(text: &str) -> RawResponse {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, len)) => {
            let len: usize = len.parse().unwrap_or(0);
            body.get(..len).unwrap_or(body).to_string()
        }
        None => body.to_string(),
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

/// One GET over a raw socket with the given target and extra header lines.
pub fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> RawResponse {
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n"
    );
    parse_response(&raw_exchange(addr, req.as_bytes()))
}

impl TestServer {
    /// The messages written to the file outbox so far, oldest first.
    pub fn outbox(&self) -> Vec<String> {
        let dir = self.data_dir().join("outbox");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|m| decode_quoted_printable(&m))
            .collect()
    }

    /// Wait (up to 10 s) until the outbox holds a message satisfying `pred`, and return it.
    pub fn wait_for_mail(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self.outbox().into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such mail in {:#?}",
                self.outbox()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POST/PUT/DELETE/GET on the API with an optional token and JSON body: (status, body).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = self.url(&format!("{}{}", self.prefix(), path));
        let mut req = client().request(method.parse().unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }
}

/// Extract the verification token from a mail's link.
pub fn link_token(mail: &str) -> String {
    let start = mail.find("token=").expect("a link with token=") + "token=".len();
    mail[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// Undo quoted-printable soft line breaks and escapes, so tests can read links in mail bodies.
pub fn decode_quoted_printable(text: &str) -> String {
    if !text.contains("Content-Transfer-Encoding: quoted-printable") {
        return text.to_string();
    }
    let joined = text.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
