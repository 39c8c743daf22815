//! Email through a real SMTP server on loopback (mailin-embedded): delivery, retries while the
//! server is down, and permanent rejections, none of which ever loses or blocks an account.

use crate::common::{free_port, link_token, TestServer};
use mailin_embedded::{response, AuthMechanism, Handler, Response, Server, SslConfig};
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
    /// Users that authenticated with AUTH PLAIN.
    authenticated: Arc<Mutex<Vec<String>>>,
}

const SMTP_USER: &str = "mailer";
const SMTP_PASSWORD: &str = "smtp-secret-0123";

impl Handler for Sink {
    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        if user == SMTP_USER && password == SMTP_PASSWORD {
            self.authenticated.lock().unwrap().push(user.to_string());
            response::AUTH_OK
        } else {
            response::INVALID_CREDENTIALS
        }
    }

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
        let text = crate::common::decode_quoted_printable(&String::from_utf8_lossy(&data));
        self.received.lock().unwrap().push((to, text));
        response::OK
    }
}

/// Start an SMTP server on `port` (0: any); returns its port and what it receives.
fn smtp_server(port: u16, reject: bool) -> (u16, Inbox) {
    let (port, received, _) = smtp_server_with(port, reject, SslConfig::None);
    (port, received)
}

/// An SMTP server with the given TLS setup (then requiring AUTH PLAIN); also returns who
/// authenticated.
fn smtp_server_with(
    port: u16,
    reject: bool,
    ssl: SslConfig,
) -> (u16, Inbox, Arc<Mutex<Vec<String>>>) {
    // Two rustls providers are compiled into the tests (ring, and mailin's aws-lc-rs): pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind smtp");
    let port = listener.local_addr().unwrap().port();
    let sink = Sink {
        reject,
        ..Sink::default()
    };
    let received = sink.received.clone();
    let authenticated = sink.authenticated.clone();
    let tls = !matches!(ssl, SslConfig::None);
    let mut server = Server::new(sink);
    server
        .with_name("localhost")
        .with_ssl(ssl)
        .unwrap()
        .with_tcp_listener(listener);
    if tls {
        // With AUTH offered, mailin requires it before MAIL.
        server.with_auth(AuthMechanism::Plain);
    }
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (port, received, authenticated)
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
    let text = server.metrics();
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
    // The SMTP server has the message a moment before portcullis has recorded the delivery.
    wait_until("the delivery to be recorded", || {
        mail_metric(&server, "sent") == 1
    });
}

crate::on_both_backends! {
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
        // The SMTP server has the message a moment before portcullis has recorded the delivery.
        wait_until("the delivery to be recorded", || {
            mail_metric(&server, "sent") == 1
        });
        assert_eq!(
            crate::common::block_on(server.store().mail_queue_len()).unwrap(),
            0
        );
    }
}

#[test]
fn permanently_rejected_mail_is_dropped_and_counted() {
    let (port, received) = smtp_server(0, true);
    let server = TestServer::start(smtp_config(port));
    server.register("bounce@example.com", "bounce", PW);
    wait_until("the drop", || mail_metric(&server, "dropped") == 1);
    assert!(received.lock().unwrap().is_empty());
    assert_eq!(
        crate::common::block_on(server.store().mail_queue_len()).unwrap(),
        0
    );
    server.login("bounce@example.com", PW);
}

/// A self-signed certificate for "localhost" in `dir`: (cert path, key path).
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("smtp-cert.pem");
    let key = dir.join("smtp-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

fn starttls_config(
    port: u16,
    ca: String,
    password: &'static str,
) -> impl FnOnce(&mut portcullis::config::RawConfig) {
    move |raw| {
        smtp_config(port)(raw);
        raw.email.smtp_host = "localhost".into();
        raw.email.smtp_security = "starttls".into();
        raw.email.smtp_ca_file = ca;
        raw.email.smtp_username = SMTP_USER.into();
        raw.email.smtp_password = password.into();
    }
}

#[test]
fn starttls_with_credentials() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let (port, received, authenticated) = smtp_server_with(
        0,
        false,
        SslConfig::SelfSigned {
            cert_path: cert.clone(),
            key_path: key,
        },
    );
    let server = TestServer::start(starttls_config(port, cert, SMTP_PASSWORD));
    server.register("tls@example.com", "tls", PW);
    wait_until("the mail over STARTTLS", || {
        !received.lock().unwrap().is_empty()
    });
    assert_eq!(
        authenticated.lock().unwrap().as_slice(),
        [SMTP_USER.to_string()]
    );
    assert_eq!(
        received.lock().unwrap()[0].0,
        vec!["tls@example.com".to_string()]
    );
}

#[test]
fn starttls_refuses_an_untrusted_certificate_and_bad_credentials_are_dropped() {
    let certs = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let (other_cert, _) = self_signed(other.path());
    let (port, received, _) = smtp_server_with(
        0,
        false,
        SslConfig::SelfSigned {
            cert_path: cert.clone(),
            key_path: key.clone(),
        },
    );
    // Trusting another certificate: the server's is refused, nothing is sent in the clear.
    let untrusting = TestServer::start(starttls_config(port, other_cert, SMTP_PASSWORD));
    untrusting.register("careful@example.com", "careful", PW);
    wait_until("a failed attempt", || {
        mail_metric(&untrusting, "retried") + mail_metric(&untrusting, "dropped") >= 1
    });
    assert!(received.lock().unwrap().is_empty());
    // Wrong credentials: the server's 535 is permanent, the mail is dropped, the account stays.
    let (port, received, _) = smtp_server_with(
        0,
        false,
        SslConfig::SelfSigned {
            cert_path: cert.clone(),
            key_path: key,
        },
    );
    let wrong = TestServer::start(starttls_config(port, cert, "not-the-password"));
    wrong.register("wrong@example.com", "wrong", PW);
    wait_until("the drop", || mail_metric(&wrong, "dropped") == 1);
    assert!(received.lock().unwrap().is_empty());
    wrong.login("wrong@example.com", PW);
}
