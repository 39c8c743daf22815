//! The embedded backend: two redb files (main and audit) in the data dir, for one instance.
//! Transactions run on the store's own threads (a redb commit waits for fsync); audit events
//! from concurrent requests are group-committed by one writer thread.

mod audit_writer;
mod db;

use super::models::{
    AccountChange, AuditEvent, AuditFilter, Mail, Session, StoredSession, User, Verification,
};
use super::{AccountChanged, Store, StoreError};
use crate::pool::Pool;
use async_trait::async_trait;
use audit_writer::AuditWriter;
use db::Db;
use std::path::Path;
use std::sync::Arc;

/// File names inside a backup directory.
pub const BACKUP_MAIN: &str = "portcullis.redb";
pub const BACKUP_AUDIT: &str = "audit.redb";

/// Threads running transactions: reads run side by side, writes queue in redb anyway.
const STORE_THREADS: usize = 4;

pub struct RedbStore {
    db: Arc<Db>,
    pool: Pool<()>,
    audit: AuditWriter,
}

impl RedbStore {
    /// Open (or create) both files. Fails at once with `AlreadyOpen` if another process has
    /// them open.
    pub fn open(database: &Path, audit_database: &Path) -> Result<RedbStore, StoreError> {
        let db = Arc::new(Db::open(database, audit_database)?);
        let io = |e: std::io::Error| StoreError::Storage(format!("cannot start a thread: {e}"));
        let pool = Pool::start("portcullis-store", STORE_THREADS, || (), |_| {}).map_err(io)?;
        let audit = AuditWriter::start(db.clone()).map_err(io)?;
        Ok(RedbStore { db, pool, audit })
    }

    /// Run one transaction on the store's threads.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        self.pool.run(move |_| work(&db)).await?
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn create_user(
        &self,
        user: User,
        first_user_admin: bool,
        verification: Option<(String, Verification)>,
        mails: Vec<Mail>,
    ) -> Result<User, StoreError> {
        self.run(move |db| db.create_user(user, first_user_admin, verification.as_ref(), &mails))
            .await
    }

    async fn import_users(&self, batch: Vec<User>) -> Result<usize, StoreError> {
        self.run(move |db| db.import_users(&batch)).await
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.run(move |db| db.user_by_id(&id)).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.to_string();
        self.run(move |db| db.user_by_email(&email)).await
    }

    async fn list_users(&self, skip: usize, limit: usize) -> Result<Vec<User>, StoreError> {
        self.run(move |db| db.list_users(skip, limit)).await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.run(|db| db.count_users()).await
    }

    async fn change_account(
        &self,
        id: &str,
        change: AccountChange,
    ) -> Result<AccountChanged, StoreError> {
        let id = id.to_string();
        self.run(move |db| db.change_account(&id, &change)).await
    }

    async fn upgrade_password_hash(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, StoreError> {
        let (id, old, new) = (id.to_string(), old_hash.to_string(), new_hash.to_string());
        self.run(move |db| db.upgrade_password_hash(&id, &old, &new))
            .await
    }

    async fn delete_account(&self, id: &str, mails: Vec<Mail>) -> Result<Vec<String>, StoreError> {
        let id = id.to_string();
        self.run(move |db| db.delete_account(&id, &mails)).await
    }

    async fn open_session(&self, session: Session, stamp: u64) -> Result<User, StoreError> {
        self.run(move |db| db.open_session(&session, stamp)).await
    }

    async fn end_session(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.run(move |db| db.end_session(&id)).await
    }

    async fn touch_sessions(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError> {
        self.run(move |db| db.touch_sessions(&seen)).await
    }

    async fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        self.run(|db| db.load_sessions()).await
    }

    async fn purge_dead_sessions(&self, now: i64, idle_secs: i64) -> Result<usize, StoreError> {
        self.run(move |db| db.purge_dead_sessions(now, idle_secs))
            .await
    }

    async fn put_verification(
        &self,
        token_hash: String,
        verification: Verification,
        mails: Vec<Mail>,
    ) -> Result<(), StoreError> {
        self.run(move |db| db.put_verification(&token_hash, &verification, &mails))
            .await
    }

    async fn consume_verification(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<User>, StoreError> {
        let hash = token_hash.to_string();
        self.run(move |db| db.consume_verification(&hash, now))
            .await
    }

    async fn due_mail(&self, now: i64, limit: usize) -> Result<Vec<(u64, Mail)>, StoreError> {
        self.run(move |db| db.due_mail(now, limit)).await
    }

    async fn mail_queue_len(&self) -> Result<u64, StoreError> {
        self.run(|db| db.mail_queue_len()).await
    }

    async fn remove_mail(&self, id: u64) -> Result<(), StoreError> {
        self.run(move |db| db.remove_mail(id)).await
    }

    async fn retry_mail(&self, id: u64, mail: Mail) -> Result<(), StoreError> {
        self.run(move |db| db.retry_mail(id, &mail)).await
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.audit.append(events).await.map_err(StoreError::Storage)
    }

    async fn audit_events(&self, filter: AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        self.run(move |db| db.audit_events(&filter)).await
    }

    async fn purge_audit_before(&self, before: i64) -> Result<usize, StoreError> {
        self.run(move |db| db.purge_audit_before(before)).await
    }

    async fn backup_into(&self, dir: &Path) -> Result<(), StoreError> {
        let (main, audit) = (dir.join(BACKUP_MAIN), dir.join(BACKUP_AUDIT));
        self.run(move |db| db.backup_to(&main, &audit)).await
    }

    fn touch_sessions_now(&self, seen: Vec<(String, i64)>) -> Result<(), StoreError> {
        self.db.touch_sessions(&seen)
    }
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), StoreError> {
    let fail = |e: std::io::Error| {
        StoreError::Storage(format!(
            "cannot copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    };
    std::fs::copy(from, to).map_err(fail)?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(fail)
}

/// Put a backup back: the database files must not exist yet; the backup is opened (and its
/// schema checked) before anything is copied.
pub fn restore(main: &Path, audit: &Path, from: &Path) -> Result<(), StoreError> {
    for target in [main, audit] {
        if target.exists() {
            return Err(StoreError::Storage(format!(
                "{} already exists: restore only into an empty data dir, with the server stopped",
                target.display()
            )));
        }
    }
    let (src_main, src_audit) = (from.join(BACKUP_MAIN), from.join(BACKUP_AUDIT));
    for src in [&src_main, &src_audit] {
        if !src.is_file() {
            return Err(StoreError::Storage(format!("{} is missing", src.display())));
        }
    }
    drop(
        Db::open(&src_main, &src_audit)
            .map_err(|e| StoreError::Storage(format!("the backup does not open: {e}")))?,
    );
    for (src, target) in [(&src_main, main), (&src_audit, audit)] {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        copy_synced(src, target)?;
    }
    Ok(())
}

/// Everything in the files (the server stopped: the files are opened here).
pub fn export(main: &Path, audit: &Path) -> Result<crate::store::Export, StoreError> {
    for path in [main, audit] {
        if !path.is_file() {
            return Err(StoreError::Storage(format!(
                "{} does not exist",
                path.display()
            )));
        }
    }
    Db::open(main, audit)?.export()
}
