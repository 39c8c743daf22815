//! Layering of configuration sources: embedded defaults, then the TOML file, then `.env`, then the
//! process environment. Every unknown key and mistyped value is reported with its key and source.

use super::raw::RawConfig;
use super::ConfigError;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Environment variable prefix for every key: `PORTCULLIS_SECTION__KEY`.
pub const ENV_PREFIX: &str = "PORTCULLIS_";
/// Environment variable naming the config file (not a config key itself).
pub const CONFIG_FILE_VAR: &str = "PORTCULLIS_CONFIG";
/// `PORTCULLIS_…` variables that are not configuration keys.
const NOT_KEYS: &[&str] = &[
    CONFIG_FILE_VAR,
    "PORTCULLIS_ADMIN_PASSWORD",
    "PORTCULLIS_ADMIN_PASSPHRASE",
];
/// The config file read when none is named and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

/// The original service's variable names and the key each one sets.
const LEGACY_NAMES: &[(&str, &str)] = &[
    ("SECRET_KEY", "auth.secret_key"),
    ("ALGORITHM", "auth.algorithm"),
    (
        "ACCESS_TOKEN_EXPIRE_MINUTES",
        "auth.access_token_expire_minutes",
    ),
    ("IDDLE_MINUTES", "auth.idle_minutes"),
    ("SERVICE_TOKEN", "auth.service_tokens"),
    ("LOG_LEVEL", "log.level"),
    ("DATABASE_URL", "storage.database"),
    ("LOG_DATABASE_URL", "storage.audit_database"),
    ("REDIS_URL", "storage.redis_url"),
    (
        "REQUIRE_EMAIL_VERIFICATION",
        "accounts.require_email_verification",
    ),
    ("RATE_LIMITS_PUBLIC_ROUTES", "rate_limits.public_routes"),
    ("RATE_LIMITS_PRIVATE_ROUTES", "rate_limits.private_routes"),
    (
        "RATE_LIMITS_PUBLIC_TIME_UNIT",
        "rate_limits.public_time_unit",
    ),
    (
        "RATE_LIMITS_PRIVATE_TIME_UNIT",
        "rate_limits.private_time_unit",
    ),
];

/// Where the configuration comes from. `from_process` reads the real process; tests build one
/// by hand so that they never touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The TOML file; `file_required` says whether its absence is an error.
    pub file: Option<PathBuf>,
    pub file_required: bool,
    /// TOML text merged in place of the file (for embedding and fuzzing; `file` is then unused).
    pub text: Option<String>,
    /// The `.env` file; a missing one is fine.
    pub dotenv: Option<PathBuf>,
    /// The process environment, as (name, value) pairs.
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The sources of a real run: `--config` (or PORTCULLIS_CONFIG, or `config/default.toml` when
    /// present), `./.env`, and the process environment.
    pub fn from_process(config_flag: Option<&Path>) -> Sources {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let named = config_flag.map(Path::to_path_buf).or_else(|| {
            env.iter()
                .find(|(k, _)| k == CONFIG_FILE_VAR)
                .map(|(_, v)| PathBuf::from(v))
        });
        let (file, file_required) = match named {
            Some(path) => (Some(path), true),
            None => (Some(PathBuf::from(DEFAULT_CONFIG_FILE)), false),
        };
        Sources {
            file,
            file_required,
            text: None,
            dotenv: Some(PathBuf::from(".env")),
            env,
        }
    }
}

/// Merge every source over the defaults into one `RawConfig`, or report every problem found.
pub fn load_raw(sources: &Sources) -> Result<RawConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut tree = match Value::try_from(RawConfig::default()) {
        Ok(Value::Table(t)) => t,
        _ => {
            return Err(vec![ConfigError::new(
                "(defaults)",
                "embedded defaults do not serialize",
            )])
        }
    };
    let defaults = tree.clone();

    let mut merge_text =
        |text: &str, origin: String, errors: &mut Vec<ConfigError>| match text.parse::<Table>() {
            Ok(file) => merge_checked(&mut tree, &defaults, file, "", errors),
            Err(e) => errors.push(ConfigError::new(
                origin,
                format!("not valid TOML: {}", e.message()),
            )),
        };
    if let Some(text) = &sources.text {
        merge_text(text, "config text".into(), &mut errors);
    } else if let Some(path) = &sources.file {
        match std::fs::read_to_string(path) {
            Ok(text) => merge_text(
                &text,
                format!("config file {}", path.display()),
                &mut errors,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sources.file_required => {}
            Err(e) => errors.push(ConfigError::new(
                format!("config file {}", path.display()),
                format!("cannot be read: {e}"),
            )),
        }
    }

    if let Some(path) = &sources.dotenv {
        match dotenvy::from_path_iter(path) {
            Ok(iter) => {
                let mut vars = Vec::new();
                for item in iter {
                    match item {
                        Ok(pair) => vars.push(pair),
                        Err(e) => errors.push(ConfigError::new(
                            format!(".env file {}", path.display()),
                            format!("cannot be parsed: {e}"),
                        )),
                    }
                }
                apply_env(&mut tree, &defaults, &vars, ".env", &mut errors);
            }
            Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(ConfigError::new(
                format!(".env file {}", path.display()),
                format!("cannot be read: {e}"),
            )),
        }
    }

    apply_env(
        &mut tree,
        &defaults,
        &sources.env,
        "environment",
        &mut errors,
    );

    if !errors.is_empty() {
        return Err(errors);
    }
    let de = Value::Table(tree);
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        vec![ConfigError::new(key, message)]
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Merge `over` into `base`, checking each key exists in `defaults` with the same type.
fn merge_checked(
    base: &mut Table,
    defaults: &Table,
    over: Table,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) {
    for (key, value) in over {
        let full = join_key(prefix, &key);
        let Some(default) = defaults.get(&key) else {
            errors.push(ConfigError::new(full, "unknown key"));
            continue;
        };
        match (default, value) {
            (Value::Table(dt), Value::Table(vt)) => {
                let Some(Value::Table(bt)) = base.get_mut(&key) else {
                    continue;
                };
                merge_checked(bt, dt, vt, &full, errors);
            }
            (Value::Array(_), v @ Value::Array(_))
            | (Value::String(_), v @ Value::String(_))
            | (Value::Integer(_), v @ Value::Integer(_))
            | (Value::Boolean(_), v @ Value::Boolean(_)) => {
                base.insert(key, v);
            }
            (d, v) => errors.push(ConfigError::new(
                full,
                format!("expected {}, found {}", type_name(d), type_name(&v)),
            )),
        }
    }
}

/// The key path an environment variable sets, if it is one of ours.
fn env_key(name: &str) -> Option<(String, bool)> {
    if NOT_KEYS.contains(&name) {
        return None;
    }
    if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
        let key = rest
            .split("__")
            .map(|part| part.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(".");
        return Some((key, true));
    }
    LEGACY_NAMES
        .iter()
        .find(|(legacy, _)| *legacy == name)
        .map(|(_, key)| (key.to_string(), false))
}

fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut current = table.get(parts.next()?)?;
    for part in parts {
        current = current.as_table()?.get(part)?;
    }
    Some(current)
}

fn insert(table: &mut Table, key: &str, value: Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut current = table;
    for part in &parts[..parts.len() - 1] {
        let Some(Value::Table(next)) = current.get_mut(*part) else {
            return;
        };
        current = next;
    }
    current.insert(parts[parts.len() - 1].to_string(), value);
}

/// Apply one environment layer: legacy names first, so that `PORTCULLIS_…` names win.
fn apply_env(
    tree: &mut Table,
    defaults: &Table,
    vars: &[(String, String)],
    source: &str,
    errors: &mut Vec<ConfigError>,
) {
    let mut ours: Vec<(String, bool, &str, &str)> = vars
        .iter()
        .filter_map(|(name, value)| {
            env_key(name).map(|(key, prefixed)| (key, prefixed, name.as_str(), value.as_str()))
        })
        .collect();
    ours.sort_by_key(|(_, prefixed, _, _)| *prefixed);
    for (key, _, name, raw) in ours {
        let label = format!("{key} ({name} in {source})");
        let default = match lookup(defaults, &key) {
            Some(Value::Table(_)) | None => {
                errors.push(ConfigError::new(label, "unknown key"));
                continue;
            }
            Some(d) => d,
        };
        let value = if name == "SERVICE_TOKEN" {
            let mut entry = Table::new();
            entry.insert("name".into(), Value::String("default".into()));
            entry.insert("token".into(), Value::String(raw.to_string()));
            Ok(Value::Array(vec![Value::Table(entry)]))
        } else if name == "DATABASE_URL" || name == "LOG_DATABASE_URL" {
            Ok(Value::String(database_path_from_url(raw)))
        } else {
            env_value(default, raw)
        };
        match value {
            Ok(v) => insert(tree, &key, v),
            Err(message) => errors.push(ConfigError::new(label, message)),
        }
    }
}

/// The original service's DATABASE_URL was an SQLAlchemy URL (`sqlite:///./data/users.db`);
/// portcullis keeps the path part and stores a redb file there.
fn database_path_from_url(raw: &str) -> String {
    for scheme in ["sqlite:///", "redb://", "file://"] {
        if let Some(path) = raw.strip_prefix(scheme) {
            return path.to_string();
        }
    }
    raw.to_string()
}

/// Type an environment string after the key's default value.
fn env_value(default: &Value, raw: &str) -> Result<Value, String> {
    let trimmed = raw.trim();
    match default {
        Value::Integer(_) => trimmed
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, found {raw:?}")),
        Value::Boolean(_) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, found {raw:?}")),
        },
        Value::Array(_) if trimmed.starts_with('[') => format!("v = {trimmed}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| "expected a TOML list such as [\"a\", \"b\"]".to_string()),
        Value::Array(_) => Ok(Value::Array(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
        _ => Ok(Value::String(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Sources::default()
        }
    }

    #[test]
    fn prefixed_name_beats_legacy_name_in_one_layer() {
        let raw = load_raw(&env(&[
            ("PORTCULLIS_AUTH__IDLE_MINUTES", "7"),
            ("IDDLE_MINUTES", "9"),
        ]))
        .unwrap();
        assert_eq!(raw.auth.idle_minutes, 7);
    }

    #[test]
    fn lists_split_on_commas_or_parse_as_toml() {
        let raw = load_raw(&env(&[(
            "PORTCULLIS_SERVER__TRUSTED_PROXIES",
            "10.0.0.0/8, 192.168.1.1/32",
        )]))
        .unwrap();
        assert_eq!(
            raw.server.trusted_proxies,
            vec!["10.0.0.0/8", "192.168.1.1/32"]
        );
        let raw = load_raw(&env(&[(
            "PORTCULLIS_ROUTES",
            r#"[{path = "/api", upstream = "127.0.0.1:9", auth = "public"}]"#,
        )]))
        .unwrap();
        assert_eq!(raw.routes[0].path, "/api");
    }

    #[test]
    fn every_bad_variable_is_reported() {
        let errs = load_raw(&env(&[
            ("PORTCULLIS_SERVER__THREADS", "many"),
            ("PORTCULLIS_NOPE", "1"),
            ("PORTCULLIS_SERVER", "x"),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn sqlalchemy_style_database_url_keeps_its_path() {
        let raw = load_raw(&env(&[("DATABASE_URL", "sqlite:///./data/users.db")])).unwrap();
        assert_eq!(raw.storage.database, "./data/users.db");
    }
}
