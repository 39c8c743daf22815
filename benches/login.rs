//! Cost of a login's password check: one argon2id verification at the default (OWASP)
//! parameters, next to a bare hash, both through the bounded hashing pool.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::auth::password::Hasher;
use portcullis::config::{Config, RawConfig};

fn bench_login(c: &mut Criterion) {
    let config = Config::from_raw(&RawConfig::default()).unwrap();
    let hasher = Hasher::new(
        &config.passwords,
        portcullis::auth::password::HashMetrics::default(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let phc = runtime
        .block_on(hasher.hash("Tr1cky-Horse!".into()))
        .unwrap();
    let mut group = c.benchmark_group("login");
    group.sample_size(20);
    group.bench_function("verify_password_argon2id_m19456_t2_p1", |b| {
        b.iter(|| {
            let ok = runtime
                .block_on(hasher.verify("Tr1cky-Horse!".into(), Some(phc.clone())))
                .unwrap()
                .ok;
            assert!(ok);
        })
    });
    group.bench_function("unknown_user_dummy_verify", |b| {
        b.iter(|| {
            runtime
                .block_on(hasher.verify("Tr1cky-Horse!".into(), None))
                .unwrap()
        })
    });
    group.bench_function("hash_password", |b| {
        b.iter(|| {
            runtime
                .block_on(hasher.hash("Tr1cky-Horse!".into()))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_login);
criterion_main!(benches);
