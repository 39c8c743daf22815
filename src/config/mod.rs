//! The typed configuration the program runs on: `load` layers the sources, `check` turns the
//! file shape into typed settings section by section, reporting every problem by key. The
//! settings a reload (SIGHUP) may change are in `Config::live`; everything else needs a restart,
//! and `Config::restart_changes` names what differs (compared field by field, secrets included).

mod check;
mod load;
pub mod raw;

pub use load::{load_raw, Sources, CONFIG_FILE_VAR, DEFAULT_CONFIG_FILE, ENV_PREFIX};
pub use raw::RawConfig;

use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One problem in the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Signing algorithms portcullis accepts; exactly one is configured at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    Hs256,
    Hs384,
    Hs512,
}

impl SigningAlgorithm {
    /// The shortest key RFC 7518 §3.2 allows: as long as the hash output.
    pub fn min_key_bytes(self) -> usize {
        match self {
            SigningAlgorithm::Hs256 => 32,
            SigningAlgorithm::Hs384 => 48,
            SigningAlgorithm::Hs512 => 64,
        }
    }
}

/// Everything the program runs on. All fields but `live` need a restart to change.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub proxy: ProxySettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
    pub passwords: PasswordSettings,
    pub accounts: AccountSettings,
    pub email: EmailSettings,
    pub audit: AuditSettings,
    pub limits: LimitSettings,
    /// What a reload replaces while the server runs.
    pub live: LiveSettings,
}

/// The reloadable part: routes, request limits, service tokens and the log level.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub routes: Vec<RouteSpec>,
    pub limits: LiveLimits,
    pub service_tokens: Vec<ServiceToken>,
    /// A tracing filter directive such as `info` or `portcullis=debug,info`.
    pub log_level: String,
}

/// Request limits that a reload may change.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveLimits {
    /// The original's RATE_LIMITS_PUBLIC_*: unauthenticated API endpoints, per client IP.
    pub public: Quota,
    /// The original's RATE_LIMITS_PRIVATE_*: authenticated API endpoints, per user.
    pub private: Quota,
    /// Applied to routes without their own `rate_limit`.
    pub route_default: Option<Quota>,
    pub registrations_per_ip: Quota,
    pub recovery_per_account: Quota,
    pub resend_per_account: Quota,
}

/// Limits fixed at start (their state would be lost by a rebuild).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Most keys one limiter tracks; past that new keys share an overflow bucket.
    pub max_tracked_keys: usize,
    /// IPv6 clients are limited per network of this prefix length (IPv4 per address).
    pub ipv6_prefix: u8,
    pub login_failures: u32,
    pub login_failure_window: Duration,
    /// Request headers larger than this get 431.
    pub max_header_bytes: usize,
    /// A client sending its body slower than one read per this long is cut off (408).
    pub body_read_timeout: Duration,
    /// A request head (request line and headers) must arrive whole within this long, counted
    /// from the connection's accept for its first request and from the first byte for later
    /// ones; else the connection is closed.
    pub header_read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PasswordSettings {
    pub min_length: usize,
    pub max_length: usize,
    /// The original's rule: upper, lower, digit and special character.
    pub require_mixed: bool,
    /// Refuse the 10,000 most common passwords.
    pub block_common: bool,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub max_concurrent_hashes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccountSettings {
    pub require_email_verification: bool,
    pub verification_ttl: Duration,
    pub max_page_size: usize,
    /// How often session activity is written behind to the database.
    pub session_flush: Duration,
    /// The original's behaviour: the first user who registers becomes an admin.
    pub first_user_admin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or in tests.
    Plain,
}

#[derive(Clone, PartialEq)]
pub enum EmailTransport {
    /// Write each message as an .eml file into `data_dir/outbox`.
    Outbox,
    Smtp {
        host: String,
        port: u16,
        security: SmtpSecurity,
        username: String,
        password: String,
        /// Extra trusted root certificate (PEM) for a server with a private CA.
        ca_file: Option<PathBuf>,
    },
}

impl fmt::Debug for EmailTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmailTransport::Outbox => write!(f, "Outbox"),
            EmailTransport::Smtp {
                host,
                port,
                security,
                username,
                ..
            } => {
                write!(f, "Smtp({username}@{host}:{port}, {security:?}, ********)")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailSettings {
    pub transport: EmailTransport,
    pub from: String,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    pub retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    /// Base of every link portcullis sends out; never derived from request headers.
    pub public_url: String,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// `None`: generate a key once and keep it in the data dir.
    pub secret_key: Option<Vec<u8>>,
    pub algorithm: SigningAlgorithm,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub idle_timeout: Duration,
    pub leeway: Duration,
}

#[derive(Clone, PartialEq)]
pub struct ServiceToken {
    pub name: String,
    pub token: String,
}

impl fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceToken({}, ********)", self.name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// `""` (root) or `/segment…` without a trailing slash.
    pub prefix: String,
    /// Largest accepted request body; larger ones get 413 before being read whole.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub identity: IdentityHeaders,
    /// Client-sent headers never passed to an upstream, besides the built-in ones.
    pub strip_headers: Vec<http::HeaderName>,
}

/// Names of the headers that carry the caller's identity to the upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityHeaders {
    /// Every client-sent header starting with this is removed (lower case, `-` separators).
    pub prefix: String,
    pub user_id: http::HeaderName,
    pub email: http::HeaderName,
    pub nickname: http::HeaderName,
    pub role: http::HeaderName,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageSettings {
    pub database: Database,
    /// The audit log: the same PostgreSQL database as `database` unless named.
    pub audit_database: Database,
    /// Extra trusted CA certificates (PEM) for `sslmode=verify-full`; the web's roots otherwise.
    pub postgres_ca_file: Option<PathBuf>,
    /// Connections each replica keeps open to PostgreSQL (besides its notification channel).
    pub postgres_pool_size: usize,
    /// Redis, for request limits exact across replicas; `None`: each replica counts alone.
    pub redis_url: Option<RedisUrl>,
}

/// A Redis URL (`redis://` or `rediss://`); its password never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl RedisUrl {
    pub fn masked(&self) -> String {
        mask_url_password(&self.0)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.masked())
    }
}

/// Where data lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Database {
    /// An embedded redb file: one instance.
    Redb(PathBuf),
    /// PostgreSQL: shared by every replica.
    Postgres(PostgresUrl),
}

impl Database {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    /// For messages and logs: the path, or the URL with its password masked.
    pub fn describe(&self) -> String {
        match self {
            Database::Redb(path) => path.display().to_string(),
            Database::Postgres(url) => url.masked(),
        }
    }
}

/// How the connection to PostgreSQL is protected (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseTls {
    /// Plain TCP (or a Unix socket).
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not verified (libpq's
    /// default).
    Prefer,
    /// TLS always; the certificate is not verified (as in libpq).
    Require,
    /// TLS always, the certificate verified against the trusted roots and the host name.
    VerifyFull,
}

/// A PostgreSQL connection URL (`postgres://user:password@host:port/db?sslmode=…`). Its
/// password never shows in `Debug`, logs or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// The URL without `sslmode` (which `tls` carries).
    pub url: String,
    pub tls: DatabaseTls,
}

impl PostgresUrl {
    /// Check and read a `postgres://` / `postgresql://` URL (the error never repeats its
    /// password).
    pub fn parse(raw: &str) -> Result<PostgresUrl, String> {
        let lower = raw.trim().to_ascii_lowercase();
        if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
            return Err(format!(
                "expected a postgres:// URL, found {}",
                mask_url_password(raw)
            ));
        }
        check::parse_postgres_url(raw.trim())
    }

    pub fn masked(&self) -> String {
        mask_url_password(&self.url)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({}, {:?})", self.masked(), self.tls)
    }
}

/// `scheme://user:********@host/…?password=********`: a URL fit to show.
pub fn mask_url_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                out = format!(
                    "{scheme}://{user}:********@{host}{}",
                    &rest[authority_end..]
                );
            }
        }
    }
    if let Some((base, query)) = out.clone().split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=********"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{base}?{}", query.join("&"));
    }
    out
}

/// A number of requests per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u32,
    pub period: Duration,
}

impl Quota {
    /// The quota in words: "5 per 1 hour", "30 per 10 seconds".
    pub fn describe(&self) -> String {
        let secs = self.period.as_secs();
        let (n, unit) = [
            (86_400, "day"),
            (3600, "hour"),
            (60, "minute"),
            (1, "second"),
        ]
        .into_iter()
        .find(|(len, _)| secs >= *len && secs % len == 0)
        .map_or((secs, "second"), |(len, unit)| (secs / len, unit));
        let plural = if n == 1 { "" } else { "s" };
        format!("{} per {n} {unit}{plural}", self.requests)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    Required,
    Public,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub path: String,
    pub upstreams: Vec<SocketAddr>,
    pub auth: RouteAuth,
    /// Empty: any authenticated caller.
    pub roles: Vec<String>,
    pub rate_limit: Option<Quota>,
}

/// Parse a time unit the way the original service wrote them: an optional count, then
/// `second`, `minute`, `hour` or `day`, singular or plural (`10minute`, `1hour`, `30seconds`).
pub fn parse_time_unit(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let (count, unit) = text.split_at(digits);
    let count: u64 = if count.is_empty() {
        1
    } else {
        count.parse().ok()?
    };
    let unit = unit.trim().to_ascii_lowercase();
    let seconds = match unit.strip_suffix('s').unwrap_or(&unit) {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return None,
    };
    if count == 0 {
        return None;
    }
    count.checked_mul(seconds).map(Duration::from_secs)
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    #[test]
    fn quotas_read_as_words() {
        let q = |text| parse_rate(text).unwrap().describe();
        assert_eq!(q("5/1hour"), "5 per 1 hour");
        assert_eq!(q("30/10seconds"), "30 per 10 seconds");
        assert_eq!(q("3/120minute"), "3 per 2 hours");
        assert_eq!(q("1/90second"), "1 per 90 seconds");
    }
}

/// Parse `"N/unit"` (`"100/1minute"`, `"5/hour"`, `"30/10seconds"`).
pub fn parse_rate(text: &str) -> Option<Quota> {
    let (count, unit) = text.split_once('/')?;
    let requests: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
    let period = parse_time_unit(unit)?;
    Some(Quota { requests, period })
}

impl Config {
    /// Type and validate a raw configuration, reporting every problem by key.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
        check::config(raw)
    }

    /// Load from the given sources and validate: every problem, or the typed config and the
    /// effective raw values (for `check-config`).
    pub fn load(sources: &Sources) -> Result<(Config, RawConfig), Vec<ConfigError>> {
        let raw = load_raw(sources)?;
        let config = Config::from_raw(&raw)?;
        Ok((config, raw))
    }

    /// The sections outside `live` that differ in `new`: those changes need a restart.
    pub fn restart_changes(&self, new: &Config) -> Vec<&'static str> {
        // Destructured so that a new field cannot be forgotten here.
        let Config {
            data_dir,
            server,
            auth,
            api,
            proxy,
            storage,
            log,
            passwords,
            accounts,
            email,
            audit,
            limits,
            live: _,
        } = self;
        [
            ("data_dir", *data_dir != new.data_dir),
            ("server", *server != new.server),
            ("auth", *auth != new.auth),
            ("api", *api != new.api),
            ("proxy", *proxy != new.proxy),
            ("storage", *storage != new.storage),
            ("log.format", *log != new.log),
            ("passwords", *passwords != new.passwords),
            ("accounts", *accounts != new.accounts),
            ("email", *email != new.email),
            ("audit", *audit != new.audit),
            (
                "limits (max_tracked_keys, login guard, header size, header and body timeouts)",
                *limits != new.limits,
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

impl RawConfig {
    /// The effective configuration as TOML, with every secret replaced by `********`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        if masked.auth.secret_key.is_empty() {
            masked.auth.secret_key =
                "(unset: generated once and kept in data_dir/secret.key)".into();
        } else {
            masked.auth.secret_key = "********".into();
        }
        masked.storage.database = mask_url_password(&masked.storage.database);
        masked.storage.audit_database = mask_url_password(&masked.storage.audit_database);
        masked.storage.redis_url = mask_url_password(&masked.storage.redis_url);
        if !masked.email.smtp_password.is_empty() {
            masked.email.smtp_password = "********".into();
        }
        for t in &mut masked.auth.service_tokens {
            t.token = "********".into();
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_units_as_the_original_wrote_them() {
        assert_eq!(parse_time_unit("10minute"), Some(Duration::from_secs(600)));
        assert_eq!(parse_time_unit("60minute"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_time_unit("1hour"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_time_unit("30seconds"), Some(Duration::from_secs(30)));
        assert_eq!(parse_time_unit("day"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_time_unit("0minute"), None);
        assert_eq!(parse_time_unit("10 fortnights"), None);
        assert_eq!(parse_time_unit(""), None);
        assert_eq!(parse_time_unit("99999999999999999999day"), None);
    }

    #[test]
    fn a_changed_secret_is_a_change_needing_a_restart() {
        let old = Config::from_raw(&RawConfig::default()).unwrap();
        let mut raw = RawConfig::default();
        raw.email.transport = "smtp".into();
        raw.email.smtp_host = "mail.example.com".into();
        raw.email.smtp_username = "me".into();
        raw.email.smtp_password = "one".into();
        let a = Config::from_raw(&raw).unwrap();
        raw.email.smtp_password = "two".into();
        let b = Config::from_raw(&raw).unwrap();
        assert_eq!(
            format!("{:?}", a.email),
            format!("{:?}", b.email),
            "masked alike"
        );
        assert_eq!(a.restart_changes(&b), vec!["email"]);
        assert!(old.restart_changes(&old.clone()).is_empty());
        let mut raw = RawConfig::default();
        raw.log.level = "debug".into();
        raw.limits.registrations_per_ip = "9/1hour".into();
        assert!(
            old.restart_changes(&Config::from_raw(&raw).unwrap())
                .is_empty(),
            "live settings only"
        );
    }

    #[test]
    fn database_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://app:s3cret@db:5432/portcullis?sslmode=require"),
            "postgres://app:********@db:5432/portcullis?sslmode=require"
        );
        assert_eq!(
            mask_url_password("postgresql://db/p?user=app&password=s3cret"),
            "postgresql://db/p?user=app&password=********"
        );
        assert_eq!(
            mask_url_password("./data/portcullis.redb"),
            "./data/portcullis.redb"
        );
        let mut raw = RawConfig::default();
        raw.storage.database = "postgres://app:s3cret@db/portcullis".into();
        let config = Config::from_raw(&raw).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!raw.to_masked_toml().contains("s3cret"));
        assert_eq!(config.storage.audit_database, config.storage.database);
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_raw(&RawConfig::default()).unwrap();
        assert_eq!(c.api.prefix, "/auth");
        assert_eq!(c.server.public_url, "http://localhost:8000");
        assert!(c.auth.secret_key.is_none());
        assert!(c.server.threads >= 1);
    }
}
