//! Outgoing email: composing messages, and delivering the durable mail queue through SMTP
//! (lettre) or into a file outbox in the data dir. Messages are queued in the same transaction
//! as the change they report, so a committed change always gets its mail, and delivery failures
//! are retried with growing delays without ever blocking a request.

use crate::config::{EmailSettings, EmailTransport, SmtpSecurity};
use crate::metrics::Metrics;
use crate::store::models::Mail;
use crate::store::Store;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::Body;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;
use std::time::Duration;

/// A message to queue.
pub fn compose(to: &str, subject: &str, body: &str, now: i64) -> Mail {
    Mail {
        to: to.to_string(),
        subject: subject.to_string(),
        body: body.to_string(),
        attempts: 0,
        next_attempt_at: now,
    }
}

enum Transport {
    Outbox(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// Why a delivery failed; permanent failures are not retried.
#[derive(Debug)]
pub struct SendError {
    pub permanent: bool,
    pub message: String,
}

pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    max_attempts: u32,
}

impl Mailer {
    pub fn new(settings: &EmailSettings, data_dir: &std::path::Path) -> Result<Mailer, String> {
        // TLS to the mail server uses rustls with ring. Name the provider explicitly: when more
        // than one is compiled in, rustls cannot pick one by itself. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("email.from: {e}"))?;
        let transport = match &settings.transport {
            EmailTransport::Outbox => Transport::Outbox(data_dir.join("outbox")),
            EmailTransport::Smtp {
                host,
                port,
                security,
                username,
                password,
                ca_file,
            } => {
                let parameters = || -> Result<TlsParameters, String> {
                    let mut builder = TlsParameters::builder(host.clone());
                    if let Some(path) = ca_file {
                        let fail = |e: &dyn std::fmt::Display| {
                            format!("email.smtp_ca_file {}: {e}", path.display())
                        };
                        let pem = std::fs::read(path).map_err(|e| fail(&e))?;
                        let cert = Certificate::from_pem(&pem).map_err(|e| fail(&e))?;
                        builder = builder.add_root_certificate(cert);
                    }
                    builder.build().map_err(|e| format!("email TLS: {e}"))
                };
                let tls = match security {
                    SmtpSecurity::Plain => Tls::None,
                    SmtpSecurity::StartTls => Tls::Required(parameters()?),
                    SmtpSecurity::Tls => Tls::Wrapper(parameters()?),
                };
                let mut builder =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                        .port(*port)
                        .tls(tls)
                        .timeout(Some(Duration::from_secs(15)));
                if !username.is_empty() {
                    builder =
                        builder.credentials(Credentials::new(username.clone(), password.clone()));
                }
                Transport::Smtp(builder.build())
            }
        };
        Ok(Mailer {
            transport,
            from,
            max_attempts: settings.max_attempts,
        })
    }

    /// Deliver one message.
    pub async fn send(&self, mail: &Mail) -> Result<(), SendError> {
        let permanent = |message: String| SendError {
            permanent: true,
            message,
        };
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| permanent(format!("bad recipient: {e}")))?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.as_str())
            .header(ContentType::TEXT_PLAIN);
        // Plain ASCII with short lines goes as 7bit, so links stay readable and copyable in
        // the outbox and in raw mail; anything else lets lettre pick an encoding.
        // (lettre itself picks quoted-printable for lines over 76 characters, which breaks links;
        // RFC 5322 allows 998.)
        let text = mail.body.replace("\r\n", "\n").replace('\n', "\r\n");
        let seven_bit = text.bytes().all(|b| b.is_ascii() && b != 0)
            && text.split("\r\n").all(|line| line.len() <= 998);
        let body = if seven_bit {
            Body::dangerous_pre_encoded(text.into_bytes(), ContentTransferEncoding::SevenBit)
        } else {
            Body::new(text)
        };
        let message = builder
            .body(body)
            .map_err(|e| permanent(format!("cannot build message: {e}")))?;
        match &self.transport {
            Transport::Outbox(dir) => {
                let dir = dir.clone();
                let bytes = message.formatted();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    let name = format!(
                        "{}-{}.eml",
                        chrono_like_stamp(),
                        uuid::Uuid::new_v4().simple()
                    );
                    // Written under a temporary name, then renamed: a reader never sees half a
                    // message.
                    let partial = dir.join(format!(".{name}.partial"));
                    std::fs::write(&partial, bytes)?;
                    std::fs::rename(&partial, dir.join(name))
                })
                .await
                .map_err(|e| SendError {
                    permanent: false,
                    message: e.to_string(),
                })?
                .map_err(|e| SendError {
                    permanent: false,
                    message: format!("outbox: {e}"),
                })
            }
            Transport::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(|e| SendError {
                permanent: e.is_permanent(),
                message: e.to_string(),
            }),
        }
    }
}

/// Seconds and nanoseconds since the epoch, so outbox files sort by time.
fn chrono_like_stamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}{:09}", d.as_secs(), d.subsec_nanos())
}

/// Delay before attempt number `attempts + 1`: 2, 4, 8 … seconds, at most an hour.
fn backoff(attempts: u32) -> i64 {
    1i64 << attempts.clamp(1, 11)
}

/// Deliver what is due at `now`, once. Returns how many messages were handled.
pub async fn deliver_due(store: &dyn Store, mailer: &Mailer, metrics: &Metrics, now: i64) -> usize {
    let due = match store.due_mail(now, 50).await {
        Ok(due) => due,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the mail queue");
            return 0;
        }
    };
    let handled = due.len();
    for (id, mut mail) in due {
        let (result, label) = match mailer.send(&mail).await {
            Ok(()) => (store.remove_mail(id).await, "sent"),
            Err(e) => {
                mail.attempts += 1;
                let give_up = e.permanent || mail.attempts >= mailer.max_attempts;
                tracing::warn!(error = %e.message, attempts = mail.attempts, give_up, "email delivery failed");
                if give_up {
                    (store.remove_mail(id).await, "dropped")
                } else {
                    mail.next_attempt_at = now + backoff(mail.attempts);
                    (store.retry_mail(id, mail).await, "retried")
                }
            }
        };
        // Counted once the queue reflects it, so the metric never runs ahead of the queue.
        metrics.mail.with_label_values(&[label]).inc();
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot update the mail queue");
        }
    }
    handled
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(super::backoff(1), 2);
        assert_eq!(super::backoff(3), 8);
        assert_eq!(super::backoff(50), 2048);
    }
}
