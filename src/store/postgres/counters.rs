//! The counters every replica shares, in PostgreSQL: failed logins per account and the GCRA
//! state of limited keys, each updated in one statement so that concurrent replicas never lose
//! a count. Keys are stored as SHA-256, never as the address or IP they stand for.

use super::{db_err, pool_err, user_from, PgStore, USER_COLUMNS};
use crate::store::{Admission, SharedCounters, StoreError, User};
use async_trait::async_trait;

fn hashed(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

#[async_trait]
impl SharedCounters for PgStore {
    async fn login_blocked_until(&self, account: &str) -> Result<Option<i64>, StoreError> {
        let account = hashed(account);
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    "SELECT blocked_until FROM login_failures WHERE account = $1",
                    &[&account],
                )
                .await
                .map_err(db_err)?;
            Ok(row.map(|r| r.get(0)))
        })
        .await
    }

    async fn login_lookup(
        &self,
        account: &str,
        email: &str,
    ) -> Result<(Option<i64>, Option<User>), StoreError> {
        let account = hashed(account);
        let key = crate::store::models::email_key(email);
        let columns = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // One row whatever exists: the account's columns are NULL when there is none.
        let sql = format!(
            "SELECT {columns}, g.blocked_until FROM (SELECT 1) AS one
             LEFT JOIN users u ON u.email_key = $1
             LEFT JOIN login_failures g ON g.account = $2"
        );
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one(&sql, &[&key, &account])
                .await
                .map_err(db_err)?;
            let blocked: Option<i64> = row.get(row.len() - 1);
            let user = row.get::<_, Option<String>>(0).map(|_| user_from(&row));
            Ok((blocked, user))
        })
        .await
    }

    async fn record_login_failure(
        &self,
        account: &str,
        now: i64,
        window_secs: i64,
    ) -> Result<u32, StoreError> {
        let account = hashed(account);
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one(
                    "INSERT INTO login_failures (account, count, last_failure, blocked_until)
                     VALUES ($1, 1, $2, 0)
                     ON CONFLICT (account) DO UPDATE SET
                         count = CASE WHEN $2 - login_failures.last_failure >= $3 THEN 1
                                      ELSE login_failures.count + 1 END,
                         last_failure = $2
                     RETURNING count",
                    &[&account, &now, &window_secs],
                )
                .await
                .map_err(db_err)?;
            Ok(row.get::<_, i32>(0).max(0) as u32)
        })
        .await
    }

    async fn block_login(&self, account: &str, until: i64) -> Result<(), StoreError> {
        let account = hashed(account);
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "UPDATE login_failures SET blocked_until = GREATEST(blocked_until, $2)
                     WHERE account = $1",
                    &[&account, &until],
                )
                .await
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn clear_login_failures(&self, account: &str) -> Result<(), StoreError> {
        let account = hashed(account);
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute("DELETE FROM login_failures WHERE account = $1", &[&account])
                .await
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn admit(
        &self,
        key: &str,
        limit: u32,
        period_ms: i64,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let key = hashed(key);
        let cell = (period_ms / i64::from(limit.max(1))).max(1);
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            // Admitted: the arrival time moves on by one cell, if the burst still fits the
            // period. Refused: the row stays as it was, and is read back.
            let row = client
                .query_one(
                    "WITH admitted AS (
                         INSERT INTO limit_state (key, tat_ms) VALUES ($1, $2::int8 + $3::int8)
                         ON CONFLICT (key) DO UPDATE
                             SET tat_ms = GREATEST(limit_state.tat_ms, $2::int8) + $3::int8
                             WHERE GREATEST(limit_state.tat_ms, $2::int8) + $3::int8 - $2::int8
                                 <= $4::int8
                         RETURNING tat_ms)
                     SELECT true, tat_ms FROM admitted
                     UNION ALL
                     SELECT false, tat_ms FROM limit_state
                     WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM admitted)",
                    &[&key, &now_ms, &cell, &period_ms],
                )
                .await
                .map_err(db_err)?;
            Ok(Admission {
                allowed: row.get(0),
                tat_ms: row.get(1),
            })
        })
        .await
    }

    async fn purge_counters(&self, now: i64, window_secs: i64) -> Result<usize, StoreError> {
        self.run(&self.main, move |pool| async move {
            let client = pool.get().await.map_err(pool_err)?;
            let failures = client
                .execute(
                    "DELETE FROM login_failures
                     WHERE last_failure <= $1::int8 - $2::int8 AND blocked_until <= $1::int8",
                    &[&now, &window_secs],
                )
                .await
                .map_err(db_err)?;
            let limits = client
                .execute(
                    "DELETE FROM limit_state WHERE tat_ms <= $1",
                    &[&(now * 1000)],
                )
                .await
                .map_err(db_err)?;
            Ok((failures + limits) as usize)
        })
        .await
    }
}
