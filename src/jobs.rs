//! Background services, each on its pingora runtime: the session flusher (activity written
//! behind, dead sessions and idle limit keys forgotten, old audit events purged), the session
//! keeper (the shared store's change feed applied to the live-session table) and the mail
//! sender.

use crate::state::AppState;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes session activity behind every `accounts.session_flush_seconds`, purges dead
/// sessions (every minute) and old audit events (every hour). The final flush happens after
/// the server stops (`AppState::flush_activity_now`). A crash loses at most one interval of
/// activity stamps: those sessions then look idle that much earlier.
pub struct SessionFlusher {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for SessionFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let state = &self.state;
        let period = state.config.accounts.session_flush;
        let mut last_audit_purge: Option<Instant> = None;
        let mut last_session_purge = Instant::now();
        loop {
            tokio::select! {
                // The last activity is written by `flush_activity_now` once the server has
                // stopped: a task of a runtime being shut down may be dropped at any await.
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let purge = last_session_purge.elapsed() > Duration::from_secs(60);
            if purge {
                last_session_purge = Instant::now();
            }
            state.flush_sessions(purge).await;
            state.evict_idle_limits().await;
            if last_audit_purge.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                last_audit_purge = Some(Instant::now());
                let before = state.clock.now() - state.config.audit.retention.as_secs() as i64;
                match state.store.purge_audit_before(before).await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "purged old audit events"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "cannot purge old audit events"),
                }
            }
        }
    }
}

/// Applies the shared store's change feed to the live-session table: sessions opened, ended
/// and revoked on other replicas, and resynchronizations (the table is distrusted while the
/// feed is lost). Idle for a store without a feed.
pub struct SessionKeeper {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for SessionKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut feed) = self.state.take_session_feed() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                event = feed.recv() => match event {
                    Some(event) => self.state.apply_store_event(event),
                    None => {
                        self.state.sessions.distrust();
                        return;
                    }
                },
            }
        }
    }
}

/// Delivers queued mail as soon as it is queued, and retries failures when due.
pub struct MailSender {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for MailSender {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            while self.state.deliver_mail().await > 0 {}
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.state.mail_queued(Duration::from_secs(1)) => {}
            }
        }
    }
}
