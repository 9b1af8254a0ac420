//! Values derived from a loaded configuration: what a worker is told, the
//! memory rules of a bot, where sockets live, the restart schedule.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bot_worker::{BotSpec, BuiltinSpec, EndpointSpec, EngineSpec, RemoteSpec};
use bytesize::ByteSize;

use super::schema::{
    BotConfig, Config, DatabaseConfig, DatabaseTarget, EngineKind, InferenceConfig, InferenceKind,
};
use secrecy::ExposeSecret;

use crate::memory::MemoryPolicy;

impl Config {
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
                    leak_per_token: bot.builtin.leak_per_token.as_u64(),
                    max_tokens: bot.builtin.max_tokens,
                    panic_on: bot.builtin.panic_on.clone(),
                    hang_on: bot.builtin.hang_on.clone(),
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

    /// The HTTP address is reachable from other machines.
    pub fn public_bind(&self) -> bool {
        !self.server.bind.ip().is_loopback()
    }

    /// The backup schedule, or `None` when off.
    pub fn backup_schedule(&self) -> Result<Option<croner::Cron>, String> {
        parse_schedule(&self.backup.schedule)
    }

    /// The memory rules for `bot`.
    pub fn memory_policy(&self, bot: &BotConfig) -> MemoryPolicy {
        let s = &self.supervisor;
        MemoryPolicy {
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
impl DatabaseConfig {
    /// Parses the URL; relative SQLite paths are anchored at `base`.
    pub fn target_from(&self, base: &Path) -> Result<DatabaseTarget, String> {
        let url = self.url.expose_secret();
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
pub fn millis(d: Duration) -> u64 {
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
