//! Request limits shared by replicas through Redis: one GCRA decision per request, made by one
//! server-side script timed by Redis's own clock (the replicas' clocks need not agree). The
//! connection is made and kept in the background on the store's own runtime; while Redis cannot
//! be reached, `admit` fails at once and callers count locally.

use super::StoreError;
use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;

/// How long one decision may take before the caller counts locally instead.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection back-off bounds.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// GCRA: KEYS[1] the limited key; ARGV[1] the cell (µs per request), ARGV[2] the period (µs).
/// Returns {admitted (1/0), how far the key's arrival time is ahead of now (µs)}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cell = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next = tat + cell
if next - now <= period then
  redis.call('SET', KEYS[1], next, 'PX', math.ceil((next - now) / 1000) + 1000)
  return {1, next - now}
end
return {0, tat - now}
"#;

/// Where shared limits are kept.
pub struct RedisLimits {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    connection: Arc<ArcSwapOption<ConnectionManager>>,
    script: redis::Script,
    /// For messages: the URL with its password masked.
    pub name: String,
}

impl RedisLimits {
    /// Start connecting to `url` (in the background, retried until it answers).
    pub fn open(url: &str, name: String) -> Result<RedisLimits, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Storage(format!("Redis URL {name}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-redis")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Storage(format!("cannot start the Redis runtime: {e}")))?;
        let connection: Arc<ArcSwapOption<ConnectionManager>> = Arc::new(ArcSwapOption::empty());
        let (slot, target) = (connection.clone(), name.clone());
        runtime.spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT)
                .set_number_of_retries(1);
            let mut delay = RETRY_MIN;
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(manager) => {
                        tracing::info!(redis = %target, "connected to Redis: request limits are shared");
                        slot.store(Some(Arc::new(manager)));
                        return;
                    }
                    Err(e) => {
                        if delay == RETRY_MIN {
                            tracing::warn!(redis = %target, error = %e, "cannot reach Redis; request limits are counted by each replica until it answers");
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
            }
        });
        Ok(RedisLimits {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            connection,
            script: redis::Script::new(GCRA),
            name,
        })
    }

    /// One decision: `limit` requests per `period` for `key`. Returns whether it is admitted
    /// and how far ahead the key's arrival time now is.
    pub async fn admit(
        &self,
        key: &str,
        limit: u32,
        period: Duration,
    ) -> Result<(bool, Duration), StoreError> {
        let Some(connection) = self.connection.load_full() else {
            return Err(StoreError::Unavailable("Redis is not connected yet".into()));
        };
        let period_us = period.as_micros() as i64;
        let cell_us = (period_us / i64::from(limit.max(1))).max(1);
        let script = self.script.clone();
        let key = format!("portcullis:limit:{key}");
        let decided = self.handle.spawn(async move {
            let mut connection = (*connection).clone();
            let mut call = script.key(key);
            call.arg(cell_us).arg(period_us);
            tokio::time::timeout(
                RESPONSE_TIMEOUT,
                call.invoke_async::<(i64, i64)>(&mut connection),
            )
            .await
        });
        match decided.await {
            Ok(Ok(Ok((admitted, ahead_us)))) => {
                Ok((admitted == 1, Duration::from_micros(ahead_us.max(0) as u64)))
            }
            Ok(Ok(Err(e))) => Err(StoreError::Unavailable(format!("Redis: {e}"))),
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "Redis did not answer in time".into(),
            )),
            Err(e) => Err(StoreError::Storage(format!("Redis task failed: {e}"))),
        }
    }
}

impl Drop for RedisLimits {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
