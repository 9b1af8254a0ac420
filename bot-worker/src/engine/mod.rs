//! Engines: what turns a conversation into a streamed reply.
//!
//! Owns the engines the worker can run: `builtin` (deterministic, no
//! server), and the remote engines that call model servers, `ollama` and
//! `openai`, which share one failover loop (`remote`) and differ only in
//! their wire format (`ollama`, `openai`, each a [`wire::WireFormat`]).
//! `output` is what every engine shares: its error and how it sends.
//!
//! An engine never talks to the socket: it pushes `Delta` (and `EndpointFailed`)
//! messages into the channel it is given and returns the turn's outcome; the
//! serve loop owns the connection.

mod builtin;
mod ollama;
mod openai;
mod output;
mod remote;
mod wire;

use bot_worker::{BotSpec, ChatMessage, EngineSpec, Usage, WorkerMessage};
use tokio::sync::mpsc;

pub use builtin::Builtin;
pub use output::EngineError;
pub use remote::Remote;

/// The engine a bot's spec asks for.
pub enum Engine {
    Builtin(Builtin),
    Remote(Remote),
}

impl Engine {
    pub fn new(spec: &BotSpec) -> Result<Self, String> {
        Ok(match &spec.engine {
            EngineSpec::Builtin(b) => Engine::Builtin(Builtin::new(spec.name.clone(), b.clone())),
            EngineSpec::Ollama(r) => Engine::Remote(Remote::new(&ollama::Ollama, spec, r)?),
            EngineSpec::Openai(r) => Engine::Remote(Remote::new(&openai::Openai, spec, r)?),
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
