//! portcullis: a reverse-proxy authentication sidecar. The library holds everything; the
//! binary (`src/main.rs`) only parses the command line and calls into it. Dependencies point
//! one way (docs/architecture.md): server → proxy, jobs, reload → api → state → accounts →
//! auth, store, email → config, clock, metrics, pool.

pub mod accounts;
pub mod admin_client;
pub mod api;
pub mod auth;
pub mod backup;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod email;
pub mod error;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
