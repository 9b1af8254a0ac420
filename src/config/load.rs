//! Loading: read the file, lay the environment over it, deserialize with
//! unknown keys refused, anchor relative paths, validate. Every error names
//! the file, the key and the reason.

use std::path::{Path, PathBuf};

use super::env::apply_env;
use super::schema::Config;

/// Where `serve` and the client commands look when no `--config` is given.
pub const DEFAULT_PATH: &str = "supervisor.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {key}: {reason}")]
    Invalid {
        path: String,
        key: String,
        reason: String,
    },
}

impl Config {
    /// Reads, overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path, std::env::vars())
    }

    /// The whole pipeline on given text and environment; `path` names the
    /// source in errors and anchors relative paths.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: shown.clone(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        apply_env(&mut table, env).map_err(|(key, reason)| ConfigError::Invalid {
            path: shown.clone(),
            key,
            reason,
        })?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid {
                path: shown.clone(),
                key: match e.path().to_string() {
                    p if p == "." => "(top level)".to_owned(),
                    p => p,
                },
                // toml appends its own "in `section`" line; the key already says it.
                reason: first_line(&e.into_inner().to_string()),
            })?;
        // Absolute, so that what the host and its workers see does not depend
        // on a later change of directory.
        let base = std::path::absolute(path.parent().unwrap_or(Path::new("")))
            .unwrap_or_else(|_| path.parent().unwrap_or(Path::new(".")).to_owned());
        config.resolve_paths(&base);
        config.base_dir = base;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: shown,
                key,
                reason,
            })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let anchor = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        anchor(&mut self.supervisor.runtime_dir);
        anchor(&mut self.backup.dir);
        if let Some(p) = self.backup.pg_bin_dir.as_mut() {
            anchor(p);
        }
        if let Some(p) = self.supervisor.worker_binary.as_mut() {
            anchor(p);
        }
        for bot in &mut self.bots {
            if let Some(p) = bot.worker_binary.as_mut() {
                anchor(p);
            }
        }
        if let Some(tls) = self.server.tls.as_mut() {
            anchor(&mut tls.cert);
            anchor(&mut tls.key);
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
