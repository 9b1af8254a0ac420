//! A chat turn as the rest of the host sees it.
//!
//! Owns the vocabulary shared by everything that starts a turn (the control
//! socket and the web front end): the events a turn streams and the
//! errors it can end with, each with a stable `code` and a message fit to
//! show a user. [`start`] routes a turn to its bot's current worker.
//! A [`Turn`] dropped before it ends cancels itself in the worker, so a
//! caller that goes away never leaves work running.

use actix::Addr;
use bot_worker::{ChatMessage, Usage};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::supervisor::{StartChat, Supervisor};
use crate::worker::{CancelTurn, WorkerHandle};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

impl TurnError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A running turn. Read its events until `Done` or `Failed`.
pub struct Turn {
    pub events: mpsc::UnboundedReceiver<TurnEvent>,
    id: u64,
    worker: Addr<WorkerHandle>,
    finished: bool,
}

impl Turn {
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

/// Starts one turn on the current worker of `bot`.
pub async fn start(
    supervisor: &Addr<Supervisor>,
    bot: &str,
    messages: Vec<ChatMessage>,
) -> Result<Turn, TurnError> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (id, worker) = supervisor
        .send(StartChat {
            bot: bot.to_owned(),
            messages,
            events: events_tx,
        })
        .await
        .map_err(|_| TurnError::new(ErrorCode::Internal, "the supervisor is not running"))??;
    Ok(Turn {
        events,
        id,
        worker,
        finished: false,
    })
}
