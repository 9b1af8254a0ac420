//! Message types of the host ⇄ worker protocol.
//!
//! These are boundary types: they derive `Serialize`/`Deserialize` and carry
//! plain numbers (milliseconds, bytes) rather than rich types, so that either
//! side can be written in anything that speaks JSON. Unknown fields are
//! ignored so a newer peer can add fields without breaking an older one; an
//! unknown message `type` is a protocol error.

use serde::{Deserialize, Serialize};

/// Bumped on any change an older peer would misread. Checked in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

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
    /// Upper bound on tokens per reply (0 means no bound).
    pub max_tokens: u32,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// Why a turn did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailCode {
    /// The engine could not produce a reply.
    EngineFailed,
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
