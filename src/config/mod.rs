//! The typed configuration the program runs on: `load` layers the sources (see `load`), and
//! `Config::from_raw` turns the file shape into typed settings, reporting every problem by key.

mod load;
pub mod raw;

pub use load::{load_raw, Sources, CONFIG_FILE_VAR, DEFAULT_CONFIG_FILE, ENV_PREFIX};
pub use raw::RawConfig;

use ipnet::IpNet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
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

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub proxy: ProxySettings,
    pub storage: StorageSettings,
    pub rate_limits: RateLimitSettings,
    pub log: LogSettings,
    pub passwords: PasswordSettings,
    pub accounts: AccountSettings,
    pub email: EmailSettings,
    pub audit: AuditSettings,
    pub limits: LimitSettings,
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Applied to routes without their own `rate_limit`.
    pub route_default: Option<Quota>,
    /// Most keys one limiter tracks; past that new keys share an overflow bucket.
    pub max_tracked_keys: usize,
    pub login_failures: u32,
    pub login_failure_window: Duration,
    pub registrations_per_ip: Quota,
    pub recovery_per_account: Quota,
    pub resend_per_account: Quota,
    /// Request headers larger than this get 431.
    pub max_header_bytes: usize,
    /// A client sending its body slower than one read per this long is cut off (408).
    pub body_read_timeout: Duration,
    /// A request head (request line and headers) must arrive whole within this long, counted
    /// from the connection's accept for its first request and from the first byte for later
    /// ones; else the connection is closed.
    pub header_read_timeout: Duration,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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

#[derive(Clone)]
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

#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub transport: EmailTransport,
    pub from: String,
    pub max_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub retention: Duration,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `None`: generate a key once and keep it in the data dir.
    pub secret_key: Option<Vec<u8>>,
    pub algorithm: SigningAlgorithm,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub idle_timeout: Duration,
    pub leeway: Duration,
    pub service_tokens: Vec<ServiceToken>,
}

#[derive(Clone)]
pub struct ServiceToken {
    pub name: String,
    pub token: String,
}

impl fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceToken({}, ********)", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `""` (root) or `/segment…` without a trailing slash.
    pub prefix: String,
    /// Largest accepted request body; larger ones get 413 before being read whole.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub identity: IdentityHeaders,
}

/// Names of the headers that carry the caller's identity to the upstream.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Every client-sent header starting with this is removed (lower case, `-` separators).
    pub prefix: String,
    pub user_id: http::HeaderName,
    pub email: http::HeaderName,
    pub nickname: http::HeaderName,
    pub role: http::HeaderName,
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub database: PathBuf,
    pub audit_database: PathBuf,
}

/// A number of requests per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u32,
    pub period: Duration,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub public: Quota,
    pub private: Quota,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    /// A tracing filter directive such as `info` or `portcullis=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    Required,
    Public,
}

#[derive(Debug, Clone)]
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

/// Parse `"N/unit"` (`"100/1minute"`, `"5/hour"`, `"30/10seconds"`).
pub fn parse_rate(text: &str) -> Option<Quota> {
    let (count, unit) = text.split_once('/')?;
    let requests: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
    let period = parse_time_unit(unit)?;
    Some(Quota { requests, period })
}

/// Checks a value and records a problem under its key; keeps `from_raw` flat.
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    fn addr(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.fail(
                key,
                format!("expected an address such as 0.0.0.0:8000, found {value:?}"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn range(&mut self, key: &str, value: i64, min: i64, max: i64) -> u64 {
        if value < min || value > max {
            self.fail(
                key,
                format!("must be between {min} and {max}, found {value}"),
            );
            return min.max(0) as u64;
        }
        value as u64
    }

    fn header(&mut self, key: &str, value: &str, prefix: &str) -> http::HeaderName {
        match http::HeaderName::from_bytes(value.as_bytes()) {
            Ok(name) if name.as_str().starts_with(prefix) => name,
            Ok(_) => {
                self.fail(
                    key,
                    format!("must start with proxy.identity_header_prefix ({prefix:?})"),
                );
                http::HeaderName::from_static("x-invalid")
            }
            Err(_) => {
                self.fail(key, format!("not a valid header name: {value:?}"));
                http::HeaderName::from_static("x-invalid")
            }
        }
    }

    fn rate(&mut self, key: &str, text: &str) -> Quota {
        parse_rate(text).unwrap_or_else(|| {
            self.fail(
                key,
                format!("expected requests/period such as \"100/1minute\", found {text:?}"),
            );
            Quota {
                requests: 1,
                period: Duration::from_secs(1),
            }
        })
    }

    fn quota(&mut self, count_key: &str, count: i64, unit_key: &str, unit: &str) -> Quota {
        let requests = self.range(count_key, count, 1, 1_000_000_000) as u32;
        let period = parse_time_unit(unit).unwrap_or_else(|| {
            self.fail(
                unit_key,
                format!(
                    "expected [count]second|minute|hour|day[s] such as 10minute, found {unit:?}"
                ),
            );
            Duration::from_secs(60)
        });
        Quota { requests, period }
    }
}

/// A path prefix as routes and the API prefix are written: `/a/b`, no trailing slash, no
/// dot-segments, empty segments, encodings or characters outside the unreserved set.
fn check_prefix(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with /");
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("must not end with /");
    }
    if path.len() > 1
        && path[1..]
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err("must not contain empty, . or .. segments");
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
    {
        return Err("may contain only letters, digits, and / - . _ ~");
    }
    Ok(())
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// `info`, or comma-separated `level` / `target=level` directives (`portcullis=debug,warn`).
fn is_log_filter(filter: &str) -> bool {
    !filter.is_empty()
        && filter.split(',').all(|part| match part.split_once('=') {
            None => LOG_LEVELS.contains(&part.trim()),
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
                    && LOG_LEVELS.contains(&level.trim())
            }
        })
}

impl Config {
    /// Type and validate a raw configuration, reporting every problem by key.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
        let mut c = Checker { errors: Vec::new() };

        if raw.data_dir.trim().is_empty() {
            c.fail("data_dir", "must not be empty");
        }
        let data_dir = PathBuf::from(&raw.data_dir);

        let s = &raw.server;
        let listen = c.addr("server.listen", &s.listen);
        let admin_listen = c.addr("server.admin_listen", &s.admin_listen);
        if listen == admin_listen && listen.port() != 0 {
            c.fail(
                "server.admin_listen",
                "must differ from server.listen: metrics never share the public listener",
            );
        }
        let threads = match c.range("server.threads", s.threads, 0, 1024) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        let grace_period = Duration::from_secs(c.range(
            "server.grace_period_seconds",
            s.grace_period_seconds,
            0,
            3600,
        ));
        let graceful_shutdown_timeout = Duration::from_secs(c.range(
            "server.graceful_shutdown_timeout_seconds",
            s.graceful_shutdown_timeout_seconds,
            0,
            3600,
        ));
        let public_url = if s.public_url.is_empty() {
            format!("http://localhost:{}", listen.port())
        } else {
            let url = s.public_url.trim_end_matches('/').to_string();
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            let host = url.split("://").nth(1).unwrap_or("");
            if !scheme_ok || host.is_empty() {
                c.fail(
                    "server.public_url",
                    "must be an absolute http:// or https:// URL",
                );
            } else if url
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
            {
                c.fail(
                    "server.public_url",
                    "must not contain spaces, control characters, a query or a fragment",
                );
            }
            url
        };
        let mut trusted_proxies = Vec::new();
        for (i, cidr) in s.trusted_proxies.iter().enumerate() {
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => c.fail(
                    &format!("server.trusted_proxies[{i}]"),
                    format!("expected an IP address or CIDR such as 10.0.0.0/8, found {cidr:?}"),
                ),
            }
        }

        let a = &raw.auth;
        let algorithm = match a.algorithm.to_ascii_uppercase().as_str() {
            "HS256" => SigningAlgorithm::Hs256,
            "HS384" => SigningAlgorithm::Hs384,
            "HS512" => SigningAlgorithm::Hs512,
            _ => {
                c.fail(
                    "auth.algorithm",
                    format!(
                        "unsupported algorithm {:?}: use HS256, HS384 or HS512",
                        a.algorithm
                    ),
                );
                SigningAlgorithm::Hs256
            }
        };
        let secret_key = if a.secret_key.is_empty() {
            None
        } else {
            if a.secret_key.len() < algorithm.min_key_bytes() {
                c.fail(
                    "auth.secret_key",
                    format!(
                        "too short: {} needs at least {} bytes (generate one with `openssl rand -hex 32`)",
                        a.algorithm.to_ascii_uppercase(),
                        algorithm.min_key_bytes()
                    ),
                );
            }
            Some(a.secret_key.as_bytes().to_vec())
        };
        for (key, value) in [("auth.issuer", &a.issuer), ("auth.audience", &a.audience)] {
            if value.trim().is_empty() || value.len() > 256 {
                c.fail(key, "must be 1 to 256 characters");
            }
        }
        let access_token_ttl = Duration::from_secs(
            60 * c.range(
                "auth.access_token_expire_minutes",
                a.access_token_expire_minutes,
                1,
                7 * 24 * 60,
            ),
        );
        let idle_timeout =
            Duration::from_secs(60 * c.range("auth.idle_minutes", a.idle_minutes, 1, 7 * 24 * 60));
        let leeway = Duration::from_secs(c.range("auth.leeway_seconds", a.leeway_seconds, 0, 30));
        let mut service_tokens: Vec<ServiceToken> = Vec::new();
        for (i, t) in a.service_tokens.iter().enumerate() {
            let key = format!("auth.service_tokens[{i}]");
            if t.name.is_empty()
                || t.name.len() > 64
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                c.fail(
                    &format!("{key}.name"),
                    "must be 1 to 64 letters, digits, - or _",
                );
            } else if service_tokens.iter().any(|o| o.name == t.name) {
                c.fail(
                    &format!("{key}.name"),
                    format!("duplicate service token name {:?}", t.name),
                );
            }
            if t.token.len() < 16
                || t.token.len() > 1024
                || t.token.bytes().any(|b| !b.is_ascii_graphic())
            {
                c.fail(
                    &format!("{key}.token"),
                    "must be 16 to 1024 printable characters without spaces",
                );
            }
            service_tokens.push(ServiceToken {
                name: t.name.clone(),
                token: t.token.clone(),
            });
        }

        let prefix = raw.api.prefix.clone();
        if !prefix.is_empty() {
            if let Err(e) = check_prefix(&prefix) {
                c.fail(
                    "api.prefix",
                    format!("{e} (use \"\" to mount the API at the root)"),
                );
            } else if prefix == "/" {
                c.fail("api.prefix", "use \"\" to mount the API at the root");
            }
        }

        let p = &raw.proxy;
        let connect_timeout = Duration::from_secs(c.range(
            "proxy.connect_timeout_seconds",
            p.connect_timeout_seconds,
            1,
            3600,
        ));
        let read_timeout = Duration::from_secs(c.range(
            "proxy.read_timeout_seconds",
            p.read_timeout_seconds,
            1,
            86_400,
        ));
        let write_timeout = Duration::from_secs(c.range(
            "proxy.write_timeout_seconds",
            p.write_timeout_seconds,
            1,
            86_400,
        ));
        let idle_timeout_up = Duration::from_secs(c.range(
            "proxy.idle_timeout_seconds",
            p.idle_timeout_seconds,
            1,
            86_400,
        ));
        let id_prefix = p
            .identity_header_prefix
            .to_ascii_lowercase()
            .replace('_', "-");
        if id_prefix.len() < 3
            || http::HeaderName::from_bytes(id_prefix.as_bytes()).is_err()
            || matches!(id_prefix.as_str(), "x-f" | "x-fo" | "con" | "hos")
        {
            c.fail(
                "proxy.identity_header_prefix",
                "must be a header-name prefix of at least 3 characters, such as X-Auth-",
            );
        }
        let identity = IdentityHeaders {
            user_id: c.header("proxy.user_id_header", &p.user_id_header, &id_prefix),
            email: c.header("proxy.email_header", &p.email_header, &id_prefix),
            nickname: c.header("proxy.nickname_header", &p.nickname_header, &id_prefix),
            role: c.header("proxy.role_header", &p.role_header, &id_prefix),
            prefix: id_prefix,
        };

        let st = &raw.storage;
        let database = if st.database.is_empty() {
            data_dir.join("portcullis.redb")
        } else {
            PathBuf::from(&st.database)
        };
        let audit_database = if st.audit_database.is_empty() {
            data_dir.join("audit.redb")
        } else {
            PathBuf::from(&st.audit_database)
        };
        if database == audit_database {
            c.fail(
                "storage.audit_database",
                "must differ from storage.database",
            );
        }

        let r = &raw.rate_limits;
        let public = c.quota(
            "rate_limits.public_routes",
            r.public_routes,
            "rate_limits.public_time_unit",
            &r.public_time_unit,
        );
        let private = c.quota(
            "rate_limits.private_routes",
            r.private_routes,
            "rate_limits.private_time_unit",
            &r.private_time_unit,
        );

        let level = raw.log.level.trim().to_ascii_lowercase();
        if !is_log_filter(&level) {
            c.fail(
                "log.level",
                format!(
                    "expected trace, debug, info, warn, error or a tracing filter, found {:?}",
                    raw.log.level
                ),
            );
        }
        let format = match raw.log.format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                c.fail(
                    "log.format",
                    format!("expected \"json\" or \"text\", found {other:?}"),
                );
                LogFormat::Json
            }
        };

        let pw = &raw.passwords;
        let min_length = c.range("passwords.min_length", pw.min_length, 8, 128) as usize;
        let max_length = c.range("passwords.max_length", pw.max_length, 8, 1024) as usize;
        if max_length < min_length {
            c.fail(
                "passwords.max_length",
                "must not be below passwords.min_length",
            );
        }
        let passwords = PasswordSettings {
            min_length,
            max_length,
            require_mixed: pw.require_mixed,
            block_common: pw.block_common,
            argon2_memory_kib: c.range(
                "passwords.argon2_memory_kib",
                pw.argon2_memory_kib,
                64,
                4_194_304,
            ) as u32,
            argon2_iterations: c.range("passwords.argon2_iterations", pw.argon2_iterations, 1, 100)
                as u32,
            argon2_parallelism: c.range(
                "passwords.argon2_parallelism",
                pw.argon2_parallelism,
                1,
                64,
            ) as u32,
            max_concurrent_hashes: match c.range(
                "passwords.max_concurrent_hashes",
                pw.max_concurrent_hashes,
                0,
                1024,
            ) {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n as usize,
            },
        };
        let ac = &raw.accounts;
        let accounts = AccountSettings {
            require_email_verification: ac.require_email_verification,
            verification_ttl: Duration::from_secs(
                3600 * c.range(
                    "accounts.verification_link_hours",
                    ac.verification_link_hours,
                    1,
                    24,
                ),
            ),
            max_page_size: c.range("accounts.max_page_size", ac.max_page_size, 1, 1000) as usize,
            session_flush: Duration::from_secs(c.range(
                "accounts.session_flush_seconds",
                ac.session_flush_seconds,
                1,
                300,
            )),
            first_user_admin: raw.bootstrap.first_user_admin,
        };
        let em = &raw.email;
        let transport = match em.transport.as_str() {
            "outbox" => EmailTransport::Outbox,
            "smtp" => {
                let security = match em.smtp_security.as_str() {
                    "starttls" => SmtpSecurity::StartTls,
                    "tls" => SmtpSecurity::Tls,
                    "plain" => SmtpSecurity::Plain,
                    other => {
                        c.fail(
                            "email.smtp_security",
                            format!("expected \"starttls\", \"tls\" or \"plain\", found {other:?}"),
                        );
                        SmtpSecurity::StartTls
                    }
                };
                if em.smtp_host.trim().is_empty() || em.smtp_host.contains(['/', ' ', ':']) {
                    c.fail("email.smtp_host", "must be a host name or IP address");
                }
                if em.smtp_username.is_empty() != em.smtp_password.is_empty() {
                    c.fail(
                        "email.smtp_username",
                        "set both email.smtp_username and email.smtp_password, or neither",
                    );
                }
                EmailTransport::Smtp {
                    host: em.smtp_host.clone(),
                    port: c.range("email.smtp_port", em.smtp_port, 1, 65535) as u16,
                    security,
                    username: em.smtp_username.clone(),
                    password: em.smtp_password.clone(),
                    ca_file: if em.smtp_ca_file.is_empty() {
                        None
                    } else {
                        let path = PathBuf::from(&em.smtp_ca_file);
                        if !path.is_file() {
                            c.fail(
                                "email.smtp_ca_file",
                                format!("no such file: {}", em.smtp_ca_file),
                            );
                        }
                        Some(path)
                    },
                }
            }
            other => {
                c.fail(
                    "email.transport",
                    format!("expected \"outbox\" or \"smtp\", found {other:?}"),
                );
                EmailTransport::Outbox
            }
        };
        if em.from.parse::<lettre::message::Mailbox>().is_err() {
            c.fail(
                "email.from",
                format!(
                    "expected an address such as \"portcullis <no-reply@example.com>\", found {:?}",
                    em.from
                ),
            );
        }
        let email = EmailSettings {
            transport,
            from: em.from.clone(),
            max_attempts: c.range("email.max_attempts", em.max_attempts, 1, 100) as u32,
        };
        let audit = AuditSettings {
            retention: Duration::from_secs(
                86_400 * c.range("audit.retention_days", raw.audit.retention_days, 1, 36_500),
            ),
        };
        let l = &raw.limits;
        let limits = LimitSettings {
            route_default: if l.route_default.is_empty() {
                None
            } else {
                Some(c.rate("limits.route_default", &l.route_default))
            },
            max_tracked_keys: c.range(
                "limits.max_tracked_keys",
                l.max_tracked_keys,
                100,
                100_000_000,
            ) as usize,
            login_failures: c.range("limits.login_failures", l.login_failures, 1, 100) as u32,
            login_failure_window: Duration::from_secs(
                60 * c.range(
                    "limits.login_failure_window_minutes",
                    l.login_failure_window_minutes,
                    1,
                    24 * 60,
                ),
            ),
            registrations_per_ip: c.rate("limits.registrations_per_ip", &l.registrations_per_ip),
            recovery_per_account: c.rate("limits.recovery_per_account", &l.recovery_per_account),
            resend_per_account: c.rate("limits.resend_per_account", &l.resend_per_account),
            max_header_bytes: c.range("limits.max_header_bytes", l.max_header_bytes, 1024, 1 << 20)
                as usize,
            body_read_timeout: Duration::from_secs(c.range(
                "limits.body_read_timeout_seconds",
                l.body_read_timeout_seconds,
                1,
                3600,
            )),
            header_read_timeout: Duration::from_secs(c.range(
                "limits.header_read_timeout_seconds",
                l.header_read_timeout_seconds,
                1,
                3600,
            )),
        };
        let max_body_bytes =
            c.range("api.max_body_bytes", raw.api.max_body_bytes, 1024, 1 << 20) as usize;

        let mut routes: Vec<RouteSpec> = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Err(e) = check_prefix(&r.path) {
                c.fail(&format!("{key}.path"), e);
            } else if routes.iter().any(|o| o.path.eq_ignore_ascii_case(&r.path)) {
                c.fail(
                    &format!("{key}.path"),
                    format!("{:?} is already routed", r.path),
                );
            } else if !prefix.is_empty()
                && (r.path.eq_ignore_ascii_case(&prefix)
                    || r.path
                        .to_ascii_lowercase()
                        .starts_with(&format!("{}/", prefix.to_ascii_lowercase())))
            {
                c.fail(
                    &format!("{key}.path"),
                    format!("lies under api.prefix {prefix:?}, which the accounts API serves"),
                );
            }
            let auth = match r.auth.as_str() {
                "required" => RouteAuth::Required,
                "public" => RouteAuth::Public,
                other => {
                    c.fail(
                        &format!("{key}.auth"),
                        format!("expected \"required\" or \"public\", found {other:?}"),
                    );
                    RouteAuth::Required
                }
            };
            if auth == RouteAuth::Public && !r.roles.is_empty() {
                c.fail(&format!("{key}.roles"), "roles need auth = \"required\"");
            }
            if r.roles
                .iter()
                .any(|role| role.trim().is_empty() || role.len() > 64)
            {
                c.fail(
                    &format!("{key}.roles"),
                    "each role must be 1 to 64 characters",
                );
            }
            let mut upstreams = Vec::new();
            if r.upstream.as_slice().is_empty() {
                c.fail(&format!("{key}.upstream"), "needs at least one address");
            }
            for (j, addr) in r.upstream.as_slice().iter().enumerate() {
                match addr.to_socket_addrs().map(|mut it| it.next()) {
                    Ok(Some(sa)) => upstreams.push(sa),
                    _ => c.fail(
                        &format!("{key}.upstream[{j}]"),
                        format!("expected host:port that resolves, found {addr:?}"),
                    ),
                }
            }
            let rate_limit = r
                .rate_limit
                .as_deref()
                .map(|text| c.rate(&format!("{key}.rate_limit"), text));
            routes.push(RouteSpec {
                path: r.path.clone(),
                upstreams,
                auth,
                roles: r.roles.clone(),
                rate_limit,
            });
        }

        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        Ok(Config {
            data_dir,
            server: ServerSettings {
                listen,
                admin_listen,
                threads,
                grace_period,
                graceful_shutdown_timeout,
                public_url,
                trusted_proxies,
            },
            auth: AuthSettings {
                secret_key,
                algorithm,
                issuer: a.issuer.clone(),
                audience: a.audience.clone(),
                access_token_ttl,
                idle_timeout,
                leeway,
                service_tokens,
            },
            api: ApiSettings {
                prefix,
                max_body_bytes,
            },
            proxy: ProxySettings {
                connect_timeout,
                read_timeout,
                write_timeout,
                idle_timeout: idle_timeout_up,
                identity,
            },
            storage: StorageSettings {
                database,
                audit_database,
            },
            rate_limits: RateLimitSettings { public, private },
            log: LogSettings { level, format },
            passwords,
            accounts,
            email,
            audit,
            limits,
            routes,
        })
    }

    /// Load from the given sources and validate: every problem, or the typed config and the
    /// effective raw values (for `check-config`).
    pub fn load(sources: &Sources) -> Result<(Config, RawConfig), Vec<ConfigError>> {
        let raw = load_raw(sources)?;
        let config = Config::from_raw(&raw)?;
        Ok((config, raw))
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
    fn defaults_are_valid() {
        let c = Config::from_raw(&RawConfig::default()).unwrap();
        assert_eq!(c.api.prefix, "/auth");
        assert_eq!(c.server.public_url, "http://localhost:8000");
        assert!(c.auth.secret_key.is_none());
        assert!(c.server.threads >= 1);
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("/api/v1").is_ok());
        for bad in [
            "api", "/api/", "//api", "/a/../b", "/a/./b", "/a%2fb", "/a b", "/a;b",
        ] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
