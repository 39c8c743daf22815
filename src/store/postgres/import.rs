//! Moving an instance from its embedded files to PostgreSQL (`portcullis migrate --to`): the
//! schema is created, the database must be empty, everything is copied in one transaction and
//! counted again before it commits.

use super::connect::Target;
use super::schema::{self, Part};
use super::{db_err, insert_user};
use crate::config::{PostgresUrl, StorageSettings};
use crate::store::{Export, StoreError};

/// Copy `data` into the empty database at `url`.
pub fn import(
    url: &PostgresUrl,
    settings: &StorageSettings,
    data: &Export,
) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Storage(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(run(url, settings, data))
}

async fn run(
    url: &PostgresUrl,
    settings: &StorageSettings,
    data: &Export,
) -> Result<(), StoreError> {
    let target = Target::new(url, settings.postgres_ca_file.as_deref())?;
    let (mut client, connection) = target
        .connect("portcullis-migrate")
        .await
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", target.name)))?;
    let driver = tokio::spawn(connection);
    let result = copy(&mut client, &target.name, data).await;
    drop(client);
    let _ = driver.await;
    result
}

async fn copy(
    client: &mut tokio_postgres::Client,
    name: &str,
    data: &Export,
) -> Result<(), StoreError> {
    schema::migrate(client, Part::Main, name).await?;
    schema::migrate(client, Part::Audit, name).await?;
    let tx = client.transaction().await.map_err(db_err)?;
    let occupied: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM sessions)
                 OR EXISTS (SELECT 1 FROM mail_queue) OR EXISTS (SELECT 1 FROM audit_events)",
            &[],
        )
        .await
        .map_err(db_err)?
        .get(0);
    if occupied {
        return Err(StoreError::Storage(format!(
            "{name} already holds data: migrate only into an empty database"
        )));
    }
    for u in &data.users {
        if insert_user(&tx, u).await.map_err(db_err)? != 1 {
            return Err(StoreError::Storage(format!(
                "user {} clashes with another on email or nickname",
                u.id
            )));
        }
    }
    let users: std::collections::HashSet<&str> = data.users.iter().map(|u| u.id.as_str()).collect();
    for s in data
        .sessions
        .iter()
        .filter(|s| users.contains(s.user_id.as_str()))
    {
        tx.execute(
            "INSERT INTO sessions (id, user_id, created_at, expires_at, last_seen)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &s.id,
                &s.user_id,
                &s.created_at,
                &s.expires_at,
                &s.last_seen,
            ],
        )
        .await
        .map_err(db_err)?;
    }
    for (hash, v) in data
        .verifications
        .iter()
        .filter(|(_, v)| users.contains(v.user_id.as_str()))
    {
        tx.execute(
            "INSERT INTO verifications (token_hash, user_id, email, expires_at)
             VALUES ($1, $2, $3, $4)",
            &[hash, &v.user_id, &v.email, &v.expires_at],
        )
        .await
        .map_err(db_err)?;
    }
    for (id, m) in &data.mail {
        tx.execute(
            "INSERT INTO mail_queue (id, recipient, subject, body, attempts, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &(*id as i64),
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
    for e in &data.audit {
        tx.execute(
            "INSERT INTO audit_events (seq, at, kind, outcome, user_id, actor, request_id,
                 client_ip, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &(e.seq as i64),
                &e.at,
                &e.kind.as_str(),
                &super::outcome_name(e.outcome),
                &e.user_id,
                &e.actor,
                &e.request_id,
                &e.client_ip,
                &e.detail,
            ],
        )
        .await
        .map_err(db_err)?;
    }
    // New rows continue after the copied ones.
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('mail_queue', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM mail_queue;
         SELECT setval(pg_get_serial_sequence('audit_events', 'seq'), COALESCE(MAX(seq), 0) + 1, false) FROM audit_events;",
    )
    .await
    .map_err(db_err)?;
    // Counted again before committing: what the database holds is what was read.
    let copied = [
        ("users", data.users.len()),
        (
            "sessions",
            data.sessions
                .iter()
                .filter(|s| users.contains(s.user_id.as_str()))
                .count(),
        ),
        (
            "verifications",
            data.verifications
                .iter()
                .filter(|(_, v)| users.contains(v.user_id.as_str()))
                .count(),
        ),
        ("mail_queue", data.mail.len()),
        ("audit_events", data.audit.len()),
    ];
    for (table, expected) in copied {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(db_err)?
            .get(0);
        if n as usize != expected {
            return Err(StoreError::Storage(format!(
                "{table}: {n} rows in PostgreSQL, {expected} read: nothing was committed"
            )));
        }
    }
    tx.commit().await.map_err(db_err)
}
