//! The bots as the page lists them (name, model, state): kept current by the
//! Supervisor, read by the web without a message to it.
//!
//! `GET /api/v1/bots` used to ask the Supervisor for its whole status report:
//! a hop to its thread and back, and a report with every bot's memory,
//! generations and endpoints built for a list of names and states. Every page
//! load asks, and so do ten thousand browsers coming back after a restart.
//! The board is written where a bot's state changes, in the same step that
//! tells whoever watches (`web::watchers`, which hands each change to every
//! WebSocket as a `bot_status` frame), so the list and the frames never
//! disagree.
//!
//! Must never: be written by anyone but the Supervisor, or block it (a
//! reader holds the lock only to copy a few short lines).

use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use crate::status::{BotState, StatusChange};

/// One bot as the page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct BotLine {
    pub name: String,
    pub model: String,
    pub state: BotState,
}

#[derive(Debug, Clone)]
pub struct Board {
    lines: Arc<RwLock<Vec<BotLine>>>,
    changes: broadcast::Sender<StatusChange>,
}

impl Board {
    pub(super) fn new(lines: Vec<BotLine>) -> Self {
        Self {
            lines: Arc::new(RwLock::new(lines)),
            changes: broadcast::channel(256).0,
        }
    }

    /// Every bot, in the configuration's order.
    pub fn bots(&self) -> Vec<BotLine> {
        match self.lines.read() {
            Ok(lines) => lines.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Every later change of any bot's state.
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.changes.subscribe()
    }

    /// Bot `name` is `state` now: listed so, and told to whoever watches.
    pub(super) fn set(&self, name: &str, state: BotState) {
        let mut lines = match self.lines.write() {
            Ok(lines) => lines,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(line) = lines.iter_mut().find(|l| l.name == name) {
            line.state = state;
        }
        drop(lines);
        // No subscribers is fine: nobody is watching.
        let _ = self.changes.send(StatusChange {
            bot: name.to_owned(),
            state,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, state: BotState) -> BotLine {
        BotLine {
            name: name.into(),
            model: "m".into(),
            state,
        }
    }

    #[test]
    fn a_change_is_listed_and_told_to_subscribers() {
        let board = Board::new(vec![
            line("a", BotState::Starting),
            line("b", BotState::Starting),
        ]);
        let mut changes = board.subscribe();
        board.set("b", BotState::Ready);
        assert_eq!(
            board.bots(),
            vec![line("a", BotState::Starting), line("b", BotState::Ready)]
        );
        let told = changes.try_recv().expect("a change");
        assert_eq!((told.bot.as_str(), told.state), ("b", BotState::Ready));
    }
}
