//! What the Supervisor and a WorkerHandle say to each other, and the
//! settings a WorkerHandle starts from. Plain data, no behaviour.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use bot_worker::{BotSpec, ChatMessage};
use tokio::sync::{mpsc, oneshot};

use crate::ceiling::Ceilings;
use crate::turn::{CancelTurn, TurnError, TurnEvent};

/// What a WorkerHandle needs to start and watch one generation.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub spec: BotSpec,
    pub binary: PathBuf,
    pub runtime_dir: PathBuf,
    pub start_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub drain_timeout: Duration,
    pub stop_grace: Duration,
    /// How each generation gets its kernel memory ceiling, if at all.
    pub ceilings: std::sync::Arc<Ceilings>,
    /// The bot's budget (a cgroup v2 pushes back from there), in bytes.
    pub memory_budget: u64,
    /// The kernel's ceiling, in bytes.
    pub memory_limit: u64,
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Stopped on request after a drain: not a failure.
    Stopped,
    /// The process exited, or closed its socket, on its own.
    Crashed(String),
    /// Alive but silent past the heartbeat timeout.
    Hung,
    /// Never became Ready (spawn error, start timeout, refused handshake).
    StartFailed(String),
    /// Sent something that is not the protocol.
    ProtocolError(String),
    /// Killed by the host at its memory ceiling.
    MemoryCeiling { rss: u64, ceiling: u64 },
}

/// Sent to the Supervisor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum WorkerEvent {
    Ready {
        bot: String,
        generation: u64,
        pid: u32,
    },
    Gone {
        bot: String,
        generation: u64,
        cause: Cause,
    },
    /// A turn failed on this inference endpoint: worth a health check now.
    EndpointFailed { endpoint: String },
    /// A turn reached this worker after it died (and after its `Gone`):
    /// it never started, so the Supervisor routes it again.
    Returned { bot: String, turn: StartTurn },
}

/// Start a turn; `reply` gets its request id and where to cancel it (the
/// worker that took it). Sent by the Supervisor in order with the `Drain`
/// that may follow.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartTurn {
    pub messages: Vec<ChatMessage>,
    pub events: mpsc::UnboundedSender<TurnEvent>,
    pub reply: oneshot::Sender<Result<(u64, Recipient<CancelTurn>), TurnError>>,
}

impl fmt::Debug for StartTurn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartTurn")
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

/// The host's health checks changed their verdict: these endpoints are
/// down now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetEndpointsDown(pub Vec<String>);

/// Kill the worker now, failing its turns, for this cause.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill(pub Cause);

/// Finish in-flight turns, then stop. Resolves once the process is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Stopped => f.write_str("stopped"),
            Cause::Hung => f.write_str("hung: missed heartbeats"),
            Cause::Crashed(why) => write!(f, "crashed: {why}"),
            Cause::StartFailed(why) => write!(f, "failed to start: {why}"),
            Cause::ProtocolError(why) => write!(f, "protocol error: {why}"),
            Cause::MemoryCeiling { rss, ceiling } => write!(
                f,
                "killed at its memory ceiling: {rss} bytes, ceiling {ceiling} bytes"
            ),
        }
    }
}
