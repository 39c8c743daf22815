//! The only code that touches redb. `Store` holds the main database (users, sessions, indexes,
//! verification tokens, queued mail) and the audit database, and offers intention-named
//! methods. Every write is one short transaction committed with `Durability::Immediate` and
//! two-phase commit, so a returned `Ok` is on disk. Methods block: call them off the async
//! workers.

pub mod audit_writer;
pub mod models;

use models::{AuditEvent, AuditFilter, Mail, Session, User, Verification};
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use std::path::{Path, PathBuf};

/// Bumped when the layout changes; a newer file is refused, an older one migrated.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USERS_BY_EMAIL: TableDefinition<&str, &str> = TableDefinition::new("users_by_email");
const USERS_BY_NICKNAME: TableDefinition<&str, &str> = TableDefinition::new("users_by_nickname");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const USER_SESSIONS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("user_sessions");
const VERIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("verifications");
const MAIL_QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("mail_queue");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique field is taken: "email" or "nickname".
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    #[error("not found")]
    NotFound,
    #[error(
        "{0} is already open in another process (is another portcullis running on this data dir?)"
    )]
    AlreadyOpen(PathBuf),
    #[error(
        "{path} has schema version {found}; this portcullis understands up to {SCHEMA_VERSION}"
    )]
    SchemaTooNew { path: PathBuf, found: u64 },
    #[error("storage: {0}")]
    Storage(String),
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(e.into().to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Storage(format!("encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Storage(format!("decode: {e}")))
}

/// Email addresses are unique regardless of case.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Nicknames are unique regardless of case.
pub fn nickname_key(nickname: &str) -> String {
    nickname.trim().to_lowercase()
}

pub struct Store {
    db: Database,
    audit: Database,
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Storage(format!("create {}: {e}", dir.display())))?;
        }
    }
    Database::builder().create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen(path.to_path_buf()),
        other => StoreError::Storage(format!("{}: {other}", path.display())),
    })
}

/// A write transaction that is durable and two-phase committed.
fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut tx = db.begin_write().map_err(db_err)?;
    tx.set_two_phase_commit(true);
    Ok(tx)
}

fn check_schema(
    db: &Database,
    path: &Path,
    tables: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let tx = begin(db)?;
    {
        let mut meta = tx.open_table(META).map_err(db_err)?;
        let found = meta
            .get("schema_version")
            .map_err(db_err)?
            .map(|v| v.value());
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    path: path.to_path_buf(),
                    found: v,
                })
            }
            Some(v) if v == SCHEMA_VERSION => {}
            // New file, or an older layout: version 1 is the first, nothing to migrate yet.
            _ => {
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(db_err)?;
            }
        }
    }
    tables(&tx)?;
    tx.commit().map_err(db_err)
}

/// The user table and its two unique indexes, open in one write transaction.
struct UserTables<'t> {
    users: Table<'t, &'static str, &'static [u8]>,
    by_email: Table<'t, &'static str, &'static str>,
    by_nick: Table<'t, &'static str, &'static str>,
}

impl<'t> UserTables<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(UserTables {
            users: tx.open_table(USERS).map_err(db_err)?,
            by_email: tx.open_table(USERS_BY_EMAIL).map_err(db_err)?,
            by_nick: tx.open_table(USERS_BY_NICKNAME).map_err(db_err)?,
        })
    }

    /// The unique field of `user` another user already has: "email" or "nickname".
    fn taken(&self, user: &User) -> Result<Option<&'static str>, StoreError> {
        if self
            .by_email
            .get(email_key(&user.email).as_str())
            .map_err(db_err)?
            .is_some()
        {
            return Ok(Some("email"));
        }
        if self
            .by_nick
            .get(nickname_key(&user.nickname).as_str())
            .map_err(db_err)?
            .is_some()
        {
            return Ok(Some("nickname"));
        }
        Ok(None)
    }

    /// Write the record and both index entries.
    fn insert(&mut self, user: &User) -> Result<(), StoreError> {
        let id = user.id.as_str();
        self.users
            .insert(id, encode(user)?.as_slice())
            .map_err(db_err)?;
        self.by_email
            .insert(email_key(&user.email).as_str(), id)
            .map_err(db_err)?;
        self.by_nick
            .insert(nickname_key(&user.nickname).as_str(), id)
            .map_err(db_err)?;
        Ok(())
    }
}

impl Store {
    /// Open (or create) both databases. Fails at once if another process has them open.
    pub fn open(database: &Path, audit_database: &Path) -> Result<Store, StoreError> {
        let db = open_db(database)?;
        check_schema(&db, database, |tx| {
            tx.open_table(USERS).map_err(db_err)?;
            tx.open_table(USERS_BY_EMAIL).map_err(db_err)?;
            tx.open_table(USERS_BY_NICKNAME).map_err(db_err)?;
            tx.open_table(SESSIONS).map_err(db_err)?;
            tx.open_multimap_table(USER_SESSIONS).map_err(db_err)?;
            tx.open_table(VERIFICATIONS).map_err(db_err)?;
            tx.open_table(MAIL_QUEUE).map_err(db_err)?;
            Ok(())
        })?;
        let audit = open_db(audit_database)?;
        check_schema(&audit, audit_database, |tx| {
            tx.open_table(AUDIT).map_err(db_err)?;
            Ok(())
        })?;
        Ok(Store { db, audit })
    }

    // ----- users -----

    /// Create a user with its indexes, and queue `mails`, in one transaction. With
    /// `first_user_admin`, the very first user becomes an admin.
    pub fn create_user(
        &self,
        mut user: User,
        first_user_admin: bool,
        mails: &[Mail],
        verification: Option<(&str, &Verification)>,
    ) -> Result<User, StoreError> {
        let tx = begin(&self.db)?;
        {
            let mut tables = UserTables::open(&tx)?;
            if let Some(field) = tables.taken(&user)? {
                return Err(StoreError::Duplicate(field));
            }
            if first_user_admin && tables.users.is_empty().map_err(db_err)? {
                user.role = models::ROLE_ADMIN.to_string();
            }
            tables.insert(&user)?;
        }
        if let Some((hash, v)) = verification {
            let mut t = tx.open_table(VERIFICATIONS).map_err(db_err)?;
            t.insert(hash, encode(v)?.as_slice()).map_err(db_err)?;
        }
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)?;
        Ok(user)
    }

    /// Add many users, with their indexes, in one transaction (bulk loading, e.g. benchmarks
    /// with a million accounts). A user whose id, email or nickname is already taken is
    /// skipped; returns how many were added.
    pub fn import_users(&self, batch: &[User]) -> Result<usize, StoreError> {
        let tx = begin(&self.db)?;
        let mut added = 0;
        {
            let mut tables = UserTables::open(&tx)?;
            for user in batch {
                if tables
                    .users
                    .get(user.id.as_str())
                    .map_err(db_err)?
                    .is_none()
                    && tables.taken(user)?.is_none()
                {
                    tables.insert(user)?;
                    added += 1;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(added)
    }

    pub fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let users = rtx.open_table(USERS).map_err(db_err)?;
        let found = users.get(id).map_err(db_err)?;
        found.map(|v| decode(v.value())).transpose()
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let by_email = rtx.open_table(USERS_BY_EMAIL).map_err(db_err)?;
        let Some(id) = by_email.get(email_key(email).as_str()).map_err(db_err)? else {
            return Ok(None);
        };
        let users = rtx.open_table(USERS).map_err(db_err)?;
        let found = users.get(id.value()).map_err(db_err)?;
        found.map(|v| decode(v.value())).transpose()
    }

    /// Change a user in one transaction, keeping the email and nickname indexes unique, and
    /// queue `mails` with it. `change` sees the current record and may refuse by returning Err.
    pub fn update_user<E: From<StoreError>>(
        &self,
        id: &str,
        mails: &[Mail],
        change: impl FnOnce(&mut User) -> Result<(), E>,
    ) -> Result<User, E> {
        let tx = begin(&self.db)?;
        let updated = {
            let mut users = tx.open_table(USERS).map_err(db_err)?;
            let current: User = match users.get(id).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => return Err(StoreError::NotFound.into()),
            };
            let mut user = current.clone();
            change(&mut user)?;
            user.id = current.id.clone();
            let (old_ek, new_ek) = (email_key(&current.email), email_key(&user.email));
            if old_ek != new_ek {
                let mut by_email = tx.open_table(USERS_BY_EMAIL).map_err(db_err)?;
                if by_email.get(new_ek.as_str()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Duplicate("email").into());
                }
                by_email.remove(old_ek.as_str()).map_err(db_err)?;
                by_email.insert(new_ek.as_str(), id).map_err(db_err)?;
            }
            let (old_nk, new_nk) = (
                nickname_key(&current.nickname),
                nickname_key(&user.nickname),
            );
            if old_nk != new_nk {
                let mut by_nick = tx.open_table(USERS_BY_NICKNAME).map_err(db_err)?;
                if by_nick.get(new_nk.as_str()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Duplicate("nickname").into());
                }
                by_nick.remove(old_nk.as_str()).map_err(db_err)?;
                by_nick.insert(new_nk.as_str(), id).map_err(db_err)?;
            }
            users
                .insert(id, encode(&user)?.as_slice())
                .map_err(db_err)?;
            user
        };
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)?;
        Ok(updated)
    }

    /// Delete a user, its indexes and its sessions; returns the ended session ids.
    pub fn delete_user(&self, id: &str, mails: &[Mail]) -> Result<Vec<String>, StoreError> {
        let tx = begin(&self.db)?;
        let ended = {
            let mut users = tx.open_table(USERS).map_err(db_err)?;
            let user: User = match users.remove(id).map_err(db_err)? {
                Some(v) => decode(v.value())?,
                None => return Err(StoreError::NotFound),
            };
            tx.open_table(USERS_BY_EMAIL)
                .map_err(db_err)?
                .remove(email_key(&user.email).as_str())
                .map_err(db_err)?;
            tx.open_table(USERS_BY_NICKNAME)
                .map_err(db_err)?
                .remove(nickname_key(&user.nickname).as_str())
                .map_err(db_err)?;
            remove_sessions_of(&tx, id, None)?
        };
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)?;
        Ok(ended)
    }

    /// Users in id order, `skip` then at most `limit`.
    pub fn list_users(&self, skip: usize, limit: usize) -> Result<Vec<User>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let users = rtx.open_table(USERS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in users.iter().map_err(db_err)?.skip(skip).take(limit) {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    pub fn count_users(&self) -> Result<u64, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        rtx.open_table(USERS).map_err(db_err)?.len().map_err(db_err)
    }

    /// How many admins there are, other than `except`, who are not locked.
    pub fn count_active_admins_except(&self, except: &str) -> Result<usize, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let users = rtx.open_table(USERS).map_err(db_err)?;
        let mut n = 0;
        for entry in users.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            if k.value() == except {
                continue;
            }
            let u: User = decode(v.value())?;
            if u.is_admin() && !u.locked {
                n += 1;
            }
        }
        Ok(n)
    }

    // ----- sessions -----

    pub fn open_session(&self, session: &Session) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            sessions
                .insert(session.id.as_str(), encode(session)?.as_slice())
                .map_err(db_err)?;
            let mut by_user = tx.open_multimap_table(USER_SESSIONS).map_err(db_err)?;
            by_user
                .insert(session.user_id.as_str(), session.id.as_str())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let sessions = rtx.open_table(SESSIONS).map_err(db_err)?;
        let found = sessions.get(id).map_err(db_err)?;
        found.map(|v| decode(v.value())).transpose()
    }

    /// End one session. Ending an unknown session is not an error.
    pub fn end_session(&self, id: &str) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            let removed: Option<Session> = match sessions.remove(id).map_err(db_err)? {
                Some(v) => Some(decode(v.value())?),
                None => None,
            };
            if let Some(s) = removed {
                let mut by_user = tx.open_multimap_table(USER_SESSIONS).map_err(db_err)?;
                by_user.remove(s.user_id.as_str(), id).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// End every session of a user but `keep`; returns the ended ids.
    pub fn revoke_sessions_of(
        &self,
        user_id: &str,
        keep: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let tx = begin(&self.db)?;
        let ended = remove_sessions_of(&tx, user_id, keep)?;
        tx.commit().map_err(db_err)?;
        Ok(ended)
    }

    /// Write behind the last activity of sessions, in one transaction. Unknown ids are skipped.
    pub fn touch_sessions(&self, seen: &[(String, i64)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        // One durable commit per flush interval, whatever the traffic.
        let tx = begin(&self.db)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            for (id, at) in seen {
                let current: Option<Session> = match sessions.get(id.as_str()).map_err(db_err)? {
                    Some(v) => Some(decode(v.value())?),
                    None => None,
                };
                if let Some(mut s) = current {
                    if *at > s.last_seen {
                        s.last_seen = *at;
                        sessions
                            .insert(id.as_str(), encode(&s)?.as_slice())
                            .map_err(db_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Every stored session, for loading the in-memory session table at start.
    pub fn all_sessions(&self) -> Result<Vec<Session>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let sessions = rtx.open_table(SESSIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in sessions.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Delete the sessions that can no longer be used: expired, or idle past `idle_secs`.
    pub fn purge_dead_sessions(&self, now: i64, idle_secs: i64) -> Result<usize, StoreError> {
        let dead: Vec<Session> = self
            .all_sessions()?
            .into_iter()
            .filter(|s| s.expires_at <= now || s.last_seen + idle_secs <= now)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        let tx = begin(&self.db)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            let mut by_user = tx.open_multimap_table(USER_SESSIONS).map_err(db_err)?;
            for s in &dead {
                sessions.remove(s.id.as_str()).map_err(db_err)?;
                by_user
                    .remove(s.user_id.as_str(), s.id.as_str())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(dead.len())
    }

    // ----- verification links -----

    pub fn put_verification(
        &self,
        token_hash: &str,
        v: &Verification,
        mails: &[Mail],
    ) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        {
            let mut t = tx.open_table(VERIFICATIONS).map_err(db_err)?;
            t.insert(token_hash, encode(v)?.as_slice())
                .map_err(db_err)?;
        }
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)
    }

    /// Use a verification link once: remove it and, if it is unexpired and still matches the
    /// user's address, mark the user verified. Returns the verified user.
    pub fn consume_verification(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        let tx = begin(&self.db)?;
        let verified = {
            let mut t = tx.open_table(VERIFICATIONS).map_err(db_err)?;
            let v: Option<Verification> = match t.remove(token_hash).map_err(db_err)? {
                Some(g) => Some(decode(g.value())?),
                None => None,
            };
            match v {
                Some(v) if v.expires_at > now => {
                    let mut users = tx.open_table(USERS).map_err(db_err)?;
                    let user: Option<User> = match users.get(v.user_id.as_str()).map_err(db_err)? {
                        Some(g) => Some(decode(g.value())?),
                        None => None,
                    };
                    match user {
                        Some(mut u) if email_key(&u.email) == email_key(&v.email) => {
                            u.email_verified = true;
                            u.updated_at = now;
                            users
                                .insert(u.id.as_str(), encode(&u)?.as_slice())
                                .map_err(db_err)?;
                            Some(u)
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(verified)
    }

    // ----- mail queue -----

    /// Mail due at `now`, oldest first, at most `limit`.
    pub fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<(u64, Mail)>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let t = rtx.open_table(MAIL_QUEUE).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let mail: Mail = decode(v.value())?;
            if mail.next_attempt_at <= now {
                out.push((k.value(), mail));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn mail_queue_len(&self) -> Result<u64, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        rtx.open_table(MAIL_QUEUE)
            .map_err(db_err)?
            .len()
            .map_err(db_err)
    }

    /// Remove a sent (or abandoned) mail.
    pub fn remove_mail(&self, id: u64) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        tx.open_table(MAIL_QUEUE)
            .map_err(db_err)?
            .remove(id)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Put a mail back for another attempt.
    pub fn retry_mail(&self, id: u64, mail: &Mail) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        tx.open_table(MAIL_QUEUE)
            .map_err(db_err)?
            .insert(id, encode(mail)?.as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Queue mail on its own (no other change to commit with it).
    pub fn queue_mail(&self, mails: &[Mail]) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)
    }

    // ----- audit log -----

    pub fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let tx = begin(&self.audit)?;
        {
            let mut t = tx.open_table(AUDIT).map_err(db_err)?;
            let first = t
                .last()
                .map_err(db_err)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            for (seq, e) in (first..).zip(events) {
                let mut e = e.clone();
                e.seq = seq;
                t.insert(seq, encode(&e)?.as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Audit events matching `filter`, newest first.
    pub fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let rtx = self.audit.begin_read().map_err(db_err)?;
        let t = rtx.open_table(AUDIT).map_err(db_err)?;
        let upper = filter.before_seq.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for entry in t.range(..upper).map_err(db_err)?.rev() {
            let (_, v) = entry.map_err(db_err)?;
            let e: AuditEvent = decode(v.value())?;
            if filter.since.is_some_and(|s| e.at < s) {
                break;
            }
            if filter.until.is_some_and(|u| e.at > u)
                || filter
                    .user_id
                    .as_ref()
                    .is_some_and(|u| e.user_id.as_deref() != Some(u.as_str()))
                || filter.kind.as_ref().is_some_and(|k| &e.kind != k)
            {
                continue;
            }
            out.push(e);
            if out.len() >= filter.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Delete audit events older than `before`; returns how many.
    pub fn purge_audit_before(&self, before: i64) -> Result<usize, StoreError> {
        let tx = begin(&self.audit)?;
        let n = {
            let mut t = tx.open_table(AUDIT).map_err(db_err)?;
            let mut old = Vec::new();
            for entry in t.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let e: AuditEvent = decode(v.value())?;
                if e.at >= before {
                    break;
                }
                old.push(k.value());
            }
            for k in &old {
                t.remove(*k).map_err(db_err)?;
            }
            old.len()
        };
        tx.commit().map_err(db_err)?;
        Ok(n)
    }
}

/// Copy every entry of `table` from a read snapshot into a write transaction.
fn copy_table<K, V>(
    from: &redb::ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    for<'a> K::SelfType<'a>: std::borrow::Borrow<K::SelfType<'a>>,
    for<'a> V::SelfType<'a>: std::borrow::Borrow<V::SelfType<'a>>,
{
    let source = from.open_table(table).map_err(db_err)?;
    let mut target = to.open_table(table).map_err(db_err)?;
    for entry in source.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        target.insert(k.value(), v.value()).map_err(db_err)?;
    }
    Ok(())
}

impl Store {
    /// Write a consistent copy of both databases to two new files (which must not exist): each
    /// is copied from one read snapshot, so it holds exactly the transactions committed before
    /// the copy began, while the server keeps serving and writing.
    pub fn backup_to(&self, main: &Path, audit: &Path) -> Result<(), StoreError> {
        for path in [main, audit] {
            if path.exists() {
                return Err(StoreError::Storage(format!(
                    "{} already exists",
                    path.display()
                )));
            }
        }
        let snapshot = self.db.begin_read().map_err(db_err)?;
        let copy = Database::create(main).map_err(|e| StoreError::Storage(e.to_string()))?;
        let tx = begin(&copy)?;
        copy_table(&snapshot, &tx, META)?;
        copy_table(&snapshot, &tx, USERS)?;
        copy_table(&snapshot, &tx, USERS_BY_EMAIL)?;
        copy_table(&snapshot, &tx, USERS_BY_NICKNAME)?;
        copy_table(&snapshot, &tx, SESSIONS)?;
        copy_table(&snapshot, &tx, VERIFICATIONS)?;
        copy_table(&snapshot, &tx, MAIL_QUEUE)?;
        {
            let source = snapshot
                .open_multimap_table(USER_SESSIONS)
                .map_err(db_err)?;
            let mut target = tx.open_multimap_table(USER_SESSIONS).map_err(db_err)?;
            for entry in source.iter().map_err(db_err)? {
                let (k, values) = entry.map_err(db_err)?;
                for v in values {
                    target
                        .insert(k.value(), v.map_err(db_err)?.value())
                        .map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        let audit_snapshot = self.audit.begin_read().map_err(db_err)?;
        let audit_copy = Database::create(audit).map_err(|e| StoreError::Storage(e.to_string()))?;
        let tx = begin(&audit_copy)?;
        copy_table(&audit_snapshot, &tx, META)?;
        copy_table(&audit_snapshot, &tx, AUDIT)?;
        tx.commit().map_err(db_err)
    }
}

fn queue_mail(tx: &WriteTransaction, mails: &[Mail]) -> Result<(), StoreError> {
    if mails.is_empty() {
        return Ok(());
    }
    let mut t = tx.open_table(MAIL_QUEUE).map_err(db_err)?;
    let first = t
        .last()
        .map_err(db_err)?
        .map(|(k, _)| k.value() + 1)
        .unwrap_or(1);
    for (id, m) in (first..).zip(mails) {
        t.insert(id, encode(m)?.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

fn remove_sessions_of(
    tx: &WriteTransaction,
    user_id: &str,
    keep: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut by_user = tx.open_multimap_table(USER_SESSIONS).map_err(db_err)?;
    let mut ids = Vec::new();
    for v in by_user.get(user_id).map_err(db_err)? {
        let id = v.map_err(db_err)?.value().to_string();
        if Some(id.as_str()) != keep {
            ids.push(id);
        }
    }
    let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
    for id in &ids {
        sessions.remove(id.as_str()).map_err(db_err)?;
        by_user.remove(user_id, id.as_str()).map_err(db_err)?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::ROLE_USER;

    fn open(dir: &Path) -> Store {
        Store::open(&dir.join("main.redb"), &dir.join("audit.redb")).unwrap()
    }

    fn user(id: &str, email: &str) -> User {
        User {
            id: id.into(),
            email: email.into(),
            nickname: id.into(),
            password_hash: String::new(),
            passphrase_hash: String::new(),
            customer_account: "none".into(),
            role: ROLE_USER.into(),
            locked: false,
            email_verified: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn import_adds_users_with_indexes_and_skips_taken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .create_user(user("u0", "taken@example.com"), false, &[], None)
            .unwrap();
        let mut batch: Vec<User> = (1..=3)
            .map(|i| user(&format!("u{i}"), &format!("u{i}@example.com")))
            .collect();
        batch.push(user("u9", "TAKEN@example.com"));
        batch.push(user("u1", "other@example.com"));
        assert_eq!(store.import_users(&batch).unwrap(), 3);
        assert_eq!(store.count_users().unwrap(), 4);
        assert_eq!(
            store.user_by_email("U2@example.com").unwrap().unwrap().id,
            "u2"
        );
        assert!(store.user_by_id("u9").unwrap().is_none());
        assert_eq!(
            store.user_by_id("u1").unwrap().unwrap().email,
            "u1@example.com"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        {
            let db = Database::create(dir.path().join("main.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let err = Store::open(
            &dir.path().join("main.redb"),
            &dir.path().join("audit.redb"),
        )
        .err()
        .unwrap();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }

    #[test]
    fn verification_links_are_bound_to_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .create_user(user("u1", "old@example.com"), false, &[], None)
            .unwrap();
        let v = Verification {
            user_id: "u1".into(),
            email: "old@example.com".into(),
            expires_at: 100,
        };
        store.put_verification("h1", &v, &[]).unwrap();
        store
            .update_user::<StoreError>("u1", &[], |u| {
                u.email = "new@example.com".into();
                Ok(())
            })
            .unwrap();
        assert_eq!(
            store.consume_verification("h1", 50).unwrap(),
            None,
            "link for the old address"
        );
        assert!(!store.user_by_id("u1").unwrap().unwrap().email_verified);
        // Expired links do nothing either.
        let v = Verification {
            user_id: "u1".into(),
            email: "new@example.com".into(),
            expires_at: 100,
        };
        store.put_verification("h2", &v, &[]).unwrap();
        assert_eq!(store.consume_verification("h2", 100).unwrap(), None);
    }

    #[test]
    fn old_audit_events_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let ev = |at: i64| AuditEvent {
            seq: 0,
            at,
            kind: "login".into(),
            outcome: "success".into(),
            user_id: None,
            actor: None,
            request_id: String::new(),
            client_ip: String::new(),
            detail: None,
        };
        store.append_audit(&[ev(10), ev(20), ev(30)]).unwrap();
        assert_eq!(store.purge_audit_before(25).unwrap(), 2);
        let left = store
            .audit_events(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(left.iter().map(|e| e.at).collect::<Vec<_>>(), vec![30]);
        assert_eq!(left[0].seq, 3);
    }

    #[test]
    fn email_and_nickname_indexes_follow_changes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .create_user(user("a", "a@example.com"), false, &[], None)
            .unwrap();
        store
            .create_user(user("b", "b@example.com"), false, &[], None)
            .unwrap();
        let taken = store.update_user::<StoreError>("b", &[], |u| {
            u.email = "A@EXAMPLE.COM".into();
            Ok(())
        });
        assert!(matches!(taken, Err(StoreError::Duplicate("email"))));
        store.delete_user("a", &[]).unwrap();
        assert!(store.user_by_email("a@example.com").unwrap().is_none());
        store
            .create_user(user("a", "a@example.com"), false, &[], None)
            .unwrap();
    }
}
