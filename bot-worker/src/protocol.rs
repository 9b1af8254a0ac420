//! Message types of the host ⇄ worker protocol.
//!
//! These are boundary types: they derive `Serialize`/`Deserialize` and carry
//! plain numbers (milliseconds, bytes) rather than rich types, so that either
//! side can be written in anything that speaks JSON. Unknown fields are
//! ignored so a newer peer can add fields without breaking an older one; an
//! unknown message `type` is a protocol error.

use serde::{Deserialize, Serialize};

/// Bumped on any change an older peer would misread. Checked in the handshake.
pub const PROTOCOL_VERSION: u32 = 2;

/// A worker's exit status when an allocation is refused (under the host's
/// data-segment limit, its memory ceiling): a death at the ceiling, which
/// the host reports as reason `memory`, not a crash.
pub const EXIT_OUT_OF_MEMORY: i32 = 86;

/// Everything a worker needs to serve one bot, sent in `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotSpec {
    pub name: String,
    pub model: String,
    pub system_prompt: String,
    pub engine: EngineSpec,
}

/// Which engine answers, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EngineSpec {
    Builtin(BuiltinSpec),
    /// Ollama's `POST /api/chat`, NDJSON streaming.
    Ollama(RemoteSpec),
    /// Any `POST /v1/chat/completions` server, SSE streaming.
    Openai(RemoteSpec),
}

/// An engine that calls model servers: where, and how the bot asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteSpec {
    /// In order of preference; a turn that fails before its first token
    /// moves on to the next.
    pub endpoints: Vec<EndpointSpec>,
    /// Sampling temperature; the server's default when absent.
    pub temperature: Option<f64>,
    /// Context size in tokens (Ollama's `num_ctx`).
    pub num_ctx: Option<u32>,
    /// How long Ollama keeps the model loaded after a turn (`"5m"`).
    pub keep_alive: Option<String>,
}

/// One model server as a worker calls it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:11434`.
    pub url: String,
    /// Environment variable holding the API key (sent as a bearer token).
    /// The key itself never crosses the socket.
    pub api_key_env: Option<String>,
    pub connect_timeout_ms: u64,
    /// From sending the request to the first token.
    pub first_token_timeout_ms: u64,
    /// Longest silence between two pieces of the stream.
    pub token_gap_timeout_ms: u64,
    /// After a failure the endpoint is skipped this long, unless the host's
    /// health check reports it up again first.
    pub cooldown_ms: u64,
}

/// The deterministic built-in engine and its fault-injection knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltinSpec {
    /// Pause before each token after the first.
    pub token_delay_ms: u64,
    /// Probability in [0, 1] that a turn fails part-way through.
    pub fail_rate: f64,
    /// Bytes allocated, touched and never freed per turn: a real leak.
    pub leak_per_message: u64,
    /// Bytes allocated and kept per streamed token: a runaway inside one
    /// turn (a long reply at a short token delay grows fast).
    #[serde(default)]
    pub leak_per_token: u64,
    /// Upper bound on tokens per reply (0 means no bound).
    pub max_tokens: u32,
    /// A turn whose last user message contains this text panics in the
    /// engine: a bug, on purpose.
    #[serde(default)]
    pub panic_on: Option<String>,
    /// A turn whose last user message contains this text never sends a
    /// token nor ends: an engine hung without the worker noticing.
    #[serde(default)]
    pub hang_on: Option<String>,
}

/// Heartbeat settings the host imposes on the worker in `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub interval_ms: u64,
    /// Silence from the peer longer than this means it is gone or hung.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The endpoint that answered (remote engines only).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The engine's own time for the turn, as the model server reports it.
    #[serde(default)]
    pub engine_ms: Option<u64>,
}

/// Why a turn did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailCode {
    /// The engine could not produce a reply.
    EngineFailed,
    /// No model server could be reached or answered before a first token.
    InferenceUnavailable,
    /// The model server does not have the bot's model.
    ModelNotFound,
    /// The model server is busy (Ollama's queue is full).
    Overloaded,
    /// The model server stopped answering within the configured timeouts.
    Timeout,
    /// The model server refused the request as malformed.
    BadRequest,
    /// The host asked for the turn to stop.
    Cancelled,
    /// The worker is draining and takes no new turns.
    Draining,
    /// The request itself was unusable (for example, no messages).
    InvalidRequest,
    /// A code this side does not know, from a newer peer.
    #[serde(other)]
    Other,
}

/// Host → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    Hello {
        version: u32,
        spec: BotSpec,
        heartbeat: Heartbeat,
    },
    Chat {
        id: u64,
        messages: Vec<ChatMessage>,
    },
    Cancel {
        id: u64,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    Drain,
    /// The host's health checks: these endpoints are down now. Sent after
    /// `Ready` and on every change; the worker skips them while another
    /// endpoint is left.
    EndpointsDown {
        names: Vec<String>,
    },
}

/// Worker → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    Ready {
        version: u32,
        pid: u32,
    },
    /// The worker will not serve this host (for example, a version mismatch).
    Refused {
        reason: String,
    },
    Delta {
        id: u64,
        text: String,
    },
    Done {
        id: u64,
        usage: Usage,
    },
    Failed {
        id: u64,
        code: FailCode,
        message: String,
    },
    /// Turn `id` failed on `endpoint` before its first token; it moves on
    /// to `next`, if there is one. The host re-checks that endpoint's
    /// health at once.
    EndpointFailed {
        id: u64,
        endpoint: String,
        reason: String,
        next: Option<String>,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type() {
        let json = serde_json::to_string(&WorkerMessage::Delta {
            id: 7,
            text: "hi".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"delta","id":7,"text":"hi"}"#);
    }

    #[test]
    fn unknown_fail_code_from_newer_peer_is_other() {
        let m: WorkerMessage =
            serde_json::from_str(r#"{"type":"failed","id":1,"code":"gpu_on_fire","message":"x"}"#)
                .unwrap();
        assert!(matches!(
            m,
            WorkerMessage::Failed {
                code: FailCode::Other,
                ..
            }
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m: HostMessage =
            serde_json::from_str(r#"{"type":"ping","seq":3,"extra":true}"#).unwrap();
        assert_eq!(m, HostMessage::Ping { seq: 3 });
    }
}
