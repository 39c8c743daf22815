//! The only code that knows a database. `Store` is the seam: an async trait whose every method
//! is one transaction doing one domain operation, with the invariants of that operation (unique
//! email and nickname, the last admin, ending sessions with a password/role/lock change, the
//! security stamp) checked inside the transaction. A returned `Ok` is durable. Backends live in
//! their own folders (`redb/` today); `open` picks one from the configuration, and nothing above
//! this module knows which.

pub mod models;
pub mod postgres;
pub mod redb;
pub mod redis;

use crate::config::{Database, StorageSettings};
use async_trait::async_trait;
use models::{
    AccountChange, AuditEvent, AuditFilter, Mail, Session, SessionOwner, StoredSession, User,
    Verification,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique field is taken: "email" or "nickname".
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    #[error("not found")]
    NotFound,
    /// The change would leave no active admin.
    #[error("the last active admin cannot be removed")]
    LastAdmin,
    /// The user's security stamp is no longer the one the caller read.
    #[error("the account changed meanwhile")]
    StampChanged,
    #[error(
        "{0} is already open in another process (is another portcullis running on this data dir?)"
    )]
    AlreadyOpen(PathBuf),
    #[error("{path} has schema version {found}; this portcullis understands up to {known}")]
    SchemaTooNew {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    /// The database cannot be reached now; the operation did not happen.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Storage(String),
}

impl From<crate::pool::PoolClosed> for StoreError {
    fn from(e: crate::pool::PoolClosed) -> StoreError {
        StoreError::Storage(e.to_string())
    }
}

/// Everything a store holds, for moving it to another backend (`portcullis migrate`).
#[derive(Debug, Clone, Default)]
pub struct Export {
    pub users: Vec<User>,
    pub sessions: Vec<Session>,
    /// (token hash, link)
    pub verifications: Vec<(String, Verification)>,
    /// (queue id, mail)
    pub mail: Vec<(u64, Mail)>,
    pub audit: Vec<AuditEvent>,
}

impl Export {
    /// `users N, sessions N, …`.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        [
            ("users", self.users.len()),
            ("sessions", self.sessions.len()),
            ("verification links", self.verifications.len()),
            ("queued mails", self.mail.len()),
            ("audit events", self.audit.len()),
        ]
    }
}

/// What a committed account change did.
#[derive(Debug, Clone)]
pub struct AccountChanged {
    /// The record as written.
    pub user: User,
    /// Sessions ended with the change (password, role or lock changed).
    pub ended_sessions: Vec<String>,
}

/// What other replicas did to sessions, for each replica's live-session table (stores shared
/// by several replicas). Applied in order, they keep the table equal to the database's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Every session there is: the table is rebuilt from these, and trusted again. Sent once
    /// connected, and after every `Lost`.
    Resync(Vec<StoredSession>),
    /// The feed broke: changes may be missed until the next `Resync`, so the table must not be
    /// trusted meanwhile.
    Lost,
    SessionOpened(StoredSession),
    SessionEnded(String),
    /// Every session of the user ended, but `keep`.
    SessionsRevoked {
        user_id: String,
        keep: Option<String>,
    },
    /// The user's email, nickname or role changed.
    OwnerChanged {
        user_id: String,
        owner: SessionOwner,
    },
    /// Last activity of sessions as the database has it (from every replica).
    Activity(Vec<(String, i64)>),
}

/// What a shared GCRA limiter decided: whether the request was admitted, and the key's
/// theoretical arrival time after it (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub allowed: bool,
    pub tat_ms: i64,
}

/// Counters shared by every replica (on PostgreSQL): the login guard's failures per account and
/// the GCRA state of the account operations' limits. Keys are hashed before they are stored.
#[async_trait]
pub trait SharedCounters: Send + Sync {
    /// Until when (unix seconds) logins to `account` are refused (0: they are not), if any
    /// failure of it is counted; `None` when none is.
    async fn login_blocked_until(&self, account: &str) -> Result<Option<i64>, StoreError>;

    /// `login_blocked_until(account)` and the user with `email`, read together (one round trip
    /// for the two reads every login makes).
    async fn login_lookup(
        &self,
        account: &str,
        email: &str,
    ) -> Result<(Option<i64>, Option<User>), StoreError>;

    /// Count a failed login at `now` (the count restarts after `window_secs` without one);
    /// returns the count.
    async fn record_login_failure(
        &self,
        account: &str,
        now: i64,
        window_secs: i64,
    ) -> Result<u32, StoreError>;

    /// Refuse logins to `account` until `until` (never shortens an existing block).
    async fn block_login(&self, account: &str, until: i64) -> Result<(), StoreError>;

    /// A successful login forgets the failures.
    async fn clear_login_failures(&self, account: &str) -> Result<(), StoreError>;

    /// One GCRA decision: `limit` requests per `period_ms` for `key`, at `now_ms`.
    async fn admit(
        &self,
        key: &str,
        limit: u32,
        period_ms: i64,
        now_ms: i64,
    ) -> Result<Admission, StoreError>;

    /// Forget counters with nothing left to count at `now` (failures older than `window_secs`
    /// and unblocked; limits whole again).
    async fn purge_counters(&self, now: i64, window_secs: i64) -> Result<usize, StoreError>;
}

/// Users, sessions, verification links, queued mail and the audit log.
#[async_trait]
pub trait Store: Send + Sync {
    /// The counters shared with other replicas; `None`: a single instance counts in memory.
    fn shared_counters(&self) -> Option<&dyn SharedCounters> {
        None
    }

    /// The change feed, for the one task that keeps the live-session table (taken once). `None`
    /// for a store with a single user, whose table is the only copy and is loaded with
    /// `load_sessions` at start.
    fn take_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        None
    }

    /// Whether the store can serve now (connected, schema in place).
    fn is_ready(&self) -> bool {
        true
    }

    // ----- users -----

    /// Create a user with its unique indexes, store its verification link and queue `mails`.
    /// With `first_user_admin`, the very first user becomes an admin.
    async fn create_user(
        &self,
        user: User,
        first_user_admin: bool,
        verification: Option<(String, Verification)>,
        mails: Vec<Mail>,
    ) -> Result<User, StoreError>;

    /// Add many users in one transaction (bulk loading); users whose id, email or nickname is
    /// taken are skipped. Returns how many were added.
    async fn import_users(&self, batch: Vec<User>) -> Result<usize, StoreError>;

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError>;

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// Users in id order, `skip` then at most `limit`.
    async fn list_users(&self, skip: usize, limit: usize) -> Result<Vec<User>, StoreError>;

    async fn count_users(&self) -> Result<u64, StoreError>;

    /// Apply `change` to user `id` (see `AccountChange`): refused with `Duplicate` when a new
    /// email or nickname is taken and with `LastAdmin` when no other active admin would remain;
    /// a password, role or lock change bumps the security stamp and ends the user's sessions
    /// (all but `keep_session` for a password change alone) in the same transaction.
    async fn change_account(
        &self,
        id: &str,
        change: AccountChange,
    ) -> Result<AccountChanged, StoreError>;

    /// Replace the password hash with a stronger one of the same password, only if it is still
    /// `old_hash` (a concurrent change wins). Sessions and stamp are untouched.
    async fn upgrade_password_hash(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError>;

    /// Delete a user, its indexes and sessions, and queue `mails`; refused with `LastAdmin` for
    /// the last active admin. Returns the ended session ids.
    async fn delete_account(&self, id: &str, mails: Vec<Mail>) -> Result<Vec<String>, StoreError>;

    // ----- sessions -----

    /// Open `session` if its user still exists with security stamp `stamp` (nothing
    /// revocation-worthy happened since the caller read it); else `StampChanged` (`NotFound`
    /// when the user is gone). Returns the user as it is now.
    async fn open_session(&self, session: Session, stamp: u64) -> Result<User, StoreError>;

    /// End one session. Ending an unknown session is not an error.
    async fn end_session(&self, id: &str) -> Result<(), StoreError>;

    /// Write behind the last activity of sessions; unknown ids are skipped.
    async fn touch_sessions(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError>;

    /// Every stored session with its user, for the live-session table at start.
    async fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError>;

    /// Delete sessions that can no longer be used (expired, or idle past `idle_secs`).
    async fn purge_dead_sessions(&self, now: i64, idle_secs: i64) -> Result<usize, StoreError>;

    // ----- verification links -----

    async fn put_verification(
        &self,
        token_hash: String,
        verification: Verification,
        mails: Vec<Mail>,
    ) -> Result<(), StoreError>;

    /// Use a verification link once: remove it and, if it is unexpired and still matches the
    /// user's address, mark the user verified. Returns the verified user.
    async fn consume_verification(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<User>, StoreError>;

    // ----- mail queue -----

    /// Mail due at `now`, oldest first, at most `limit`.
    async fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<(u64, Mail)>, StoreError>;

    async fn mail_queue_len(&self) -> Result<u64, StoreError>;

    /// Remove a sent (or abandoned) mail.
    async fn remove_mail(&self, id: u64) -> Result<(), StoreError>;

    /// Put a mail back for another attempt.
    async fn retry_mail(&self, id: u64, mail: Mail) -> Result<(), StoreError>;

    // ----- audit log -----

    /// Append events durably (concurrent callers may share one commit).
    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError>;

    /// Events matching `filter`, newest first.
    async fn audit_events(&self, filter: AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;

    /// Delete events older than `before`; returns how many.
    async fn purge_audit_before(&self, before: i64) -> Result<usize, StoreError>;

    // ----- operations -----

    /// Write a consistent copy of the data into `dir` (which exists and is empty) while the
    /// server keeps serving.
    async fn backup_into(&self, dir: &Path) -> Result<(), StoreError>;

    /// Write behind session activity without an async runtime (at shutdown).
    fn touch_sessions_now(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError>;
}

/// Where a store reports (unset fields are not reported: command-line tools).
#[derive(Clone, Default)]
pub struct StoreMetrics {
    /// Time of each database operation.
    pub query_seconds: Option<prometheus::Histogram>,
    /// Time from a session change's commit elsewhere to its arrival here.
    pub notification_lag: Option<prometheus::Histogram>,
}

/// The configured store.
pub fn open(
    settings: &StorageSettings,
    metrics: StoreMetrics,
) -> Result<Arc<dyn Store>, StoreError> {
    match (&settings.database, &settings.audit_database) {
        (Database::Redb(main), Database::Redb(audit)) => {
            Ok(Arc::new(redb::RedbStore::open(main, audit)?))
        }
        (Database::Postgres(main), Database::Postgres(audit)) => Ok(Arc::new(
            postgres::PgStore::open(main, audit, settings, metrics)?,
        )),
        _ => Err(StoreError::Storage(
            "the audit log and the main database must both be redb files or both PostgreSQL".into(),
        )),
    }
}

/// Copy a stopped instance's embedded data into an empty PostgreSQL database (`portcullis
/// migrate`); returns what was copied, counted again in PostgreSQL.
pub fn migrate_to_postgres(
    from: &StorageSettings,
    to: &crate::config::PostgresUrl,
) -> Result<Export, StoreError> {
    let (Database::Redb(main), Database::Redb(audit)) = (&from.database, &from.audit_database)
    else {
        return Err(StoreError::Storage(
            "migrate copies the embedded redb files: storage.database names PostgreSQL already"
                .into(),
        ));
    };
    let data = redb::export(main, audit)?;
    postgres::import(to, from, &data)?;
    Ok(data)
}

/// Put a backup written by `backup_into` back into an empty configured location (server
/// stopped). The backup is opened and checked before anything is copied.
pub fn restore(settings: &StorageSettings, from: &Path) -> Result<(), StoreError> {
    match (&settings.database, &settings.audit_database) {
        (Database::Redb(main), Database::Redb(audit)) => redb::restore(main, audit, from),
        _ => Err(StoreError::Storage(postgres::BACKUP_ADVICE.into())),
    }
}
