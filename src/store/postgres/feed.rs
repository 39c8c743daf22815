//! The change feed that keeps each replica's live-session table current: every transaction that
//! opens, ends or revokes sessions, or changes who a session belongs to, announces it with
//! NOTIFY; a dedicated connection per replica LISTENs, checks with a heartbeat that the channel
//! is alive, and on any doubt reports `Lost`, reconnects and sends a full `Resync`. It also
//! brings in the other replicas' session activity, so idle timeouts count all of it.

use super::connect::Target;
use super::schema::{self, Part};
use super::{db_err, pool_err};
use crate::store::models::{Session, SessionOwner, StoredSession};
use crate::store::{StoreError, StoreEvent};
use deadpool_postgres::{Pool, Transaction};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_postgres::AsyncMessage;

/// The NOTIFY channel.
pub const CHANNEL: &str = "portcullis_sessions";
/// The listening connection's `application_name` (as `pg_stat_activity` shows it): the
/// configured one (default `portcullis`) with this suffix.
pub const LISTENER_SUFFIX: &str = "-listener";
/// How often the listening connection proves it is alive, and how long an answer may take:
/// past that the channel counts as lost (the table is distrusted within about a second).
const HEARTBEAT: Duration = Duration::from_millis(300);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(700);
/// How often other replicas' session activity is fetched.
const ACTIVITY_POLL: Duration = Duration::from_secs(2);
/// Reconnection back-off.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A session change as announced (the NOTIFY payload, JSON; never a secret).
/// A notice and when it was committed (ms since the epoch, the sender's clock).
#[derive(Debug, Serialize, Deserialize)]
struct Stamped<'a> {
    at: i64,
    #[serde(borrow, flatten)]
    notice: Notice<'a>,
}

/// Received strings may need unescaping (a nickname with quotes, say): hence `Cow`, borrowed
/// when they do not.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Notice<'a> {
    Opened {
        #[serde(borrow)]
        session: NoticeSession<'a>,
        #[serde(borrow)]
        owner: NoticeOwner<'a>,
    },
    Ended {
        #[serde(borrow)]
        session_id: Cow<'a, str>,
    },
    Revoked {
        #[serde(borrow)]
        user_id: Cow<'a, str>,
        #[serde(borrow)]
        keep: Option<Cow<'a, str>>,
    },
    Owner {
        #[serde(borrow)]
        user_id: Cow<'a, str>,
        #[serde(borrow)]
        owner: NoticeOwner<'a>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NoticeSession<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    created_at: i64,
    expires_at: i64,
    last_seen: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NoticeOwner<'a> {
    #[serde(borrow)]
    email: Cow<'a, str>,
    #[serde(borrow)]
    nickname: Cow<'a, str>,
    #[serde(borrow)]
    role: Cow<'a, str>,
}

impl<'a> From<&'a Session> for NoticeSession<'a> {
    fn from(s: &'a Session) -> Self {
        NoticeSession {
            id: Cow::Borrowed(&s.id),
            user_id: Cow::Borrowed(&s.user_id),
            created_at: s.created_at,
            expires_at: s.expires_at,
            last_seen: s.last_seen,
        }
    }
}

impl<'a> From<&'a SessionOwner> for NoticeOwner<'a> {
    fn from(o: &'a SessionOwner) -> Self {
        NoticeOwner {
            email: Cow::Borrowed(&o.email),
            nickname: Cow::Borrowed(&o.nickname),
            role: Cow::Borrowed(&o.role),
        }
    }
}

impl NoticeOwner<'_> {
    fn owned(&self) -> SessionOwner {
        SessionOwner {
            email: self.email.to_string(),
            nickname: self.nickname.to_string(),
            role: self.role.to_string(),
        }
    }
}

/// The ways a transaction announces what it did to sessions. (Opening a session announces
/// itself in its one statement, building `Notice::Opened`'s JSON in SQL.)
pub enum Announce<'a> {
    Ended {
        session_id: &'a str,
    },
    Revoked {
        user_id: &'a str,
        keep: Option<&'a str>,
    },
    Owner {
        user_id: &'a str,
        owner: &'a SessionOwner,
    },
}

/// Announce a change in the transaction that makes it: delivered to every replica (this one
/// included) when, and only if, it commits, in commit order.
pub async fn announce(tx: &Transaction<'_>, what: &Announce<'_>) -> Result<(), StoreError> {
    let notice = match what {
        Announce::Ended { session_id } => Notice::Ended {
            session_id: Cow::Borrowed(session_id),
        },
        Announce::Revoked { user_id, keep } => Notice::Revoked {
            user_id: Cow::Borrowed(user_id),
            keep: keep.map(Cow::Borrowed),
        },
        Announce::Owner { user_id, owner } => Notice::Owner {
            user_id: Cow::Borrowed(user_id),
            owner: (*owner).into(),
        },
    };
    let payload = serde_json::to_string(&Stamped {
        at: now_ms(),
        notice,
    })
    .map_err(|e| StoreError::Storage(format!("encode notice: {e}")))?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map_err(db_err)?;
    Ok(())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The event a received notice stands for, and how long ago it was committed.
fn event(payload: &str) -> Option<(StoreEvent, Duration)> {
    let stamped: Stamped<'_> = match serde_json::from_str(payload) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "unreadable session notice");
            return None;
        }
    };
    let lag = Duration::from_millis((now_ms() - stamped.at).max(0) as u64);
    let notice = stamped.notice;
    let event = match notice {
        Notice::Opened { session, owner } => StoreEvent::SessionOpened(StoredSession {
            session: Session {
                id: session.id.to_string(),
                user_id: session.user_id.to_string(),
                created_at: session.created_at,
                expires_at: session.expires_at,
                last_seen: session.last_seen,
            },
            owner: owner.owned(),
        }),
        Notice::Ended { session_id } => StoreEvent::SessionEnded(session_id.into_owned()),
        Notice::Revoked { user_id, keep } => StoreEvent::SessionsRevoked {
            user_id: user_id.into_owned(),
            keep: keep.map(Cow::into_owned),
        },
        Notice::Owner { user_id, owner } => StoreEvent::OwnerChanged {
            user_id: user_id.into_owned(),
            owner: owner.owned(),
        },
    };
    Some((event, lag))
}

/// Every session with its owner.
pub async fn all_sessions(
    client: &deadpool_postgres::Client,
) -> Result<Vec<StoredSession>, StoreError> {
    let rows = client
        .query(
            "SELECT s.id, s.user_id, s.created_at, s.expires_at, s.last_seen,
                    u.email, u.nickname, u.role
             FROM sessions s JOIN users u ON u.id = s.user_id",
            &[],
        )
        .await
        .map_err(db_err)?;
    Ok(rows
        .iter()
        .map(|r| StoredSession {
            session: Session {
                id: r.get(0),
                user_id: r.get(1),
                created_at: r.get(2),
                expires_at: r.get(3),
                last_seen: r.get(4),
            },
            owner: SessionOwner {
                email: r.get(5),
                nickname: r.get(6),
                role: r.get(7),
            },
        })
        .collect())
}

/// What the feed task needs.
pub struct Feed {
    pub main: Target,
    /// The audit database, when it is not the main one.
    pub audit: Option<Target>,
    pub pool: Pool,
    pub events: UnboundedSender<StoreEvent>,
    /// Where notification lag is reported.
    pub lag: Option<prometheus::Histogram>,
    /// Called once the schema is in place.
    pub migrated: Box<dyn Fn() + Send + Sync>,
}

/// Why a listening round ended.
enum Ended {
    /// The consumer is gone (the store was dropped): stop.
    Closed,
    Failed(String),
}

/// Keep the feed running until the store is dropped: connect, migrate (first time), listen,
/// resync, forward; on any failure report `Lost` and start over with back-off.
pub async fn run(feed: Feed) {
    let mut migrated = false;
    let mut delay = RETRY_MIN;
    loop {
        let started = std::time::Instant::now();
        let failure = if migrated {
            match listen(&feed).await {
                Ended::Closed => return,
                Ended::Failed(e) => {
                    if feed.events.send(StoreEvent::Lost).is_err() {
                        return;
                    }
                    format!("session notifications lost ({e}); the live-session table is distrusted until it is resynchronized")
                }
            }
        } else {
            match migrate(&feed).await {
                Ok(()) => {
                    migrated = true;
                    (feed.migrated)();
                    continue;
                }
                Err(e) => format!("cannot prepare the database ({e})"),
            }
        };
        if feed.events.is_closed() {
            return;
        }
        // A round that lasted is a new incident: start the back-off over.
        if started.elapsed() > RETRY_MAX * 2 {
            delay = RETRY_MIN;
        }
        if delay == RETRY_MIN {
            tracing::error!(database = %feed.main.name, "{failure}; retrying");
        } else {
            tracing::debug!(database = %feed.main.name, "{failure}; retrying in {delay:?}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn migrate(feed: &Feed) -> Result<(), StoreError> {
    let (mut client, connection) = feed
        .main
        .connect("portcullis-migrate")
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let result = async {
        schema::migrate(&mut client, Part::Main, &feed.main.name).await?;
        if feed.audit.is_none() {
            schema::migrate(&mut client, Part::Audit, &feed.main.name).await?;
        }
        Ok::<(), StoreError>(())
    }
    .await;
    drop(client);
    let _ = driver.await;
    result?;
    if let Some(audit) = &feed.audit {
        let (mut client, connection) = audit
            .connect("portcullis-migrate")
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let result = schema::migrate(&mut client, Part::Audit, &audit.name).await;
        drop(client);
        let _ = driver.await;
        result?;
    }
    Ok(())
}

/// One listening round: LISTEN, resync, then forward notices and activity until the channel
/// fails.
async fn listen(feed: &Feed) -> Ended {
    let name = format!(
        "{}{LISTENER_SUFFIX}",
        feed.main
            .config
            .get_application_name()
            .unwrap_or("portcullis")
    );
    let (client, mut connection) = match feed.main.connect(&name).await {
        Ok(c) => c,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    // The connection is driven here, and its notices handed over through a channel; when it
    // ends (killed, network gone) the channel closes.
    let (notices_tx, mut notices) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if notices_tx.send(n.payload().to_string()).is_err() {
                        return "the listener stopped".to_string();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "the connection closed".to_string(),
            }
        }
    });
    let ended = forward(feed, &client, &mut notices).await;
    driver.abort();
    ended
}

async fn forward(
    feed: &Feed,
    client: &tokio_postgres::Client,
    notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Ended {
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        return Ended::Failed(e.to_string());
    }
    // Everything committed from here on is in `notices`; the snapshot covers the rest.
    let snapshot = match feed.pool.get().await {
        Ok(c) => all_sessions(&c).await,
        Err(e) => Err(pool_err(e)),
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let mut watermark = snapshot
        .iter()
        .map(|s| s.session.last_seen)
        .max()
        .unwrap_or(0);
    if feed.events.send(StoreEvent::Resync(snapshot)).is_err() {
        return Ended::Closed;
    }
    tracing::info!(database = %feed.main.name, "session notifications connected; live-session table resynchronized");
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut activity = tokio::time::interval(ACTIVITY_POLL);
    loop {
        tokio::select! {
            notice = notices.recv() => {
                let Some(payload) = notice else {
                    return Ended::Failed("the notification connection ended".into());
                };
                if let Some((ev, lag)) = event(&payload) {
                    if let Some(h) = &feed.lag {
                        h.observe(lag.as_secs_f64());
                    }
                    if feed.events.send(ev).is_err() {
                        return Ended::Closed;
                    }
                }
            }
            _ = heartbeat.tick() => {
                if feed.events.is_closed() {
                    return Ended::Closed;
                }
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ended::Failed(e.to_string()),
                    Err(_) => return Ended::Failed("the database did not answer the heartbeat".into()),
                }
            }
            _ = activity.tick() => {
                match recent_activity(&feed.pool, watermark).await {
                    Ok(seen) => {
                        if let Some(max) = seen.iter().map(|(_, at)| *at).max() {
                            watermark = watermark.max(max);
                        }
                        if !seen.is_empty() && feed.events.send(StoreEvent::Activity(seen)).is_err() {
                            return Ended::Closed;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot fetch session activity"),
                }
            }
        }
    }
}

/// Sessions active since `since` (a second of overlap: activity stamps are whole seconds).
async fn recent_activity(pool: &Pool, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
    let client = pool.get().await.map_err(pool_err)?;
    let rows = client
        .query(
            "SELECT id, last_seen FROM sessions WHERE last_seen >= $1",
            &[&(since - 1)],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_survive_escaping_and_round_trip() {
        let session = Session {
            id: "s1".into(),
            user_id: "u1".into(),
            created_at: 1,
            expires_at: 2,
            last_seen: 1,
        };
        let owner = SessionOwner {
            email: "a@example.com".into(),
            nickname: "Chief \"Ω\" \\ x".into(),
            role: "admin".into(),
        };
        let stamped = Stamped {
            at: now_ms(),
            notice: Notice::Opened {
                session: (&session).into(),
                owner: (&owner).into(),
            },
        };
        let payload = serde_json::to_string(&stamped).unwrap();
        let (received, lag) = event(&payload).expect("readable");
        assert!(lag < Duration::from_secs(5));
        assert_eq!(
            received,
            StoreEvent::SessionOpened(StoredSession { session, owner })
        );
        let revoked = serde_json::to_string(&Stamped {
            at: 0,
            notice: Notice::Revoked {
                user_id: Cow::Borrowed("u\"1"),
                keep: None,
            },
        })
        .unwrap();
        assert_eq!(
            event(&revoked).unwrap().0,
            StoreEvent::SessionsRevoked {
                user_id: "u\"1".into(),
                keep: None
            }
        );
    }
}
