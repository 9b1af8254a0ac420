//! What the host says about its bots and model servers: the shared
//! vocabulary of states, restart reasons and status reports.
//!
//! A leaf module: the Supervisor produces these values, and metrics, the
//! control socket, the web front end and the CLI read them. It holds data and
//! the names operators see (`as_str`, the metric labels and JSON values), never
//! a decision. The names are an interface (DESIGN.md): add, rename none.

use serde::{Deserialize, Serialize};

use crate::config::InferenceKind;
use crate::names::named_enum;

named_enum! {
    pub enum BotState {
        /// The first generation is not ready yet.
        Starting = "starting",
        Ready = "ready",
        /// The worker is ready but every model server it uses is down.
        Degraded = "degraded",
        /// The host is shutting down.
        Draining = "draining",
        /// Crashed or hung; waiting for the backoff or the next generation.
        Restarting = "restarting",
        /// Crashed `crash_limit` times within `crash_window`; tried again
        /// after a quarantine (doubling), or at once when an operator asks.
        Failed = "failed",
    }
}

impl BotState {
    /// Start-up is over for this bot: it serves (perhaps degraded) or has
    /// been given up on.
    pub fn settled(self) -> bool {
        matches!(
            self,
            BotState::Ready | BotState::Degraded | BotState::Failed
        )
    }

    /// A worker of this bot takes turns.
    pub fn serving(self) -> bool {
        matches!(self, BotState::Ready | BotState::Degraded)
    }
}

named_enum! {
    /// Label values of `bothost_worker_restarts_total{reason}`.
    pub enum RestartReason {
        Crash = "crash",
        Memory = "memory",
        Leak = "leak",
        Schedule = "schedule",
        Operator = "operator",
        Hung = "hung",
    }
}

/// Why a restart did not happen: `code` for programs, `message` for
/// people (the same shape as every other error on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct RestartError {
    pub code: RestartErrorCode,
    pub message: String,
}

named_enum! {
    pub enum RestartErrorCode {
        UnknownBot = "unknown_bot",
        ShuttingDown = "shutting_down",
        /// A bot between crash restarts comes back on its own.
        Recovering = "recovering",
        /// The new generation never became ready.
        Failed = "failed",
        /// A rolling restart is already running.
        Busy = "busy",
        SupervisorGone = "supervisor_gone",
    }
}

impl RestartError {
    pub fn new(code: RestartErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn unknown_bot(name: &str) -> Self {
        Self::new(
            RestartErrorCode::UnknownBot,
            format!("there is no bot named '{name}'"),
        )
    }

    pub fn shutting_down() -> Self {
        Self::new(RestartErrorCode::ShuttingDown, "the host is shutting down")
    }

    pub fn supervisor_gone() -> Self {
        Self::new(
            RestartErrorCode::SupervisorGone,
            "the supervisor is not running",
        )
    }
}

/// A completed handover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarted {
    /// The generation replaced, if one was serving.
    pub from: Option<u64>,
    pub to: u64,
    /// Spawn of the new generation to its taking over.
    pub millis: u64,
}

/// The outcome of a restart for one bot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotRestart {
    pub bot: String,
    pub result: Result<Restarted, RestartError>,
}

/// One bot as `bothost status` reports it. The field names are an interface
/// (DESIGN.md); add fields, rename none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotStatus {
    pub name: String,
    pub model: String,
    pub state: BotState,
    pub pid: Option<u32>,
    pub generation: u64,
    pub rss_bytes: Option<u64>,
    pub budget_bytes: u64,
    pub uptime_seconds: Option<u64>,
    pub restarts: u64,
    pub in_flight: i64,
    /// Spawn to Ready of the current generation.
    pub startup_ms: Option<f64>,
    /// Why the last generation ended badly, or the last restart failed.
    pub last_failure: Option<String>,
    /// Fitted growth of the memory floor, bytes per second.
    pub leak_slope_bytes_per_second: f64,
    /// RSS is above the warning line (a fraction of the budget).
    pub memory_warning: bool,
    /// A generation starting to take over, during a restart.
    pub pending_generation: Option<u64>,
    /// Whether an endpoint the bot uses, up at its last check, has the
    /// bot's model; `None` for builtin bots and before any check.
    #[serde(default)]
    pub model_present: Option<bool>,
    /// A `failed` bot is tried again by itself in this many seconds.
    #[serde(default)]
    pub retry_in_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub bots: Vec<BotStatus>,
    pub host_rss_bytes: Option<u64>,
    /// How workers' memory ceilings are enforced: by the kernel (a cgroup
    /// per worker) or by the Supervisor alone, and why.
    #[serde(default)]
    pub memory_enforcement: String,
    /// Every `[[inference]]` endpoint, in configuration order.
    #[serde(default)]
    pub inference: Vec<EndpointStatus>,
}

/// A bot's state changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub bot: String,
    pub state: BotState,
}

/// One inference endpoint's last health check, as status and `/readyz`
/// show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub name: String,
    pub kind: InferenceKind,
    /// Passed its last health check. Before the first check: `true`, so
    /// turns are tried rather than refused.
    pub up: bool,
    /// At least one check has run.
    pub checked: bool,
    /// Models the server has (from the last passing check).
    pub models: Vec<String>,
    /// Why the last check failed.
    pub error: Option<String>,
    /// The supervised server's pid, when bothost runs it.
    pub pid: Option<u32>,
    /// Restarts of the supervised server.
    pub restarts: u64,
}

impl EndpointStatus {
    pub fn unchecked(name: &str, kind: InferenceKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            up: true,
            checked: false,
            models: Vec::new(),
            error: None,
            pid: None,
            restarts: 0,
        }
    }
}

/// Whether a server listing `models` can run `model`. Ollama names carry a
/// tag and `llama3.2` means `llama3.2:latest`.
pub fn has_model(models: &[String], model: &str) -> bool {
    models
        .iter()
        .any(|m| m == model || (!model.contains(':') && *m == format!("{model}:latest")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untagged_model_means_latest() {
        let models = vec!["llama3.2:latest".to_owned(), "qwen2.5:7b".to_owned()];
        assert!(has_model(&models, "llama3.2"));
        assert!(has_model(&models, "llama3.2:latest"));
        assert!(has_model(&models, "qwen2.5:7b"));
        assert!(!has_model(&models, "qwen2.5"));
        assert!(!has_model(&models, "mistral"));
    }

    #[test]
    fn restart_errors_travel_as_code_and_message() {
        let wire = serde_json::to_value(RestartError::unknown_bot("nope")).unwrap();
        assert_eq!(wire["code"], "unknown_bot");
        assert_eq!(wire["message"], "there is no bot named 'nope'");
    }
}
