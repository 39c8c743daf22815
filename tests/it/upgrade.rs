//! Zero-downtime upgrade: a new process takes over the listening sockets of the running one
//! (pingora's SIGQUIT hand-over) while a client keeps sending requests; none fails.

use crate::common::{client, EchoUpstream, TEST_KEY};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spawn(
    dir: &std::path::Path,
    listen: u16,
    admin: u16,
    upstream: &EchoUpstream,
    upgrade: bool,
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("serve");
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.current_dir(dir)
        .env_clear()
        .env("PORTCULLIS_DATA_DIR", dir.join("data"))
        .env("PORTCULLIS_SERVER__LISTEN", format!("127.0.0.1:{listen}"))
        .env(
            "PORTCULLIS_SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        )
        .env("PORTCULLIS_SERVER__GRACE_PERIOD_SECONDS", "1")
        .env("PORTCULLIS_SERVER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", "1")
        .env(
            "PORTCULLIS_ROUTES",
            format!(
                "[{{path = \"/api\", upstream = \"{}\", auth = \"public\"}}]",
                upstream.addr
            ),
        )
        .env("SECRET_KEY", TEST_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_new_process_takes_over_without_a_failed_request() {
    let upstream = EchoUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = crate::common::free_port_pair();
    let mut old = spawn(dir.path(), listen, admin, &upstream, false);
    let url = format!("http://127.0.0.1:{listen}/api/x");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client()
        .get(&url)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "old process did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        std::thread::spawn(move || {
            // A fresh connection per request, so that every request meets the accept queue.
            while !stop.load(Ordering::SeqCst) {
                let c = reqwest::blocking::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                match c.get(&url).send() {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut new = spawn(dir.path(), listen, admin, &upstream, true);
    // The new process is ready for the hand-over once it listens on the upgrade socket; only
    // then is the old one told to hand over (pingora gives up after a few seconds of waiting).
    let socket = dir.path().join("data").join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(new.try_wait().unwrap().is_none(), "the new process exited");
        assert!(
            Instant::now() < deadline,
            "the new process never listened on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe { libc::kill(old.id() as i32, libc::SIGQUIT) };
    let status = old.wait().unwrap();
    assert!(status.success(), "old process exit: {status:?}");
    // The new process serves on the same port.
    let served_before = ok.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::SeqCst) < served_before + 20 {
        assert!(Instant::now() < deadline, "the new process does not serve");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process is running"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} requests failed, {} succeeded",
        failed.load(Ordering::SeqCst),
        ok.load(Ordering::SeqCst)
    );
    unsafe { libc::kill(new.id() as i32, libc::SIGINT) };
    new.wait().unwrap();
}
