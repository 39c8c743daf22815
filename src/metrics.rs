//! Metric definitions, all on one registry that the admin listener serves.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route and status class (`2xx`, `4xx`, …).
    pub requests: IntCounterVec,
    /// Request latency by route, seconds.
    pub latency: HistogramVec,
    /// Gate decisions by outcome (`allow`/`deny`) and reason.
    pub gate: IntCounterVec,
    /// Upstream failures by route and kind (`unavailable`, `timeout`).
    pub upstream_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
    /// Login attempts by outcome (`success`, `bad_credentials`, `account_locked`, …).
    pub logins: IntCounterVec,
    /// Registrations by outcome (`created`, `rejected`, `admin_created`).
    pub registrations: IntCounterVec,
    /// Sessions currently in the live-session table.
    pub sessions: IntGauge,
    /// Time of one argon2id hash or verification, seconds.
    pub hash_seconds: Histogram,
    /// argon2id hashes and verifications queued or running.
    pub hashes_in_flight: IntGauge,
    /// Email deliveries by outcome (`sent`, `retried`, `dropped`).
    pub mail: IntCounterVec,
    /// Audit events that could not be written.
    pub audit_failures: IntCounter,
    /// Rate-limit decisions by scope and outcome (`allow`/`throttle`).
    pub rate_limits: IntCounterVec,
    /// Configuration reloads by outcome (`success`/`failure`).
    pub reloads: IntCounterVec,
    /// Connections closed because a request head did not arrive in time.
    pub header_timeouts: IntCounter,
    /// Times the live-session table was rebuilt from the shared store.
    pub session_resyncs: IntCounter,
    /// 1 while the shared store's change feed is connected and current (always 1 without one).
    pub storage_up: IntGauge,
    /// Request-limit decisions made locally because Redis could not be asked.
    pub redis_fallbacks: IntCounter,
    /// Time of one store operation on PostgreSQL, seconds.
    pub storage_query_seconds: Histogram,
    /// From a session change's commit on one replica to its arrival here, seconds.
    pub notification_lag_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "portcullis_requests_total",
                "Requests answered, by route and status class",
            ),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time to answer a request, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let gate = IntCounterVec::new(
            Opts::new(
                "portcullis_gate_decisions_total",
                "Gate decisions on protected routes, by decision and reason",
            ),
            &["decision", "reason"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_errors_total",
                "Failed upstream requests, by route and kind",
            ),
            &["route", "kind"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "portcullis_build_info",
                "Always 1; labels describe the build",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(gate.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        let logins = IntCounterVec::new(
            Opts::new("portcullis_logins_total", "Login attempts, by outcome"),
            &["outcome"],
        )?;
        let registrations = IntCounterVec::new(
            Opts::new(
                "portcullis_registrations_total",
                "Account creations, by outcome",
            ),
            &["outcome"],
        )?;
        let sessions = IntGauge::new(
            "portcullis_sessions_active",
            "Sessions in the live-session table",
        )?;
        let hash_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_password_hash_seconds",
                "Duration of one argon2id hash or verification",
            )
            .buckets(vec![
                0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56,
            ]),
        )?;
        let hashes_in_flight = IntGauge::new(
            "portcullis_password_hashes_in_flight",
            "argon2id hashes and verifications queued or running",
        )?;
        registry.register(Box::new(hashes_in_flight.clone()))?;
        let mail = IntCounterVec::new(
            Opts::new("portcullis_mail_total", "Email deliveries, by outcome"),
            &["outcome"],
        )?;
        let audit_failures = IntCounter::new(
            "portcullis_audit_write_failures_total",
            "Audit events that could not be written",
        )?;
        let rate_limits = IntCounterVec::new(
            Opts::new(
                "portcullis_rate_limit_decisions_total",
                "Rate-limit decisions, by scope and outcome",
            ),
            &["scope", "outcome"],
        )?;
        registry.register(Box::new(rate_limits.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_config_reloads_total",
                "Configuration reloads, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        let header_timeouts = IntCounter::new(
            "portcullis_header_timeouts_total",
            "Connections closed because a request head did not arrive within limits.header_read_timeout_seconds",
        )?;
        registry.register(Box::new(header_timeouts.clone()))?;
        let session_resyncs = IntCounter::new(
            "portcullis_session_resyncs_total",
            "Times the live-session table was rebuilt from the shared store (at start, and after its change feed was lost)",
        )?;
        registry.register(Box::new(session_resyncs.clone()))?;
        let storage_up = IntGauge::new(
            "portcullis_storage_up",
            "1 while the store is reachable and the live-session table current, else 0 (protected routes then fail closed)",
        )?;
        storage_up.set(1);
        registry.register(Box::new(storage_up.clone()))?;
        let redis_fallbacks = IntCounter::new(
            "portcullis_redis_fallbacks_total",
            "Request-limit decisions made by this replica alone because Redis could not be asked",
        )?;
        registry.register(Box::new(redis_fallbacks.clone()))?;
        let storage_query_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_storage_query_seconds",
                "Duration of one store operation on PostgreSQL (a transaction or a query)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(storage_query_seconds.clone()))?;
        let notification_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_session_notification_lag_seconds",
                "From a session change's commit on a replica to its arrival on this one (includes the replicas' clock difference)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(notification_lag_seconds.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(logins.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(hash_seconds.clone()))?;
        registry.register(Box::new(mail.clone()))?;
        registry.register(Box::new(audit_failures.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            gate,
            upstream_errors,
            build_info,
            logins,
            registrations,
            sessions,
            hash_seconds,
            hashes_in_flight,
            mail,
            audit_failures,
            rate_limits,
            reloads,
            header_timeouts,
            session_resyncs,
            storage_up,
            redis_fallbacks,
            storage_query_seconds,
            notification_lag_seconds,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> (String, Vec<u8>) {
        let encoder = TextEncoder::new();
        let mut buf = Vec::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        (encoder.format_type().to_string(), buf)
    }
}

/// `2xx`, `4xx`, … for a status code; `none` when no response was sent.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}
