//! The file format: every section and key of `supervisor.toml`, with its
//! default. Types only; rules the types cannot express are in `validate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

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
    pub backup: BackupConfig,
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
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub ws_heartbeat: Duration,
    /// A WebSocket client silent for this long is dropped.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub ws_timeout: Duration,
    /// At shutdown, how long `/readyz` answers 503 (so a load balancer
    /// takes the host out of rotation) before it stops accepting
    /// connections. 0 on a host with no load balancer in front.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub drain_delay: Duration,
    /// API requests worked on at once; past it a request is answered 503
    /// `overloaded` with `Retry-After` at once, instead of waiting its
    /// turn (and timing out) behind all the others. 2,048 ended storms of
    /// 10,000 sooner on a quiet machine, but on a slowed one requests
    /// queued inside the host for seconds and some clients gave up
    /// (ARCHITECTURE.md, ninth round); 512 has cost none.
    pub max_requests_in_flight: usize,
    /// How long a new connection has to deliver its first request's
    /// headers; past it, 408. Longer than actix's 5 s: in a reconnect storm
    /// it is the host that reads headers late, not the client that sends
    /// them late, and a request read late is still answered (200, or 503
    /// with `Retry-After`) instead of being sent again from scratch.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub request_header_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            ws_heartbeat: Duration::from_secs(10),
            ws_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            max_requests_in_flight: 512,
            request_header_timeout: Duration::from_secs(30),
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
    #[serde(deserialize_with = "super::duration::deserialize")]
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
    /// WebSockets one user may hold open (tabs, devices).
    pub websockets_per_user: u32,
    /// WebSockets one address may hold open (raise behind a proxy or NAT).
    pub websockets_per_ip: u32,
    pub conversations_per_minute_per_user: u32,
    /// Conversations one account may keep.
    pub max_conversations_per_user: u32,
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
            websockets_per_user: 16,
            websockets_per_ip: 2000,
            conversations_per_minute_per_user: 30,
            max_conversations_per_user: 10_000,
        }
    }
}

/// A value that must never reach a log: zeroized on drop, `Debug` prints
/// `[REDACTED]`, and it has no `Display`. Read it with
/// [`secrecy::ExposeSecret::expose_secret`].
pub type Secret = secrecy::SecretString;

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
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub pool_grow_window: Duration,
    /// Waiting longer than this for a connection is an error (503).
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub acquire_timeout: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub connect_timeout: Duration,
    /// PostgreSQL statements running longer are cancelled.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub statement_timeout: Duration,
    /// PostgreSQL only: other hosts may share this database, so turns and
    /// limits are coordinated through it (a lease per turn, rate windows):
    /// five small queries a turn. `false` on a single host saves them.
    pub shared: bool,
    /// PostgreSQL only: whether a chat turn's writes wait for the disk.
    pub chat_commit: ChatCommit,
}

/// How a chat turn's two writes (the user's message, the bot's reply)
/// commit on PostgreSQL. Every other write (accounts, tokens, deletions)
/// always waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatCommit {
    /// `synchronous_commit = off` for those statements: the commit returns
    /// before its WAL is flushed (PostgreSQL's WAL writer flushes within
    /// three `wal_writer_delay`s, 0.6 s by default). A crash of the host
    /// loses nothing; a crash of the database server or the machine may
    /// take back the last moments of chat, never half a row — the promise
    /// SQLite's `synchronous = NORMAL` makes on the embedded default.
    Async,
    /// Each chat write waits for its WAL flush, as PostgreSQL does by
    /// default: a fsync (or a share of one) before the first token and
    /// another before the end of every turn.
    Sync,
}

impl ChatCommit {
    /// The value of `synchronous_commit` for a chat turn's statements.
    pub fn synchronous_commit(self) -> &'static str {
        match self {
            ChatCommit::Async => "off",
            ChatCommit::Sync => "on",
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::from("sqlite://data/bothost.db"),
            pool_size: 20,
            pool_max: 40,
            pool_grow_window: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            shared: true,
            chat_commit: ChatCommit::Async,
        }
    }
}

/// Where the store lives, read from `database.url`.
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    Postgres(Secret),
    Sqlite(PathBuf),
}

/// How a worker's memory is counted (always over its whole process tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMeasure {
    Rss,
    Pss,
}

impl MemoryMeasure {
    /// The `measure` label of `bothost_memory_enforcement_info`.
    pub fn label(self) -> &'static str {
        match self {
            MemoryMeasure::Rss => "rss_tree",
            MemoryMeasure::Pss => "pss_tree",
        }
    }
}

/// `supervisor.memory_ceiling`: which ceiling the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryCeiling {
    /// A memory cgroup per worker where the host may create one, else a
    /// data-segment limit.
    #[default]
    Auto,
    /// A data-segment limit, even where a cgroup could be had.
    Rlimit,
    /// None: the Supervisor's sampling alone.
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// How often every worker's RSS is read.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub sample_interval: Duration,
    /// Default per-bot memory budget; a bot may set its own.
    pub memory_budget: ByteSize,
    /// Sockets live here (created 0700). Relative to the config file.
    pub runtime_dir: PathBuf,
    /// The worker executable; by default `bot-worker` next to `bothost`.
    pub worker_binary: Option<PathBuf>,
    /// Spawn to `Ready`: longer than this and the start counts as a crash.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub start_timeout: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub heartbeat_interval: Duration,
    /// Silence longer than this marks a worker hung; it is then replaced.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub heartbeat_timeout: Duration,
    /// How long a draining worker may take to finish its turns.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub drain_timeout: Duration,
    /// SIGTERM to SIGKILL.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub stop_grace: Duration,
    /// A chat turn with no word from its worker for this long is ended
    /// (`engine_timeout`, the reply kept as far as it got): a backstop for
    /// an engine that hangs without its worker noticing.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub turn_idle_timeout: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub backoff_initial: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub backoff_max: Duration,
    /// This many crashes within `crash_window` mark the bot failed.
    pub crash_limit: u32,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub crash_window: Duration,
    /// A `failed` bot is tried again after this, then after twice as
    /// long, up to `quarantine_max`.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub quarantine_initial: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub quarantine_max: Duration,
    /// Fraction of the budget at which a warning is logged and shown.
    pub memory_warn_ratio: f64,
    /// What a worker's memory is: `rss` (resident pages, shared ones counted
    /// in full) or `pss` (shared pages split between their users).
    pub memory_measure: MemoryMeasure,
    /// Which ceiling the kernel enforces: `auto` (a memory cgroup per
    /// worker, else a data-segment limit), `rlimit`, or `off`.
    pub memory_ceiling: MemoryCeiling,
    /// Readings in a row over budget before a `memory` restart.
    pub over_budget_samples: u32,
    /// The span of readings the leak trend is fitted over.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub leak_window: Duration,
    /// Readings this soon after a worker is ready are left out of the trend.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub leak_warmup: Duration,
    /// A leak projected to reach the budget sooner than this is restarted.
    #[serde(deserialize_with = "super::duration::deserialize")]
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
            turn_idle_timeout: Duration::from_secs(5 * 60),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
            quarantine_initial: Duration::from_secs(5 * 60),
            quarantine_max: Duration::from_secs(60 * 60),
            memory_warn_ratio: 0.8,
            memory_measure: MemoryMeasure::Rss,
            memory_ceiling: MemoryCeiling::Auto,
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
pub struct BackupConfig {
    /// When the host backs the database up (cron, local time), or "off".
    /// Hourly by default: at most an hour of chat lost (the old system's RPO).
    pub schedule: String,
    /// Where backups go (relative to this file).
    pub dir: PathBuf,
    /// How many backups are kept; older ones are deleted after each backup.
    pub keep: u32,
    /// Where `pg_dump` and `pg_restore` are; default: the `PATH`. Their
    /// major version must be at least the server's.
    pub pg_bin_dir: Option<PathBuf>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            schedule: "0 * * * *".into(),
            dir: PathBuf::from("data/backups"),
            keep: 48,
            pg_bin_dir: None,
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

pub(super) fn default_model() -> String {
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
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub health_interval: Duration,
    /// ... and while it is down, so it is back in use soon after it returns.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub health_interval_down: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub health_timeout: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub connect_timeout: Duration,
    /// Request to first token; generous, as a model may have to load.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub first_token_timeout: Duration,
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub token_gap_timeout: Duration,
    /// A turn that failed here prefers other endpoints this long.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub cooldown: Duration,
    /// A supervised server with no passing check this long after its start
    /// is restarted ...
    #[serde(deserialize_with = "super::duration::deserialize")]
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
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub token_delay: Duration,
    pub fail_rate: f64,
    pub leak_per_message: ByteSize,
    pub leak_per_token: ByteSize,
    /// 0: no cap.
    pub max_tokens: u32,
    /// Fault injection: a message containing this makes the engine panic.
    pub panic_on: Option<String>,
    /// Fault injection: a message containing this hangs its turn.
    pub hang_on: Option<String>,
}

impl Default for BuiltinConfig {
    fn default() -> Self {
        Self {
            token_delay: Duration::from_millis(20),
            fail_rate: 0.0,
            leak_per_message: ByteSize::b(0),
            leak_per_token: ByteSize::b(0),
            max_tokens: 0,
            panic_on: None,
            hang_on: None,
        }
    }
}
