//! Authentication building blocks independent of HTTP: signing keys, access tokens, passwords
//! and the live-session table.

pub mod bounded;
pub mod gate;
pub mod keys;
pub mod limiter;
pub mod password;
pub mod sessions;
pub mod tokens;
