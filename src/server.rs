//! The pingora server: the public proxy listener (with its request-head deadline), the admin
//! listener and the background services, run either for real (Unix signals, zero-downtime
//! upgrade) or in-process for tests and benchmarks. The only module that builds pingora
//! services from the proxy.

use crate::clock::Clock;
use crate::config::{Config, Sources};
use crate::jobs::{MailSender, SessionFlusher, SessionKeeper};
use crate::proxy::ops::OpsApp;
use crate::proxy::slow_head::HeadTimeoutApp;
use crate::proxy::upstream::PeerTimeouts;
use crate::proxy::Gateway;
use crate::reload::ReloadOnHangup;
use crate::state::{AppState, StartError};
use crate::store::StoreError;
use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
            peer_timeouts: PeerTimeouts::from_config(&c.proxy),
        },
    );
    let mut proxy = Service::new(
        "portcullis proxy".to_string(),
        HeadTimeoutApp::new(
            gateway,
            c.limits.header_read_timeout,
            state.metrics.header_timeouts.clone(),
        ),
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
        "portcullis session keeper",
        SessionKeeper {
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
        self.state.start_draining();
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
pub fn upgrade(config: Config, clock: Arc<dyn Clock>, sources: Sources) -> Result<(), StartError> {
    let server = new_server(&config, true);
    let deadline = Instant::now() + Duration::from_secs(600);
    let state = loop {
        match AppState::new(config.clone(), clock.clone()) {
            Ok(state) => break Arc::new(state),
            Err(StartError::Store(StoreError::AlreadyOpen(_))) if Instant::now() < deadline => {
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
            // The state and its accounts service hold the store.
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
