//! The integration tests: one binary, one module per area, sharing the harness in
//! `tests/common` (a real portcullis started in-process or as a process, on free loopback ports
//! with a temp data dir, and the real components it talks to).

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod admin;
mod adversarial;
mod api;
mod architecture;
mod backup;
mod config;
mod container_layout;
mod crash;
mod docs;
mod email_smtp;
mod gate;
mod headers;
mod invariants;
mod limits;
mod openapi;
mod ops;
mod paths;
mod reload;
mod replicas;
mod self_service;
mod upgrade;
mod upstream;
mod verify_audit;
