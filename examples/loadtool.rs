//! Helpers for benches/load.sh:
//!
//! - `loadtool seed --config FILE --count N`: add N accounts (`bench-<i>@example.com`, password
//!   `Bench-Horse-42!`, one shared argon2id hash) to the databases the configuration names, in
//!   batches of one transaction each. Run it while portcullis is stopped.
//! - `loadtool hash-rate --config FILE --seconds S`: bare argon2id hashes per second at the
//!   configured parameters, one thread per core, no server involved: the ceiling for logins/s.

use argon2::{Algorithm, Argon2, Params, Version};
use portcullis::auth::password::Hasher;
use portcullis::config::{Config, Sources};
use portcullis::store::models::{User, ROLE_USER};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "Bench-Horse-42!";
const BATCH: usize = 20_000;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn config(args: &[String]) -> Config {
    let file = arg(args, "--config").map(PathBuf::from);
    match Config::load(&Sources::from_process(file.as_deref())) {
        Ok((config, _)) => config,
        Err(errors) => {
            for e in errors {
                eprintln!("loadtool: {e}");
            }
            std::process::exit(2);
        }
    }
}

fn seed(args: &[String]) {
    let config = config(args);
    let count: usize = arg(args, "--count")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("loadtool seed: --count N is required");
            std::process::exit(2);
        });
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    let store = portcullis::store::open(&config.storage, Default::default()).unwrap_or_else(|e| {
        eprintln!("loadtool: {e}");
        std::process::exit(1);
    });
    let hasher = Hasher::new(
        &config.passwords,
        portcullis::auth::password::HashMetrics::default(),
    )
    .expect("hasher");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hash = runtime
        .block_on(hasher.hash(PASSWORD.into()))
        .expect("hash");
    let passphrase = runtime
        .block_on(hasher.hash("bench passphrase words".into()))
        .expect("hash");
    let started = Instant::now();
    let mut added = 0;
    let mut next = runtime.block_on(store.count_users()).expect("count") as usize;
    while added < count {
        let n = BATCH.min(count - added);
        let batch: Vec<User> = (next..next + n)
            .map(|i| User {
                id: uuid::Uuid::new_v4().simple().to_string(),
                email: format!("bench-{i}@example.com"),
                nickname: format!("bench{i}"),
                password_hash: hash.clone(),
                passphrase_hash: passphrase.clone(),
                customer_account: String::new(),
                role: ROLE_USER.into(),
                locked: false,
                email_verified: true,
                created_at: 1_700_000_000,
                updated_at: 1_700_000_000,
                security_stamp: 0,
            })
            .collect();
        added += runtime.block_on(store.import_users(batch)).expect("import");
        next += n;
    }
    println!(
        "seeded {added} accounts in {:.1} s; {} in the database",
        started.elapsed().as_secs_f64(),
        runtime.block_on(store.count_users()).expect("count")
    );
}

fn hash_rate(args: &[String]) {
    let config = config(args);
    let seconds: u64 = arg(args, "--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let p = &config.passwords;
    let params = Params::new(
        p.argon2_memory_kib,
        p.argon2_iterations,
        p.argon2_parallelism,
        None,
    )
    .expect("argon2 parameters");
    let threads = num_cpus::get();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (done, stop, params) = (done.clone(), stop.clone(), params.clone());
            std::thread::spawn(move || {
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let mut out = [0u8; 32];
                while !stop.load(Ordering::Relaxed) {
                    argon
                        .hash_password_into(PASSWORD.as_bytes(), b"bench-salt-16byt", &mut out)
                        .expect("hash");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    println!(
        "hash_rate {:.1} /s (argon2id m={} t={} p={}, {threads} threads)",
        count as f64 / elapsed,
        p.argon2_memory_kib,
        p.argon2_iterations,
        p.argon2_parallelism
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("seed") => seed(&args),
        Some("hash-rate") => hash_rate(&args),
        _ => {
            eprintln!("usage: loadtool seed --config FILE --count N | hash-rate --config FILE --seconds S");
            std::process::exit(2);
        }
    }
}
