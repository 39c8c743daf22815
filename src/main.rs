//! The `portcullis` command line: serve (default), check-config, healthcheck, backup, restore,
//! admin create.

/// mimalloc: per-thread free lists instead of glibc's locked arenas (measurably fewer
/// cycles per proxied request, see docs/performance.md) and memory returned to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use portcullis::clock::SystemClock;
use portcullis::config::{Config, ConfigError, RawConfig, Sources};
use portcullis::server::run;
use portcullis::state::AppState;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Reverse-proxy authentication sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve(ServeArgs),
    /// Print the effective configuration with secrets masked, or list every problem.
    CheckConfig(ConfigArg),
    /// Exit 0 when the running server answers /readyz on its admin listener (for HEALTHCHECK).
    Healthcheck(ConfigArg),
    /// Have the running server write a consistent copy of both databases into DIR.
    Backup {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Put a backup from DIR into the configured (empty) data dir; the server must be stopped.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Copy this instance's embedded data (the server stopped) into an empty PostgreSQL
    /// database, so that several replicas can serve it.
    Migrate {
        /// The PostgreSQL URL, e.g. postgres://user:password@host:5432/portcullis?sslmode=verify-full
        #[arg(long)]
        to: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage accounts from the command line (with the server stopped).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin. The password and recovery passphrase are read from
    /// PORTCULLIS_ADMIN_PASSWORD / PORTCULLIS_ADMIN_PASSPHRASE, or else from the first two
    /// lines of standard input; never from the command line.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        nickname: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The admin's secrets: environment first, else standard input (one per line).
fn read_secrets() -> Result<(String, String), String> {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut password = from_env("PORTCULLIS_ADMIN_PASSWORD");
    let mut passphrase = from_env("PORTCULLIS_ADMIN_PASSPHRASE");
    let stdin = std::io::stdin();
    for slot in [&mut password, &mut passphrase] {
        if slot.is_none() {
            let mut line = String::new();
            stdin
                .read_line(&mut line)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            if !line.is_empty() {
                *slot = Some(line);
            }
        }
    }
    match (password, passphrase) {
        (Some(pw), Some(pp)) => Ok((pw, pp)),
        _ => Err("give the password and the recovery passphrase in PORTCULLIS_ADMIN_PASSWORD and PORTCULLIS_ADMIN_PASSPHRASE, or as two lines on standard input".into()),
    }
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Take over the listening sockets of a running portcullis (send it SIGQUIT after starting
    /// this one): a zero-downtime upgrade.
    #[arg(long)]
    upgrade: bool,
}

#[derive(clap::Args, Default)]
struct ConfigArg {
    /// TOML config file [default: config/default.toml when present; env PORTCULLIS_CONFIG]
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn load(arg: &ConfigArg) -> Result<(Config, RawConfig), Vec<ConfigError>> {
    Config::load(&Sources::from_process(arg.config.as_deref()))
}

fn report(errors: &[ConfigError]) {
    eprintln!(
        "portcullis: invalid configuration ({} problem{}):",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        eprintln!("  - {e}");
    }
}

/// Load the configuration and run a one-shot command: exit 0 with its message, 1 with its
/// error, 2 on an invalid configuration.
fn run_with_config(
    arg: &ConfigArg,
    command: impl FnOnce(&Config) -> Result<String, String>,
) -> ExitCode {
    let config = match load(arg) {
        Ok((config, _)) => config,
        Err(errors) => {
            report(&errors);
            return ExitCode::from(2);
        }
    };
    match command(&config) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("portcullis: {message}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::CheckConfig(arg) => match load(&arg) {
            Ok((_, raw)) => {
                print!("{}", raw.to_masked_toml());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                report(&errors);
                ExitCode::from(2)
            }
        },
        Command::Healthcheck(arg) => match load(&arg) {
            Ok((config, _)) => {
                match portcullis::admin_client::probe_ready(config.server.admin_listen) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(message) => {
                        eprintln!("portcullis: not ready: {message}");
                        ExitCode::from(1)
                    }
                }
            }
            Err(errors) => {
                report(&errors);
                ExitCode::from(2)
            }
        },
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    nickname,
                    config,
                },
        } => {
            let config = match load(&config) {
                Ok((config, _)) => config,
                Err(errors) => {
                    report(&errors);
                    return ExitCode::from(2);
                }
            };
            let result = read_secrets().and_then(|(password, passphrase)| {
                use portcullis::clock::Clock;
                portcullis::bootstrap::create_admin(
                    &config,
                    &email,
                    &nickname,
                    &password,
                    &passphrase,
                    SystemClock.now(),
                )
            });
            match result {
                Ok(id) => {
                    println!("created admin {email} with id {id}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("portcullis: cannot create the admin: {message}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Migrate { to, config } => run_with_config(&config, |c| {
            let url =
                portcullis::config::PostgresUrl::parse(&to).map_err(|e| format!("--to: {e}"))?;
            let copied = portcullis::store::migrate_to_postgres(&c.storage, &url)
                .map_err(|e| e.to_string())?;
            let counts: Vec<String> = copied
                .counts()
                .iter()
                .map(|(what, n)| format!("{n} {what}"))
                .collect();
            Ok(format!(
                "copied {} from {} into {}; set storage.database (DATABASE_URL) to that URL on every replica",
                counts.join(", "),
                c.storage.database.describe(),
                url.masked()
            ))
        }),
        Command::Backup { out, config } => run_with_config(&config, |c| {
            portcullis::backup::backup(c, &out)
                .map(|()| format!("backup written to {}", out.display()))
        }),
        Command::Restore { from, config } => run_with_config(&config, |c| {
            portcullis::backup::restore(c, &from).map(|()| {
                format!(
                    "restored {} into {}",
                    from.display(),
                    c.storage.database.describe()
                )
            })
        }),
        Command::Serve(ServeArgs {
            config: arg,
            upgrade,
        }) => {
            let config = match load(&arg) {
                Ok((config, _)) => config,
                Err(errors) => {
                    report(&errors);
                    return ExitCode::from(2);
                }
            };
            portcullis::logging::init(config.log.format, &config.live.log_level);
            let sources = Sources::from_process(arg.config.as_deref());
            if upgrade {
                return match portcullis::server::upgrade(config, Arc::new(SystemClock), sources) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(message) => {
                        tracing::error!(error = %message, "cannot take over");
                        eprintln!("portcullis: cannot take over: {message}");
                        ExitCode::from(1)
                    }
                };
            }
            let state = match AppState::new(config, Arc::new(SystemClock)) {
                Ok(state) => Arc::new(state),
                Err(message) => {
                    tracing::error!(error = %message, "cannot start");
                    eprintln!("portcullis: cannot start: {message}");
                    return ExitCode::from(1);
                }
            };
            run(state, sources);
            ExitCode::SUCCESS
        }
    }
}
