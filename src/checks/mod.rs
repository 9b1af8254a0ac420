//! `bothost check-config`: the production checklist an operator runs before
//! every deploy. Each check reads the same configuration `serve` would and
//! answers PASS, WARN or FAIL with one line saying why and what to do.
//!
//! Owns the checks and how their report reads (a table, or JSON for
//! scripts). It never changes anything it inspects: no migration, no file
//! created, no port kept, no database written (a SQLite write lock is taken
//! and rolled back). Each rule is a plain function of what was read, so unit
//! tests call it without a database or a network.
//!
//! The checks, in order: `configuration`, `database`, `migrations`,
//! `database_writable`, `jwt_secret`, `tls`, `rate_limits`, `logging`,
//! `bind_address`, `runtime_dir`, `worker_binary`, `memory_headroom`,
//! `memory_ceiling`, `inference`, `api_keys`, `restart_schedule`, `pool_size`, `monitoring`,
//! `alert_receivers`, `playbooks`, `backups`, then `registration` and
//! `admin_user`.

mod database;
mod files;
mod host;
mod report;
mod security;

use std::path::{Path, PathBuf};

pub use files::runbooks;
pub use host::available_memory;
pub use report::{Check, Report, Status};

use crate::config::Config;

/// Where the files the checks read beside the configuration live.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `monitoring/` (Prometheus and Alertmanager files).
    pub monitoring: PathBuf,
    /// `playbooks/`.
    pub playbooks: PathBuf,
}

impl Paths {
    /// `monitoring/` and `playbooks/` beside the configuration file.
    pub fn beside(config: &Path) -> Self {
        let dir = config
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self {
            monitoring: dir.join("monitoring"),
            playbooks: dir.join("playbooks"),
        }
    }
}

/// The checks `serve` runs at start and logs (those that need no network
/// and take no time): what an operator should not have to remember to ask.
pub fn at_start(config: &Config) -> Vec<Check> {
    vec![
        security::jwt_secret(config),
        security::tls(config, chrono::Utc::now()),
        security::registration(config),
        host::memory_headroom(config, host::available_memory()),
        host::api_keys(config, |k| std::env::var(k).ok()),
        files::backups(config, chrono::Utc::now()),
    ]
}

/// Runs every check against the configuration file at `path`.
pub async fn run(path: &Path, paths: &Paths) -> Report {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            return Report {
                checks: vec![Check::fail(
                    "configuration",
                    format!("{e}; fix that key (every other check needs a valid file)"),
                )],
            }
        }
    };
    let mut checks = vec![Check::pass(
        "configuration",
        format!(
            "{} parses and validates ({} bots)",
            path.display(),
            config.bots.len()
        ),
    )];
    let db = database::check(&config).await;
    checks.extend(db.checks);
    checks.push(security::jwt_secret(&config));
    checks.push(security::tls(&config, chrono::Utc::now()));
    checks.push(security::rate_limits(&config));
    checks.push(host::logging(&config));
    checks.push(host::bind_address(&config).await);
    checks.push(host::runtime_dir(&config));
    checks.push(host::worker_binary(&config).await);
    checks.push(host::memory_headroom(&config, host::available_memory()));
    checks.push(host::memory_ceiling(&crate::ceiling::Ceilings::inspect(
        config.supervisor.memory_ceiling,
    )));
    checks.push(host::inference(&config).await);
    checks.push(host::api_keys(&config, |k| std::env::var(k).ok()));
    checks.push(host::restart_schedule(&config));
    checks.push(db.pool_size);
    checks.push(files::monitoring(&paths.monitoring));
    checks.push(files::alert_receivers(&paths.monitoring));
    checks.push(files::playbooks(&paths.monitoring, &paths.playbooks));
    checks.push(files::backups(&config, chrono::Utc::now()));
    checks.push(security::registration(&config));
    checks.push(db.admin_user);
    Report { checks }
}
