//! Logging setup. `serve` logs JSON when stderr is not a terminal (for
//! journald and log shippers) and a compact human format when it is; the
//! client commands log only warnings. `RUST_LOG` overrides the configured
//! level. Nothing here may print a secret: secrets are never fields of a log
//! event in this code base. [`Retrying`] keeps a job that runs every second
//! or so from saying the same failure at every try.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

pub fn init_server(logging: &LoggingConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logging.level));
    let json = match logging.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.compact().init();
    }
}

pub fn init_client() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .compact()
        .init();
}

/// What a job repeated every few seconds tells the log: once when it
/// starts failing (a full disk, the database away) and once when it works
/// again, not at every try.
pub struct Retrying {
    failing: bool,
    /// What cannot be done, for "… (retrying): error".
    cannot: &'static str,
    /// What the log says when it works again.
    again: &'static str,
}

impl Retrying {
    pub fn new(cannot: &'static str, again: &'static str) -> Self {
        Self {
            failing: false,
            cannot,
            again,
        }
    }

    /// One try's outcome: `Ok(true)` it worked, `Ok(false)` there was
    /// nothing to do (which proves nothing either way).
    pub fn saw(&mut self, outcome: Result<bool, impl std::fmt::Display>) {
        match outcome {
            Err(e) if !self.failing => {
                tracing::warn!("{} (retrying): {e}", self.cannot);
                self.failing = true;
            }
            Ok(true) if self.failing => {
                tracing::info!("{}", self.again);
                self.failing = false;
            }
            _ => {}
        }
    }
}
