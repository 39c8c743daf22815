//! Backups of a live server and restoring them: `portcullis backup` and `portcullis restore`.

use crate::common::TestServer;
use serde_json::json;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const PW: &str = "Tr1cky-Horse!";

fn portcullis(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn backup_during_registrations_restores_every_acknowledged_account() {
    let server = Arc::new(TestServer::start(|_| {}));
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, acknowledged, stop) = (server.clone(), acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 400 {
                let email = format!("user{i}@example.com");
                let (status, _) = server.api("POST", "/register", None, Some(json!({
                    "email": email, "nickname": format!("user{i}"), "password": PW, "passphrase": "correct horse battery staple"
                })));
                if status == 201 {
                    acknowledged.lock().unwrap().push(email);
                }
                i += 1;
            }
        })
    };
    while acknowledged.lock().unwrap().len() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let out = tempfile::tempdir().unwrap();
    let backup_dir = out.path().join("snapshot");
    let result = portcullis(
        &["backup", "--out", backup_dir.to_str().unwrap()],
        &[
            (
                "PORTCULLIS_SERVER__ADMIN_LISTEN",
                server.server.admin_listen.to_string(),
            ),
            (
                "PORTCULLIS_DATA_DIR",
                server.data_dir().to_string_lossy().into_owned(),
            ),
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    // Registrations keep going after the backup (waited for, not slept on: a registration
    // takes as long as the machine needs for two argon2id hashes and a commit).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() <= before.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server stopped accepting writes"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let after = acknowledged.lock().unwrap().len();
    assert!(
        !server
            .data_dir()
            .join("backups")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "the server-side copy was moved out"
    );

    let restored_dir = tempfile::tempdir().unwrap();
    let env = [(
        "PORTCULLIS_DATA_DIR",
        restored_dir.path().to_string_lossy().into_owned(),
    )];
    let result = portcullis(&["restore", "--from", backup_dir.to_str().unwrap()], &env);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    // Restoring over existing data is refused.
    let again = portcullis(&["restore", "--from", backup_dir.to_str().unwrap()], &env);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let restored = TestServer::start_in(restored_dir, |_| {});
    let store = restored.store();
    for email in &before {
        assert!(
            crate::common::block_on(store.user_by_email(email))
                .unwrap()
                .is_some(),
            "{email} acknowledged before the backup is missing"
        );
    }
    let count = crate::common::block_on(store.count_users()).unwrap() as usize;
    assert!(
        count >= before.len() && count <= after,
        "{count} users restored"
    );
    restored.login(&before[0], PW);
    restored.login(before.last().unwrap(), PW);
}

#[test]
fn backup_without_a_running_server_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(
        &["backup", "--out", dir.path().join("b").to_str().unwrap()],
        &[(
            "PORTCULLIS_SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", crate::common::free_port()),
        )],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = portcullis(
        &[
            "restore",
            "--from",
            dir.path().join("none").to_str().unwrap(),
        ],
        &[(
            "PORTCULLIS_DATA_DIR",
            dir.path().join("data").to_string_lossy().into_owned(),
        )],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}
