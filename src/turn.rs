//! A chat turn as the rest of the host sees it.
//!
//! Owns the vocabulary shared by everything that starts a turn (the control
//! socket and the web front end): the events a turn streams and the
//! errors it can end with, each with a stable `code` and a message fit to
//! show a user. The Supervisor starts turns (`supervisor::start_turn`);
//! a [`Turn`] dropped before it ends cancels itself in the worker, so a
//! caller that goes away never leaves work running.
//!
//! A leaf module: it knows the worker that runs a turn only as a
//! [`Recipient`] of [`CancelTurn`].

use actix::{Message, Recipient};
use bot_worker::Usage;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::mpsc;

#[derive(Debug)]
pub enum TurnEvent {
    Delta(String),
    Done(Usage),
    Failed(TurnError),
}

/// Why a turn did not complete. `code` is for programs, `message` for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct TurnError {
    pub code: ErrorCode,
    pub message: String,
}

/// Stable error codes: on the wire as [`ErrorCode::as_str`] gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    UnknownBot,
    /// Starting, restarting or failed: no worker can take the turn now.
    BotUnavailable,
    /// The worker died (crash, kill, hang) with the turn in flight.
    WorkerDied,
    EngineFailed,
    /// No model server could answer; the message is kept for a retry.
    InferenceUnavailable,
    /// The model server does not have the bot's model.
    ModelNotFound,
    /// The model server is busy.
    Overloaded,
    /// The model server went silent past its timeouts.
    EngineTimeout,
    Cancelled,
    TooLarge,
    /// The database could not store or read the conversation.
    StoreUnavailable,
    /// The same message is being answered by another request right now.
    InProgress,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::UnknownBot,
        ErrorCode::BotUnavailable,
        ErrorCode::WorkerDied,
        ErrorCode::EngineFailed,
        ErrorCode::InferenceUnavailable,
        ErrorCode::ModelNotFound,
        ErrorCode::Overloaded,
        ErrorCode::EngineTimeout,
        ErrorCode::Cancelled,
        ErrorCode::TooLarge,
        ErrorCode::StoreUnavailable,
        ErrorCode::InProgress,
        ErrorCode::Internal,
    ];

    /// The one place a code gets its name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownBot => "unknown_bot",
            ErrorCode::BotUnavailable => "bot_unavailable",
            ErrorCode::WorkerDied => "worker_died",
            ErrorCode::EngineFailed => "engine_failed",
            ErrorCode::InferenceUnavailable => "inference_unavailable",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::EngineTimeout => "engine_timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::InProgress => "in_progress",
            ErrorCode::Internal => "internal",
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| serde::de::Error::unknown_variant(&name, &[]))
    }
}

impl TurnError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Stop a turn: the worker is told, and the caller hears nothing more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelTurn {
    pub id: u64,
}

/// A running turn. Read its events until `Done` or `Failed`.
pub struct Turn {
    pub events: mpsc::UnboundedReceiver<TurnEvent>,
    id: u64,
    worker: Recipient<CancelTurn>,
    finished: bool,
}

impl Turn {
    /// A turn the worker behind `worker` accepted as request `id`.
    pub fn new(
        id: u64,
        worker: Recipient<CancelTurn>,
        events: mpsc::UnboundedReceiver<TurnEvent>,
    ) -> Self {
        Self {
            events,
            id,
            worker,
            finished: false,
        }
    }

    /// The next event; `None` never comes before `Done` or `Failed` unless
    /// the worker's handle vanished, which is reported as `WorkerDied`.
    pub async fn next(&mut self) -> Option<TurnEvent> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await.unwrap_or_else(|| {
            TurnEvent::Failed(TurnError::new(
                ErrorCode::WorkerDied,
                "the bot's worker went away mid-reply; please try again",
            ))
        });
        if !matches!(event, TurnEvent::Delta(_)) {
            self.finished = true;
        }
        Some(event)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.finished {
            self.worker.do_send(CancelTurn { id: self.id });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_travel_by_their_one_name() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, code.as_str());
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), code);
        }
        assert!(serde_json::from_str::<ErrorCode>("\"nope\"").is_err());
    }
}
