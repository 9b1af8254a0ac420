//! The Supervisor's vocabulary and its restart rules, as plain types and
//! functions that unit tests call directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotState {
    Starting,
    Ready,
    /// The worker is ready but every model server it uses is down.
    Degraded,
    Draining,
    Restarting,
    Failed,
}

impl BotState {
    pub const ALL: [BotState; 6] = [
        BotState::Starting,
        BotState::Ready,
        BotState::Degraded,
        BotState::Draining,
        BotState::Restarting,
        BotState::Failed,
    ];

    /// Start-up is over for this bot: it serves (perhaps degraded) or has
    /// been given up on.
    pub fn settled(self) -> bool {
        matches!(
            self,
            BotState::Ready | BotState::Degraded | BotState::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Starting => "starting",
            BotState::Ready => "ready",
            BotState::Degraded => "degraded",
            BotState::Draining => "draining",
            BotState::Restarting => "restarting",
            BotState::Failed => "failed",
        }
    }
}

/// Label values of `bothost_worker_restarts_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    Crash,
    Memory,
    Leak,
    Schedule,
    Operator,
    Hung,
}

impl RestartReason {
    pub const ALL: [RestartReason; 6] = [
        RestartReason::Crash,
        RestartReason::Memory,
        RestartReason::Leak,
        RestartReason::Schedule,
        RestartReason::Operator,
        RestartReason::Hung,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crash => "crash",
            RestartReason::Memory => "memory",
            RestartReason::Leak => "leak",
            RestartReason::Schedule => "schedule",
            RestartReason::Operator => "operator",
            RestartReason::Hung => "hung",
        }
    }
}

/// Backoff and give-up rule for crashing workers.
#[derive(Debug, Clone)]
pub struct CrashPolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// This many crashes inside `window` and the bot is marked failed.
    pub limit: u32,
    pub window: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum CrashDecision {
    RestartAfter(Duration),
    GiveUp { crashes: usize },
}

impl CrashPolicy {
    /// Records a crash at `now` and decides. Crashes older than the window
    /// are forgotten, so a bot that has been stable for a window starts again
    /// from the shortest backoff.
    pub fn on_crash(&self, history: &mut VecDeque<Instant>, now: Instant) -> CrashDecision {
        history.push_back(now);
        while history
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.window)
        {
            history.pop_front();
        }
        let crashes = history.len();
        if crashes >= self.limit as usize {
            return CrashDecision::GiveUp { crashes };
        }
        let doublings = u32::try_from(crashes.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(20);
        CrashDecision::RestartAfter(
            self.backoff_initial
                .saturating_mul(1 << doublings)
                .min(self.backoff_max),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CrashPolicy {
        CrashPolicy {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(3),
            limit: 5,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_then_gives_up_at_the_limit() {
        let p = policy();
        let mut history = VecDeque::new();
        let t0 = Instant::now();
        let decisions: Vec<_> = (0..5)
            .map(|i| p.on_crash(&mut history, t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(
            decisions,
            vec![
                CrashDecision::RestartAfter(Duration::from_millis(500)),
                CrashDecision::RestartAfter(Duration::from_secs(1)),
                CrashDecision::RestartAfter(Duration::from_secs(2)),
                CrashDecision::RestartAfter(Duration::from_secs(3)), // capped
                CrashDecision::GiveUp { crashes: 5 },
            ]
        );
    }

    #[test]
    fn crashes_outside_the_window_are_forgotten() {
        let p = policy();
        let mut history = VecDeque::new();
        let t0 = Instant::now();
        for i in 0..4 {
            p.on_crash(&mut history, t0 + Duration::from_secs(i));
        }
        let later = t0 + Duration::from_secs(120);
        assert_eq!(
            p.on_crash(&mut history, later),
            CrashDecision::RestartAfter(Duration::from_millis(500))
        );
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn a_limit_of_one_gives_up_on_the_first_crash() {
        let p = CrashPolicy {
            limit: 1,
            ..policy()
        };
        assert_eq!(
            p.on_crash(&mut VecDeque::new(), Instant::now()),
            CrashDecision::GiveUp { crashes: 1 }
        );
    }
}
