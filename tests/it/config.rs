//! Configuration as an operator meets it: layered sources in the documented priority, every
//! invalid key named, secrets masked, and a signing key generated once when none is given.

use portcullis::auth::tokens::Subject;
use portcullis::clock::SystemClock;
use portcullis::config::{Config, RawConfig};
use portcullis::state::AppState;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

fn portcullis(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(args).current_dir(dir).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run portcullis")
}

fn check_config(env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    portcullis(dir.path(), &["check-config"], env)
}

#[test]
fn defaults_are_printed_when_nothing_is_configured() {
    let out = check_config(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Table = text.parse().expect("check-config prints TOML");
    assert_eq!(parsed["server"]["listen"].as_str(), Some("0.0.0.0:8000"));
    assert_eq!(
        parsed["server"]["admin_listen"].as_str(),
        Some("127.0.0.1:9400")
    );
    assert_eq!(parsed["api"]["prefix"].as_str(), Some("/auth"));
    assert_eq!(parsed["auth"]["algorithm"].as_str(), Some("HS256"));
    assert_eq!(
        parsed["auth"]["access_token_expire_minutes"].as_integer(),
        Some(30)
    );
    assert_eq!(parsed["data_dir"].as_str(), Some("./data"));
}

#[test]
fn environment_beats_dotenv_beats_file_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/default.toml"),
        "[auth]\nissuer = \"from-file\"\naudience = \"from-file\"\nidle_minutes = 11\n[api]\nprefix = \"/file\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PORTCULLIS_AUTH__AUDIENCE=from-dotenv\nPORTCULLIS_API__PREFIX=/dotenv\nIDDLE_MINUTES=12\n",
    )
    .unwrap();
    let out = portcullis(
        dir.path(),
        &["check-config"],
        &[("PORTCULLIS_API__PREFIX", "/env")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(
        t["auth"]["issuer"].as_str(),
        Some("from-file"),
        "file over defaults"
    );
    assert_eq!(
        t["auth"]["audience"].as_str(),
        Some("from-dotenv"),
        ".env over file"
    );
    assert_eq!(
        t["api"]["prefix"].as_str(),
        Some("/env"),
        "environment over .env"
    );
    assert_eq!(
        t["auth"]["idle_minutes"].as_integer(),
        Some(12),
        "legacy name in .env"
    );
    assert_eq!(
        t["auth"]["leeway_seconds"].as_integer(),
        Some(5),
        "untouched default"
    );
}

#[test]
fn explicit_config_file_and_original_variable_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("my.toml"),
        "data_dir = \"/var/lib/portcullis\"\n",
    )
    .unwrap();
    let out = portcullis(
        dir.path(),
        &["check-config", "--config", "my.toml"],
        &[
            ("ALGORITHM", "HS512"),
            ("SECRET_KEY", &"k".repeat(64)),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "15"),
            ("IDDLE_MINUTES", "20"),
            ("SERVICE_TOKEN", "service-token-0123456789"),
            ("LOG_LEVEL", "DEBUG"),
            ("DATABASE_URL", "sqlite:///./data/users.db"),
            ("LOG_DATABASE_URL", "./data/logs.db"),
            ("RATE_LIMITS_PUBLIC_ROUTES", "50"),
            ("RATE_LIMITS_PUBLIC_TIME_UNIT", "1hour"),
            ("RATE_LIMITS_PRIVATE_ROUTES", "500"),
            ("RATE_LIMITS_PRIVATE_TIME_UNIT", "30seconds"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(t["data_dir"].as_str(), Some("/var/lib/portcullis"));
    assert_eq!(t["auth"]["algorithm"].as_str(), Some("HS512"));
    assert_eq!(
        t["auth"]["access_token_expire_minutes"].as_integer(),
        Some(15)
    );
    assert_eq!(t["auth"]["idle_minutes"].as_integer(), Some(20));
    assert_eq!(
        t["auth"]["service_tokens"][0]["name"].as_str(),
        Some("default")
    );
    assert_eq!(t["log"]["level"].as_str(), Some("DEBUG"));
    assert_eq!(t["storage"]["database"].as_str(), Some("./data/users.db"));
    assert_eq!(
        t["storage"]["audit_database"].as_str(),
        Some("./data/logs.db")
    );
    assert_eq!(t["rate_limits"]["public_routes"].as_integer(), Some(50));
    assert_eq!(t["rate_limits"]["public_time_unit"].as_str(), Some("1hour"));
    assert_eq!(t["rate_limits"]["private_routes"].as_integer(), Some(500));
    assert_eq!(
        t["rate_limits"]["private_time_unit"].as_str(),
        Some("30seconds")
    );
}

#[test]
fn secrets_are_masked() {
    let secret = "a-very-secret-signing-key-0123456789abcdef";
    let service = "service-token-abcdef0123456789";
    let out = check_config(&[("SECRET_KEY", secret), ("SERVICE_TOKEN", service)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(secret) && !text.contains(service), "{text}");
    assert!(text.contains("********"));
}

/// Each case: environment, and the key the error must name.
const BAD_ENV: &[(&str, &str, &str)] = &[
    ("PORTCULLIS_SERVER__LISTEN", "nonsense", "server.listen"),
    ("PORTCULLIS_SERVER__ADMIN_LISTEN", "localhost", "server.admin_listen"),
    ("PORTCULLIS_SERVER__ADMIN_LISTEN", "0.0.0.0:8000", "server.admin_listen"),
    ("PORTCULLIS_SERVER__THREADS", "abc", "server.threads"),
    ("PORTCULLIS_SERVER__THREADS", "-1", "server.threads"),
    ("PORTCULLIS_SERVER__GRACE_PERIOD_SECONDS", "99999", "server.grace_period_seconds"),
    ("PORTCULLIS_SERVER__GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS", "-5", "server.graceful_shutdown_timeout_seconds"),
    ("PORTCULLIS_SERVER__PUBLIC_URL", "ftp://example.com", "server.public_url"),
    ("PORTCULLIS_SERVER__PUBLIC_URL", "https://example.com/?next=evil", "server.public_url"),
    ("PORTCULLIS_SERVER__TRUSTED_PROXIES", "10.0.0.0/33", "server.trusted_proxies[0]"),
    ("PORTCULLIS_DATA_DIR", "", "data_dir"),
    ("SECRET_KEY", "too-short", "auth.secret_key"),
    ("ALGORITHM", "RS256", "auth.algorithm"),
    ("ALGORITHM", "none", "auth.algorithm"),
    ("PORTCULLIS_AUTH__ISSUER", "", "auth.issuer"),
    ("PORTCULLIS_AUTH__AUDIENCE", "", "auth.audience"),
    ("ACCESS_TOKEN_EXPIRE_MINUTES", "0", "auth.access_token_expire_minutes"),
    ("IDDLE_MINUTES", "thirty", "auth.idle_minutes"),
    ("PORTCULLIS_AUTH__LEEWAY_SECONDS", "60", "auth.leeway_seconds"),
    ("SERVICE_TOKEN", "short", "auth.service_tokens[0].token"),
    ("PORTCULLIS_AUTH__SERVICE_TOKENS", "[{name = \"a b\", token = \"0123456789abcdef\"}]", "auth.service_tokens[0].name"),
    ("PORTCULLIS_API__PREFIX", "auth", "api.prefix"),
    ("PORTCULLIS_API__PREFIX", "/auth/", "api.prefix"),
    ("PORTCULLIS_API__PREFIX", "/a/../b", "api.prefix"),
    ("PORTCULLIS_PROXY__CONNECT_TIMEOUT_SECONDS", "0", "proxy.connect_timeout_seconds"),
    ("PORTCULLIS_PROXY__READ_TIMEOUT_SECONDS", "x", "proxy.read_timeout_seconds"),
    ("PORTCULLIS_PROXY__WRITE_TIMEOUT_SECONDS", "0", "proxy.write_timeout_seconds"),
    ("PORTCULLIS_PROXY__IDLE_TIMEOUT_SECONDS", "0", "proxy.idle_timeout_seconds"),
    ("PORTCULLIS_PROXY__IDENTITY_HEADER_PREFIX", "X", "proxy.identity_header_prefix"),
    ("PORTCULLIS_PROXY__USER_ID_HEADER", "X-Auth-Bad Header", "proxy.user_id_header"),
    ("PORTCULLIS_PROXY__EMAIL_HEADER", "X-Email", "proxy.email_header"),
    ("PORTCULLIS_PROXY__NICKNAME_HEADER", "", "proxy.nickname_header"),
    ("PORTCULLIS_PROXY__ROLE_HEADER", "X-Auth-Role:", "proxy.role_header"),
    ("PORTCULLIS_PROXY__STRIP_HEADERS", "X-Tenant, Bad Header", "proxy.strip_headers[1]"),
    ("PORTCULLIS_PROXY__STRIP_HEADERS", "content-length", "proxy.strip_headers[0]"),
    ("PORTCULLIS_STORAGE__AUDIT_DATABASE", "./data/portcullis.redb", "storage.audit_database"),
    ("PORTCULLIS_STORAGE__DATABASE", "mysql://app:pw@db/portcullis", "storage.database"),
    ("DATABASE_URL", "postgres://app:pw@db/portcullis?sslmode=verify-ca", "storage.database"),
    ("DATABASE_URL", "postgres://app:pw@db", "storage.database"),
    ("DATABASE_URL", "postgresql://app:pw@db:notaport/portcullis", "storage.database"),
    ("LOG_DATABASE_URL", "postgres://app:pw@db/audit", "storage.audit_database"),
    ("PORTCULLIS_STORAGE__POSTGRES_POOL_SIZE", "0", "storage.postgres_pool_size"),
    ("REDIS_URL", "http://cache:6379", "storage.redis_url"),
    ("PORTCULLIS_STORAGE__REDIS_URL", "redis://:pw@cache:notaport/", "storage.redis_url"),
    ("PORTCULLIS_STORAGE__POSTGRES_CA_FILE", "/nonexistent/ca.pem", "storage.postgres_ca_file"),
    ("RATE_LIMITS_PUBLIC_ROUTES", "0", "rate_limits.public_routes"),
    ("RATE_LIMITS_PUBLIC_TIME_UNIT", "10fortnights", "rate_limits.public_time_unit"),
    ("RATE_LIMITS_PRIVATE_ROUTES", "lots", "rate_limits.private_routes"),
    ("RATE_LIMITS_PRIVATE_TIME_UNIT", "", "rate_limits.private_time_unit"),
    ("PORTCULLIS_LIMITS__ROUTE_DEFAULT", "10 per minute", "limits.route_default"),
    ("PORTCULLIS_LIMITS__ROUTE_DEFAULT", "0/1minute", "limits.route_default"),
    ("PORTCULLIS_LIMITS__MAX_TRACKED_KEYS", "0", "limits.max_tracked_keys"),
    ("PORTCULLIS_LIMITS__MAX_TRACKED_KEYS", "99999999999999999999999", "limits.max_tracked_keys"),
    ("PORTCULLIS_LIMITS__IPV6_PREFIX", "16", "limits.ipv6_prefix"),
    ("PORTCULLIS_LIMITS__IPV6_PREFIX", "129", "limits.ipv6_prefix"),
    ("PORTCULLIS_LIMITS__IPV6_PREFIX", "/64", "limits.ipv6_prefix"),
    ("PORTCULLIS_LIMITS__LOGIN_FAILURES", "-1", "limits.login_failures"),
    ("PORTCULLIS_LIMITS__LOGIN_FAILURE_WINDOW_MINUTES", "0", "limits.login_failure_window_minutes"),
    ("PORTCULLIS_LIMITS__REGISTRATIONS_PER_IP", "5/1fortnight", "limits.registrations_per_ip"),
    ("PORTCULLIS_LIMITS__RECOVERY_PER_ACCOUNT", "/1hour", "limits.recovery_per_account"),
    ("PORTCULLIS_LIMITS__RESEND_PER_ACCOUNT", "3", "limits.resend_per_account"),
    ("PORTCULLIS_LIMITS__MAX_HEADER_BYTES", "10", "limits.max_header_bytes"),
    ("PORTCULLIS_LIMITS__BODY_READ_TIMEOUT_SECONDS", "0", "limits.body_read_timeout_seconds"),
    ("PORTCULLIS_LIMITS__HEADER_READ_TIMEOUT_SECONDS", "0", "limits.header_read_timeout_seconds"),
    ("PORTCULLIS_LIMITS__HEADER_READ_TIMEOUT_SECONDS", "soon", "limits.header_read_timeout_seconds"),
    ("LOG_LEVEL", "loud", "log.level"),
    ("PORTCULLIS_LOG__FORMAT", "xml", "log.format"),
    ("PORTCULLIS_ROUTES", "[{path = \"api\", upstream = \"127.0.0.1:1\"}]", "routes[0].path"),
    ("PORTCULLIS_ROUTES", "[{path = \"/api\", upstream = \"127.0.0.1:1\", auth = \"maybe\"}]", "routes[0].auth"),
    ("PORTCULLIS_ROUTES", "[{path = \"/api\", upstream = \"127.0.0.1\"}]", "routes[0].upstream[0]"),
    ("PORTCULLIS_ROUTES", "[{path = \"/api\", upstream = []}]", "routes[0].upstream"),
    ("PORTCULLIS_ROUTES", "[{path = \"/api\", upstream = \"127.0.0.1:1\", auth = \"public\", roles = [\"admin\"]}]", "routes[0].roles"),
    ("PORTCULLIS_ROUTES", "[{path = \"/api\", upstream = \"127.0.0.1:1\"}, {path = \"/API\", upstream = \"127.0.0.1:1\"}]", "routes[1].path"),
    ("PORTCULLIS_ROUTES", "[{path = \"/auth/x\", upstream = \"127.0.0.1:1\"}]", "routes[0].path"),
    ("PORTCULLIS_ROUTES", "[{path = \"/api\", upstream = \"127.0.0.1:1\", color = \"red\"}]", "routes[0]"),
    ("PORTCULLIS_ROUTES", "[{upstream = \"127.0.0.1:1\"}]", "routes[0]"),
    ("PORTCULLIS_ROUTES", "not toml [", "routes"),
    ("PORTCULLIS_NOPE", "1", "nope"),
    ("PORTCULLIS_SERVER__NOPE", "1", "server.nope"),
    ("PORTCULLIS_SERVER", "x", "server"),
];

#[test]
fn every_invalid_environment_value_is_named() {
    for (var, value, key) in BAD_ENV {
        let out = check_config(&[(var, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}={value:?} was accepted:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("- {key}")),
            "{var}={value:?}: expected the error to name {key}, got:\n{stderr}"
        );
    }
}

const BAD_FILES: &[(&str, &str)] = &[
    ("[server]\nnope = 1\n", "server.nope"),
    ("[nope]\nx = 1\n", "nope"),
    ("[server]\nlisten = 8000\n", "server.listen: expected a string"),
    ("[auth]\nidle_minutes = \"30\"\n", "auth.idle_minutes: expected an integer"),
    ("server = 3\n", "server: expected a table"),
    ("[[routes]]\npath = \"/x\"\nupstream = \"127.0.0.1:1\"\nauth = \"public\"\nroles = \"admin\"\n", "routes[0].roles"),
    ("this is not toml", "config file"),
];

#[test]
fn every_invalid_file_value_is_named() {
    for (content, expected) in BAD_FILES {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), content).unwrap();
        let out = portcullis(dir.path(), &["check-config", "--config", "bad.toml"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{content:?} was accepted");
        assert!(
            stderr.contains(expected),
            "{content:?}: expected {expected:?} in:\n{stderr}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(
        dir.path(),
        &["check-config", "--config", "missing.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let out = check_config(&[
        ("PORTCULLIS_SERVER__LISTEN", "bad"),
        ("SECRET_KEY", "short"),
        ("LOG_LEVEL", "loud"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["server.listen", "auth.secret_key", "log.level"] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    assert!(stderr.contains("3 problems"), "{stderr}");
}

#[test]
fn serve_refuses_an_invalid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(
        dir.path(),
        &["serve"],
        &[("PORTCULLIS_SERVER__LISTEN", "bad")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created for a refused config"
    );
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(dir.path(), &["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
    let out = portcullis(dir.path(), &["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("serve") && help.contains("check-config"),
        "{help}"
    );
    let out = portcullis(dir.path(), &["frobnicate"], &[]);
    assert!(!out.status.success());
}

#[test]
fn signing_key_is_generated_once_with_mode_0600_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawConfig {
        data_dir: dir.path().to_string_lossy().into_owned(),
        ..RawConfig::default()
    };
    let config = Config::from_raw(&raw).unwrap();
    let subject = Subject {
        user_id: "u",
        email: "u@example.com",
        nickname: "u",
        role: "user",
        session_id: "s",
    };
    let now = crate::common::unix_now();
    let first = AppState::new(config.clone(), Arc::new(SystemClock)).unwrap();
    let token = first.tokens.issue(&subject, now).unwrap();
    let key_file = dir.path().join("secret.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read(&key_file).unwrap().len(), 64, "256 bits, hex");
    drop(first);
    let second = AppState::new(config, Arc::new(SystemClock)).unwrap();
    assert!(
        second.tokens.validate(&token, now).is_ok(),
        "a restart keeps the key"
    );

    // A different data dir means a different key: tokens do not carry over.
    let other_dir = tempfile::tempdir().unwrap();
    raw.data_dir = other_dir.path().to_string_lossy().into_owned();
    let third = AppState::new(Config::from_raw(&raw).unwrap(), Arc::new(SystemClock)).unwrap();
    assert!(third.tokens.validate(&token, now).is_err());
}

#[test]
fn a_tampered_generated_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.key"), "short").unwrap();
    let raw = RawConfig {
        data_dir: dir.path().to_string_lossy().into_owned(),
        ..RawConfig::default()
    };
    let err = AppState::new(Config::from_raw(&raw).unwrap(), Arc::new(SystemClock))
        .err()
        .expect("short key file refused");
    assert!(err.to_string().contains("secret.key"), "{err}");
}

fn leaf_keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => leaf_keys(&key, t, out),
            _ => out.push(key),
        }
    }
}

#[test]
fn shipped_default_toml_lists_every_key_at_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: toml::Table = text.parse().unwrap();
    let defaults = toml::Value::try_from(RawConfig::default()).unwrap();
    let (mut in_file, mut expected) = (Vec::new(), Vec::new());
    leaf_keys("", &file, &mut in_file);
    leaf_keys("", defaults.as_table().unwrap(), &mut expected);
    in_file.sort();
    expected.sort();
    assert_eq!(
        in_file, expected,
        "config/default.toml and the embedded defaults differ in keys"
    );
    let parsed: RawConfig = toml::from_str(&text).unwrap();
    assert_eq!(
        parsed,
        RawConfig::default(),
        "config/default.toml values differ from the defaults"
    );
}

#[test]
fn example_config_is_valid() {
    {
        let name = "examples/gateway.toml";
        let dir = tempfile::tempdir().unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let out = portcullis(
            dir.path(),
            &["check-config", "--config", path.to_str().unwrap()],
            &[],
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn database_passwords_never_show_in_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(
        dir.path(),
        &["check-config"],
        &[(
            "DATABASE_URL",
            "postgres://app:s3cret@db.example.com/portcullis?sslmode=require",
        )],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("postgres://app:********@db.example.com/portcullis?sslmode=require"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret"));
    let out = portcullis(
        dir.path(),
        &["check-config"],
        &[(
            "DATABASE_URL",
            "postgres://app:s3cret@db.example.com:99999/portcullis",
        )],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("storage.database"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
