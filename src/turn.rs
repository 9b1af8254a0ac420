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
use serde::Serialize;
use tokio::sync::mpsc;

use crate::names::named_enum;

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

named_enum! {
    /// Stable error codes, for programs; each turn error also carries a
    /// message for people.
    pub enum ErrorCode {
        UnknownBot = "unknown_bot",
        /// Starting, restarting or failed: no worker can take the turn now.
        BotUnavailable = "bot_unavailable",
        /// The host is shutting down for a restart: the message was not
        /// taken; send it again once reconnected.
        Restarting = "restarting",
        /// The worker died (crash, kill, hang) with the turn in flight.
        WorkerDied = "worker_died",
        EngineFailed = "engine_failed",
        /// No model server could answer; the message is kept for a retry.
        InferenceUnavailable = "inference_unavailable",
        /// The model server does not have the bot's model.
        ModelNotFound = "model_not_found",
        /// The model server is busy.
        Overloaded = "overloaded",
        /// The model server went silent past its timeouts.
        EngineTimeout = "engine_timeout",
        Cancelled = "cancelled",
        TooLarge = "too_large",
        /// The database could not store or read the conversation.
        StoreUnavailable = "store_unavailable",
        /// The same message is being answered by another request right now.
        InProgress = "in_progress",
        /// The conversation is gone (deleted in another tab or device).
        NotFound = "not_found",
        /// The user has as many replies in progress as they may, counted
        /// on every host: retry in a moment.
        RateLimited = "rate_limited",
        Internal = "internal",
    }
}

impl TurnError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The user has `max` replies in progress already (`max_in_flight_per_user`).
    pub fn too_many_in_flight(max: u32) -> Self {
        Self::new(
            ErrorCode::RateLimited,
            format!("you already have {max} replies in progress; wait for one to finish"),
        )
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
