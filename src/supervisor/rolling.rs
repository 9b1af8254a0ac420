//! Restarting many bots: one at a time (rolling), or all at once.
//!
//! A rolling restart hands each bot over in turn and waits for each handover
//! to finish before the next, so at most one bot is ever between
//! generations. Only one rolling restart runs at a time, whoever starts it
//! (the schedule, `bothost restart --all --rolling`, the admin API). It runs
//! as its own task: a caller that goes away does not stop it half-way.
//!
//! The restart schedule (`supervisor.restart_schedule`) is a task of its
//! own too ([`spawn_schedule`]): it sleeps until the next time the cron
//! expression names, then runs a rolling restart like an operator would.

use actix::prelude::*;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::actor::Supervisor;
use super::messages::{BeginRolling, EndRolling, GetStatus, RestartBot};
use crate::status::{BotRestart, RestartError, RestartReason, Restarted};

/// Releases the slot however the rolling restart ends.
struct Slot(Addr<Supervisor>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.do_send(EndRolling);
    }
}

/// Hands every bot over, one at a time. Each result is also sent to
/// `progress` as it happens. Fails at once if one is already running.
pub async fn rolling_restart(
    supervisor: &Addr<Supervisor>,
    reason: RestartReason,
    progress: Option<mpsc::UnboundedSender<BotRestart>>,
) -> Result<Vec<BotRestart>, RestartError> {
    let bots = supervisor
        .send(BeginRolling)
        .await
        .map_err(|_| RestartError::supervisor_gone())??;
    let _slot = Slot(supervisor.clone());
    info!(
        reason = reason.as_str(),
        bots = bots.len(),
        "rolling restart started"
    );
    let mut results = Vec::with_capacity(bots.len());
    for bot in bots {
        let result = restart_one(supervisor, &bot, reason).await;
        if let Err(why) = &result {
            warn!(bot = %bot, "rolling restart: {why}");
        }
        let outcome = BotRestart { bot, result };
        if let Some(tx) = &progress {
            let _ = tx.send(outcome.clone());
        }
        results.push(outcome);
    }
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    info!(reason = reason.as_str(), failed, "rolling restart finished");
    Ok(results)
}

/// Hands every bot over at the same time. Fails when the Supervisor is
/// gone: nothing was restarted, and saying "0 failed" would be a lie.
pub async fn restart_all(
    supervisor: &Addr<Supervisor>,
    reason: RestartReason,
) -> Result<Vec<BotRestart>, RestartError> {
    let names: Vec<String> = supervisor
        .send(GetStatus)
        .await
        .map_err(|_| RestartError::supervisor_gone())?
        .bots
        .into_iter()
        .map(|b| b.name)
        .collect();
    let restarts = names.iter().map(|bot| restart_one(supervisor, bot, reason));
    let results = futures_util::future::join_all(restarts).await;
    Ok(names
        .into_iter()
        .zip(results)
        .map(|(bot, result)| BotRestart { bot, result })
        .collect())
}

async fn restart_one(
    supervisor: &Addr<Supervisor>,
    bot: &str,
    reason: RestartReason,
) -> Result<Restarted, RestartError> {
    supervisor
        .send(RestartBot {
            bot: bot.to_owned(),
            reason,
        })
        .await
        .map_err(|_| RestartError::supervisor_gone())?
}
