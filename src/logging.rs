//! Log output: JSON lines (or text) through tracing, filtered by `log.level`. Records from the
//! `log` crate (pingora's own) are routed into the same output.

use crate::config::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// Install the global subscriber; a second call (tests) is a no-op.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(true);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
