//! Cost of the gate on the proxy's hot path: normalizing the target, classifying the route,
//! validating the bearer token and checking its session is live (in a table of 100,000
//! sessions), for a valid token, a forged one and none.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use portcullis::auth::gate::{authorize, credential};
use portcullis::auth::sessions::{NewSession, Principal, SessionTable};
use portcullis::auth::tokens::{Subject, TokenService};
use portcullis::config::{Config, RawConfig, RouteAuth, RouteSpec};
use portcullis::proxy::path::parse_target;
use portcullis::routes::{Destination, Route, RouteTable};
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn bench_gate(c: &mut Criterion) {
    let config = Config::from_raw(&RawConfig::default()).unwrap();
    let tokens = TokenService::new(&config.auth, b"bench-secret-key-0123456789abcdef-0123");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = tokens
        .issue(
            &Subject {
                user_id: "3f6c0b8e-2a51-4c07-9d1e-5a8f7c2b9e10",
                email: "alice@example.com",
                nickname: "alice",
                role: "user",
                session_id: "0d9e6a4b-7c15-4f3a-8e2d-1b6c9a7f5e30",
            },
            now,
        )
        .unwrap();
    let sessions = SessionTable::new(1800);
    let principal = |user_id: String| Principal {
        user_id,
        email: "alice@example.com".into(),
        nickname: "alice".into(),
        role: "user".into(),
    };
    for i in 0..100_000 {
        sessions.insert(NewSession {
            id: &format!("{i:032x}"),
            expires_at: now + 1800,
            last_seen: now,
            principal: principal(format!("user-{i}")),
        });
    }
    sessions.insert(NewSession {
        id: "0d9e6a4b-7c15-4f3a-8e2d-1b6c9a7f5e30",
        expires_at: now + 1800,
        last_seen: now,
        principal: principal("3f6c0b8e-2a51-4c07-9d1e-5a8f7c2b9e10".into()),
    });
    let spec = |path: &str| RouteSpec {
        path: path.to_string(),
        upstreams: vec!["127.0.0.1:9000".parse().unwrap()],
        auth: RouteAuth::Required,
        roles: vec![],
        rate_limit: None,
    };
    let table = RouteTable::new(
        "/auth",
        vec![
            Route::new(&spec("/api"), None),
            Route::new(&spec("/api/admin"), None),
            Route::new(&spec("/static"), None),
        ],
    );

    let mut valid = HeaderMap::new();
    valid.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let mut forged = HeaderMap::new();
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    forged.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {bad}")).unwrap(),
    );
    let none = HeaderMap::new();

    let run = |headers: &HeaderMap| {
        let target = parse_target(black_box(b"/api/orders/42?page=2")).unwrap();
        let Destination::Route(i) = table.classify(&target.path, |_| false) else {
            unreachable!()
        };
        let route = table.route(i);
        credential(black_box(headers))
            .and_then(|c| authorize(&tokens, &sessions, &route.rule, c, now))
            .is_ok()
    };
    assert!(run(&valid));
    assert!(!run(&forged));
    assert!(!run(&none));

    let mut group = c.benchmark_group("gate");
    group.bench_function("valid_token", |b| b.iter(|| run(&valid)));
    group.bench_function("forged_signature", |b| b.iter(|| run(&forged)));
    group.bench_function("no_token", |b| b.iter(|| run(&none)));
    group.finish();
}

/// One rate-limit decision (GCRA) with 100,000 keys already tracked.
fn bench_limiter(c: &mut Criterion) {
    use portcullis::auth::limiter::KeyedLimiter;
    use portcullis::clock::SystemClock;
    use portcullis::config::Quota;
    let limiter = KeyedLimiter::new(
        Quota {
            requests: 1_000_000,
            period: Duration::from_secs(60),
        },
        std::sync::Arc::new(SystemClock),
        1_000_000,
    );
    for i in 0..100_000u64 {
        limiter.check(i);
    }
    let mut i = 0u64;
    c.bench_function("limiter/check_existing_key", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            black_box(limiter.check(black_box(i)))
        })
    });
}

criterion_group!(benches, bench_gate, bench_limiter);
criterion_main!(benches);
