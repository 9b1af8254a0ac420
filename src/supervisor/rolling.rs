//! Restarting many bots: one at a time (rolling), or all at once.
//!
//! A rolling restart hands each bot over in turn and waits for each handover
//! to finish before the next, so at most one bot is ever between
//! generations. Only one rolling restart runs at a time, whoever starts it
//! (the schedule, `bothost restart --all --rolling`, the admin API). It runs
//! as its own task: a caller that goes away does not stop it half-way.

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{GetStatus, RestartBot, RestartReason, Restarted, Supervisor};

/// The outcome for one bot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotRestart {
    pub bot: String,
    pub result: Result<Restarted, String>,
}

/// Claims the rolling-restart slot; answers the bots to go through, in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, String>")]
struct BeginRolling;

#[derive(Message)]
#[rtype(result = "()")]
struct EndRolling;

impl Handler<BeginRolling> for Supervisor {
    type Result = Result<Vec<String>, String>;

    fn handle(&mut self, _: BeginRolling, _: &mut Context<Self>) -> Self::Result {
        if self.rolling {
            return Err("a rolling restart is already running".into());
        }
        if self.shutting_down {
            return Err("the host is shutting down".into());
        }
        self.rolling = true;
        Ok(self.bots.iter().map(|b| b.name().to_owned()).collect())
    }
}

impl Handler<EndRolling> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: EndRolling, _: &mut Context<Self>) {
        self.rolling = false;
    }
}

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
) -> Result<Vec<BotRestart>, String> {
    let bots = supervisor
        .send(BeginRolling)
        .await
        .map_err(|e| format!("the supervisor is not running: {e}"))??;
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

/// Hands every bot over at the same time.
pub async fn restart_all(supervisor: &Addr<Supervisor>, reason: RestartReason) -> Vec<BotRestart> {
    let names: Vec<String> = match supervisor.send(GetStatus).await {
        Ok(report) => report.bots.into_iter().map(|b| b.name).collect(),
        Err(_) => return Vec::new(),
    };
    let restarts = names.iter().map(|bot| restart_one(supervisor, bot, reason));
    let results = futures_util::future::join_all(restarts).await;
    names
        .into_iter()
        .zip(results)
        .map(|(bot, result)| BotRestart { bot, result })
        .collect()
}

async fn restart_one(
    supervisor: &Addr<Supervisor>,
    bot: &str,
    reason: RestartReason,
) -> Result<Restarted, String> {
    supervisor
        .send(RestartBot {
            bot: bot.to_owned(),
            reason,
        })
        .await
        .map_err(|e| format!("the supervisor is not running: {e}"))?
}
