//! The PostgreSQL schema, versioned in the repository (`schema/*.sql`) and applied at start
//! under an advisory lock, so two replicas starting at once never both migrate. A database
//! with a newer schema than this build knows is refused.

use crate::store::StoreError;

/// The parts of the schema, each versioned on its own (the audit log may live elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Audit,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Main => "main",
            Part::Audit => "audit",
        }
    }

    /// The migrations, in order: version n is `migrations()[n - 1]`.
    fn migrations(self) -> &'static [&'static str] {
        match self {
            Part::Main => &[
                include_str!("schema/001_initial.sql"),
                include_str!("schema/002_counters.sql"),
            ],
            Part::Audit => &[include_str!("schema/audit_001_initial.sql")],
        }
    }

    pub fn latest(self) -> i32 {
        self.migrations().len() as i32
    }
}

/// Advisory lock key taken while migrating ("portcull" in ASCII).
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c;

/// Bring `part` of the schema up to date in one transaction; returns the version found before.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    part: Part,
    database: &str,
) -> Result<i32, StoreError> {
    let err = |e: tokio_postgres::Error| {
        StoreError::Storage(format!(
            "migrating the {} schema of {database}: {e}",
            part.name()
        ))
    };
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS portcullis_schema (
             part text PRIMARY KEY,
             version integer NOT NULL
         )",
    )
    .await
    .map_err(err)?;
    let found: i32 = tx
        .query_opt(
            "SELECT version FROM portcullis_schema WHERE part = $1",
            &[&part.name()],
        )
        .await
        .map_err(err)?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if found > part.latest() {
        return Err(StoreError::SchemaTooNew {
            path: format!("{database} ({} schema)", part.name()).into(),
            found: found as u64,
            known: part.latest() as u64,
        });
    }
    for (i, sql) in part.migrations().iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO portcullis_schema (part, version) VALUES ($1, $2)
             ON CONFLICT (part) DO UPDATE SET version = EXCLUDED.version",
            &[&part.name(), &(i as i32 + 1)],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    if found < part.latest() {
        tracing::info!(
            database,
            part = part.name(),
            from = found,
            to = part.latest(),
            "database schema migrated"
        );
    }
    Ok(found)
}
