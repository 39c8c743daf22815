//! Nothing acknowledged is lost: registrations run concurrently while the server is killed with
//! SIGKILL at random moments, again and again; afterwards every account that got a 201 exists and
//! logs in, no record lacks its email index entry, no email is doubled. (Record and indexes are
//! written in one transaction; an index entry without its record would read as "no such user".)

use crate::common::TestServer;
use rand::Rng;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PW: &str = "Tr1cky-Horse!";

fn kills() -> usize {
    std::env::var("PORTCULLIS_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

crate::on_both_backends! {
    fn sigkill_under_load_loses_no_acknowledged_registration() {
        let dir = tempfile::tempdir().unwrap();
        let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let mut rng = rand::rng();
        for round in 0..kills() {
            let (listen, admin) = crate::common::free_port_pair();
            let mut child = crate::common::spawn_portcullis(dir.path(), listen, admin, &[]);
            let base = format!("http://127.0.0.1:{listen}/auth");
            crate::common::wait_until_serving(&base);
            crate::common::wait_until_ready(admin);
            let stop = Arc::new(AtomicBool::new(false));
            let writers: Vec<_> = (0..4)
                .map(|_| {
                    let (stop, next, acknowledged, base) = (stop.clone(), next.clone(), acknowledged.clone(), base.clone());
                    std::thread::spawn(move || {
                        let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
                        while !stop.load(Ordering::SeqCst) {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            let email = format!("crash{i}@example.com");
                            let body = serde_json::json!({"email": email, "nickname": format!("crash{i}"), "password": PW, "passphrase": "correct horse battery staple"});
                            match client.post(format!("{base}/register")).json(&body).send() {
                                Ok(r) if r.status() == 201 => acknowledged.lock().unwrap().push(email),
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    })
                })
                .collect();
            // Kill only once this round has acknowledged some writes (a fresh machine may still be
            // busy writing the build to disk when the first rounds run), then at a random moment.
            let acked_before = acknowledged.lock().unwrap().len();
            let deadline = Instant::now() + Duration::from_secs(60);
            while acknowledged.lock().unwrap().len() < acked_before + 3 {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no registration acknowledged within 60 s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            stop.store(true, Ordering::SeqCst);
            for w in writers {
                w.join().unwrap();
            }
        }

        let acknowledged = acknowledged.lock().unwrap().clone();
        assert!(
            acknowledged.len() >= kills(),
            "too few registrations to mean anything: {}",
            acknowledged.len()
        );
        let server = TestServer::start_in(dir, |_| {});
        let store = server.store();
        for email in &acknowledged {
            assert!(
                crate::common::block_on(store.user_by_email(email))
                    .unwrap()
                    .is_some(),
                "{email} was acknowledged but is gone"
            );
        }
        let users = crate::common::block_on(store.list_users(0, usize::MAX)).unwrap();
        let mut emails = HashSet::new();
        for user in &users {
            assert!(
                emails.insert(user.email.to_lowercase()),
                "{} appears twice",
                user.email
            );
            let indexed = crate::common::block_on(store.user_by_email(&user.email)).unwrap();
            assert_eq!(
                indexed.map(|u| u.id),
                Some(user.id.clone()),
                "{} has no email index entry",
                user.email
            );
        }
        for email in acknowledged
            .iter()
            .step_by((acknowledged.len() / 10).max(1))
        {
            server.login(email, PW);
        }
    }
}
