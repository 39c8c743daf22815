//! Shared set-up for the fuzz targets: a validated configuration from TOML text.

#![allow(dead_code)]

use portcullis::config::Config;
use portcullis::config::Sources;

/// The embedded defaults with a fixed key, three routes and the API at `/auth`. `extra` comes
/// first, so it may set top-level keys and then tables of its own.
pub const CONFIG: &str = r#"
[auth]
secret_key = "fuzzing-key-fuzzing-key-fuzzing-key-0123"

[[routes]]
path = "/api"
upstream = "127.0.0.1:9"
auth = "required"

[[routes]]
path = "/api/admin"
upstream = "127.0.0.1:9"
auth = "required"
roles = ["admin"]

[[routes]]
path = "/"
upstream = "127.0.0.1:9"
auth = "public"
"#;

pub fn config(extra: &str) -> Config {
    let sources = Sources {
        text: Some(format!("{extra}\n{CONFIG}")),
        ..Sources::default()
    };
    match Config::load(&sources) {
        Ok((config, _)) => config,
        Err(errors) => panic!("fuzz configuration refused: {errors:?}"),
    }
}
