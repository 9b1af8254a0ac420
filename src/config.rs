//! Typed, validated configuration: `supervisor.toml` plus the environment.
//!
//! Owns the file format, its defaults and every rule about what a valid value
//! is. Loading is three steps, each a plain function unit tests can call:
//!
//! 1. parse the TOML text (a syntax error names the line);
//! 2. lay environment overrides over it: `BOTHOST_<SECTION>__<KEY>=value`
//!    (for example `BOTHOST_SERVER__BIND=0.0.0.0:80`), so secrets and
//!    per-host values need not live in the file;
//! 3. deserialize with unknown keys refused, then validate what types cannot
//!    say (unique bot names, ranges, path lengths).
//!
//! Every error names the file, the key and the reason. This module never
//! touches the runtime: it only reads and checks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bot_worker::{BotSpec, BuiltinSpec, EndpointSpec, EngineSpec, RemoteSpec};
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Where `serve` and the client commands look when no `--config` is given.
pub const DEFAULT_PATH: &str = "supervisor.toml";

/// Prefix of environment variables that override keys of the file.
const ENV_PREFIX: &str = "BOTHOST_";

/// Longest path a Unix socket address can hold, less the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The directory relative paths are anchored at (the file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub database: DatabaseConfig,
    pub supervisor: SupervisorConfig,
    pub logging: LoggingConfig,
    /// Model servers, primary first.
    pub inference: Vec<InferenceConfig>,
    pub bots: Vec<BotConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP front end; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<TlsConfig>,
    /// How often the server pings each WebSocket client.
    #[serde(with = "humantime_serde")]
    pub ws_heartbeat: Duration,
    /// A WebSocket client silent for this long is dropped.
    #[serde(with = "humantime_serde")]
    pub ws_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            ws_heartbeat: Duration::from_secs(10),
            ws_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 signing secret (also `BOTHOST_JWT_SECRET`). Empty: a random one
    /// per start, so tokens do not survive a restart (a warning says so).
    pub jwt_secret: Secret,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Anyone may register; when false, `bothost user add` creates users.
    pub open_registration: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            token_ttl: Duration::from_secs(24 * 3600),
            open_registration: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest JSON request body.
    pub max_body: ByteSize,
    /// Longest chat message, in characters.
    pub max_message_chars: usize,
    /// Largest WebSocket message.
    pub max_ws_frame: ByteSize,
    pub messages_per_minute_per_user: u32,
    pub messages_per_minute_per_ip: u32,
    /// Login and registration attempts.
    pub logins_per_minute_per_ip: u32,
    /// Turns one user may have running at once.
    pub max_in_flight_per_user: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body: ByteSize::kib(64),
            max_message_chars: 8000,
            max_ws_frame: ByteSize::kib(64),
            messages_per_minute_per_user: 60,
            messages_per_minute_per_ip: 600,
            logins_per_minute_per_ip: 10,
            max_in_flight_per_user: 4,
        }
    }
}

/// A value that must never reach a log: `Debug` and `Display` redact it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db` or `sqlite://path` (relative to
    /// this file). Also `BOTHOST_DATABASE_URL`.
    pub url: Secret,
    /// Connections the pool starts with as its limit.
    pub pool_size: usize,
    /// The limit the pool may grow to by itself under sustained load.
    pub pool_max: usize,
    /// Utilisation at or above 80% for this long grows the pool.
    #[serde(with = "humantime_serde")]
    pub pool_grow_window: Duration,
    /// Waiting longer than this for a connection is an error (503).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL statements running longer are cancelled.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://data/bothost.db"),
            pool_size: 20,
            pool_max: 40,
            pool_grow_window: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the store lives, read from `database.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Postgres(Secret),
    Sqlite(PathBuf),
}

impl DatabaseConfig {
    /// Parses the URL; relative SQLite paths are anchored at `base`.
    pub fn target_from(&self, base: &Path) -> Result<DatabaseTarget, String> {
        let url = self.url.expose();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseTarget::Postgres(self.url.clone()));
        }
        match url.strip_prefix("sqlite://") {
            Some("") | Some(":memory:") => Err(
                "an SQLite database needs a file path (the pool shares it), e.g. sqlite://data/bothost.db"
                    .into(),
            ),
            Some(path) => Ok(DatabaseTarget::Sqlite(base.join(path))),
            None => Err("must start with postgres://, postgresql:// or sqlite://".into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// How often every worker's RSS is read.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Default per-bot memory budget; a bot may set its own.
    pub memory_budget: ByteSize,
    /// Sockets live here (created 0700). Relative to the config file.
    pub runtime_dir: PathBuf,
    /// The worker executable; by default `bot-worker` next to `bothost`.
    pub worker_binary: Option<PathBuf>,
    /// Spawn to `Ready`: longer than this and the start counts as a crash.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Silence longer than this marks a worker hung; it is then replaced.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// How long a draining worker may take to finish its turns.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// SIGTERM to SIGKILL.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// This many crashes within `crash_window` mark the bot failed.
    pub crash_limit: u32,
    #[serde(with = "humantime_serde")]
    pub crash_window: Duration,
    /// Fraction of the budget at which a warning is logged and shown.
    pub memory_warn_ratio: f64,
    /// Readings in a row over budget before a `memory` restart.
    pub over_budget_samples: u32,
    /// The span of readings the leak trend is fitted over.
    #[serde(with = "humantime_serde")]
    pub leak_window: Duration,
    /// Readings this soon after a worker is ready are left out of the trend.
    #[serde(with = "humantime_serde")]
    pub leak_warmup: Duration,
    /// A leak projected to reach the budget sooner than this is restarted.
    #[serde(with = "humantime_serde")]
    pub leak_horizon: Duration,
    /// A rise of the memory floor smaller than this is not called a leak.
    pub leak_min_growth: ByteSize,
    /// Cron expression (local time; 5 fields, or 6 with seconds first) for
    /// the rolling restart of every bot, or "off".
    pub restart_schedule: String,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            sample_interval: Duration::from_secs(5),
            memory_budget: ByteSize::mb(125),
            runtime_dir: PathBuf::from("data/run"),
            worker_binary: None,
            start_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
            memory_warn_ratio: 0.8,
            over_budget_samples: 3,
            leak_window: Duration::from_secs(600),
            leak_warmup: Duration::from_secs(60),
            leak_horizon: Duration::from_secs(3600),
            leak_min_growth: ByteSize::mb(4),
            restart_schedule: "0 3 * * *".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    pub name: String,
    #[serde(default)]
    pub engine: EngineKind,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default = "default_system_prompt")]
    pub system_prompt: String,
    /// Overrides `supervisor.memory_budget`.
    pub memory_budget: Option<ByteSize>,
    /// Overrides `supervisor.worker_binary` for this bot (a canary build).
    pub worker_binary: Option<PathBuf>,
    /// Messages of the conversation the bot sees with each turn.
    #[serde(default = "default_history_window")]
    pub history_window: u32,
    #[serde(default)]
    pub builtin: BuiltinConfig,
    /// `[[inference]]` endpoints this bot uses, in order of preference; by
    /// default every endpoint of its engine's kind, in file order.
    #[serde(default)]
    pub inference: Vec<String>,
    /// Sampling temperature for remote engines; the server's default if unset.
    pub temperature: Option<f64>,
    /// Context size in tokens (Ollama's `num_ctx`).
    pub num_ctx: Option<u32>,
    /// How long Ollama keeps the model loaded, e.g. `"10m"`.
    pub keep_alive: Option<String>,
}

fn default_model() -> String {
    "builtin".into()
}

fn default_history_window() -> u32 {
    20
}

fn default_system_prompt() -> String {
    "You are a helpful assistant.".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    #[default]
    Builtin,
    Ollama,
    Openai,
}

/// The wire format a model server speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceKind {
    #[default]
    Ollama,
    Openai,
}

impl InferenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InferenceKind::Ollama => "ollama",
            InferenceKind::Openai => "openai",
        }
    }
}

/// One `[[inference]]` endpoint: a model server bots call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    pub name: String,
    pub kind: InferenceKind,
    /// Base URL, e.g. `http://127.0.0.1:11434`.
    pub url: String,
    /// Environment variable holding the API key (OpenAI-compatible servers).
    pub api_key_env: Option<String>,
    /// Start this server and keep it running, e.g. `["ollama", "serve"]`.
    pub command: Vec<String>,
    /// Health check period while the endpoint is up (the seed's 60 s) ...
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// ... and while it is down, so it is back in use soon after it returns.
    #[serde(with = "humantime_serde")]
    pub health_interval_down: Duration,
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Request to first token; generous, as a model may have to load.
    #[serde(with = "humantime_serde")]
    pub first_token_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub token_gap_timeout: Duration,
    /// A turn that failed here prefers other endpoints this long.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// A supervised server with no passing check this long after its start
    /// is restarted ...
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// ... and so is one failing this many checks in a row.
    pub restart_after_failed_checks: u32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: InferenceKind::Ollama,
            url: String::new(),
            api_key_env: None,
            command: Vec::new(),
            health_interval: Duration::from_secs(60),
            health_interval_down: Duration::from_secs(5),
            health_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            first_token_timeout: Duration::from_secs(60),
            token_gap_timeout: Duration::from_secs(30),
            cooldown: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
            restart_after_failed_checks: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinConfig {
    #[serde(with = "humantime_serde")]
    pub token_delay: Duration,
    pub fail_rate: f64,
    pub leak_per_message: ByteSize,
    /// 0: no cap.
    pub max_tokens: u32,
}

impl Default for BuiltinConfig {
    fn default() -> Self {
        Self {
            token_delay: Duration::from_millis(20),
            fail_rate: 0.0,
            leak_per_message: ByteSize::b(0),
            max_tokens: 0,
        }
    }
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

    /// Rules the types cannot express. Returns the first broken one as
    /// (key, reason).
    fn validate(&self) -> Result<(), (String, String)> {
        let s = &self.supervisor;
        let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
        let db = &self.database;
        if let Err(reason) = self.database_target() {
            return bad("database.url", reason);
        }
        let l = &self.limits;
        for (key, value) in [
            (
                "limits.messages_per_minute_per_user",
                l.messages_per_minute_per_user,
            ),
            (
                "limits.messages_per_minute_per_ip",
                l.messages_per_minute_per_ip,
            ),
            (
                "limits.logins_per_minute_per_ip",
                l.logins_per_minute_per_ip,
            ),
            ("limits.max_in_flight_per_user", l.max_in_flight_per_user),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.server.ws_timeout <= self.server.ws_heartbeat {
            return bad(
                "server.ws_timeout",
                "must be longer than server.ws_heartbeat".into(),
            );
        }
        if let Some(tls) = &self.server.tls {
            for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if !path.is_file() {
                    return bad(key, format!("{} is not a readable file", path.display()));
                }
            }
        }
        if db.pool_size == 0 {
            return bad("database.pool_size", "must be at least 1".into());
        }
        if db.pool_max < db.pool_size {
            return bad(
                "database.pool_max",
                format!(
                    "{} is below database.pool_size ({})",
                    db.pool_max, db.pool_size
                ),
            );
        }
        if self.bots.is_empty() {
            return bad("bots", "at least one [[bots]] entry is required".into());
        }
        if s.sample_interval < Duration::from_millis(100) {
            return bad(
                "supervisor.sample_interval",
                "must be at least 100ms".into(),
            );
        }
        if s.heartbeat_interval.is_zero() {
            return bad(
                "supervisor.heartbeat_interval",
                "must be greater than 0".into(),
            );
        }
        if s.heartbeat_timeout <= s.heartbeat_interval {
            return bad(
                "supervisor.heartbeat_timeout",
                format!(
                    "must be longer than supervisor.heartbeat_interval ({})",
                    humantime::format_duration(s.heartbeat_interval)
                ),
            );
        }
        if s.backoff_initial.is_zero() || s.backoff_initial > s.backoff_max {
            return bad(
                "supervisor.backoff_initial",
                "must be greater than 0 and at most supervisor.backoff_max".into(),
            );
        }
        if s.crash_limit == 0 {
            return bad("supervisor.crash_limit", "must be at least 1".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return bad(
                "logging.level",
                format!(
                    "'{}' is not a log filter (try \"info\" or \"bothost=debug,info\")",
                    self.logging.level
                ),
            );
        }
        if s.start_timeout.is_zero() {
            return bad("supervisor.start_timeout", "must be greater than 0".into());
        }
        check_budget("supervisor.memory_budget", s.memory_budget)?;
        if !(s.memory_warn_ratio > 0.0 && s.memory_warn_ratio < 1.0) {
            return bad(
                "supervisor.memory_warn_ratio",
                format!("{} is not between 0 and 1", s.memory_warn_ratio),
            );
        }
        if s.over_budget_samples == 0 {
            return bad(
                "supervisor.over_budget_samples",
                "must be at least 1".into(),
            );
        }
        let min_window = s.sample_interval * (2 * crate::memory::BUCKETS as u32);
        if s.leak_window < min_window {
            return bad(
                "supervisor.leak_window",
                format!(
                    "must hold at least {} readings: {} or more with sample_interval {}",
                    2 * crate::memory::BUCKETS,
                    humantime::format_duration(min_window),
                    humantime::format_duration(s.sample_interval)
                ),
            );
        }
        if let Err(e) = self.restart_schedule() {
            return bad("supervisor.restart_schedule", e);
        }
        let longest_socket = self.runtime_dir().join(format!(
            "{}.sock",
            worker_socket_stem(&"x".repeat(MAX_BOT_NAME), u64::MAX)
        ));
        if longest_socket.as_os_str().len() > MAX_SOCKET_PATH {
            return bad(
                "supervisor.runtime_dir",
                format!(
                    "{} is too long for Unix socket paths (at most {} bytes with the socket name); choose a shorter directory",
                    self.runtime_dir().display(),
                    MAX_SOCKET_PATH
                ),
            );
        }
        let mut endpoints = HashSet::new();
        for (i, e) in self.inference.iter().enumerate() {
            let key = |field: &str| format!("inference[{i}].{field}");
            if let Err(reason) = check_bot_name(&e.name) {
                return Err((key("name"), reason));
            }
            if !endpoints.insert(e.name.as_str()) {
                return Err((key("name"), format!("duplicate endpoint name '{}'", e.name)));
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                return Err((
                    key("url"),
                    format!("'{}' is not an http:// or https:// URL", e.url),
                ));
            }
            if e.command.first().is_some_and(|c| c.trim().is_empty()) {
                return Err((key("command"), "the program name is empty".into()));
            }
            for (field, d) in [
                ("health_interval", e.health_interval),
                ("health_interval_down", e.health_interval_down),
                ("health_timeout", e.health_timeout),
                ("connect_timeout", e.connect_timeout),
                ("first_token_timeout", e.first_token_timeout),
                ("token_gap_timeout", e.token_gap_timeout),
            ] {
                if d.is_zero() {
                    return Err((key(field), "must be greater than 0".into()));
                }
            }
            if e.restart_after_failed_checks == 0 {
                return Err((
                    key("restart_after_failed_checks"),
                    "must be at least 1".into(),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, bot) in self.bots.iter().enumerate() {
            let key = |field: &str| format!("bots[{i}].{field}");
            if let Err(reason) = check_bot_name(&bot.name) {
                return Err((key("name"), reason));
            }
            if !seen.insert(bot.name.as_str()) {
                return Err((key("name"), format!("duplicate bot name '{}'", bot.name)));
            }
            if let Some(budget) = bot.memory_budget {
                check_budget(&key("memory_budget"), budget)?;
            }
            self.check_bot_inference(bot)
                .map_err(|(field, reason)| (key(field), reason))?;
            let rate = bot.builtin.fail_rate;
            if !(0.0..=1.0).contains(&rate) {
                return Err((
                    key("builtin.fail_rate"),
                    format!("{rate} is outside 0.0 to 1.0"),
                ));
            }
        }
        Ok(())
    }

    /// A remote bot names a model and at least one endpoint of its kind.
    fn check_bot_inference(&self, bot: &BotConfig) -> Result<(), (&'static str, String)> {
        let Some(kind) = bot.inference_kind() else {
            return Ok(());
        };
        if bot.model == default_model() {
            return Err((
                "model",
                format!(
                    "an {} bot needs the model its server should run (for example \"llama3.2\")",
                    kind.as_str()
                ),
            ));
        }
        for name in &bot.inference {
            match self.inference.iter().find(|e| &e.name == name) {
                None => {
                    return Err((
                        "inference",
                        format!("no [[inference]] endpoint is named '{name}'"),
                    ))
                }
                Some(e) if e.kind != kind => {
                    return Err((
                        "inference",
                        format!(
                            "endpoint '{name}' speaks {}, the bot's engine is {}",
                            e.kind.as_str(),
                            kind.as_str()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.endpoints_of(bot).is_empty() {
            return Err((
                "engine",
                format!(
                    "no [[inference]] endpoint of kind \"{}\" is configured",
                    kind.as_str()
                ),
            ));
        }
        if let Some(t) = bot.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            return Err(("temperature", format!("{t} is outside 0.0 to 2.0")));
        }
        Ok(())
    }

    /// The endpoints `bot` calls, in order of preference (none for builtin).
    pub fn endpoints_of(&self, bot: &BotConfig) -> Vec<&InferenceConfig> {
        let Some(kind) = bot.inference_kind() else {
            return Vec::new();
        };
        if bot.inference.is_empty() {
            return self.inference.iter().filter(|e| e.kind == kind).collect();
        }
        bot.inference
            .iter()
            .filter_map(|name| self.inference.iter().find(|e| &e.name == name))
            .collect()
    }

    /// What the worker of `bot` is told in `Hello`.
    pub fn spec_of(&self, bot: &BotConfig) -> BotSpec {
        let remote = || RemoteSpec {
            endpoints: self
                .endpoints_of(bot)
                .into_iter()
                .map(|e| EndpointSpec {
                    name: e.name.clone(),
                    url: e.url.clone(),
                    api_key_env: e.api_key_env.clone(),
                    connect_timeout_ms: millis(e.connect_timeout),
                    first_token_timeout_ms: millis(e.first_token_timeout),
                    token_gap_timeout_ms: millis(e.token_gap_timeout),
                    cooldown_ms: millis(e.cooldown),
                })
                .collect(),
            temperature: bot.temperature,
            num_ctx: bot.num_ctx,
            keep_alive: bot.keep_alive.clone(),
        };
        BotSpec {
            name: bot.name.clone(),
            model: bot.model.clone(),
            system_prompt: bot.system_prompt.clone(),
            engine: match bot.engine {
                EngineKind::Builtin => EngineSpec::Builtin(BuiltinSpec {
                    token_delay_ms: millis(bot.builtin.token_delay),
                    fail_rate: bot.builtin.fail_rate,
                    leak_per_message: bot.builtin.leak_per_message.as_u64(),
                    max_tokens: bot.builtin.max_tokens,
                }),
                EngineKind::Ollama => EngineSpec::Ollama(remote()),
                EngineKind::Openai => EngineSpec::Openai(remote()),
            },
        }
    }

    pub fn database_target(&self) -> Result<DatabaseTarget, String> {
        self.database.target_from(&self.base_dir)
    }

    /// The rolling-restart schedule, `None` when it is "off".
    pub fn restart_schedule(&self) -> Result<Option<croner::Cron>, String> {
        parse_schedule(&self.supervisor.restart_schedule)
    }

    /// The memory rules for `bot`.
    pub fn memory_policy(&self, bot: &BotConfig) -> crate::memory::MemoryPolicy {
        let s = &self.supervisor;
        crate::memory::MemoryPolicy {
            budget: self.budget_of(bot).as_u64(),
            warn_ratio: s.memory_warn_ratio,
            over_budget_samples: s.over_budget_samples,
            leak_window: s.leak_window,
            leak_warmup: s.leak_warmup,
            leak_horizon: s.leak_horizon,
            leak_min_growth: s.leak_min_growth.as_u64(),
        }
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.supervisor.runtime_dir
    }

    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir().join("control.sock")
    }

    pub fn budget_of(&self, bot: &BotConfig) -> ByteSize {
        bot.memory_budget.unwrap_or(self.supervisor.memory_budget)
    }

    /// The worker executable for `bot`: its own override, the supervisor's,
    /// or `bot-worker` next to the running `bothost`.
    pub fn worker_binary_of(&self, bot: &BotConfig) -> PathBuf {
        bot.worker_binary
            .clone()
            .or_else(|| self.supervisor.worker_binary.clone())
            .unwrap_or_else(default_worker_binary)
    }
}

impl BotConfig {
    /// The kind of model server the bot's engine calls; `None` for builtin.
    pub fn inference_kind(&self) -> Option<InferenceKind> {
        match self.engine {
            EngineKind::Builtin => None,
            EngineKind::Ollama => Some(InferenceKind::Ollama),
            EngineKind::Openai => Some(InferenceKind::Openai),
        }
    }
}

/// A duration as the whole milliseconds the IPC protocol carries.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The file name (without `.sock`) of a worker generation's socket.
pub fn worker_socket_stem(bot: &str, generation: u64) -> String {
    format!("w-{bot}-{generation}")
}

/// A 5-field cron expression, or 6 with seconds first; "off" disables.
pub fn parse_schedule(expr: &str) -> Result<Option<croner::Cron>, String> {
    if expr.trim() == "off" {
        return Ok(None);
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map(Some)
        .map_err(|e| format!("'{expr}' is not a cron expression: {e}"))
}

fn default_worker_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("bot-worker")))
        .unwrap_or_else(|| PathBuf::from("bot-worker"))
}

const MAX_BOT_NAME: usize = 32;

/// Bot names appear in socket paths, metric labels and URLs.
fn check_bot_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let starts_alnum = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > MAX_BOT_NAME || !ok_chars || !starts_alnum {
        return Err(format!(
            "'{name}' is not a valid bot name: use 1 to {MAX_BOT_NAME} of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}

fn check_budget(key: &str, budget: ByteSize) -> Result<(), (String, String)> {
    if budget < ByteSize::mb(1) {
        return Err((
            key.to_owned(),
            format!("{budget} is too small for any worker (at least 1MB)"),
        ));
    }
    Ok(())
}

/// Environment variables DESIGN.md names for secrets, and the key each sets.
const ENV_ALIASES: [(&str, &str); 2] = [
    ("BOTHOST_DATABASE_URL", "DATABASE__URL"),
    ("BOTHOST_JWT_SECRET", "AUTH__JWT_SECRET"),
];

/// Lays `BOTHOST_<SECTION>__<KEY>` variables (and the [`ENV_ALIASES`]) over
/// the table. Values that read as TOML integers, floats or booleans keep
/// that type; anything else is a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), (String, String)> {
    for (name, value) in env {
        let alias = ENV_ALIASES.iter().find(|(n, _)| *n == name);
        let Some(rest) = alias.map(|(_, key)| *key).or(name.strip_prefix(ENV_PREFIX)) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let (leaf, parents) = path.split_last().unwrap_or((&path[0], &[]));
        let mut node = &mut *table;
        for part in parents {
            let entry = node
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                (
                    name.clone(),
                    format!("'{part}' is not a section, so it cannot be overridden by key"),
                )
            })?;
        }
        node.insert(leaf.clone(), env_value(&value));
    }
    Ok(())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

fn env_value(raw: &str) -> toml::Value {
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return toml::Value::Float(f);
    }
    toml::Value::String(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/bothost/supervisor.toml"), Vec::new())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const ONE_BOT: &str = "[[bots]]\nname = \"helper\"\n";

    const TWO_ENDPOINTS: &str =
        "[[inference]]\nname = \"primary\"\nurl = \"http://127.0.0.1:11434\"\n\
         [[inference]]\nname = \"vllm\"\nkind = \"openai\"\nurl = \"http://10.0.0.2:8000/v1\"\n\
         api_key_env = \"VLLM_KEY\"\n";

    #[test]
    fn remote_bots_get_their_endpoints_in_order_with_their_timeouts() {
        let c = parse(&format!(
            "{TWO_ENDPOINTS}[[bots]]\nname = \"llama\"\nengine = \"ollama\"\nmodel = \"llama3.2\"\n\
             temperature = 0.2\nkeep_alive = \"5m\"\n\
             [[bots]]\nname = \"qwen\"\nengine = \"openai\"\nmodel = \"qwen\"\ninference = [\"vllm\"]\n"
        ))
        .unwrap();
        let EngineSpec::Ollama(llama) = c.spec_of(&c.bots[0]).engine else {
            panic!("an ollama spec")
        };
        assert_eq!(llama.endpoints.len(), 1, "only endpoints of its kind");
        assert_eq!(llama.endpoints[0].name, "primary");
        assert_eq!(llama.endpoints[0].first_token_timeout_ms, 60_000);
        assert_eq!(
            (llama.temperature, llama.keep_alive.as_deref()),
            (Some(0.2), Some("5m"))
        );
        let EngineSpec::Openai(qwen) = c.spec_of(&c.bots[1]).engine else {
            panic!("an openai spec")
        };
        assert_eq!(qwen.endpoints[0].api_key_env.as_deref(), Some("VLLM_KEY"));
        assert_eq!(c.inference[0].health_interval, Duration::from_secs(60));
    }

    #[test]
    fn bad_inference_settings_are_named() {
        for (text, expected) in [
            (
                "[[bots]]\nname = \"a\"\nengine = \"ollama\"\nmodel = \"m\"\n".to_owned(),
                "bots[0].engine: no [[inference]] endpoint of kind \"ollama\" is configured",
            ),
            (
                format!("{TWO_ENDPOINTS}[[bots]]\nname = \"a\"\nengine = \"ollama\"\n"),
                "bots[0].model: an ollama bot needs the model",
            ),
            (
                format!("{TWO_ENDPOINTS}[[bots]]\nname = \"a\"\nengine = \"ollama\"\nmodel = \"m\"\ninference = [\"vllm\"]\n"),
                "bots[0].inference: endpoint 'vllm' speaks openai, the bot's engine is ollama",
            ),
            (
                format!("{TWO_ENDPOINTS}[[bots]]\nname = \"a\"\nengine = \"ollama\"\nmodel = \"m\"\ninference = [\"nope\"]\n"),
                "bots[0].inference: no [[inference]] endpoint is named 'nope'",
            ),
            (
                format!("[[inference]]\nname = \"p\"\nurl = \"127.0.0.1:11434\"\n{ONE_BOT}"),
                "inference[0].url: '127.0.0.1:11434' is not an http:// or https:// URL",
            ),
            (
                format!("{TWO_ENDPOINTS}[[inference]]\nname = \"primary\"\nurl = \"http://h\"\n{ONE_BOT}"),
                "inference[2].name: duplicate endpoint name 'primary'",
            ),
            (
                format!("[[inference]]\nname = \"p\"\nurl = \"http://h\"\nkind = \"llamafile\"\n{ONE_BOT}"),
                "inference[0].kind: unknown variant `llamafile`",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(expected), "{e}\n  expected: {expected}");
        }
    }

    #[test]
    fn every_key_has_a_default_but_the_bot_name() {
        let c = parse(ONE_BOT).unwrap();
        assert_eq!(c.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.supervisor.memory_budget, ByteSize::mb(125));
        assert_eq!(c.budget_of(&c.bots[0]), ByteSize::mb(125));
        assert_eq!(c.bots[0].builtin.token_delay, Duration::from_millis(20));
        assert_eq!(c.runtime_dir(), Path::new("/etc/bothost/data/run"));
    }

    #[test]
    fn durations_and_sizes_read_like_people_write_them() {
        let c = parse(
            "[supervisor]\nsample_interval = \"250ms\"\nmemory_budget = \"64MiB\"\n\
             [[bots]]\nname = \"a\"\nmemory_budget = \"10MB\"\n[bots.builtin]\ntoken_delay = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(c.supervisor.sample_interval, Duration::from_millis(250));
        assert_eq!(c.supervisor.memory_budget, ByteSize::mib(64));
        assert_eq!(c.budget_of(&c.bots[0]), ByteSize::mb(10));
        assert_eq!(c.bots[0].builtin.token_delay, Duration::ZERO);
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let e = err("[supervisor]\nsample_intervall = \"5s\"\n[[bots]]\nname = \"a\"\n");
        assert!(e.starts_with("/etc/bothost/supervisor.toml: supervisor.sample_intervall: unknown field `sample_intervall`, expected one of `sample_interval`"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn unknown_key_in_a_bot_names_the_bot_index() {
        let e = err("[[bots]]\nname = \"a\"\n[[bots]]\nname = \"b\"\n[bots.builtin]\nspeed = 3\n");
        assert!(
            e.contains("bots[1].builtin.speed: unknown field `speed`"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_names_key_and_reason() {
        let e = err("[supervisor]\nsample_interval = \"fast\"\n[[bots]]\nname = \"a\"\n");
        assert!(e.contains("supervisor.sample_interval: "), "{e}");
    }

    #[test]
    fn bad_size_names_key_and_reason() {
        let e = err("[[bots]]\nname = \"a\"\nmemory_budget = \"lots\"\n");
        assert!(e.contains("bots[0].memory_budget: "), "{e}");
    }

    #[test]
    fn duplicate_bot_names_are_refused() {
        let e = err("[[bots]]\nname = \"a\"\n[[bots]]\nname = \"a\"\n");
        assert!(e.ends_with("bots[1].name: duplicate bot name 'a'"), "{e}");
    }

    #[test]
    fn impossible_values_are_refused() {
        let cases = [
            (
                "[supervisor]\nheartbeat_timeout = \"1s\"\nheartbeat_interval = \"2s\"\n",
                "supervisor.heartbeat_timeout",
            ),
            ("[supervisor]\ncrash_limit = 0\n", "supervisor.crash_limit"),
            (
                "[supervisor]\nmemory_budget = \"10KB\"\n",
                "supervisor.memory_budget",
            ),
            (
                "[supervisor]\nbackoff_initial = \"1m\"\nbackoff_max = \"1s\"\n",
                "supervisor.backoff_initial",
            ),
            (
                "[supervisor]\nmemory_warn_ratio = 1.5\n",
                "supervisor.memory_warn_ratio",
            ),
            (
                "[supervisor]\nover_budget_samples = 0\n",
                "supervisor.over_budget_samples",
            ),
        ];
        for (text, key) in cases {
            let e = err(&format!("{text}{ONE_BOT}"));
            assert!(e.contains(&format!("{key}: ")), "{key}: {e}");
        }
        let e = err("[[bots]]\nname = \"a\"\n[bots.builtin]\nfail_rate = 1.5\n");
        assert!(
            e.contains("bots[0].builtin.fail_rate: 1.5 is outside 0.0 to 1.0"),
            "{e}"
        );
    }

    #[test]
    fn the_database_url_picks_the_backend_and_anchors_sqlite_paths() {
        let c = parse(ONE_BOT).unwrap();
        assert_eq!(
            c.database_target().unwrap(),
            DatabaseTarget::Sqlite(PathBuf::from("/etc/bothost/data/bothost.db"))
        );
        let c = parse(&format!(
            "[database]\nurl = \"sqlite:///var/lib/b.db\"\n{ONE_BOT}"
        ))
        .unwrap();
        assert_eq!(
            c.database_target().unwrap(),
            DatabaseTarget::Sqlite(PathBuf::from("/var/lib/b.db"))
        );
        let e = err(&format!("[database]\nurl = \"mysql://x\"\n{ONE_BOT}"));
        assert!(
            e.contains("database.url: must start with postgres://"),
            "{e}"
        );
        let e = err(&format!(
            "[database]\nurl = \"sqlite://:memory:\"\n{ONE_BOT}"
        ));
        assert!(
            e.contains("database.url: an SQLite database needs a file path"),
            "{e}"
        );
        let e = err(&format!(
            "[database]\npool_size = 20\npool_max = 10\n{ONE_BOT}"
        ));
        assert!(
            e.contains("database.pool_max: 10 is below database.pool_size (20)"),
            "{e}"
        );
    }

    #[test]
    fn the_database_url_comes_from_the_environment_and_never_prints() {
        let env = vec![(
            "BOTHOST_DATABASE_URL".to_owned(),
            "postgres://app:hunter2@db/bothost".to_owned(),
        )];
        let c = Config::parse(ONE_BOT, Path::new("x.toml"), env).unwrap();
        let DatabaseTarget::Postgres(url) = c.database_target().unwrap() else {
            panic!("postgres expected");
        };
        assert_eq!(url.expose(), "postgres://app:hunter2@db/bothost");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_restart_schedule_is_checked_at_load() {
        let e = err(&format!(
            "[supervisor]\nrestart_schedule = \"at three\"\n{ONE_BOT}"
        ));
        assert!(
            e.contains("supervisor.restart_schedule: 'at three' is not a cron expression"),
            "{e}"
        );
        let e = err(&format!(
            "[supervisor]\nrestart_schedule = \"0 25 * * *\"\n{ONE_BOT}"
        ));
        assert!(e.contains("supervisor.restart_schedule: "), "{e}");
        let c = parse(&format!(
            "[supervisor]\nrestart_schedule = \"off\"\n{ONE_BOT}"
        ))
        .unwrap();
        assert!(c.restart_schedule().unwrap().is_none());
        let c = parse(&format!(
            "[supervisor]\nrestart_schedule = \"*/5 * * * * *\"\n{ONE_BOT}"
        ))
        .unwrap();
        assert!(c.restart_schedule().unwrap().is_some());
        assert!(parse(ONE_BOT)
            .unwrap()
            .restart_schedule()
            .unwrap()
            .is_some());
    }

    #[test]
    fn the_leak_window_must_hold_enough_readings() {
        let e = err(&format!(
            "[supervisor]\nsample_interval = \"5s\"\nleak_window = \"20s\"\n{ONE_BOT}"
        ));
        assert!(
            e.contains("supervisor.leak_window: must hold at least 10 readings: 50s or more"),
            "{e}"
        );
    }

    #[test]
    fn bad_bot_names_are_refused() {
        for name in ["", "Has Caps", "../escape", "-lead", &"x".repeat(33)] {
            let e = err(&format!("[[bots]]\nname = \"{name}\"\n"));
            assert!(e.contains("bots[0].name: "), "{name}: {e}");
        }
    }

    #[test]
    fn no_bots_is_refused() {
        assert!(err("").ends_with("bots: at least one [[bots]] entry is required"));
    }

    #[test]
    fn unknown_engine_is_refused() {
        let e = err("[[bots]]\nname = \"a\"\nengine = \"gpt\"\n");
        assert!(e.contains("bots[0].engine: unknown variant `gpt`"), "{e}");
    }

    #[test]
    fn syntax_error_names_the_file_and_line() {
        let e = err("[[bots]\nname = \"a\"\n");
        assert!(e.starts_with("/etc/bothost/supervisor.toml: "), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn long_runtime_dir_is_refused_before_a_socket_fails_to_bind() {
        let e = err(&format!(
            "[supervisor]\nruntime_dir = \"/{}\"\n{ONE_BOT}",
            "d".repeat(90)
        ));
        assert!(e.contains("supervisor.runtime_dir: "), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("BOTHOST_SERVER__BIND".to_owned(), "0.0.0.0:9000".to_owned()),
            ("BOTHOST_SUPERVISOR__CRASH_LIMIT".to_owned(), "9".to_owned()),
            (
                "BOTHOST_CONFIG".to_owned(),
                "ignored: not an override".to_owned(),
            ),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let c = Config::parse(ONE_BOT, Path::new("x.toml"), env).unwrap();
        assert_eq!(c.server.bind.to_string(), "0.0.0.0:9000");
        assert_eq!(c.supervisor.crash_limit, 9);
    }

    #[test]
    fn environment_override_with_a_typo_is_an_unknown_key() {
        let env = vec![("BOTHOST_SERVER__BINDD".to_owned(), "x".to_owned())];
        let e = Config::parse(ONE_BOT, Path::new("x.toml"), env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.bindd: unknown field `bindd`"), "{e}");
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../supervisor.toml");
        let c = Config::parse(text, Path::new("supervisor.toml"), Vec::new()).unwrap();
        assert_eq!(c.bots.len(), 5);
        assert!(c.bots.iter().all(|b| b.engine == EngineKind::Builtin));
    }

    #[test]
    fn the_shipped_inference_example_is_valid_once_uncommented() {
        let text = include_str!("../supervisor.toml");
        let start = text.find("# [[inference]]").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        let example: String = text[start..end]
            .lines()
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
            .collect();
        let uncommented = format!("{}{example}{}", &text[..start], &text[end..]);
        let c = Config::parse(&uncommented, Path::new("supervisor.toml"), Vec::new()).unwrap();
        assert_eq!(c.inference.len(), 2);
        assert_eq!(c.inference[0].command, ["ollama", "serve"]);
        let llama = c.bots.iter().find(|b| b.name == "llama").unwrap();
        assert_eq!(c.endpoints_of(llama).len(), 2);
    }
}
