//! Starting a chat turn: the one way the control socket and the web front
//! end reach a bot's worker.

use actix::Addr;
use bot_worker::ChatMessage;
use tokio::sync::mpsc;

use super::actor::Supervisor;
use super::messages::StartChat;
use crate::turn::{ErrorCode, Turn, TurnError};

/// Starts one turn on the current worker of `bot`. The turn goes through
/// the Supervisor, never straight to a worker looked up earlier: that
/// worker may have started draining in between.
pub async fn start_turn(
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
    Ok(Turn::new(id, worker, events))
}
