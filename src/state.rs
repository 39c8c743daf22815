//! The shared handles every part of the running server works with (configuration, store,
//! accounts, tokens, live sessions, mailer, metrics, clock) and the reloadable part of the
//! configuration, built ready to use. No pingora types: the server and proxy build on this.

use crate::accounts::{AccountLimits, Accounts, Handles};
use crate::auth::gate::{self, Credential, GateError, Rule};
use crate::auth::keys;
use crate::auth::limiter::Decision;
use crate::auth::limiter::KeyedLimiter;
use crate::auth::sessions::Identity;
use crate::auth::sessions::SessionTable;
use crate::auth::tokens::TokenService;
use crate::clock::Clock;
use crate::config::{Config, ServiceToken};
use crate::email::Mailer;
use crate::metrics::Metrics;
use crate::routes::{Route, RouteTable};
use crate::store::redis::RedisLimits;
use crate::store::{Store, StoreError, StoreEvent};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// How long a request waits for news of a session another replica opened moments ago.
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the server cannot start; each says what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key: {0}")]
    SigningKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("password hashing: {0}")]
    Hashing(String),
    #[error("email: {0}")]
    Mailer(String),
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
}

/// The API's request limits (the original's RATE_LIMITS_*).
pub struct ApiLimits {
    /// Unauthenticated endpoints, per client IP.
    pub public: KeyedLimiter,
    /// Authenticated endpoints, per user.
    pub private: KeyedLimiter,
}

/// What a reload replaces, built ready to use. A request works with the `Live` it started
/// with from start to end.
pub struct Live {
    pub routes: RouteTable,
    pub limits: ApiLimits,
    pub service_tokens: Vec<ServiceToken>,
}

impl Live {
    pub fn build(config: &Config, clock: &Arc<dyn Clock>) -> Live {
        let l = &config.live.limits;
        let max_keys = config.limits.max_tracked_keys;
        let keyed = |q| KeyedLimiter::new(q, clock.clone(), max_keys);
        let routes = RouteTable::new(
            &config.api.prefix,
            config
                .live
                .routes
                .iter()
                .map(|r| Route::new(r, r.rate_limit.or(l.route_default).map(keyed)))
                .collect(),
        );
        Live {
            routes,
            limits: ApiLimits {
                public: keyed(l.public),
                private: keyed(l.private),
            },
            service_tokens: config.live.service_tokens.clone(),
        }
    }

    fn evict_idle(&self) {
        self.limits.public.evict_idle();
        self.limits.private.evict_idle();
        for route in self.routes.routes() {
            if let Some(l) = &route.limiter {
                l.evict_idle();
            }
        }
    }
}

/// Everything a request needs, shared by all services.
pub struct AppState {
    /// As started; the reloadable part in force now is `live()`.
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub accounts: Accounts,
    pub tokens: Arc<TokenService>,
    pub sessions: Arc<SessionTable>,
    pub mailer: Mailer,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    live: ArcSwap<Live>,
    mail_queued: Arc<tokio::sync::Notify>,
    session_feed: std::sync::Mutex<Option<UnboundedReceiver<StoreEvent>>>,
    /// Request limits shared with other replicas, when Redis is configured.
    redis: Option<RedisLimits>,
    /// Set while Redis cannot be asked (logged once per outage).
    redis_down: AtomicBool,
    draining: AtomicBool,
}

/// Run a future to completion outside any runtime (start-up, shutdown).
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    Ok(runtime.block_on(f))
}

impl AppState {
    /// Open the store, load the live sessions and build every handle.
    pub fn new(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let key = keys::load_or_generate(&config).map_err(StartError::SigningKey)?;
        let tokens = Arc::new(TokenService::new(&config.auth, &key));
        let metrics = Arc::new(Metrics::new()?);
        let store = crate::store::open(
            &config.storage,
            crate::store::StoreMetrics {
                query_seconds: Some(metrics.storage_query_seconds.clone()),
                notification_lag: Some(metrics.notification_lag_seconds.clone()),
            },
        )?;
        let sessions = Arc::new(SessionTable::new(config.auth.idle_timeout.as_secs() as i64));
        // A store shared by replicas brings the sessions through its change feed (and the table
        // is not trusted until it has); a single instance's store has them all now.
        let session_feed = store.take_events();
        if session_feed.is_some() {
            sessions.set_shared();
            metrics.storage_up.set(0);
        } else {
            for s in block_on(store.load_sessions())?? {
                sessions.insert(crate::accounts::new_session(&s));
            }
        }
        metrics.sessions.set(sessions.purge(clock.now()) as i64);
        let mailer = Mailer::new(&config.email, &config.data_dir).map_err(StartError::Mailer)?;
        let mail_queued = Arc::new(tokio::sync::Notify::new());
        let accounts = Accounts::new(
            &config,
            Handles {
                store: store.clone(),
                tokens: tokens.clone(),
                sessions: sessions.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
                mail_queued: mail_queued.clone(),
            },
        )
        .map_err(StartError::Hashing)?;
        let live = Live::build(&config, &clock);
        let redis = match &config.storage.redis_url {
            Some(url) => Some(RedisLimits::open(&url.0, url.masked())?),
            None => None,
        };
        Ok(AppState {
            config,
            store,
            accounts,
            tokens,
            sessions,
            mailer,
            metrics,
            clock,
            live: ArcSwap::from_pointee(live),
            mail_queued,
            session_feed: std::sync::Mutex::new(session_feed),
            redis,
            redis_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    /// The store's change feed, for the one task that applies it (`jobs::SessionKeeper`).
    pub fn take_session_feed(&self) -> Option<UnboundedReceiver<StoreEvent>> {
        self.session_feed.lock().ok()?.take()
    }

    /// Apply what the store reports other replicas did (and this one, echoed).
    pub fn apply_store_event(&self, event: StoreEvent) {
        let sessions = &self.sessions;
        match event {
            StoreEvent::Resync(all) => {
                sessions.replace_all(all.iter().map(crate::accounts::new_session));
                sessions.trust();
                self.metrics.session_resyncs.inc();
                self.metrics.storage_up.set(1);
            }
            StoreEvent::Lost => {
                sessions.distrust();
                self.metrics.storage_up.set(0);
            }
            StoreEvent::SessionOpened(s) => {
                sessions.insert(crate::accounts::new_session(&s));
            }
            StoreEvent::SessionEnded(id) => sessions.remove(&[id]),
            StoreEvent::SessionsRevoked { user_id, keep } => {
                sessions.revoke_user(&user_id, keep.as_deref())
            }
            StoreEvent::OwnerChanged { user_id, owner } => {
                sessions.update_principal(crate::accounts::principal_from(&user_id, &owner))
            }
            StoreEvent::Activity(seen) => sessions.merge_activity(&seen),
        }
    }

    /// The gate's decision for `rule` (see `auth::gate::authorize`), waiting a moment for a
    /// session another replica opened just now.
    pub async fn authorize(
        &self,
        rule: &Rule,
        credential: Option<Credential<'_>>,
        now: i64,
    ) -> Result<Identity, GateError> {
        let decide = || gate::authorize(&self.tokens, &self.sessions, rule, credential, now);
        match decide() {
            Err(GateError::Pending(session)) => {
                self.sessions.wait_for(&session, PENDING_WAIT).await;
                decide().map_err(|e| match e {
                    GateError::Pending(_) => GateError::Invalid("session_ended"),
                    other => other,
                })
            }
            decided => decided,
        }
    }

    /// Count a request against `local` for `key` (`scope` names the limit in metrics and, with
    /// `limited` (a route's path, say), in Redis): this replica's count first (a flood never
    /// reaches Redis), then, with Redis, the count of every replica. Without an answer from
    /// Redis the local decision stands (counted in `portcullis_redis_fallbacks_total`): never
    /// no limit at all.
    pub async fn admit(
        &self,
        scope: &str,
        limited: &str,
        local: &KeyedLimiter,
        key: impl std::hash::Hash + std::fmt::Display,
    ) -> Result<Decision, Decision> {
        let decisions = &self.metrics.rate_limits;
        let here = local.check(&key);
        let Some(redis) = self.redis.as_ref().filter(|_| here.allowed) else {
            return here.counted(scope, decisions);
        };
        let quota = local.quota();
        match redis
            .admit(
                &format!("{scope}:{limited}:{key}"),
                quota.requests,
                quota.period,
            )
            .await
        {
            Ok((allowed, ahead)) => {
                if self.redis_down.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %redis.name, "Redis answers again: request limits are shared");
                }
                Decision::from_gcra(quota, allowed, ahead.as_millis() as i64, 0)
                    .counted(scope, decisions)
            }
            Err(e) => {
                self.metrics.redis_fallbacks.inc();
                if !self.redis_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(redis = %redis.name, error = %e, "cannot ask Redis: request limits are counted by each replica until it answers");
                }
                here.counted(scope, decisions)
            }
        }
    }

    /// Ready to serve: not draining, the store reachable, the live-session table trusted.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.store.is_ready() && self.sessions.is_trusted()
    }

    /// The routes, limits and service tokens in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Put the reloadable part of `new` in force (routes, limits, service tokens).
    pub fn replace_live(&self, new: &Config) {
        self.live.store(Arc::new(Live::build(new, &self.clock)));
        self.accounts.set_limits(AccountLimits::new(
            &new.live.limits,
            self.config.limits.max_tracked_keys,
            &self.clock,
        ));
    }

    /// Forget idle rate-limit keys everywhere.
    pub async fn evict_idle_limits(&self) {
        self.live().evict_idle();
        self.accounts.evict_idle(self.clock.now()).await;
    }

    /// Write behind session activity and forget dead sessions in memory; with `purge_store`,
    /// delete them from the database too (a full scan, so done less often).
    pub async fn flush_sessions(&self, purge_store: bool) {
        let dirty = self.sessions.take_dirty();
        let now = self.clock.now();
        if let Err(e) = self.store.touch_sessions(dirty).await {
            tracing::error!(error = %e, "cannot write session activity");
        }
        if purge_store {
            let idle = self.config.auth.idle_timeout.as_secs() as i64;
            if let Err(e) = self.store.purge_dead_sessions(now, idle).await {
                tracing::error!(error = %e, "cannot purge dead sessions");
            }
        }
        self.metrics.sessions.set(self.sessions.purge(now) as i64);
    }

    /// Write the session activity not yet written, now, on this thread (at shutdown, when no
    /// runtime runs any more).
    pub fn flush_activity_now(&self) {
        let dirty = self.sessions.take_dirty();
        if let Err(e) = self.store.touch_sessions_now(dirty) {
            tracing::error!(error = %e, "cannot write session activity at shutdown");
        }
    }

    /// Write a consistent copy of the data into a new directory under `data_dir/backups/`;
    /// returns its path.
    pub async fn backup(&self) -> Result<PathBuf, String> {
        if let Err(e) = self.store.touch_sessions(self.sessions.take_dirty()).await {
            tracing::error!(error = %e, "cannot write session activity before the backup");
        }
        let stamp = self.clock.since_epoch();
        let parent = self.config.data_dir.join("backups");
        // Backups wait here until `portcullis backup` moves them out; keep at most two
        // uncollected ones so that repeated requests cannot fill the disk.
        if let Ok(entries) = std::fs::read_dir(&parent) {
            let mut old: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            old.sort();
            while old.len() >= 2 {
                let oldest = old.remove(0);
                tracing::warn!(path = %oldest.display(), "removing an uncollected backup");
                let _ = std::fs::remove_dir_all(oldest);
            }
        }
        let dir = parent.join(format!("{}-{:09}", stamp.as_secs(), stamp.subsec_nanos()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        self.store
            .backup_into(&dir)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(path = %dir.display(), "backup written");
        Ok(dir)
    }

    /// Wait until mail is queued (or `timeout` passes).
    pub async fn mail_queued(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.mail_queued.notified()).await;
    }

    /// Deliver the mail that is due, once; returns how many messages were handled.
    pub async fn deliver_mail(&self) -> usize {
        crate::email::deliver_due(
            self.store.as_ref(),
            &self.mailer,
            &self.metrics,
            self.clock.now(),
        )
        .await
    }

    /// True once shutdown has begun; `/readyz` then answers 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}
