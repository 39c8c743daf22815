//! The PostgreSQL backend, shared by every replica. Each `Store` method is one transaction;
//! uniqueness is the database's (constraints), and the invariants of account changes are checked
//! inside the transaction (the last-admin rule under an advisory lock that serializes changes
//! that may remove an admin). All database I/O runs on the store's own runtime: pingora gives
//! each service its own, and connections must outlive whichever happened to ask first. Session
//! changes are announced with NOTIFY in the transaction that makes them (`feed.rs`).

mod audit;
mod connect;
mod counters;
mod feed;
mod import;
mod schema;

pub use import::import;

use super::models::{
    AccountChange, AuditEvent, AuditFilter, AuditKind, Mail, Outcome, Session, SessionOwner,
    StoredSession, User, Verification,
};
use super::{AccountChanged, Store, StoreError, StoreEvent};
use crate::config::{PostgresUrl, StorageSettings};
use async_trait::async_trait;
use connect::Target;
use deadpool_postgres::{Pool, Transaction};
use feed::Announce;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

/// What `portcullis backup` and `restore` say on PostgreSQL.
pub const BACKUP_ADVICE: &str = "the data is in PostgreSQL: back it up with pg_dump and restore it with pg_restore (portcullis backup and restore cover the embedded redb files)";

/// Advisory lock serializing the account changes that may remove an admin, so the last-admin
/// rule sees every other such change committed ("ptcadmin").
const ADMIN_LOCK: i64 = 0x7074_6361_646d_696e;
/// Advisory lock serializing registrations while the first user becomes an admin ("ptcfirst").
const FIRST_USER_LOCK: i64 = 0x7074_6366_6972_7374;

/// Columns of `users`, in `user_from`'s order.
const USER_COLUMNS: &str = "id, email, nickname, password_hash, passphrase_hash, customer_account, role, locked, email_verified, created_at, updated_at, security_stamp";

fn user_from(row: &Row) -> User {
    User {
        id: row.get(0),
        email: row.get(1),
        nickname: row.get(2),
        password_hash: row.get(3),
        passphrase_hash: row.get(4),
        customer_account: row.get(5),
        role: row.get(6),
        locked: row.get(7),
        email_verified: row.get(8),
        created_at: row.get(9),
        updated_at: row.get(10),
        security_stamp: row.get::<_, i64>(11) as u64,
    }
}

/// A database error as the store reports it: a unique key taken is `Duplicate`; a lost or
/// refused connection is `Unavailable`.
fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            let field = match db.constraint() {
                Some(c) if c.contains("nickname") => "nickname",
                _ => "email",
            };
            return StoreError::Duplicate(field);
        }
        return StoreError::Storage(format!("{}: {}", db.code().code(), db.message()));
    }
    if e.is_closed() {
        return StoreError::Unavailable("the database connection was lost".into());
    }
    StoreError::Unavailable(e.to_string())
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("no database connection: {e}"))
}

/// Set when the schema is in place and the database was reachable at the last try.
#[derive(Default)]
struct Health {
    migrated: AtomicBool,
}

pub struct PgStore {
    /// The store's own runtime; shut down (without waiting) when the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    main: Pool,
    /// The audit log's pool: `main`'s when it lives in the same database.
    audit: Pool,
    events: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>>>,
    health: Arc<Health>,
    /// Audit events from concurrent requests share one commit.
    audit_writer: audit::AuditWriter,
    query_seconds: Option<prometheus::Histogram>,
}

impl PgStore {
    /// Set up the pools and start connecting: the schema is migrated and the change feed
    /// started on the store's runtime as soon as the database answers (retried with back-off
    /// meanwhile); until then operations fail with `Unavailable`.
    pub fn open(
        main: &PostgresUrl,
        audit: &PostgresUrl,
        settings: &StorageSettings,
        metrics: crate::store::StoreMetrics,
    ) -> Result<PgStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("portcullis-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Storage(format!("cannot start the store's runtime: {e}")))?;
        let ca = settings.postgres_ca_file.as_deref();
        let main_target = Target::new(main, ca)?;
        let main_pool = main_target.pool(settings.postgres_pool_size)?;
        let (audit_target, audit_pool) = if audit == main {
            (None, main_pool.clone())
        } else {
            let target = Target::new(audit, ca)?;
            let pool = target.pool(settings.postgres_pool_size.div_ceil(2))?;
            (Some(target), pool)
        };
        let health = Arc::new(Health::default());
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(feed::run(feed::Feed {
            main: main_target,
            audit: audit_target,
            pool: main_pool.clone(),
            events: events_tx,
            lag: metrics.notification_lag.clone(),
            migrated: {
                let health = health.clone();
                Box::new(move || health.migrated.store(true, Ordering::SeqCst))
            },
        }));
        let audit_writer = audit::AuditWriter::start(runtime.handle(), audit_pool.clone());
        Ok(PgStore {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            main: main_pool,
            audit: audit_pool,
            events: Mutex::new(Some(events)),
            health,
            audit_writer,
            query_seconds: metrics.query_seconds,
        })
    }

    /// Run `work` with a pool on the store's runtime.
    async fn run<T, F>(
        &self,
        pool: &Pool,
        work: impl FnOnce(Pool) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if !self.health.migrated.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the database has not been reached yet".into(),
            ));
        }
        let pool = pool.clone();
        let started = std::time::Instant::now();
        let done = self
            .handle
            .spawn(async move { work(pool).await })
            .await
            .map_err(|e| StoreError::Storage(format!("store task failed: {e}")))?;
        if let Some(h) = &self.query_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        done
    }

    /// Run one transaction of the main database.
    async fn transaction<T>(
        &self,
        work: impl for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, T> + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
    {
        self.run(&self.main, move |pool| async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(db_err)?;
            let out = work(&tx).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(out)
        })
        .await
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn queue_mail(tx: &Transaction<'_>, mails: &[Mail]) -> Result<(), StoreError> {
    for m in mails {
        tx.execute(
            "INSERT INTO mail_queue (recipient, subject, body, attempts, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &m.to,
                &m.subject,
                &m.body,
                &(m.attempts as i32),
                &m.next_attempt_at,
            ],
        )
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

async fn put_verification(
    tx: &Transaction<'_>,
    hash: &str,
    v: &Verification,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO verifications (token_hash, user_id, email, expires_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (token_hash) DO UPDATE SET user_id = EXCLUDED.user_id,
             email = EXCLUDED.email, expires_at = EXCLUDED.expires_at",
        &[&hash, &v.user_id, &v.email, &v.expires_at],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn insert_user(
    tx: &tokio_postgres::Transaction<'_>,
    u: &User,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO users (id, email, email_key, nickname, nickname_key, password_hash,
             passphrase_hash, customer_account, role, locked, email_verified, created_at,
             updated_at, security_stamp)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT DO NOTHING",
        &[
            &u.id,
            &u.email,
            &super::models::email_key(&u.email),
            &u.nickname,
            &super::models::nickname_key(&u.nickname),
            &u.password_hash,
            &u.passphrase_hash,
            &u.customer_account,
            &u.role,
            &u.locked,
            &u.email_verified,
            &u.created_at,
            &u.updated_at,
            &(u.security_stamp as i64),
        ],
    )
    .await
}

/// Is there an active admin other than `except`? (Asked under `ADMIN_LOCK`.)
async fn other_active_admin(tx: &Transaction<'_>, except: &str) -> Result<bool, StoreError> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND NOT locked AND id <> $1)",
            &[&except],
        )
        .await
        .map_err(db_err)?;
    Ok(row.get(0))
}

async fn lock(tx: &Transaction<'_>, key: i64) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn user_for_update(tx: &Transaction<'_>, id: &str) -> Result<User, StoreError> {
    let row = tx
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await
        .map_err(db_err)?
        .ok_or(StoreError::NotFound)?;
    Ok(user_from(&row))
}

type BoxFuture<'t, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 't>>;

fn boxed<'t, T>(f: impl Future<Output = Result<T, StoreError>> + Send + 't) -> BoxFuture<'t, T> {
    Box::pin(f)
}

#[async_trait]
impl Store for PgStore {
    fn shared_counters(&self) -> Option<&dyn super::SharedCounters> {
        Some(self)
    }

    fn take_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        self.events.lock().ok()?.take()
    }

    fn is_ready(&self) -> bool {
        self.health.migrated.load(Ordering::SeqCst)
    }

    async fn create_user(
        &self,
        mut user: User,
        first_user_admin: bool,
        verification: Option<(String, Verification)>,
        mails: Vec<Mail>,
    ) -> Result<User, StoreError> {
        self.transaction(move |tx| {
            boxed(async move {
                if first_user_admin {
                    lock(tx, FIRST_USER_LOCK).await?;
                    let empty: bool = tx
                        .query_one("SELECT NOT EXISTS (SELECT 1 FROM users)", &[])
                        .await
                        .map_err(db_err)?
                        .get(0);
                    if empty {
                        user.role = super::models::ROLE_ADMIN.to_string();
                    }
                }
                // The email is reported before the nickname when both are taken.
                let taken = tx
                    .query_opt(
                        "SELECT email_key = $1 FROM users WHERE email_key = $1 OR nickname_key = $2
                         ORDER BY email_key = $1 DESC LIMIT 1",
                        &[
                            &super::models::email_key(&user.email),
                            &super::models::nickname_key(&user.nickname),
                        ],
                    )
                    .await
                    .map_err(db_err)?;
                if let Some(row) = taken {
                    let email: bool = row.get(0);
                    return Err(StoreError::Duplicate(if email {
                        "email"
                    } else {
                        "nickname"
                    }));
                }
                if insert_user(tx, &user).await.map_err(db_err)? == 0 {
                    return Err(StoreError::Duplicate("email"));
                }
                if let Some((hash, v)) = &verification {
                    put_verification(tx, hash, v).await?;
                }
                queue_mail(tx, &mails).await?;
                Ok(user)
            })
        })
        .await
    }

    async fn import_users(&self, batch: Vec<User>) -> Result<usize, StoreError> {
        self.transaction(move |tx| {
            boxed(async move {
                let mut added = 0;
                for u in &batch {
                    added += insert_user(tx, u).await.map_err(db_err)? as usize;
                }
                Ok(added)
            })
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(db_err)?;
            Ok(row.as_ref().map(user_from))
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let key = super::models::email_key(email);
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE email_key = $1"),
                    &[&key],
                )
                .await
                .map_err(db_err)?;
            Ok(row.as_ref().map(user_from))
        })
        .await
    }

    async fn list_users(&self, skip: usize, limit: usize) -> Result<Vec<User>, StoreError> {
        let (skip, limit) = (skip as i64, limit.min(i64::MAX as usize) as i64);
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    &format!("SELECT {USER_COLUMNS} FROM users ORDER BY id OFFSET $1 LIMIT $2"),
                    &[&skip, &limit],
                )
                .await
                .map_err(db_err)?;
            Ok(rows.iter().map(user_from).collect())
        })
        .await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.run(&self.main, |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let n: i64 = client
                .query_one("SELECT count(*) FROM users", &[])
                .await
                .map_err(db_err)?
                .get(0);
            Ok(n as u64)
        })
        .await
    }

    async fn change_account(
        &self,
        id: &str,
        change: AccountChange,
    ) -> Result<AccountChanged, StoreError> {
        let id = id.to_string();
        self.transaction(move |tx| {
            boxed(async move {
                if change.role.is_some() || change.locked == Some(true) {
                    lock(tx, ADMIN_LOCK).await?;
                }
                let mut user = user_for_update(tx, &id).await?;
                let before = SessionOwner::of(&user);
                let effects = change.apply(&mut user);
                if effects.removes_admin && !other_active_admin(tx, &id).await? {
                    return Err(StoreError::LastAdmin);
                }
                tx.execute(
                    "UPDATE users SET email = $2, email_key = $3, nickname = $4,
                         nickname_key = $5, password_hash = $6, passphrase_hash = $7,
                         customer_account = $8, role = $9, locked = $10, email_verified = $11,
                         updated_at = $12, security_stamp = $13
                     WHERE id = $1",
                    &[
                        &id,
                        &user.email,
                        &super::models::email_key(&user.email),
                        &user.nickname,
                        &super::models::nickname_key(&user.nickname),
                        &user.password_hash,
                        &user.passphrase_hash,
                        &user.customer_account,
                        &user.role,
                        &user.locked,
                        &user.email_verified,
                        &user.updated_at,
                        &(user.security_stamp as i64),
                    ],
                )
                .await
                .map_err(db_err)?;
                let mut ended = Vec::new();
                if effects.ends_sessions {
                    let keep = change.surviving_session(&effects).map(str::to_string);
                    let rows = tx
                        .query(
                            "DELETE FROM sessions WHERE user_id = $1 AND ($2::text IS NULL OR id <> $2)
                             RETURNING id",
                            &[&id, &keep],
                        )
                        .await
                        .map_err(db_err)?;
                    ended = rows.iter().map(|r| r.get(0)).collect();
                    feed::announce(tx, &Announce::Revoked { user_id: &id, keep: keep.as_deref() })
                        .await?;
                }
                let owner = SessionOwner::of(&user);
                if owner != before {
                    feed::announce(tx, &Announce::Owner { user_id: &id, owner: &owner }).await?;
                }
                if let Some((hash, v)) = &change.verification {
                    put_verification(tx, hash, v).await?;
                }
                queue_mail(tx, &change.mails).await?;
                Ok(AccountChanged {
                    user,
                    ended_sessions: ended,
                })
            })
        })
        .await
    }

    async fn upgrade_password_hash(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let (id, old, new) = (id.to_string(), old_hash.to_string(), new_hash.to_string());
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let n = client
                .execute(
                    "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                    &[&id, &old, &new],
                )
                .await
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_account(&self, id: &str, mails: Vec<Mail>) -> Result<Vec<String>, StoreError> {
        let id = id.to_string();
        self.transaction(move |tx| {
            boxed(async move {
                lock(tx, ADMIN_LOCK).await?;
                let user = user_for_update(tx, &id).await?;
                if user.is_active_admin() && !other_active_admin(tx, &id).await? {
                    return Err(StoreError::LastAdmin);
                }
                let rows = tx
                    .query(
                        "DELETE FROM sessions WHERE user_id = $1 RETURNING id",
                        &[&id],
                    )
                    .await
                    .map_err(db_err)?;
                tx.execute("DELETE FROM users WHERE id = $1", &[&id])
                    .await
                    .map_err(db_err)?;
                feed::announce(
                    tx,
                    &Announce::Revoked {
                        user_id: &id,
                        keep: None,
                    },
                )
                .await?;
                queue_mail(tx, &mails).await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
        })
        .await
    }

    async fn open_session(&self, session: Session, stamp: u64) -> Result<User, StoreError> {
        // One statement (one round trip, one commit): the account is read FOR SHARE (a
        // concurrent change either commits first, and its stamp is seen, or waits for this
        // session, which it then ends); the session is inserted only if the stamp is the one the
        // caller read, and announced only if inserted.
        let sql = format!(
            "WITH u AS (
                 SELECT {USER_COLUMNS} FROM users WHERE id = $2::text FOR SHARE
             ), ins AS (
                 INSERT INTO sessions (id, user_id, created_at, expires_at, last_seen)
                 SELECT $1::text, u.id, $3::int8, $4::int8, $5::int8 FROM u
                 WHERE u.security_stamp = $6::int8
                 RETURNING id
             ), note AS (
                 SELECT pg_notify($7::text, json_build_object(
                     'at', $8::int8, 'k', 'opened',
                     'session', json_build_object('id', $1::text, 'user_id', u.id,
                         'created_at', $3::int8, 'expires_at', $4::int8, 'last_seen', $5::int8),
                     'owner', json_build_object('email', u.email, 'nickname', u.nickname,
                         'role', u.role))::text)
                 FROM u, ins
             )
             SELECT {USER_COLUMNS}, EXISTS (SELECT 1 FROM ins), (SELECT count(*) FROM note)
             FROM u"
        );
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    &sql,
                    &[
                        &session.id,
                        &session.user_id,
                        &session.created_at,
                        &session.expires_at,
                        &session.last_seen,
                        &(stamp as i64),
                        &feed::CHANNEL,
                        &feed::now_ms(),
                    ],
                )
                .await
                .map_err(db_err)?
                .ok_or(StoreError::NotFound)?;
            // The two columns after the account's: inserted?, notices sent.
            let opened: bool = row.get(row.len() - 2);
            if !opened {
                return Err(StoreError::StampChanged);
            }
            Ok(user_from(&row))
        })
        .await
    }

    async fn end_session(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.transaction(move |tx| {
            boxed(async move {
                let n = tx
                    .execute("DELETE FROM sessions WHERE id = $1", &[&id])
                    .await
                    .map_err(db_err)?;
                if n > 0 {
                    feed::announce(tx, &Announce::Ended { session_id: &id }).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn touch_sessions(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            touch(&client, &seen).await
        })
        .await
    }

    async fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        self.run(&self.main, |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            feed::all_sessions(&client).await
        })
        .await
    }

    async fn purge_dead_sessions(&self, now: i64, idle_secs: i64) -> Result<usize, StoreError> {
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let n = client
                .execute(
                    "DELETE FROM sessions WHERE expires_at <= $1 OR last_seen + $2 <= $1",
                    &[&now, &idle_secs],
                )
                .await
                .map_err(db_err)?;
            Ok(n as usize)
        })
        .await
    }

    async fn put_verification(
        &self,
        token_hash: String,
        verification: Verification,
        mails: Vec<Mail>,
    ) -> Result<(), StoreError> {
        self.transaction(move |tx| {
            boxed(async move {
                put_verification(tx, &token_hash, &verification).await?;
                queue_mail(tx, &mails).await
            })
        })
        .await
    }

    async fn consume_verification(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        let hash = token_hash.to_string();
        self.transaction(move |tx| {
            boxed(async move {
                let Some(link) = tx
                    .query_opt(
                        "DELETE FROM verifications WHERE token_hash = $1
                         RETURNING user_id, email, expires_at",
                        &[&hash],
                    )
                    .await
                    .map_err(db_err)?
                else {
                    return Ok(None);
                };
                let (user_id, email, expires_at): (String, String, i64) =
                    (link.get(0), link.get(1), link.get(2));
                if expires_at <= now {
                    return Ok(None);
                }
                let row = tx
                    .query_opt(
                        &format!(
                            "UPDATE users SET email_verified = true, updated_at = $3
                             WHERE id = $1 AND email_key = $2 RETURNING {USER_COLUMNS}"
                        ),
                        &[&user_id, &super::models::email_key(&email), &now],
                    )
                    .await
                    .map_err(db_err)?;
                Ok(row.as_ref().map(user_from))
            })
        })
        .await
    }

    async fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<(u64, Mail)>, StoreError> {
        let limit = limit as i64;
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            // Claimed for five minutes: another replica never sends the same mail meanwhile.
            let rows = client
                .query(
                    "UPDATE mail_queue SET claimed_until = $1 + 300
                     WHERE id IN (SELECT id FROM mail_queue
                                  WHERE next_attempt_at <= $1 AND claimed_until <= $1
                                  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING id, recipient, subject, body, attempts, next_attempt_at",
                    &[&now, &limit],
                )
                .await
                .map_err(db_err)?;
            let mut out: Vec<(u64, Mail)> = rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, i64>(0) as u64,
                        Mail {
                            to: r.get(1),
                            subject: r.get(2),
                            body: r.get(3),
                            attempts: r.get::<_, i32>(4) as u32,
                            next_attempt_at: r.get(5),
                        },
                    )
                })
                .collect();
            out.sort_by_key(|(id, _)| *id);
            Ok(out)
        })
        .await
    }

    async fn mail_queue_len(&self) -> Result<u64, StoreError> {
        self.run(&self.main, |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let n: i64 = client
                .query_one("SELECT count(*) FROM mail_queue", &[])
                .await
                .map_err(db_err)?
                .get(0);
            Ok(n as u64)
        })
        .await
    }

    async fn remove_mail(&self, id: u64) -> Result<(), StoreError> {
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute("DELETE FROM mail_queue WHERE id = $1", &[&(id as i64)])
                .await
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn retry_mail(&self, id: u64, mail: Mail) -> Result<(), StoreError> {
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "UPDATE mail_queue SET attempts = $2, next_attempt_at = $3, claimed_until = 0
                     WHERE id = $1",
                    &[&(id as i64), &(mail.attempts as i32), &mail.next_attempt_at],
                )
                .await
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if !self.is_ready() {
            return Err(StoreError::Unavailable(
                "the database has not been reached yet".into(),
            ));
        }
        self.audit_writer.append(events).await
    }

    async fn audit_events(&self, filter: AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        self.run(&self.audit, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let before = filter.before_seq.map(|s| s.min(i64::MAX as u64) as i64);
            let kind = filter.kind.map(|k| k.as_str());
            let limit = filter.limit as i64;
            let rows = client
                .query(
                    "SELECT seq, at, kind, outcome, user_id, actor, request_id, client_ip, detail
                     FROM audit_events
                     WHERE ($1::int8 IS NULL OR seq < $1)
                       AND ($2::int8 IS NULL OR at >= $2)
                       AND ($3::int8 IS NULL OR at <= $3)
                       AND ($4::text IS NULL OR user_id = $4)
                       AND ($5::text IS NULL OR kind = $5)
                     ORDER BY seq DESC LIMIT $6",
                    &[
                        &before,
                        &filter.since,
                        &filter.until,
                        &filter.user_id,
                        &kind,
                        &limit,
                    ],
                )
                .await
                .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let kind: String = r.get(2);
                    let outcome: String = r.get(3);
                    Ok(AuditEvent {
                        seq: r.get::<_, i64>(0) as u64,
                        at: r.get(1),
                        kind: AuditKind::parse(&kind).ok_or_else(|| {
                            StoreError::Storage(format!("unknown audit kind {kind:?}"))
                        })?,
                        outcome: parse_outcome(&outcome)?,
                        user_id: r.get(4),
                        actor: r.get(5),
                        request_id: r.get(6),
                        client_ip: r.get(7),
                        detail: r.get(8),
                    })
                })
                .collect()
        })
        .await
    }

    async fn purge_audit_before(&self, before: i64) -> Result<usize, StoreError> {
        self.run(&self.audit, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let n = client
                .execute("DELETE FROM audit_events WHERE at < $1", &[&before])
                .await
                .map_err(db_err)?;
            Ok(n as usize)
        })
        .await
    }

    async fn backup_into(&self, _dir: &Path) -> Result<(), StoreError> {
        Err(StoreError::Storage(BACKUP_ADVICE.into()))
    }

    fn touch_sessions_now(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError> {
        if seen.is_empty() || !self.is_ready() {
            return Ok(());
        }
        let pool = self.main.clone();
        self.handle.block_on(async move {
            let client = pool.get().await.map_err(pool_err)?;
            touch(&client, &seen).await
        })
    }
}

/// Merge activity: the newest `last_seen` wins, whichever replica saw it.
async fn touch(
    client: &deadpool_postgres::Client,
    seen: &[(String, i64)],
) -> Result<(), StoreError> {
    let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let at: Vec<i64> = seen.iter().map(|(_, at)| *at).collect();
    client
        .execute(
            "UPDATE sessions s SET last_seen = v.at
             FROM unnest($1::text[], $2::int8[]) AS v(id, at)
             WHERE s.id = v.id AND v.at > s.last_seen",
            &[&ids, &at],
        )
        .await
        .map_err(db_err)?;
    Ok(())
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Throttled => "throttled",
    }
}

fn parse_outcome(name: &str) -> Result<Outcome, StoreError> {
    [Outcome::Success, Outcome::Failure, Outcome::Throttled]
        .into_iter()
        .find(|o| outcome_name(*o) == name)
        .ok_or_else(|| StoreError::Storage(format!("unknown audit outcome {name:?}")))
}
