//! Validation of the raw configuration, one function per section: each types its section and
//! records every problem under the key it belongs to.

use super::raw::{
    RawAccounts, RawApi, RawAuth, RawConfig, RawEmail, RawLimits, RawPasswords, RawProxy,
    RawRateLimits, RawRoute, RawServer, RawStorage,
};
use super::*;
use std::net::ToSocketAddrs;

/// Checks a value and records a problem under its key; keeps each section flat.
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

/// Type and validate every section; every problem, by key, or the typed configuration.
pub(super) fn config(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker { errors: Vec::new() };
    if raw.data_dir.trim().is_empty() {
        c.fail("data_dir", "must not be empty");
    }
    let data_dir = PathBuf::from(&raw.data_dir);
    let server = server(&mut c, &raw.server);
    let auth = auth(&mut c, &raw.auth);
    let api = api(&mut c, &raw.api);
    let proxy = proxy(&mut c, &raw.proxy);
    let storage = storage(&mut c, &raw.storage, &data_dir);
    let log = LogSettings {
        format: log_format(&mut c, &raw.log.format),
    };
    let passwords = passwords(&mut c, &raw.passwords);
    let accounts = accounts(&mut c, &raw.accounts, raw.bootstrap.first_user_admin);
    let email = email(&mut c, &raw.email);
    let audit = AuditSettings {
        retention: Duration::from_secs(
            86_400 * c.range("audit.retention_days", raw.audit.retention_days, 1, 36_500),
        ),
    };
    let limits = limits(&mut c, &raw.limits);
    let live = LiveSettings {
        routes: routes(&mut c, &raw.routes, &api.prefix),
        limits: live_limits(&mut c, &raw.rate_limits, &raw.limits),
        service_tokens: service_tokens(&mut c, &raw.auth),
        log_level: log_level(&mut c, &raw.log.level),
    };
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Config {
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
        live,
    })
}

fn server(c: &mut Checker, s: &RawServer) -> ServerSettings {
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
    ServerSettings {
        listen,
        admin_listen,
        threads,
        grace_period,
        graceful_shutdown_timeout,
        public_url,
        trusted_proxies,
    }
}

fn auth(c: &mut Checker, a: &RawAuth) -> AuthSettings {
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
    AuthSettings {
        secret_key,
        algorithm,
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
        access_token_ttl,
        idle_timeout,
        leeway,
    }
}

fn service_tokens(c: &mut Checker, a: &RawAuth) -> Vec<ServiceToken> {
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
    service_tokens
}

fn api(c: &mut Checker, raw: &RawApi) -> ApiSettings {
    let prefix = raw.prefix.clone();
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
    ApiSettings {
        prefix,
        max_body_bytes: c.range("api.max_body_bytes", raw.max_body_bytes, 1024, 1 << 20) as usize,
    }
}

fn proxy(c: &mut Checker, p: &RawProxy) -> ProxySettings {
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
    let idle_timeout = Duration::from_secs(c.range(
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
    let mut strip_headers = Vec::new();
    for (i, name) in p.strip_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(name) if !matches!(name.as_str(), "host" | "content-length" | "transfer-encoding") => {
                strip_headers.push(name)
            }
            Ok(_) => c.fail(
                &format!("proxy.strip_headers[{i}]"),
                "Host, Content-Length and Transfer-Encoding frame the request and cannot be removed",
            ),
            Err(_) => c.fail(
                &format!("proxy.strip_headers[{i}]"),
                format!("not a valid header name: {name:?}"),
            ),
        }
    }
    ProxySettings {
        connect_timeout,
        read_timeout,
        write_timeout,
        idle_timeout,
        identity,
        strip_headers,
    }
}

fn storage(c: &mut Checker, st: &RawStorage, data_dir: &std::path::Path) -> StorageSettings {
    let main = if st.database.trim().is_empty() {
        Database::Redb(data_dir.join("portcullis.redb"))
    } else {
        database(c, "storage.database", &st.database)
    };
    let audit_database = if st.audit_database.trim().is_empty() {
        match &main {
            Database::Postgres(url) => Database::Postgres(url.clone()),
            Database::Redb(_) => Database::Redb(data_dir.join("audit.redb")),
        }
    } else {
        database(c, "storage.audit_database", &st.audit_database)
    };
    match (&main, &audit_database) {
        (Database::Redb(main), Database::Redb(audit)) if main == audit => c.fail(
            "storage.audit_database",
            "must differ from storage.database",
        ),
        (Database::Redb(_), Database::Postgres(_)) | (Database::Postgres(_), Database::Redb(_)) => {
            c.fail(
                "storage.audit_database",
                "must be on the same kind of storage as storage.database (both redb files, or both PostgreSQL)",
            )
        }
        _ => {}
    }
    let postgres_ca_file = if st.postgres_ca_file.is_empty() {
        None
    } else {
        let path = PathBuf::from(&st.postgres_ca_file);
        if !path.is_file() {
            c.fail(
                "storage.postgres_ca_file",
                format!("no such file: {}", st.postgres_ca_file),
            );
        }
        Some(path)
    };
    let redis_url = if st.redis_url.trim().is_empty() {
        None
    } else {
        let url = st.redis_url.trim();
        let masked = mask_url_password(url);
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("redis://") || lower.starts_with("rediss://")) {
            c.fail(
                "storage.redis_url",
                format!("expected a redis:// or rediss:// URL, found {masked}"),
            );
        } else if let Err(e) = redis::Client::open(url) {
            c.fail(
                "storage.redis_url",
                format!("not a valid Redis URL ({e}): {masked}"),
            );
        }
        Some(RedisUrl(url.to_string()))
    };
    StorageSettings {
        database: main,
        audit_database,
        redis_url,
        postgres_ca_file,
        postgres_pool_size: c.range("storage.postgres_pool_size", st.postgres_pool_size, 1, 1000)
            as usize,
    }
}

/// A database setting: a `postgres://` or `postgresql://` URL, or a redb file path (also
/// written `sqlite:///path`, `redb://path` or `file://path`, as the original's URLs were).
fn database(c: &mut Checker, key: &str, raw: &str) -> Database {
    let raw = raw.trim();
    let lower = raw.to_ascii_lowercase();
    if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
        return match parse_postgres_url(raw) {
            Ok(url) => Database::Postgres(url),
            Err(message) => {
                c.fail(key, message);
                Database::Redb(PathBuf::new())
            }
        };
    }
    if let Some((scheme, _)) = raw.split_once("://") {
        if !["sqlite", "redb", "file"].contains(&scheme.to_ascii_lowercase().as_str()) {
            c.fail(
                key,
                format!(
                    "unsupported database URL scheme {scheme:?}: use postgres:// or a file path"
                ),
            );
        }
    }
    let path = ["sqlite:///", "redb://", "file://"]
        .iter()
        .find_map(|scheme| raw.strip_prefix(scheme))
        .unwrap_or(raw);
    if path.is_empty() {
        c.fail(key, "names no file");
    }
    Database::Redb(PathBuf::from(path))
}

/// Check a PostgreSQL URL with the client's own parser; `sslmode` is taken out and kept as
/// `DatabaseTls` (the client knows no `verify-full`). Messages never repeat the password.
pub(super) fn parse_postgres_url(raw: &str) -> Result<PostgresUrl, String> {
    let masked = mask_url_password(raw);
    let (base, query) = raw.split_once('?').unwrap_or((raw, ""));
    let mut tls = DatabaseTls::Prefer;
    let mut kept = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv.split_once('=') {
            Some(("sslmode", v)) => {
                tls = match v {
                    "disable" => DatabaseTls::Disable,
                    "prefer" => DatabaseTls::Prefer,
                    "require" => DatabaseTls::Require,
                    "verify-full" => DatabaseTls::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode {other:?} is not supported: use disable, prefer, require or verify-full (in {masked})"
                        ))
                    }
                }
            }
            _ => kept.push(kv),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let parsed = url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| format!("not a valid PostgreSQL URL ({e}): {masked}"))?;
    if parsed.get_hosts().is_empty() {
        return Err(format!("names no host: {masked}"));
    }
    if parsed.get_dbname().is_none() {
        return Err(format!("names no database: {masked}"));
    }
    Ok(PostgresUrl { url, tls })
}

fn log_level(c: &mut Checker, raw: &str) -> String {
    let level = raw.trim().to_ascii_lowercase();
    if !is_log_filter(&level) {
        c.fail(
            "log.level",
            format!("expected trace, debug, info, warn, error or a tracing filter, found {raw:?}"),
        );
    }
    level
}

fn log_format(c: &mut Checker, raw: &str) -> LogFormat {
    match raw {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            c.fail(
                "log.format",
                format!("expected \"json\" or \"text\", found {other:?}"),
            );
            LogFormat::Json
        }
    }
}

fn passwords(c: &mut Checker, pw: &RawPasswords) -> PasswordSettings {
    let min_length = c.range("passwords.min_length", pw.min_length, 8, 128) as usize;
    let max_length = c.range("passwords.max_length", pw.max_length, 8, 1024) as usize;
    if max_length < min_length {
        c.fail(
            "passwords.max_length",
            "must not be below passwords.min_length",
        );
    }
    PasswordSettings {
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
        argon2_parallelism: c.range("passwords.argon2_parallelism", pw.argon2_parallelism, 1, 64)
            as u32,
        max_concurrent_hashes: match c.range(
            "passwords.max_concurrent_hashes",
            pw.max_concurrent_hashes,
            0,
            1024,
        ) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        },
    }
}

fn accounts(c: &mut Checker, ac: &RawAccounts, first_user_admin: bool) -> AccountSettings {
    AccountSettings {
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
        first_user_admin,
    }
}

fn email(c: &mut Checker, em: &RawEmail) -> EmailSettings {
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
    EmailSettings {
        transport,
        from: em.from.clone(),
        max_attempts: c.range("email.max_attempts", em.max_attempts, 1, 100) as u32,
    }
}

fn limits(c: &mut Checker, l: &RawLimits) -> LimitSettings {
    LimitSettings {
        max_tracked_keys: c.range(
            "limits.max_tracked_keys",
            l.max_tracked_keys,
            100,
            100_000_000,
        ) as usize,
        ipv6_prefix: c.range("limits.ipv6_prefix", l.ipv6_prefix, 32, 128) as u8,
        login_failures: c.range("limits.login_failures", l.login_failures, 1, 100) as u32,
        login_failure_window: Duration::from_secs(
            60 * c.range(
                "limits.login_failure_window_minutes",
                l.login_failure_window_minutes,
                1,
                24 * 60,
            ),
        ),
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
    }
}

fn live_limits(c: &mut Checker, r: &RawRateLimits, l: &RawLimits) -> LiveLimits {
    LiveLimits {
        public: c.quota(
            "rate_limits.public_routes",
            r.public_routes,
            "rate_limits.public_time_unit",
            &r.public_time_unit,
        ),
        private: c.quota(
            "rate_limits.private_routes",
            r.private_routes,
            "rate_limits.private_time_unit",
            &r.private_time_unit,
        ),
        route_default: if l.route_default.is_empty() {
            None
        } else {
            Some(c.rate("limits.route_default", &l.route_default))
        },
        registrations_per_ip: c.rate("limits.registrations_per_ip", &l.registrations_per_ip),
        recovery_per_account: c.rate("limits.recovery_per_account", &l.recovery_per_account),
        resend_per_account: c.rate("limits.resend_per_account", &l.resend_per_account),
    }
}

fn routes(c: &mut Checker, raw: &[RawRoute], api_prefix: &str) -> Vec<RouteSpec> {
    let mut routes: Vec<RouteSpec> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("routes[{i}]");
        if let Err(e) = check_prefix(&r.path) {
            c.fail(&format!("{key}.path"), e);
        } else if routes.iter().any(|o| o.path.eq_ignore_ascii_case(&r.path)) {
            c.fail(
                &format!("{key}.path"),
                format!("{:?} is already routed", r.path),
            );
        } else if !api_prefix.is_empty()
            && (r.path.eq_ignore_ascii_case(api_prefix)
                || r.path
                    .to_ascii_lowercase()
                    .starts_with(&format!("{}/", api_prefix.to_ascii_lowercase())))
        {
            c.fail(
                &format!("{key}.path"),
                format!("lies under api.prefix {api_prefix:?}, which the accounts API serves"),
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
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_settings() {
        let mut c = Checker { errors: Vec::new() };
        assert_eq!(
            database(&mut c, "k", "sqlite:///./data/users.db"),
            Database::Redb("./data/users.db".into())
        );
        let Database::Postgres(url) = database(
            &mut c,
            "k",
            "postgresql://app:pw@db.example.com:5433/portcullis?sslmode=verify-full&application_name=x",
        ) else {
            panic!("not postgres")
        };
        assert_eq!(url.tls, DatabaseTls::VerifyFull);
        assert_eq!(
            url.url,
            "postgresql://app:pw@db.example.com:5433/portcullis?application_name=x"
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        for bad in [
            "postgres://app:s3cret@db/p?sslmode=verify-ca",
            "postgres://app:s3cret@db/p?port=notanumber",
            "postgres://app:s3cret@/p",
            "postgres://app:s3cret@db",
            "mysql://app:s3cret@db/p",
        ] {
            let mut c = Checker { errors: Vec::new() };
            database(&mut c, "storage.database", bad);
            assert_eq!(c.errors.len(), 1, "{bad}");
            assert_eq!(c.errors[0].key, "storage.database");
            assert!(!c.errors[0].message.contains("s3cret"), "{}", c.errors[0]);
        }
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
