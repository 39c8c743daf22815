//! Authentication building blocks independent of HTTP: signing keys and access tokens.

pub mod keys;
pub mod tokens;
