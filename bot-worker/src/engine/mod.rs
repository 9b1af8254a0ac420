//! Engines: what turns a conversation into a streamed reply.
//!
//! Owns the engines the worker can run: `builtin` (deterministic, no
//! server), and the remote engines that call model servers, `ollama` and
//! `openai`, which share one failover loop (`remote`) and differ only in
//! their wire format (`ollama`, `openai`).
//!
//! An engine never talks to the socket: it pushes `Delta` (and `EndpointFailed`)
//! messages into the channel it is given and returns the turn's outcome; the
//! serve loop owns the connection.

mod builtin;
mod ollama;
mod openai;
mod remote;

use bot_worker::{BotSpec, ChatMessage, EngineSpec, FailCode, Usage, WorkerMessage};
use tokio::sync::mpsc;

pub use builtin::Builtin;
pub use remote::Remote;

/// Why a turn ended without `Done`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineError {
    pub code: FailCode,
    pub message: String,
}

impl EngineError {
    pub fn new(code: FailCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The engine a bot's spec asks for.
pub enum Engine {
    Builtin(Builtin),
    Remote(Remote),
}

impl Engine {
    pub fn new(spec: &BotSpec) -> Result<Self, String> {
        Ok(match &spec.engine {
            EngineSpec::Builtin(b) => Engine::Builtin(Builtin::new(spec.name.clone(), b.clone())),
            EngineSpec::Ollama(r) => Engine::Remote(Remote::new(remote::Wire::Ollama, spec, r)?),
            EngineSpec::Openai(r) => Engine::Remote(Remote::new(remote::Wire::Openai, spec, r)?),
        })
    }

    /// Streams the reply to `messages` as `Delta`s for request `id`.
    pub async fn reply(
        &self,
        id: u64,
        messages: &[ChatMessage],
        out: &mpsc::Sender<WorkerMessage>,
    ) -> Result<Usage, EngineError> {
        match self {
            Engine::Builtin(b) => b.reply(id, messages, out).await,
            Engine::Remote(r) => r.reply(id, messages, out).await,
        }
    }

    /// The host's health checks say these endpoints are down.
    pub fn endpoints_down(&self, names: Vec<String>) {
        if let Engine::Remote(r) = self {
            r.endpoints_down(names);
        }
    }
}

/// Sends one message to the host, or reports that the turn's caller (the
/// connection) is gone.
async fn emit(out: &mpsc::Sender<WorkerMessage>, msg: WorkerMessage) -> Result<(), EngineError> {
    out.send(msg)
        .await
        .map_err(|_| EngineError::new(FailCode::Cancelled, "the connection to the host is gone"))
}
