//! The application: `AppState` (config, store, token service, sessions, hasher, mailer, routes,
//! metrics, clock) and the pingora server built from it, with its background services, run
//! either for real (Unix signals) or in-process for tests.

use crate::auth::limiter::{ApiLimits, Decision, KeyedLimiter, LoginGuard};
use crate::auth::password::Hasher;
use crate::auth::sessions::SessionTable;
use crate::auth::tokens::Identity;
use crate::auth::{keys, tokens::TokenService};
use crate::clock::Clock;
use crate::config::Config;
use crate::config::{ServiceToken, Sources};
use crate::email::Mailer;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::proxy::ops::OpsApp;
use crate::proxy::route::{PeerTimeouts, Route, RouteTable};
use crate::proxy::slow_head::HeadTimeoutApp;
use crate::proxy::Gateway;
use crate::store::audit_writer::AuditWriter;
use crate::store::Store;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// File names inside a backup directory.
pub const BACKUP_MAIN: &str = "portcullis.redb";
pub const BACKUP_AUDIT: &str = "audit.redb";

/// The parts of the configuration a reload replaces, built ready to use. A request works with
/// the `Live` it started with from start to end.
pub struct Live {
    pub routes: RouteTable,
    pub limits: ApiLimits,
    pub service_tokens: Vec<ServiceToken>,
    pub log_level: String,
}

impl Live {
    pub fn build(config: &Config, clock: Arc<dyn Clock>) -> Live {
        let timeouts = PeerTimeouts {
            connect: config.proxy.connect_timeout,
            read: config.proxy.read_timeout,
            write: config.proxy.write_timeout,
            idle: config.proxy.idle_timeout,
        };
        let routes = RouteTable::new(
            &config.api.prefix,
            config
                .routes
                .iter()
                .map(|r| {
                    let limiter = r.rate_limit.or(config.limits.route_default).map(|q| {
                        KeyedLimiter::new(q, clock.clone(), config.limits.max_tracked_keys)
                    });
                    Route::new(r, timeouts, limiter)
                })
                .collect(),
        );
        Live {
            routes,
            limits: ApiLimits::new(config, clock),
            service_tokens: config.auth.service_tokens.clone(),
            log_level: config.log.level.clone(),
        }
    }
}

/// Everything a request needs, shared by all services.
pub struct AppState {
    pub config: Config,
    pub store: Arc<Store>,
    pub tokens: TokenService,
    pub sessions: SessionTable,
    pub hasher: Hasher,
    pub mailer: Mailer,
    /// What a reload (SIGHUP) replaces: routes, limits, service tokens, log level.
    live: ArcSwap<Live>,
    /// Failed-login counts survive reloads (its settings need a restart).
    pub login_guard: LoginGuard,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Audit events from concurrent requests share one durable commit.
    pub audit_writer: AuditWriter,
    mail_wakeup: tokio::sync::Notify,
    draining: AtomicBool,
}

impl AppState {
    /// Build the state; fails with a message an operator can act on.
    pub fn new(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
        let key = keys::load_or_generate(&config)?;
        let tokens = TokenService::new(&config.auth, &key);
        let live = Live::build(&config, clock.clone());
        let login_guard = LoginGuard::new(
            config.limits.login_failures,
            config.limits.login_failure_window,
            config.limits.max_tracked_keys,
        );
        let metrics =
            Arc::new(Metrics::new().map_err(|e| format!("cannot register metrics: {e}"))?);
        let store = Store::open(&config.storage.database, &config.storage.audit_database)
            .map_err(|e| e.to_string())?;
        let sessions = SessionTable::new(config.auth.idle_timeout.as_secs() as i64);
        let now = clock.now();
        let stored = store.all_sessions().map_err(|e| e.to_string())?;
        for s in &stored {
            sessions.insert(s);
        }
        sessions.purge(now);
        metrics.sessions.set(sessions.len() as i64);
        let hash_metrics = metrics.clone();
        let hasher = Hasher::new(
            &config.passwords,
            Box::new(move |secs| hash_metrics.hash_seconds.observe(secs)),
        )?;
        let mailer = Mailer::new(&config.email, &config.data_dir)?;
        let store = Arc::new(store);
        let audit_writer = AuditWriter::start(store.clone())
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(AppState {
            config,
            store,
            audit_writer,
            tokens,
            sessions,
            hasher,
            mailer,
            live: ArcSwap::from_pointee(live),
            login_guard,
            metrics,
            clock,
            mail_wakeup: tokio::sync::Notify::new(),
            draining: AtomicBool::new(false),
        })
    }

    /// The caller of a request with these headers at `now`, with a live session.
    pub fn authenticate(&self, headers: &http::HeaderMap, now: i64) -> Result<Identity, Error> {
        crate::proxy::gate::authenticate(&self.tokens, &self.sessions, headers, now)
    }

    /// End a user's sessions (all but `keep`), in the store and in memory.
    pub async fn revoke_sessions(&self, user_id: &str, keep: Option<&str>) -> Result<(), Error> {
        let store = self.store.clone();
        let (uid, keep_owned) = (user_id.to_string(), keep.map(str::to_string));
        let ended = tokio::task::spawn_blocking(move || {
            store.revoke_sessions_of(&uid, keep_owned.as_deref())
        })
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))??;
        self.sessions.remove(&ended);
        Ok(())
    }

    /// Count one request against `limiter` for `key`, recording the decision under `scope`.
    pub fn rate_check(
        &self,
        scope: &str,
        limiter: &KeyedLimiter,
        key: impl std::hash::Hash,
    ) -> Result<Decision, Error> {
        let decision = limiter.check(key);
        let outcome = if decision.allowed {
            "allow"
        } else {
            "throttle"
        };
        self.metrics
            .rate_limits
            .with_label_values(&[scope, outcome])
            .inc();
        if decision.allowed {
            Ok(decision)
        } else {
            Err(Error::Throttled(decision))
        }
    }

    /// Forget idle rate-limit keys everywhere.
    pub fn evict_idle_limits(&self) {
        let live = self.live();
        live.limits.evict_idle();
        self.login_guard.evict_idle(self.clock.now());
        for route in live.routes.routes() {
            if let Some(l) = &route.limiter {
                l.evict_idle();
            }
        }
    }

    /// The routes, limits and service tokens in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Replace routes, limits, service tokens and log level with those of `new`. Other changes
    /// need a restart: they are named in the log and left as they are.
    pub fn reload(&self, new: &Config) -> Result<(), String> {
        let old = &self.config;
        let mut needs_restart = Vec::new();
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        if differs(&old.server, &new.server) {
            needs_restart.push("server");
        }
        let (mut old_auth, mut new_auth) = (old.auth.clone(), new.auth.clone());
        old_auth.service_tokens.clear();
        new_auth.service_tokens.clear();
        if differs(&old_auth, &new_auth) {
            needs_restart.push("auth");
        }
        for (name, changed) in [
            ("data_dir", old.data_dir != new.data_dir),
            ("api", differs(&old.api, &new.api)),
            ("proxy", differs(&old.proxy, &new.proxy)),
            ("storage", differs(&old.storage, &new.storage)),
            ("passwords", differs(&old.passwords, &new.passwords)),
            ("accounts", differs(&old.accounts, &new.accounts)),
            ("email", differs(&old.email, &new.email)),
            ("audit", differs(&old.audit, &new.audit)),
            ("log.format", old.log.format != new.log.format),
            (
                "limits (max_tracked_keys, login guard, header size, header and body timeouts)",
                differs(
                    &(
                        old.limits.max_tracked_keys,
                        old.limits.login_failures,
                        old.limits.login_failure_window,
                        old.limits.max_header_bytes,
                        old.limits.body_read_timeout,
                        old.limits.header_read_timeout,
                    ),
                    &(
                        new.limits.max_tracked_keys,
                        new.limits.login_failures,
                        new.limits.login_failure_window,
                        new.limits.max_header_bytes,
                        new.limits.body_read_timeout,
                        new.limits.header_read_timeout,
                    ),
                ),
            ),
        ] {
            if changed {
                needs_restart.push(name);
            }
        }
        crate::logging::set_level(&new.log.level)?;
        self.live
            .store(Arc::new(Live::build(new, self.clock.clone())));
        if !needs_restart.is_empty() {
            tracing::warn!(sections = ?needs_restart, "configuration reloaded; changes to these sections take effect after a restart");
        }
        tracing::info!(routes = new.routes.len(), "configuration reloaded");
        Ok(())
    }

    /// Reload from `sources`: an invalid configuration is refused and the old one keeps
    /// serving. Logged and counted either way.
    pub fn reload_from(&self, sources: &Sources) -> Result<(), String> {
        let result = Config::load(sources)
            .map_err(|errors| {
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .and_then(|(config, _)| self.reload(&config));
        match &result {
            Ok(()) => self.metrics.reloads.with_label_values(&["success"]).inc(),
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "configuration reload refused; the previous configuration keeps serving");
            }
        }
        result
    }

    /// Write a consistent copy of both databases into a new directory under
    /// `data_dir/backups/`; returns its path. Blocks: call off the async workers.
    pub fn backup(&self) -> Result<String, String> {
        self.flush_activity_now();
        let stamp = self.clock.since_epoch();
        let dir = self.config.data_dir.join("backups").join(format!(
            "{}-{:09}",
            stamp.as_secs(),
            stamp.subsec_nanos()
        ));
        // Backups wait here until `portcullis backup` moves them out; keep at most two
        // uncollected ones so that repeated requests cannot fill the disk.
        let parent = self.config.data_dir.join("backups");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            let mut old: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            old.sort();
            while old.len() >= 2 {
                let oldest = old.remove(0);
                tracing::warn!(path = %oldest.display(), "removing an uncollected backup");
                let _ = std::fs::remove_dir_all(oldest);
            }
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        self.store
            .backup_to(&dir.join(BACKUP_MAIN), &dir.join(BACKUP_AUDIT))
            .map_err(|e| e.to_string())?;
        tracing::info!(path = %dir.display(), "backup written");
        Ok(dir.to_string_lossy().into_owned())
    }

    /// Write the session activity not yet written, now, on this thread (at shutdown).
    pub fn flush_activity_now(&self) {
        let dirty = self.sessions.take_dirty();
        if let Err(e) = self.store.touch_sessions(&dirty) {
            tracing::error!(error = %e, "cannot write session activity at shutdown");
        }
    }

    /// Tell the mail sender that new mail is queued.
    pub fn wake_mailer(&self) {
        self.mail_wakeup.notify_one();
    }

    /// Write behind session activity and forget dead sessions in memory; with `purge_store`,
    /// delete them from the database too (a full scan, so done less often).
    pub async fn flush_sessions(&self, purge_store: bool) {
        let dirty = self.sessions.take_dirty();
        let now = self.clock.now();
        let store = self.store.clone();
        let idle = self.config.auth.idle_timeout.as_secs() as i64;
        let result = tokio::task::spawn_blocking(move || {
            store.touch_sessions(&dirty)?;
            if purge_store {
                store.purge_dead_sessions(now, idle)?;
            }
            Ok::<(), crate::store::StoreError>(())
        })
        .await;
        if !matches!(result, Ok(Ok(()))) {
            tracing::error!("cannot write session activity");
        }
        self.metrics.sessions.set(self.sessions.purge(now) as i64);
    }

    /// True once shutdown has begun; `/readyz` then answers 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Build the pingora server: the public proxy listener and the admin listener.
pub fn build_server(state: &Arc<AppState>) -> Server {
    let mut server = new_server(&state.config, false);
    add_services(&mut server, state);
    server
}

/// The pingora server for `c`, bootstrapped: with `upgrade`, this waits for a running old
/// process (sent SIGQUIT) to hand over its listening sockets.
pub fn new_server(c: &Config, upgrade: bool) -> Server {
    let conf = ServerConf {
        threads: c.server.threads,
        grace_period_seconds: Some(c.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(c.server.graceful_shutdown_timeout.as_secs()),
        pid_file: c
            .data_dir
            .join("portcullis.pid")
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: c
            .data_dir
            .join("upgrade.sock")
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    server
}

/// Add the proxy, the admin listener and the background services.
pub fn add_services(server: &mut Server, state: &Arc<AppState>) {
    let c = &state.config;
    let gateway = pingora_proxy::http_proxy(
        &server.configuration,
        Gateway {
            state: state.clone(),
        },
    );
    let mut proxy = Service::new(
        "portcullis proxy".to_string(),
        HeadTimeoutApp::new(gateway, state.clone()),
    );
    proxy.add_tcp(&c.server.listen.to_string());

    let mut ops = Service::new(
        "portcullis admin".to_string(),
        HttpServer::new_app(OpsApp {
            state: state.clone(),
        }),
    );
    ops.add_tcp(&c.server.admin_listen.to_string());
    ops.threads = Some(1);

    server.add_service(proxy);
    server.add_service(ops);
    server.add_service(background_service(
        "portcullis sessions",
        SessionFlusher {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "portcullis mailer",
        MailSender {
            state: state.clone(),
        },
    ));
}

/// Writes session activity behind every `accounts.session_flush_seconds`, purges dead
/// sessions (every minute) and old audit events (every hour). The final flush happens after
/// the server stops (`AppState::flush_activity_now`). A crash loses at most one
/// interval of activity stamps: those sessions then look idle that much earlier.
struct SessionFlusher {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for SessionFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let period = self.state.config.accounts.session_flush;
        let mut last_audit_purge: Option<Instant> = None;
        let mut last_session_purge = Instant::now();
        loop {
            tokio::select! {
                // The last activity is written by `flush_activity_now` once the server has stopped:
                // a task of a runtime being shut down may be dropped at any await.
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let purge = last_session_purge.elapsed() > Duration::from_secs(60);
            if purge {
                last_session_purge = Instant::now();
            }
            self.state.flush_sessions(purge).await;
            self.state.evict_idle_limits();
            if last_audit_purge.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                last_audit_purge = Some(Instant::now());
                let before =
                    self.state.clock.now() - self.state.config.audit.retention.as_secs() as i64;
                let store = self.state.store.clone();
                match tokio::task::spawn_blocking(move || store.purge_audit_before(before)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(deleted = n, "purged old audit events"),
                    Ok(Ok(_)) => {}
                    _ => tracing::error!("cannot purge old audit events"),
                }
            }
        }
    }
}

/// Reloads the configuration on SIGHUP (routes, limits, service tokens, log level), keeping
/// every open connection; an invalid configuration is refused and the old one keeps serving.
struct ReloadOnHangup {
    state: Arc<AppState>,
    sources: Sources,
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGHUP; reloads are disabled");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangups.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let (state, sources) = (self.state.clone(), self.sources.clone());
                    let _ = tokio::task::spawn_blocking(move || state.reload_from(&sources)).await;
                }
            }
        }
    }
}

/// Delivers queued mail as soon as it is queued, and retries failures when due.
struct MailSender {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for MailSender {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            while crate::email::deliver_due(&self.state).await > 0 {}
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.state.mail_wakeup.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Marks the state as draining as soon as a shutdown is requested, then hands the request on.
struct DrainOnShutdown<W> {
    inner: W,
    state: Arc<AppState>,
}

#[async_trait]
impl<W: ShutdownSignalWatch + Send + Sync> ShutdownSignalWatch for DrainOnShutdown<W> {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.inner.recv().await;
        tracing::info!(?signal, "shutdown requested: draining");
        self.state.draining.store(true, Ordering::SeqCst);
        signal
    }
}

/// Run until SIGTERM (graceful: drain within the grace period), SIGINT (fast) or SIGQUIT
/// (graceful upgrade: hand the listening sockets to a new process).
pub fn run(state: Arc<AppState>, sources: Sources) {
    let server = new_server(&state.config, false);
    run_on(server, state, sources);
}

/// Take over from a running old process (zero-downtime upgrade): receive its listening sockets
/// once it is sent SIGQUIT, wait until it has released the database files, then serve. New
/// connections wait in the kernel's accept queue meanwhile; none is refused.
pub fn upgrade(config: Config, clock: Arc<dyn Clock>, sources: Sources) -> Result<(), String> {
    let server = new_server(&config, true);
    let deadline = Instant::now() + Duration::from_secs(600);
    let state = loop {
        match AppState::new(config.clone(), clock.clone()) {
            Ok(state) => break Arc::new(state),
            Err(e) if e.contains("already open") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!("took over from the old process");
    run_on(server, state, sources);
    Ok(())
}

fn run_on(mut server: Server, state: Arc<AppState>, sources: Sources) {
    add_services(&mut server, &state);
    server.add_service(background_service(
        "portcullis reload",
        ReloadOnHangup {
            state: state.clone(),
            sources,
        },
    ));
    tracing::info!(
        listen = %state.config.server.listen,
        admin_listen = %state.config.server.admin_listen,
        routes = state.live().routes.routes().len(),
        api_prefix = %state.config.api.prefix,
        "portcullis starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnShutdown {
            inner: pingora_core::server::UnixShutdownSignalWatch,
            state: state.clone(),
        }),
    });
    state.flush_activity_now();
}

/// A shutdown request delivered through a channel, for in-process servers.
struct ChannelSignal(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<ShutdownSignal>>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().await.take();
        match rx {
            Some(rx) => rx.await.unwrap_or(ShutdownSignal::FastShutdown),
            None => std::future::pending().await,
        }
    }
}

/// A server running in this process (tests, benchmarks). Dropping it stops it.
pub struct RunningServer {
    pub state: Arc<AppState>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// Start a server on its own threads and wait until both listeners accept connections.
    pub fn start(state: Arc<AppState>) -> Result<RunningServer, String> {
        let listen = state.config.server.listen;
        let admin_listen = state.config.server.admin_listen;
        let server = build_server(&state);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watch = DrainOnShutdown {
            inner: ChannelSignal(tokio::sync::Mutex::new(Some(rx))),
            state: state.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("portcullis-server".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(watch),
                })
            })
            .map_err(|e| format!("cannot spawn server thread: {e}"))?;
        let running = RunningServer {
            state,
            listen,
            admin_listen,
            stop: Some(tx),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [listen, admin_listen] {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return Err(format!("server did not start listening on {addr}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(running)
    }

    /// Ask for a shutdown of the given kind and wait until the server has stopped.
    pub fn stop_with(mut self, signal: ShutdownSignal) {
        self.finish(signal);
    }

    fn finish(&mut self, signal: ShutdownSignal) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(signal);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
            self.state.flush_activity_now();
            // Blocking tasks of the stopped runtimes may still hold the state (and with it the
            // database files) for a moment: wait for them, so the data dir can be reopened.
            let deadline = Instant::now() + Duration::from_secs(10);
            // The audit writer thread holds one reference to the store for the state's lifetime.
            while (Arc::strong_count(&self.state) > 1 || Arc::strong_count(&self.state.store) > 2)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.finish(ShutdownSignal::FastShutdown);
    }
}
