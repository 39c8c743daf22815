//! The configuration in its file shape: what `config/default.toml`, `.env` and the environment
//! write, with every key's default. Typing and validation happen in `config::Config::from_raw`.

use serde::{Deserialize, Serialize};

/// Every key of the configuration file, with the embedded defaults in `Default`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub data_dir: String,
    pub server: RawServer,
    pub auth: RawAuth,
    pub api: RawApi,
    pub proxy: RawProxy,
    pub storage: RawStorage,
    pub rate_limits: RawRateLimits,
    pub log: RawLog,
    pub passwords: RawPasswords,
    pub accounts: RawAccounts,
    pub bootstrap: RawBootstrap,
    pub email: RawEmail,
    pub audit: RawAudit,
    pub limits: RawLimits,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub route_default: String,
    pub max_tracked_keys: i64,
    pub ipv6_prefix: i64,
    pub login_failures: i64,
    pub login_failure_window_minutes: i64,
    pub registrations_per_ip: String,
    pub recovery_per_account: String,
    pub resend_per_account: String,
    pub max_header_bytes: i64,
    pub body_read_timeout_seconds: i64,
    pub header_read_timeout_seconds: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            route_default: String::new(),
            max_tracked_keys: 100_000,
            ipv6_prefix: 64,
            login_failures: 5,
            login_failure_window_minutes: 15,
            registrations_per_ip: "5/1hour".into(),
            recovery_per_account: "5/1hour".into(),
            resend_per_account: "3/1hour".into(),
            max_header_bytes: 16 * 1024,
            body_read_timeout_seconds: 30,
            header_read_timeout_seconds: 15,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawPasswords {
    pub min_length: i64,
    pub max_length: i64,
    pub require_mixed: bool,
    pub block_common: bool,
    pub argon2_memory_kib: i64,
    pub argon2_iterations: i64,
    pub argon2_parallelism: i64,
    pub max_concurrent_hashes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccounts {
    pub require_email_verification: bool,
    pub verification_link_hours: i64,
    pub max_page_size: i64,
    pub session_flush_seconds: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawBootstrap {
    pub first_user_admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawEmail {
    pub transport: String,
    pub from: String,
    pub smtp_host: String,
    pub smtp_port: i64,
    pub smtp_security: String,
    pub smtp_username: String,
    pub smtp_password: String,
    pub smtp_ca_file: String,
    pub max_attempts: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    pub retention_days: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub admin_listen: String,
    pub threads: i64,
    pub grace_period_seconds: i64,
    pub graceful_shutdown_timeout_seconds: i64,
    pub public_url: String,
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub secret_key: String,
    pub algorithm: String,
    pub issuer: String,
    pub audience: String,
    pub access_token_expire_minutes: i64,
    pub idle_minutes: i64,
    pub leeway_seconds: i64,
    pub service_tokens: Vec<RawServiceToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawServiceToken {
    pub name: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub prefix: String,
    pub max_body_bytes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub connect_timeout_seconds: i64,
    pub read_timeout_seconds: i64,
    pub write_timeout_seconds: i64,
    pub idle_timeout_seconds: i64,
    pub identity_header_prefix: String,
    pub user_id_header: String,
    pub email_header: String,
    pub nickname_header: String,
    pub role_header: String,
    pub strip_headers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    pub database: String,
    pub audit_database: String,
    pub postgres_ca_file: String,
    pub postgres_pool_size: i64,
    pub redis_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimits {
    pub public_routes: i64,
    pub public_time_unit: String,
    pub private_routes: i64,
    pub private_time_unit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: String,
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub upstream: Upstreams,
    #[serde(default = "default_route_auth")]
    pub auth: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// `"N/unit"`, e.g. `"100/1minute"`: per user on required routes, per client IP on public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
}

/// `upstream = "host:port"` or `upstream = ["host:port", …]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Upstreams {
    One(String),
    Many(Vec<String>),
}

impl Upstreams {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Upstreams::One(one) => std::slice::from_ref(one),
            Upstreams::Many(many) => many,
        }
    }
}

fn default_route_auth() -> String {
    "required".to_string()
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            data_dir: "./data".into(),
            server: RawServer::default(),
            auth: RawAuth::default(),
            api: RawApi::default(),
            proxy: RawProxy::default(),
            storage: RawStorage::default(),
            rate_limits: RawRateLimits::default(),
            log: RawLog::default(),
            passwords: RawPasswords::default(),
            accounts: RawAccounts::default(),
            bootstrap: RawBootstrap::default(),
            email: RawEmail::default(),
            audit: RawAudit::default(),
            limits: RawLimits::default(),
            routes: Vec::new(),
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "0.0.0.0:8000".into(),
            admin_listen: "127.0.0.1:9400".into(),
            threads: 0,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            public_url: String::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            secret_key: String::new(),
            algorithm: "HS256".into(),
            issuer: "portcullis".into(),
            audience: "portcullis".into(),
            access_token_expire_minutes: 30,
            idle_minutes: 30,
            leeway_seconds: 5,
            service_tokens: Vec::new(),
        }
    }
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            prefix: "/auth".into(),
            max_body_bytes: 16 * 1024,
        }
    }
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            connect_timeout_seconds: 5,
            read_timeout_seconds: 60,
            write_timeout_seconds: 60,
            idle_timeout_seconds: 60,
            identity_header_prefix: "X-Auth-".into(),
            user_id_header: "X-Auth-User-Id".into(),
            email_header: "X-Auth-Email".into(),
            nickname_header: "X-Auth-Nickname".into(),
            role_header: "X-Auth-Role".into(),
            strip_headers: Vec::new(),
        }
    }
}

impl Default for RawRateLimits {
    fn default() -> Self {
        RawRateLimits {
            public_routes: 100,
            public_time_unit: "10minute".into(),
            private_routes: 300,
            private_time_unit: "60minute".into(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "json".into(),
        }
    }
}

impl Default for RawPasswords {
    fn default() -> Self {
        RawPasswords {
            min_length: 8,
            max_length: 128,
            require_mixed: true,
            block_common: true,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
        }
    }
}

impl Default for RawAccounts {
    fn default() -> Self {
        RawAccounts {
            require_email_verification: false,
            verification_link_hours: 24,
            max_page_size: 100,
            session_flush_seconds: 5,
        }
    }
}

impl Default for RawEmail {
    fn default() -> Self {
        RawEmail {
            transport: "outbox".into(),
            from: "portcullis <no-reply@localhost>".into(),
            smtp_host: "localhost".into(),
            smtp_port: 587,
            smtp_security: "starttls".into(),
            smtp_username: String::new(),
            smtp_password: String::new(),
            smtp_ca_file: String::new(),
            max_attempts: 8,
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            database: String::new(),
            audit_database: String::new(),
            postgres_ca_file: String::new(),
            postgres_pool_size: 8,
            redis_url: String::new(),
        }
    }
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            retention_days: 365,
        }
    }
}
