//! What the rest of the host asks the Supervisor. Plain data; the handlers
//! live with the actor.

use actix::prelude::*;
use bot_worker::ChatMessage;
use tokio::sync::mpsc;

use crate::status::{RestartError, RestartReason, Restarted, StatusReport};
use crate::turn::{CancelTurn, TurnError, TurnEvent};

/// Start a turn on the current worker of `bot`. Answers the request id and
/// the worker that has it (for cancelling).
#[derive(Message)]
#[rtype(result = "Result<(u64, Recipient<CancelTurn>), TurnError>")]
pub struct StartChat {
    pub bot: String,
    pub messages: Vec<ChatMessage>,
    pub events: mpsc::UnboundedSender<TurnEvent>,
}

#[derive(Message)]
#[rtype(result = "StatusReport")]
pub struct GetStatus;

/// Resolves once every bot is ready or failed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwaitSettled;

/// Drain and stop every worker; resolves when all are gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Hand `bot` over to a new generation; resolves when the new generation
/// serves, or with why it could not. Joins a restart already under way.
#[derive(Message)]
#[rtype(result = "Result<Restarted, RestartError>")]
pub struct RestartBot {
    pub bot: String,
    pub reason: RestartReason,
}

/// Claims the rolling-restart slot (one at a time); answers the bots to go
/// through, in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, RestartError>")]
pub struct BeginRolling;

/// Releases the rolling-restart slot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndRolling;
