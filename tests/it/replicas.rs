//! Several replicas on one PostgreSQL store behave as one: accounts and duplicates are shared,
//! a session opened on one is honoured on the others at once, and a logout, lock, role change
//! or deletion on one is refused on every other within a second — also after the notification
//! connection was killed, during which protected routes fail closed (503), never open.

use crate::common::{client, postgres, route, with_backend, Backend, EchoUpstream, TestServer};
use serde_json::json;
use std::time::{Duration, Instant};

const PW: &str = "Tr1cky-Horse!";

/// Two replicas with a protected `/api` and an admin-only `/ops` route; the first registered
/// user is an admin.
fn two_replicas(upstream: &EchoUpstream) -> (TestServer, TestServer) {
    let addr = upstream.addr;
    let configure = move |raw: &mut portcullis::config::RawConfig| {
        raw.bootstrap.first_user_admin = true;
        raw.routes = vec![
            route("/api", addr, "required", &[]),
            route("/ops", addr, "required", &["admin"]),
        ];
    };
    let a = TestServer::start(configure);
    let b = TestServer::replica_of(&a, configure);
    (a, b)
}

fn get(server: &TestServer, path: &str, token: &str) -> u16 {
    client()
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// How long until `server` answers `path` with `status` (polled; panics after 10 s).
fn time_until(server: &TestServer, path: &str, token: &str, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        if get(server, path, token) == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} never answered {status}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How many session notices `server` has received and read.
fn notices(server: &TestServer) -> u64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_session_notification_lag_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn on_postgres(test: impl FnOnce()) {
    with_backend(Backend::Postgres, test)
}

#[test]
fn accounts_are_shared_and_duplicates_refused_across_replicas() {
    on_postgres(|| {
        let upstream = EchoUpstream::start();
        let (a, b) = two_replicas(&upstream);
        a.register("alice@example.com", "al\\\"ice\"", PW);
        // A token issued by one replica works on the other at once (no waiting in the test).
        let before = notices(&b);
        let token = a.login("alice@example.com", PW);
        assert_eq!(get(&b, "/api/x", &token), 200);
        // (identity headers percent-encode what is not plain ASCII text)
        assert_eq!(
            upstream.last().header("x-auth-nickname"),
            Some("al%5C%22ice%22")
        );
        // The opening was announced to the other replica in a notice it could read (the lag
        // histogram counts every notice decoded; an unreadable one is only logged).
        let started = Instant::now();
        while notices(&b) == before {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no readable notice arrived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let token = b.login("alice@example.com", PW);
        assert_eq!(get(&a, "/api/x", &token), 200);
        let (status, body) = b.api(
            "POST",
            "/register",
            None,
            Some(
                json!({"email": "ALICE@example.com", "nickname": "other", "password": PW,
                        "passphrase": "correct horse battery staple"}),
            ),
        );
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["detail"], "Email already registered");
        // Concurrent registrations of one address on both replicas make one account.
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let url = if i % 2 == 0 { a.url("/auth/register") } else { b.url("/auth/register") };
                std::thread::spawn(move || {
                    client()
                        .post(url)
                        .json(&json!({"email": "race@example.com", "nickname": format!("race{i}"),
                                      "password": PW, "passphrase": "correct horse battery staple"}))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let created = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|s| *s == 201)
            .count();
        assert_eq!(created, 1);
    });
}

#[test]
fn revocations_on_one_replica_are_refused_on_the_other_within_a_second() {
    on_postgres(|| {
        let upstream = EchoUpstream::start();
        let (a, b) = two_replicas(&upstream);
        a.register("boss@example.com", "boss", PW);
        let boss = a.login("boss@example.com", PW);
        let uid = a.register("eve@example.com", "eve", PW);
        let mut worst = Duration::ZERO;
        // Logouts, 50 times.
        for _ in 0..50 {
            let token = b.login("eve@example.com", PW);
            assert_eq!(get(&b, "/api/x", &token), 200);
            let (status, _) = a.api("POST", "/logout", Some(&token), None);
            assert_eq!(status, 200);
            worst = worst.max(time_until(&b, "/api/x", &token, 401));
        }
        // A role change (the promoted admin's old session ends; so does the demoted one's).
        let token = b.login("eve@example.com", PW);
        let (status, _) = a.api(
            "PUT",
            &format!("/accounts_management/{uid}"),
            Some(&boss),
            Some(json!({"role": "admin"})),
        );
        assert_eq!(status, 200);
        worst = worst.max(time_until(&b, "/api/x", &token, 401));
        let admin_token = b.login("eve@example.com", PW);
        assert_eq!(get(&b, "/ops/x", &admin_token), 200);
        let (status, _) = a.api(
            "PUT",
            &format!("/accounts_management/{uid}"),
            Some(&boss),
            Some(json!({"role": "user", "lock": true})),
        );
        assert_eq!(status, 200);
        worst = worst.max(time_until(&b, "/ops/x", &admin_token, 401));
        // Deletion.
        let (status, _) = a.api(
            "PUT",
            &format!("/accounts_management/{uid}"),
            Some(&boss),
            Some(json!({"lock": false})),
        );
        assert_eq!(status, 200);
        let token = b.login("eve@example.com", PW);
        let (status, _) = a.api(
            "DELETE",
            &format!("/accounts_management/{uid}"),
            Some(&boss),
            None,
        );
        assert_eq!(status, 200);
        worst = worst.max(time_until(&b, "/api/x", &token, 401));
        assert!(
            worst <= Duration::from_secs(1),
            "slowest revocation took {worst:?}"
        );
        // A profile change reaches the other replica's identity headers.
        let token = b.login("boss@example.com", PW);
        let (status, _) = a.api(
            "PUT",
            "/my_account/",
            Some(&boss),
            Some(json!({"nickname": "chief"})),
        );
        assert_eq!(status, 200);
        let started = Instant::now();
        loop {
            assert_eq!(get(&b, "/api/x", &token), 200);
            if upstream.last().header("x-auth-nickname") == Some("chief") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the new nickname never arrived"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    });
}

fn resyncs(server: &TestServer) -> u64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_session_resyncs_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn ready(server: &TestServer) -> u16 {
    client()
        .get(server.admin_url("/readyz"))
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn a_replica_whose_notifications_are_cut_fails_closed_then_catches_up() {
    on_postgres(|| {
        let upstream = EchoUpstream::start();
        let addr = upstream.addr;
        let a = TestServer::start(|raw| raw.routes = vec![route("/api", addr, "required", &[])]);
        // B names its connections, so that its notification connection can be cut alone.
        let b = TestServer::replica_of(&a, |raw| {
            raw.storage.database.push_str("&application_name=replica-b");
            raw.routes = vec![route("/api", addr, "required", &[])];
        });
        let url = std::fs::read_to_string(a.data_dir().join(".postgres-url")).unwrap();
        let database = url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_string();
        let pg = postgres::postgres().unwrap();
        a.register("alice@example.com", "alice", PW);
        for round in 0..3 {
            let token = a.login("alice@example.com", PW);
            let other = a.login("alice@example.com", PW);
            assert_eq!(get(&b, "/api/x", &token), 200);
            let before = resyncs(&b);
            // B's notification connection is cut, and it cannot reconnect for now.
            pg.execute(&format!(
                "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
            ));
            pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE application_name = 'replica-b-listener'",
            );
            // Within a second B stops vouching for sessions: 503, and not ready.
            let cut = time_until(&b, "/api/x", &other, 503);
            assert!(
                cut <= Duration::from_secs(1),
                "round {round}: B noticed after {cut:?}"
            );
            assert_eq!(ready(&b), 503);
            // A session ends meanwhile; B, blind, never lets it through.
            let (status, _) = a.api("POST", "/logout", Some(&token), None);
            assert_eq!(status, 200);
            let seen = upstream.count();
            for _ in 0..20 {
                assert_eq!(get(&b, "/api/x", &token), 503);
                assert_eq!(get(&b, "/api/x", &other), 503);
            }
            assert_eq!(upstream.count(), seen, "nothing reached the upstream");
            // Connections allowed again: B resynchronizes by itself.
            pg.execute(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"));
            let started = Instant::now();
            while resyncs(&b) <= before {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "B never resynchronized"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(get(&b, "/api/x", &token), 401, "the ended session");
            assert_eq!(get(&b, "/api/x", &other), 200, "the live one");
            assert_eq!(ready(&b), 200);
            a.api("POST", "/logout", Some(&other), None);
        }
        // A kill alone (reconnecting at once) never lets an ended session through either.
        let token = a.login("alice@example.com", PW);
        assert_eq!(get(&b, "/api/x", &token), 200);
        pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'replica-b-listener'",
        );
        let (status, _) = a.api("POST", "/logout", Some(&token), None);
        assert_eq!(status, 200);
        let started = Instant::now();
        loop {
            let status = get(&b, "/api/x", &token);
            assert!(
                status == 401 || status == 503,
                "the ended session got {status}"
            );
            if status == 401 && resyncs(&b) > 3 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "B never caught up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

#[test]
fn queued_mail_is_delivered_once_by_three_replicas() {
    on_postgres(|| {
        let upstream = EchoUpstream::start();
        let (a, b) = two_replicas(&upstream);
        let c = TestServer::replica_of(&a, |_| {});
        for i in 0..30 {
            let server = [&a, &b, &c][i % 3];
            server.register(&format!("user{i}@example.com"), &format!("user{i}"), PW);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let queued = crate::common::block_on(a.store().mail_queue_len()).unwrap();
            if queued == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{queued} mails never went out");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut sent: Vec<String> = [&a, &b, &c]
            .iter()
            .flat_map(|s| s.outbox())
            .filter_map(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("To: ").map(str::to_string))
            })
            .collect();
        sent.sort();
        let count = sent.len();
        sent.dedup();
        assert_eq!(count, 30, "{sent:?}");
        assert_eq!(sent.len(), 30, "a mail went out twice");
    });
}

#[test]
fn a_lockout_holds_on_every_replica_and_survives_a_restart() {
    on_postgres(|| {
        let upstream = EchoUpstream::start();
        let (a, b) = two_replicas(&upstream);
        a.register("victim@example.com", "victim", PW);
        let login = |server: &TestServer, password: &str| {
            server
                .api(
                    "POST",
                    "/login",
                    None,
                    Some(json!({"email": "victim@example.com", "password": password})),
                )
                .0
        };
        // Guesses spread over both replicas count as one.
        for i in 0..5 {
            let server = if i % 2 == 0 { &a } else { &b };
            assert_eq!(login(server, "Wrong-Guess-1!"), 401);
        }
        assert_eq!(login(&a, PW), 429, "blocked on A");
        assert_eq!(login(&b, PW), 429, "blocked on B");
        // A replica that restarts has not forgotten.
        let TestServer {
            server: running,
            dir,
            ..
        } = b;
        running.stop_with(pingora_core::server::ShutdownSignal::FastShutdown);
        let b = TestServer::start_with_clock(dir, a.clock.clone(), |_| {});
        assert_eq!(login(&b, PW), 429, "blocked on B after its restart");
        // Registrations are limited across replicas too.
        let register = |server: &TestServer, i: u32| {
            server
                .api(
                    "POST",
                    "/register",
                    None,
                    Some(json!({"email": format!("new{i}@example.com"), "nickname": format!("new{i}"),
                                "password": PW, "passphrase": "correct horse battery staple"})),
                )
                .0
        };
        let c =
            TestServer::replica_of(&a, |raw| raw.limits.registrations_per_ip = "3/1hour".into());
        let d =
            TestServer::replica_of(&a, |raw| raw.limits.registrations_per_ip = "3/1hour".into());
        // (The victim's registration under the tests' generous quota has long been forgotten.)
        a.clock.advance(60);
        assert_eq!(register(&c, 1), 201);
        assert_eq!(register(&d, 2), 201);
        assert_eq!(register(&c, 3), 201);
        assert_eq!(
            register(&d, 4),
            429,
            "the fourth from one address, on either replica"
        );
    });
}

#[test]
fn when_postgresql_stops_protected_routes_fail_closed_and_everything_recovers() {
    on_postgres(|| {
        let Some(pg) = postgres::dedicated() else {
            return;
        };
        let upstream = EchoUpstream::start();
        let addr = upstream.addr;
        let url = pg.new_database();
        let server = TestServer::start(|raw| {
            raw.storage.database = url.clone();
            raw.routes = vec![
                route("/api", addr, "required", &[]),
                route("/public", addr, "public", &[]),
            ];
        });
        server.register("alice@example.com", "alice", PW);
        let token = server.login("alice@example.com", PW);
        assert_eq!(get(&server, "/api/x", &token), 200);
        pg.stop();
        // Within a few seconds: protected routes 503, the accounts API 503 with Retry-After,
        // not ready; public routes keep working.
        let failed = time_until(&server, "/api/x", &token, 503);
        assert!(failed <= Duration::from_secs(3), "took {failed:?}");
        let before = upstream.count();
        assert_eq!(get(&server, "/api/x", &token), 503);
        assert_eq!(upstream.count(), before);
        assert_eq!(get(&server, "/public/x", &token), 200);
        let resp = client()
            .post(server.url("/auth/login"))
            .json(&json!({"email": "alice@example.com", "password": PW}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
        assert_eq!(ready(&server), 503);
        assert!(server.metrics().contains("portcullis_storage_up 0"));
        // The database returns: everything recovers by itself, the session still valid.
        pg.restart();
        let recovered = time_until(&server, "/api/x", &token, 200);
        assert!(recovered <= Duration::from_secs(15), "took {recovered:?}");
        server.login("alice@example.com", PW);
        assert_eq!(ready(&server), 200);
        assert!(server.metrics().contains("portcullis_storage_up 1"));
    });
}

/// `portcullis …` with a clean environment plus `env`.
fn portcullis(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn one_instance_moves_to_postgresql_with_its_accounts_sessions_and_audit() {
    let Some(pg) = postgres::postgres() else {
        return;
    };
    let upstream = EchoUpstream::start();
    let addr = upstream.addr;
    let routes = move |raw: &mut portcullis::config::RawConfig| {
        raw.routes = vec![route("/api", addr, "required", &[])];
    };
    // A single instance on its embedded files.
    let single = TestServer::start(routes);
    single.register("alice@example.com", "alice", PW);
    single.register("bob@example.com", "bob", PW);
    let token = single.login("alice@example.com", PW);
    assert_eq!(get(&single, "/api/x", &token), 200);
    let TestServer {
        server: running,
        dir,
        clock,
    } = single;
    running.stop_with(pingora_core::server::ShutdownSignal::FastShutdown);
    let data_dir = dir.path().to_string_lossy().into_owned();
    let url = pg.new_database();
    let env = [("PORTCULLIS_DATA_DIR", data_dir.as_str())];
    let out = portcullis(&["migrate", "--to", &url], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("copied 2 users, 1 sessions"), "{stdout}");
    // A second migration into the now occupied database is refused.
    let again = portcullis(&["migrate", "--to", &url], &env);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds data"));
    // Bad URLs are named, their passwords not shown.
    let bad = portcullis(
        &[
            "migrate",
            "--to",
            "postgres://app:s3cret@db/p?sslmode=verify-ca",
        ],
        &env,
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr.contains("--to") && !stderr.contains("s3cret"),
        "{stderr}"
    );

    // The same data dir (signing key) on PostgreSQL: the old password and the old session work.
    with_backend(Backend::Postgres, || {
        let moved = TestServer::start_with_clock(dir, clock, |raw| {
            routes(raw);
            raw.storage.database = url.clone();
        });
        assert_eq!(get(&moved, "/api/x", &token), 200, "the session moved");
        let fresh = moved.login("bob@example.com", PW);
        assert_eq!(get(&moved, "/api/x", &fresh), 200);
        let admin_events = crate::common::block_on(moved.store().audit_events(
            portcullis::store::models::AuditFilter {
                limit: 100,
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(admin_events.len() >= 4, "{admin_events:?}");
        // Backups of PostgreSQL are pg_dump's job, and portcullis says so.
        let out = portcullis(
            &["backup", "--out", "/tmp/nope"],
            &[("DATABASE_URL", url.as_str())],
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
    });
}

fn limited_replicas(
    upstream: &EchoUpstream,
    redis_url: Option<String>,
) -> (TestServer, TestServer) {
    let addr = upstream.addr;
    let configure = move |raw: &mut portcullis::config::RawConfig| {
        if let Some(url) = &redis_url {
            raw.storage.redis_url = url.clone();
        }
        let mut api = route("/api", addr, "required", &[]);
        api.rate_limit = Some("5/1minute".into());
        raw.routes = vec![api];
    };
    let a = TestServer::start(configure.clone());
    let b = TestServer::replica_of(&a, configure);
    (a, b)
}

fn fallbacks(server: &TestServer) -> u64 {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_redis_fallbacks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn with_redis_route_limits_are_exact_across_replicas() {
    on_postgres(|| {
        let Some(redis) = crate::common::redis::redis() else {
            return;
        };
        let upstream = EchoUpstream::start();
        let (a, b) = limited_replicas(&upstream, Some(redis.url()));
        a.register("alice@example.com", "alice", PW);
        let token = a.login("alice@example.com", PW);
        let statuses: Vec<u16> = [&a, &a, &b, &a, &b, &b, &a]
            .iter()
            .map(|s| get(s, "/api/x", &token))
            .collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
        assert_eq!(fallbacks(&a) + fallbacks(&b), 0);
        // Without Redis each replica counts alone (documented): five on each.
        let (c, d) = limited_replicas(&upstream, None);
        c.register("bob@example.com", "bob", PW);
        let token = c.login("bob@example.com", PW);
        let statuses: Vec<u16> = (0..6)
            .map(|i| get(if i < 3 { &c } else { &d }, "/api/x", &token))
            .collect();
        assert_eq!(statuses, [200; 6]);
    });
}

#[test]
fn without_redis_each_replica_still_limits_and_recovers_when_it_returns() {
    on_postgres(|| {
        let Some(redis) = crate::common::redis::dedicated() else {
            return;
        };
        let upstream = EchoUpstream::start();
        let (a, b) = limited_replicas(&upstream, Some(redis.url()));
        a.register("alice@example.com", "alice", PW);
        let token = a.login("alice@example.com", PW);
        assert_eq!(get(&a, "/api/x", &token), 200);
        redis.stop();
        // Each replica falls back to its own count: limited, never unlimited.
        let on_a: Vec<u16> = (0..6).map(|_| get(&a, "/api/x", &token)).collect();
        assert_eq!(
            on_a,
            [200, 200, 200, 200, 429, 429],
            "A counted the first one too"
        );
        assert!(fallbacks(&a) >= 4, "{}", fallbacks(&a));
        assert_eq!(get(&b, "/api/x", &token), 200, "B counts alone meanwhile");
        // Redis returns (empty): decisions are shared again, and nothing falls back.
        redis.restart();
        a.clock.advance(120);
        let started = Instant::now();
        loop {
            let before = fallbacks(&b);
            let status = get(&b, "/api/x", &token);
            if status == 200 && fallbacks(&b) == before {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Redis never used again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let used_on_b = 1;
        let mut statuses: Vec<u16> = (0..(5 - used_on_b))
            .map(|_| get(&a, "/api/x", &token))
            .collect();
        statuses.push(get(&b, "/api/x", &token));
        assert_eq!(statuses, [200, 200, 200, 200, 429]);
    });
}
