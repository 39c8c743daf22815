//! Email through a real SMTP server on loopback (mailin-embedded): delivery, retries while the
//! server is down, and permanent rejections, none of which ever loses or blocks an account.

mod common;

use common::{client, free_port, link_token, TestServer};
use mailin_embedded::{response, Handler, Response, Server, SslConfig};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PW: &str = "Tr1cky-Horse!";

/// Messages received: (recipients, message text).
type Inbox = Arc<Mutex<Vec<(Vec<String>, String)>>>;

#[derive(Clone, Default)]
struct Sink {
    received: Inbox,
    current: Arc<Mutex<(Vec<String>, Vec<u8>)>>,
    reject: bool,
}

impl Handler for Sink {
    fn rcpt(&mut self, _to: &str) -> Response {
        if self.reject {
            response::NO_MAILBOX
        } else {
            response::OK
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        *self.current.lock().unwrap() = (to.to_vec(), Vec::new());
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.lock().unwrap().1.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let (to, data) = std::mem::take(&mut *self.current.lock().unwrap());
        let text = common::decode_quoted_printable(&String::from_utf8_lossy(&data));
        self.received.lock().unwrap().push((to, text));
        response::OK
    }
}

/// Start an SMTP server on `port` (0: any); returns its port and what it receives.
fn smtp_server(port: u16, reject: bool) -> (u16, Inbox) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind smtp");
    let port = listener.local_addr().unwrap().port();
    let sink = Sink {
        reject,
        ..Sink::default()
    };
    let received = sink.received.clone();
    let mut server = Server::new(sink);
    server
        .with_name("smtp.test")
        .with_ssl(SslConfig::None)
        .unwrap()
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (port, received)
}

fn smtp_config(port: u16) -> impl FnOnce(&mut portcullis::config::RawConfig) {
    move |raw| {
        raw.email.transport = "smtp".into();
        raw.email.smtp_host = "127.0.0.1".into();
        raw.email.smtp_port = port as i64;
        raw.email.smtp_security = "plain".into();
        raw.email.from = "portcullis <no-reply@example.com>".into();
        raw.server.public_url = "https://id.example.com".into();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn mail_metric(server: &TestServer, outcome: &str) -> u64 {
    let text = client()
        .get(server.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let needle = format!("portcullis_mail_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn verification_mail_goes_out_over_smtp() {
    let (port, received) = smtp_server(0, false);
    let server = TestServer::start(smtp_config(port));
    server.register("smtp@example.com", "smtp", PW);
    wait_until("the verification mail", || {
        !received.lock().unwrap().is_empty()
    });
    let (to, message) = received.lock().unwrap()[0].clone();
    assert_eq!(to, vec!["smtp@example.com".to_string()]);
    assert!(
        message.contains("From: portcullis <no-reply@example.com>"),
        "{message}"
    );
    assert!(
        message.contains("Subject: Verify your email address"),
        "{message}"
    );
    assert!(
        message.contains("https://id.example.com/auth/verify-email?token="),
        "{message}"
    );
    let (status, _) = server.api(
        "GET",
        &format!("/verify-email?token={}", link_token(&message)),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(mail_metric(&server, "sent"), 1);
}

#[test]
fn mail_is_retried_until_the_server_comes_back() {
    let port = free_port();
    let server = TestServer::start(smtp_config(port));
    // The SMTP server is down: the account is created all the same.
    server.register("patient@example.com", "patient", PW);
    server.login("patient@example.com", PW);
    wait_until("a failed attempt", || mail_metric(&server, "retried") >= 1);
    let (_, received) = smtp_server(port, false);
    server.clock.advance(3600);
    wait_until("delivery after the retry", || {
        !received.lock().unwrap().is_empty()
    });
    assert_eq!(
        received.lock().unwrap()[0].0,
        vec!["patient@example.com".to_string()]
    );
    assert_eq!(mail_metric(&server, "sent"), 1);
    assert_eq!(server.server.state.store.mail_queue_len().unwrap(), 0);
}

#[test]
fn permanently_rejected_mail_is_dropped_and_counted() {
    let (port, received) = smtp_server(0, true);
    let server = TestServer::start(smtp_config(port));
    server.register("bounce@example.com", "bounce", PW);
    wait_until("the drop", || mail_metric(&server, "dropped") == 1);
    assert!(received.lock().unwrap().is_empty());
    assert_eq!(server.server.state.store.mail_queue_len().unwrap(), 0);
    server.login("bounce@example.com", PW);
}
