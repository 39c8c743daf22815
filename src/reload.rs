//! Reloading on SIGHUP: routes, request limits, service tokens and the log level change while
//! every open connection stays; an invalid configuration is refused and the old one keeps
//! serving. Other changes are named in the log as needing a restart.

use crate::config::{Config, Sources};
use crate::state::AppState;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;

/// Put the reloadable part of `new` in force; returns the sections whose changes need a
/// restart (left as they are).
pub fn reload(state: &AppState, new: &Config) -> Result<Vec<&'static str>, String> {
    crate::logging::set_level(&new.live.log_level)?;
    state.replace_live(new);
    let needs_restart = state.config.restart_changes(new);
    if !needs_restart.is_empty() {
        tracing::warn!(sections = ?needs_restart, "configuration reloaded; changes to these sections take effect after a restart");
    }
    tracing::info!(routes = new.live.routes.len(), "configuration reloaded");
    Ok(needs_restart)
}

/// Reload from `sources`: logged and counted either way.
pub fn reload_from(state: &AppState, sources: &Sources) -> Result<Vec<&'static str>, String> {
    let result = Config::load(sources)
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .and_then(|(config, _)| reload(state, &config));
    match &result {
        Ok(_) => state.metrics.reloads.with_label_values(&["success"]).inc(),
        Err(e) => {
            state.metrics.reloads.with_label_values(&["failure"]).inc();
            tracing::error!(error = %e, "configuration reload refused; the previous configuration keeps serving");
        }
    }
    result
}

/// Reloads the configuration on every SIGHUP.
pub struct ReloadOnHangup {
    pub state: Arc<AppState>,
    pub sources: Sources,
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
                    // Reading the files blocks: off the runtime's workers.
                    let _ = tokio::task::spawn_blocking(move || reload_from(&state, &sources)).await;
                }
            }
        }
    }
}
