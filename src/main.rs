//! The `portcullis` command line: serve (default), check-config, healthcheck.

use clap::{Parser, Subcommand};
use portcullis::app::{run, AppState};
use portcullis::clock::SystemClock;
use portcullis::config::{Config, ConfigError, RawConfig, Sources};
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
    Serve(ConfigArg),
    /// Print the effective configuration with secrets masked, or list every problem.
    CheckConfig(ConfigArg),
    /// Exit 0 when the running server answers /readyz on its admin listener (for HEALTHCHECK).
    Healthcheck(ConfigArg),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ConfigArg::default())) {
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
            Ok((config, _)) => match portcullis::app::probe_ready(config.server.admin_listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("portcullis: not ready: {message}");
                    ExitCode::from(1)
                }
            },
            Err(errors) => {
                report(&errors);
                ExitCode::from(2)
            }
        },
        Command::Serve(arg) => {
            let config = match load(&arg) {
                Ok((config, _)) => config,
                Err(errors) => {
                    report(&errors);
                    return ExitCode::from(2);
                }
            };
            portcullis::logging::init(&config.log);
            let state = match AppState::new(config, Arc::new(SystemClock)) {
                Ok(state) => Arc::new(state),
                Err(message) => {
                    tracing::error!(error = %message, "cannot start");
                    eprintln!("portcullis: cannot start: {message}");
                    return ExitCode::from(1);
                }
            };
            run(state);
            ExitCode::SUCCESS
        }
    }
}
