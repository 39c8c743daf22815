//! The redb transactions: one method, one transaction, committed with `Durability::Immediate`
//! and two-phase commit, so a returned `Ok` is on disk. Methods block (fsync); `RedbStore` runs
//! them on its own threads.

use crate::store::models::{
    email_key, nickname_key, AccountChange, AuditEvent, AuditFilter, Mail, Session, SessionOwner,
    StoredSession, User, Verification, ROLE_ADMIN,
};
use crate::store::{AccountChanged, StoreError};
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use std::path::Path;

/// Bumped when the file layout changes; a newer file is refused, an older one migrated.
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

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(e.into().to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Storage(format!("encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Storage(format!("decode: {e}")))
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
                    known: SCHEMA_VERSION,
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

    fn get(&self, id: &str) -> Result<Option<User>, StoreError> {
        match self.users.get(id).map_err(db_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn email_taken(&self, email: &str) -> Result<bool, StoreError> {
        Ok(self
            .by_email
            .get(email_key(email).as_str())
            .map_err(db_err)?
            .is_some())
    }

    fn nickname_taken(&self, nickname: &str) -> Result<bool, StoreError> {
        Ok(self
            .by_nick
            .get(nickname_key(nickname).as_str())
            .map_err(db_err)?
            .is_some())
    }

    /// The unique field of `user` another user already has: "email" or "nickname".
    fn taken(&self, user: &User) -> Result<Option<&'static str>, StoreError> {
        if self.email_taken(&user.email)? {
            return Ok(Some("email"));
        }
        if self.nickname_taken(&user.nickname)? {
            return Ok(Some("nickname"));
        }
        Ok(None)
    }

    /// Write the record and both index entries.
    fn insert(&mut self, user: &User) -> Result<(), StoreError> {
        let id = user.id.as_str();
        self.put(user)?;
        self.by_email
            .insert(email_key(&user.email).as_str(), id)
            .map_err(db_err)?;
        self.by_nick
            .insert(nickname_key(&user.nickname).as_str(), id)
            .map_err(db_err)?;
        Ok(())
    }

    /// Write the record only.
    fn put(&mut self, user: &User) -> Result<(), StoreError> {
        self.users
            .insert(user.id.as_str(), encode(user)?.as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Is there an active admin other than `except`? (A full scan: only changes that remove an
    /// admin ask, and they are rare.)
    fn other_active_admin(&self, except: &str) -> Result<bool, StoreError> {
        for entry in self.users.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            if k.value() == except {
                continue;
            }
            // Cheap pre-filter before decoding: only admins can count.
            if !contains(v.value(), ROLE_ADMIN.as_bytes()) {
                continue;
            }
            let u: User = decode(v.value())?;
            if u.is_active_admin() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

fn put_verification(tx: &WriteTransaction, hash: &str, v: &Verification) -> Result<(), StoreError> {
    let mut t = tx.open_table(VERIFICATIONS).map_err(db_err)?;
    t.insert(hash, encode(v)?.as_slice()).map_err(db_err)?;
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

/// The main database (users, sessions, indexes, verification links, queued mail) and the
/// audit database.
pub struct Db {
    db: Database,
    audit: Database,
}

impl Db {
    /// Open (or create) both databases. Fails at once if another process has them open.
    pub fn open(database: &Path, audit_database: &Path) -> Result<Db, StoreError> {
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
        Ok(Db { db, audit })
    }

    // ----- users -----

    pub fn create_user(
        &self,
        mut user: User,
        first_user_admin: bool,
        verification: Option<&(String, Verification)>,
        mails: &[Mail],
    ) -> Result<User, StoreError> {
        let tx = begin(&self.db)?;
        {
            let mut tables = UserTables::open(&tx)?;
            if let Some(field) = tables.taken(&user)? {
                return Err(StoreError::Duplicate(field));
            }
            if first_user_admin && tables.users.is_empty().map_err(db_err)? {
                user.role = ROLE_ADMIN.to_string();
            }
            tables.insert(&user)?;
        }
        if let Some((hash, v)) = verification {
            put_verification(&tx, hash, v)?;
        }
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)?;
        Ok(user)
    }

    pub fn import_users(&self, batch: &[User]) -> Result<usize, StoreError> {
        let tx = begin(&self.db)?;
        let mut added = 0;
        {
            let mut tables = UserTables::open(&tx)?;
            for user in batch {
                if tables.get(&user.id)?.is_none() && tables.taken(user)?.is_none() {
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

    pub fn change_account(
        &self,
        id: &str,
        change: &AccountChange,
    ) -> Result<AccountChanged, StoreError> {
        let tx = begin(&self.db)?;
        let (user, ended) = {
            let mut tables = UserTables::open(&tx)?;
            let mut user = tables.get(id)?.ok_or(StoreError::NotFound)?;
            let before = user.clone();
            let effects = change.apply(&mut user);
            if effects.email_changed {
                if tables.email_taken(&user.email)? {
                    return Err(StoreError::Duplicate("email"));
                }
                tables
                    .by_email
                    .remove(email_key(&before.email).as_str())
                    .map_err(db_err)?;
                tables
                    .by_email
                    .insert(email_key(&user.email).as_str(), id)
                    .map_err(db_err)?;
            }
            if effects.nickname_changed {
                if tables.nickname_taken(&user.nickname)? {
                    return Err(StoreError::Duplicate("nickname"));
                }
                tables
                    .by_nick
                    .remove(nickname_key(&before.nickname).as_str())
                    .map_err(db_err)?;
                tables
                    .by_nick
                    .insert(nickname_key(&user.nickname).as_str(), id)
                    .map_err(db_err)?;
            }
            if effects.removes_admin && !tables.other_active_admin(id)? {
                return Err(StoreError::LastAdmin);
            }
            tables.put(&user)?;
            let ended = if effects.ends_sessions {
                remove_sessions_of(&tx, id, change.surviving_session(&effects))?
            } else {
                Vec::new()
            };
            (user, ended)
        };
        if let Some((hash, v)) = &change.verification {
            put_verification(&tx, hash, v)?;
        }
        queue_mail(&tx, &change.mails)?;
        tx.commit().map_err(db_err)?;
        Ok(AccountChanged {
            user,
            ended_sessions: ended,
        })
    }

    pub fn upgrade_password_hash(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let tx = begin(&self.db)?;
        let upgraded = {
            let mut tables = UserTables::open(&tx)?;
            match tables.get(id)? {
                Some(mut user) if user.password_hash == old_hash => {
                    user.password_hash = new_hash.to_string();
                    tables.put(&user)?;
                    true
                }
                _ => false,
            }
        };
        if upgraded {
            tx.commit().map_err(db_err)?;
        }
        Ok(upgraded)
    }

    pub fn delete_account(&self, id: &str, mails: &[Mail]) -> Result<Vec<String>, StoreError> {
        let tx = begin(&self.db)?;
        let ended = {
            let mut tables = UserTables::open(&tx)?;
            let user = tables.get(id)?.ok_or(StoreError::NotFound)?;
            if user.is_active_admin() && !tables.other_active_admin(id)? {
                return Err(StoreError::LastAdmin);
            }
            tables.users.remove(id).map_err(db_err)?;
            tables
                .by_email
                .remove(email_key(&user.email).as_str())
                .map_err(db_err)?;
            tables
                .by_nick
                .remove(nickname_key(&user.nickname).as_str())
                .map_err(db_err)?;
            remove_sessions_of(&tx, id, None)?
        };
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)?;
        Ok(ended)
    }

    // ----- sessions -----

    pub fn open_session(&self, session: &Session, stamp: u64) -> Result<User, StoreError> {
        let tx = begin(&self.db)?;
        let user = {
            let tables = UserTables::open(&tx)?;
            let user = tables.get(&session.user_id)?.ok_or(StoreError::NotFound)?;
            if user.security_stamp != stamp {
                return Err(StoreError::StampChanged);
            }
            let mut sessions = tx.open_table(SESSIONS).map_err(db_err)?;
            sessions
                .insert(session.id.as_str(), encode(session)?.as_slice())
                .map_err(db_err)?;
            let mut by_user = tx.open_multimap_table(USER_SESSIONS).map_err(db_err)?;
            by_user
                .insert(session.user_id.as_str(), session.id.as_str())
                .map_err(db_err)?;
            user
        };
        tx.commit().map_err(db_err)?;
        Ok(user)
    }

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

    fn all_sessions(&self) -> Result<Vec<Session>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let sessions = rtx.open_table(SESSIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in sessions.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    pub fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let sessions = rtx.open_table(SESSIONS).map_err(db_err)?;
        let users = rtx.open_table(USERS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in sessions.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            let session: Session = decode(v.value())?;
            // A session whose user is gone is dead (deletes end sessions in the same
            // transaction; this only guards against older data).
            if let Some(u) = users.get(session.user_id.as_str()).map_err(db_err)? {
                let user: User = decode(u.value())?;
                out.push(StoredSession {
                    session,
                    owner: SessionOwner::of(&user),
                });
            }
        }
        Ok(out)
    }

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
        put_verification(&tx, token_hash, v)?;
        queue_mail(&tx, mails)?;
        tx.commit().map_err(db_err)
    }

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
                    let mut tables = UserTables::open(&tx)?;
                    match tables.get(&v.user_id)? {
                        Some(mut u) if email_key(&u.email) == email_key(&v.email) => {
                            u.email_verified = true;
                            u.updated_at = now;
                            tables.put(&u)?;
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

    pub fn remove_mail(&self, id: u64) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        tx.open_table(MAIL_QUEUE)
            .map_err(db_err)?
            .remove(id)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    pub fn retry_mail(&self, id: u64, mail: &Mail) -> Result<(), StoreError> {
        let tx = begin(&self.db)?;
        tx.open_table(MAIL_QUEUE)
            .map_err(db_err)?
            .insert(id, encode(mail)?.as_slice())
            .map_err(db_err)?;
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
            if !filter.matches(&e) {
                continue;
            }
            out.push(e);
            if out.len() >= filter.limit {
                break;
            }
        }
        Ok(out)
    }

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

    // ----- export (migration to another backend) -----

    /// Everything in both databases, read from one snapshot each.
    pub fn export(&self) -> Result<crate::store::Export, StoreError> {
        let rtx = self.db.begin_read().map_err(db_err)?;
        let mut out = crate::store::Export::default();
        for entry in rtx
            .open_table(USERS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            out.users.push(decode(entry.map_err(db_err)?.1.value())?);
        }
        for entry in rtx
            .open_table(SESSIONS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            out.sessions.push(decode(entry.map_err(db_err)?.1.value())?);
        }
        for entry in rtx
            .open_table(VERIFICATIONS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = entry.map_err(db_err)?;
            out.verifications
                .push((k.value().to_string(), decode(v.value())?));
        }
        for entry in rtx
            .open_table(MAIL_QUEUE)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = entry.map_err(db_err)?;
            out.mail.push((k.value(), decode(v.value())?));
        }
        let atx = self.audit.begin_read().map_err(db_err)?;
        for entry in atx
            .open_table(AUDIT)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            out.audit.push(decode(entry.map_err(db_err)?.1.value())?);
        }
        Ok(out)
    }

    // ----- backup -----

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::models::{AuditKind, Outcome, ROLE_USER};

    fn open(dir: &Path) -> Db {
        Db::open(&dir.join("main.redb"), &dir.join("audit.redb")).unwrap()
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
            security_stamp: 0,
        }
    }

    fn admin(id: &str) -> User {
        User {
            role: ROLE_ADMIN.into(),
            ..user(id, &format!("{id}@example.com"))
        }
    }

    fn session(id: &str, user: &str) -> Session {
        Session {
            id: id.into(),
            user_id: user.into(),
            created_at: 0,
            expires_at: 100,
            last_seen: 0,
        }
    }

    #[test]
    fn import_adds_users_with_indexes_and_skips_taken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.create_user(user("u0", "taken@example.com"), false, None, &[])
            .unwrap();
        let mut batch: Vec<User> = (1..=3)
            .map(|i| user(&format!("u{i}"), &format!("u{i}@example.com")))
            .collect();
        batch.push(user("u9", "TAKEN@example.com"));
        batch.push(user("u1", "other@example.com"));
        assert_eq!(db.import_users(&batch).unwrap(), 3);
        assert_eq!(db.count_users().unwrap(), 4);
        assert_eq!(
            db.user_by_email("U2@example.com").unwrap().unwrap().id,
            "u2"
        );
        assert!(db.user_by_id("u9").unwrap().is_none());
        assert_eq!(
            db.user_by_id("u1").unwrap().unwrap().email,
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
        let err = Db::open(
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
        let db = open(dir.path());
        db.create_user(user("u1", "old@example.com"), false, None, &[])
            .unwrap();
        let v = Verification {
            user_id: "u1".into(),
            email: "old@example.com".into(),
            expires_at: 100,
        };
        db.put_verification("h1", &v, &[]).unwrap();
        let change = AccountChange {
            email: Some("new@example.com".into()),
            ..Default::default()
        };
        db.change_account("u1", &change).unwrap();
        assert_eq!(
            db.consume_verification("h1", 50).unwrap(),
            None,
            "link for the old address"
        );
        assert!(!db.user_by_id("u1").unwrap().unwrap().email_verified);
        // Expired links do nothing either.
        let v = Verification {
            user_id: "u1".into(),
            email: "new@example.com".into(),
            expires_at: 100,
        };
        db.put_verification("h2", &v, &[]).unwrap();
        assert_eq!(db.consume_verification("h2", 100).unwrap(), None);
    }

    #[test]
    fn old_audit_events_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let ev = |at: i64| AuditEvent {
            seq: 0,
            at,
            kind: AuditKind::Login,
            outcome: Outcome::Success,
            user_id: None,
            actor: None,
            request_id: String::new(),
            client_ip: String::new(),
            detail: None,
        };
        db.append_audit(&[ev(10), ev(20), ev(30)]).unwrap();
        assert_eq!(db.purge_audit_before(25).unwrap(), 2);
        let left = db
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
        let db = open(dir.path());
        db.create_user(user("a", "a@example.com"), false, None, &[])
            .unwrap();
        db.create_user(user("b", "b@example.com"), false, None, &[])
            .unwrap();
        let taken = db.change_account(
            "b",
            &AccountChange {
                email: Some("A@EXAMPLE.COM".into()),
                ..Default::default()
            },
        );
        assert!(matches!(taken, Err(StoreError::Duplicate("email"))));
        let taken = db.change_account(
            "b",
            &AccountChange {
                nickname: Some("A".into()),
                ..Default::default()
            },
        );
        assert!(matches!(taken, Err(StoreError::Duplicate("nickname"))));
        db.delete_account("a", &[]).unwrap();
        assert!(db.user_by_email("a@example.com").unwrap().is_none());
        db.create_user(user("a", "a@example.com"), false, None, &[])
            .unwrap();
    }

    #[test]
    fn the_last_active_admin_cannot_be_demoted_locked_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.create_user(admin("a"), false, None, &[]).unwrap();
        db.create_user(admin("b"), false, None, &[]).unwrap();
        let demote = AccountChange {
            role: Some(ROLE_USER.into()),
            ..Default::default()
        };
        db.change_account("b", &demote).unwrap();
        assert!(matches!(
            db.change_account("a", &demote),
            Err(StoreError::LastAdmin)
        ));
        let lock = AccountChange {
            locked: Some(true),
            ..Default::default()
        };
        assert!(matches!(
            db.change_account("a", &lock),
            Err(StoreError::LastAdmin)
        ));
        assert!(matches!(
            db.delete_account("a", &[]),
            Err(StoreError::LastAdmin)
        ));
        // A locked admin does not count; a second active one does.
        db.create_user(
            User {
                locked: true,
                ..admin("c")
            },
            false,
            None,
            &[],
        )
        .unwrap();
        assert!(matches!(
            db.delete_account("a", &[]),
            Err(StoreError::LastAdmin)
        ));
        db.delete_account("c", &[]).unwrap();
        db.change_account(
            "b",
            &AccountChange {
                role: Some(ROLE_ADMIN.into()),
                ..Default::default()
            },
        )
        .unwrap();
        db.delete_account("a", &[]).unwrap();
        assert!(db.user_by_id("b").unwrap().unwrap().is_active_admin());
    }

    #[test]
    fn a_password_change_ends_sessions_in_its_transaction_and_a_stale_stamp_opens_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.create_user(user("u", "u@example.com"), false, None, &[])
            .unwrap();
        let stamp = db.user_by_id("u").unwrap().unwrap().security_stamp;
        for s in ["s1", "s2", "s3"] {
            db.open_session(&session(s, "u"), stamp).unwrap();
        }
        let changed = db
            .change_account(
                "u",
                &AccountChange {
                    password_hash: Some("new".into()),
                    keep_session: Some("s2".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        let mut ended = changed.ended_sessions.clone();
        ended.sort();
        assert_eq!(ended, vec!["s1", "s3"]);
        assert_eq!(changed.user.security_stamp, stamp + 1);
        let left: Vec<String> = db
            .load_sessions()
            .unwrap()
            .into_iter()
            .map(|s| s.session.id)
            .collect();
        assert_eq!(left, vec!["s2"]);
        assert!(matches!(
            db.open_session(&session("s4", "u"), stamp),
            Err(StoreError::StampChanged)
        ));
        db.open_session(&session("s4", "u"), stamp + 1).unwrap();
        assert!(matches!(
            db.open_session(&session("s5", "gone"), 0),
            Err(StoreError::NotFound)
        ));
    }

    #[test]
    fn a_hash_upgrade_never_overwrites_a_changed_password() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.create_user(
            User {
                password_hash: "old".into(),
                ..user("u", "u@example.com")
            },
            false,
            None,
            &[],
        )
        .unwrap();
        assert!(!db.upgrade_password_hash("u", "other", "x").unwrap());
        assert!(db.upgrade_password_hash("u", "old", "stronger").unwrap());
        assert_eq!(
            db.user_by_id("u").unwrap().unwrap().password_hash,
            "stronger"
        );
    }
}
