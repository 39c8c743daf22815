//! portcullis: a reverse-proxy authentication sidecar. The library holds everything; the
//! binary (`src/main.rs`) only parses the command line and calls into it.

pub mod admin_client;
pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod email;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod store;
