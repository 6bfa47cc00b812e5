//! Logging: `tracing` to stderr, human-readable or JSON (`log.format`), filtered by `log.level` or
//! `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests build several apps in one process) keeps the first subscriber.
    let _ = if settings.format == LogFormat::Json { builder.json().try_init() } else { builder.try_init() };
}
