//! The crash rule: how long to wait before restarting a crashed worker, and
//! when to give up on a bot. A plain function unit tests call directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;

/// Backoff and give-up rule for crashing workers.
#[derive(Debug, Clone)]
pub struct CrashPolicy {
    pub backoff: Backoff,
    /// This many crashes inside `window` and the bot is marked failed.
    pub limit: u32,
    pub window: Duration,
    /// When a failed bot is tried again: the first time, then doubling.
    pub quarantine: Backoff,
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
        let attempt = u32::try_from(crashes).unwrap_or(u32::MAX);
        CrashDecision::RestartAfter(self.backoff.delay(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CrashPolicy {
        CrashPolicy {
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(3)),
            quarantine: Backoff::new(Duration::from_secs(300), Duration::from_secs(3600)),
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
