//! One bot's generations as a state machine: an event in, the actions out.
//!
//! Owns every decision about a bot's workers: when to spawn the next
//! generation, when it takes over, which old one drains, when a crash
//! restarts after a backoff and when the bot is given up on, which restart
//! request is refused and why. It never touches an actor, a process or a
//! clock: the Supervisor feeds it events with the time they happened and
//! carries out the [`Action`]s, so unit tests drive it without processes.
//!
//! Generations: `current` takes new turns (always Ready), `pending` is
//! starting to replace it (at most one), `draining` are old ones finishing
//! their turns.
//!
//! ```text
//!  restart (memory | leak | schedule | operator):
//!    Spawn pending ──ready──▶ pending becomes current, Drain old current ──gone──▶ forgotten
//!          │
//!          └─ gone before ready ──▶ current keeps serving; HandoverFailed, automatic
//!                                   restarts pause for backoff_max
//!  crash | hang of current:
//!    current gone ──RetryAfter(backoff)──▶ Spawn pending ──ready──▶ current
//!                 └─ crash_limit within crash_window ──▶ Failed ──quarantine (doubling)──▶ Spawn
//!                                                              (or at once: an operator restart)
//! ```
//!
//! **Invariant:** events about generations it no longer tracks change
//! nothing, so a late report never undoes a newer decision.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::policy::{CrashDecision, CrashPolicy};
use crate::status::{BotState, RestartError, RestartErrorCode, RestartReason, Restarted};
use crate::turn::{ErrorCode, TurnError};
use crate::worker::Cause;

/// What the Supervisor must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a WorkerHandle for this generation.
    Spawn(u64),
    /// Tell this generation to finish its turns and stop.
    Drain(u64),
    /// This generation serves now: its memory watch starts afresh.
    TookOver(u64),
    /// Count a restart with this reason (`bothost_worker_restarts_total`).
    Count(RestartReason),
    /// The pending restart ended: tell whoever waits for it.
    Resolve(Result<Restarted, RestartError>),
    /// Call [`Lifecycle::backoff_elapsed`] after this delay.
    RetryAfter(Duration),
    /// The bot's state changed.
    State(BotState),
    /// A handover failed: the new generation died, the old one serves on.
    HandoverFailed,
    /// The serving generation is gone: its memory reading is stale.
    Lost,
    /// No room on the machine for two generations: this restart stops the
    /// old one first (the bot is unavailable meanwhile).
    ColdRestart,
}

/// The generation that takes turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serving {
    pub number: u64,
    pub pid: u32,
    pub spawned: Instant,
    pub ready_at: Instant,
}

#[derive(Debug)]
struct Pending {
    number: u64,
    spawned: Instant,
    /// Counted as a restart with this reason when it takes over; `None` for
    /// a first start or a crash restart (counted when the crash was handled).
    reason: Option<RestartReason>,
}

#[derive(Debug)]
pub struct Lifecycle {
    name: String,
    policy: CrashPolicy,
    state: BotState,
    /// The last generation number handed out.
    generation: u64,
    current: Option<Serving>,
    pending: Option<Pending>,
    draining: Vec<u64>,
    crashes: VecDeque<Instant>,
    restarts: u64,
    last_failure: Option<String>,
    /// No automatic (memory, leak) restart before this, after one failed.
    auto_restart_after: Option<Instant>,
    /// Every model server the bot uses is down.
    degraded: bool,
    shutting_down: bool,
    /// Times in a row the bot was given up on; the next retry waits longer.
    quarantines: u32,
    /// When a failed bot is tried again by itself.
    retry_at: Option<Instant>,
    /// A restart that waits for the old generation to exit before starting
    /// the next (no room for both).
    cold: Option<RestartReason>,
    /// The current generation takes no new turns: it is being replaced for
    /// memory, and every turn it took would grow it further towards its
    /// ceiling. Turns wait for the pending generation instead.
    closed: bool,
}

/// Where a new turn goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To this generation, now.
    Worker(u64),
    /// A generation is on its way (starting, or replacing one that takes no
    /// more turns): the turn waits for it rather than failing.
    Wait,
}

impl Lifecycle {
    pub fn new(name: &str, policy: CrashPolicy) -> Self {
        Self {
            name: name.to_owned(),
            policy,
            state: BotState::Starting,
            generation: 0,
            current: None,
            pending: None,
            draining: Vec::new(),
            crashes: VecDeque::new(),
            restarts: 0,
            last_failure: None,
            auto_restart_after: None,
            degraded: false,
            shutting_down: false,
            quarantines: 0,
            retry_at: None,
            cold: None,
            closed: false,
        }
    }

    /// A restart is under way: one is starting, or waits for the old
    /// generation to go.
    pub fn restart_under_way(&self) -> bool {
        self.pending.is_some() || self.cold.is_some()
    }

    /// When a failed bot will be tried again by itself.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| self.state == BotState::Failed)
    }

    pub fn state(&self) -> BotState {
        self.state
    }

    pub fn current(&self) -> Option<&Serving> {
        self.current.as_ref()
    }

    pub fn pending_generation(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.number)
    }

    /// The current generation, or the last one handed out when none serves.
    pub fn generation(&self) -> u64 {
        self.current.map_or(self.generation, |g| g.number)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Every generation that has a worker: current, pending and draining.
    pub fn generations(&self) -> impl Iterator<Item = u64> + '_ {
        self.current
            .map(|g| g.number)
            .into_iter()
            .chain(self.pending_generation())
            .chain(self.draining.iter().copied())
    }

    /// Where a new turn goes, or why none can take it.
    pub fn route(&self) -> Result<Route, TurnError> {
        let name = &self.name;
        if let Some(g) = self.current.filter(|_| !self.closed) {
            return Ok(Route::Worker(g.number));
        }
        if self.shutting_down {
            return Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!("the bot '{name}' is shutting down; please try again in a moment"),
            ));
        }
        match self.state {
            BotState::Failed => Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{name}' is unavailable after repeated failures; an operator has been alerted, \
                     and it is tried again by itself"
                ),
            )),
            _ if self.restart_under_way() => Ok(Route::Wait),
            BotState::Starting | BotState::Restarting => Ok(Route::Wait),
            state => Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{name}' is {}; please try again in a moment",
                    state.as_str()
                ),
            )),
        }
    }

    /// The host starts: the first generation.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.spawn(None, now, &mut out);
        out
    }

    /// A generation finished its handshake.
    pub fn ready(&mut self, number: u64, pid: u32, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(pending) = self.pending.take_if(|p| p.number == number) else {
            return out;
        };
        let took = now.saturating_duration_since(pending.spawned);
        self.quarantines = 0;
        self.retry_at = None;
        let serving = Serving {
            number,
            pid,
            spawned: pending.spawned,
            ready_at: now,
        };
        let from = self.current.map(|g| g.number);
        self.closed = false;
        if let Some(old) = self.current.replace(serving) {
            out.push(Action::Drain(old.number));
            self.draining.push(old.number);
        }
        out.push(Action::TookOver(number));
        if let Some(reason) = pending.reason {
            self.restarts += 1;
            out.push(Action::Count(reason));
            info!(
                bot = %self.name, reason = reason.as_str(), from, to = number,
                took_ms = took.as_millis() as u64,
                "handover complete: generation {number} serving, the old one draining"
            );
        }
        out.push(Action::Resolve(Ok(Restarted {
            from,
            to: number,
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        })));
        self.set_state(self.serving_state(), &mut out);
        out
    }

    /// A generation ended (exit, hang, start failure, or stopped after a drain).
    pub fn gone(&mut self, number: u64, cause: &Cause, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(pos) = self.draining.iter().position(|&g| g == number) {
            self.draining.remove(pos);
            if self.draining.is_empty() {
                if let Some(reason) = self.cold.take() {
                    self.spawn(Some(reason), now, &mut out);
                }
            }
            return out;
        }
        if let Some(pending) = self.pending.take_if(|p| p.number == number) {
            let why = format!("generation {} {cause}", pending.number);
            if let Some(current) = &self.current {
                let message = format!("{why}; generation {} keeps serving", current.number);
                self.closed = false;
                error!(bot = %self.name, "restart failed: {message}");
                self.last_failure = Some(message.clone());
                self.auto_restart_after = Some(now + self.policy.backoff.max);
                out.push(Action::HandoverFailed);
                out.push(Action::Resolve(Err(RestartError::new(
                    RestartErrorCode::Failed,
                    message,
                ))));
                return out;
            }
            out.push(Action::Resolve(Err(RestartError::new(
                RestartErrorCode::Failed,
                why,
            ))));
            self.on_crash(cause, now, &mut out);
            return out;
        }
        if self.current.is_some_and(|g| g.number == number) {
            self.current = None;
            self.closed = false;
            out.push(Action::Lost);
            if *cause != Cause::Stopped {
                self.on_crash(cause, now, &mut out);
            }
        }
        out
    }

    /// The crash backoff, or a failed bot's quarantine, is over: start the
    /// next generation, unless one already serves or starts (an operator may
    /// have restarted meanwhile).
    pub fn backoff_elapsed(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.current.is_some() || self.pending.is_some() {
            return out;
        }
        if self.state == BotState::Failed {
            if self.retry_at.is_none_or(|t| now < t) {
                return out; // an earlier timer, overtaken by an operator
            }
            info!(bot = %self.name, "trying the failed bot again after its quarantine");
            self.crashes.clear();
        }
        self.spawn(None, now, &mut out);
        out
    }

    /// An operator or the schedule asks for a handover. Joins one already
    /// under way; brings a `failed` bot back.
    pub fn restart(
        &mut self,
        reason: RestartReason,
        now: Instant,
        room: bool,
    ) -> Result<Vec<Action>, RestartError> {
        if self.shutting_down {
            return Err(RestartError::shutting_down());
        }
        let mut out = Vec::new();
        if !self.restart_under_way() {
            match (&self.current, self.state) {
                (None, BotState::Failed) => {
                    self.crashes.clear();
                    self.retry_at = None;
                }
                (None, state) => {
                    return Err(RestartError::new(
                        RestartErrorCode::Recovering,
                        format!(
                            "the bot is {} after a crash and comes back by itself",
                            state.as_str()
                        ),
                    ))
                }
                (Some(_), _) => {}
            }
            info!(bot = %self.name, reason = reason.as_str(), "restart requested");
            self.hand_over(reason, now, room, &mut out);
        }
        Ok(out)
    }

    /// Memory governance asks for a handover. Nothing happens while one is
    /// under way or after a failed one, for `backoff_max`.
    pub fn auto_restart(&mut self, reason: RestartReason, now: Instant, room: bool) -> Vec<Action> {
        let mut out = Vec::new();
        let cooling = self.auto_restart_after.is_some_and(|t| now < t);
        if !self.restart_under_way() && !cooling {
            self.hand_over(reason, now, room, &mut out);
        }
        out
    }

    /// Replaces the serving generation: by a handover when the machine has
    /// `room` for a second generation, else by stopping it first.
    fn hand_over(
        &mut self,
        reason: RestartReason,
        now: Instant,
        room: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(old) = self.current.filter(|_| !room && !self.shutting_down) else {
            self.spawn(Some(reason), now, out);
            // Every turn a worker over (or fast nearing) its budget takes
            // grows it towards its ceiling, where it is killed turns and all.
            self.closed = reason == RestartReason::Memory && self.pending.is_some();
            return;
        };
        warn!(
            bot = %self.name, reason = reason.as_str(),
            "no room on the machine for a second generation: stopping the old one first"
        );
        self.current = None;
        self.draining.push(old.number);
        self.cold = Some(reason);
        out.push(Action::ColdRestart);
        out.push(Action::Drain(old.number));
        out.push(Action::Lost);
        self.set_state(BotState::Restarting, out);
    }

    /// The health checks changed their verdict on the bot's model servers.
    pub fn set_degraded(&mut self, degraded: bool) -> Vec<Action> {
        let mut out = Vec::new();
        self.degraded = degraded;
        if self.state.serving() {
            self.set_state(self.serving_state(), &mut out);
        }
        out
    }

    /// The host stops: no more spawns or restarts. The Supervisor drains
    /// every generation in [`Lifecycle::generations`] and waits for them.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.shutting_down = true;
        self.cold = None;
        self.set_state(BotState::Draining, &mut out);
        out
    }

    fn serving_state(&self) -> BotState {
        if self.degraded {
            BotState::Degraded
        } else {
            BotState::Ready
        }
    }

    fn set_state(&mut self, state: BotState, out: &mut Vec<Action>) {
        if self.state != state {
            self.state = state;
            out.push(Action::State(state));
        }
    }

    fn spawn(&mut self, reason: Option<RestartReason>, now: Instant, out: &mut Vec<Action>) {
        if self.shutting_down || self.pending.is_some() {
            return;
        }
        self.generation += 1;
        self.pending = Some(Pending {
            number: self.generation,
            spawned: now,
            reason,
        });
        out.push(Action::Spawn(self.generation));
        if self.current.is_none() {
            let state = if self.generation == 1 {
                BotState::Starting
            } else {
                BotState::Restarting
            };
            self.set_state(state, out);
        }
    }

    fn on_crash(&mut self, cause: &Cause, now: Instant, out: &mut Vec<Action>) {
        if self.shutting_down {
            return;
        }
        let reason = match cause {
            Cause::Hung => RestartReason::Hung,
            Cause::MemoryCeiling { .. } => RestartReason::Memory,
            _ => RestartReason::Crash,
        };
        self.last_failure = Some(cause.to_string());
        match self.policy.on_crash(&mut self.crashes, now) {
            CrashDecision::GiveUp { crashes } => {
                if self.pending.is_some() {
                    return; // a restart is already starting; let it decide
                }
                self.quarantines += 1;
                let wait = self.policy.quarantine.delay(self.quarantines);
                self.retry_at = Some(now + wait);
                error!(
                    bot = %self.name, crashes, retry_in_seconds = wait.as_secs(),
                    "bot marked failed: it crashed {crashes} times within {:?}; trying again in {} \
                     (`bothost restart {}` tries at once)",
                    self.policy.window,
                    humantime::format_duration(wait),
                    self.name
                );
                self.set_state(BotState::Failed, out);
                out.push(Action::RetryAfter(wait));
            }
            CrashDecision::RestartAfter(delay) => {
                self.restarts += 1;
                out.push(Action::Count(reason));
                warn!(bot = %self.name, reason = reason.as_str(), ?delay, "restarting the worker");
                if self.current.is_none() {
                    self.set_state(BotState::Restarting, out);
                }
                out.push(Action::RetryAfter(delay));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;
    use Route::{Wait, Worker};

    const MS: Duration = Duration::from_millis(1);

    fn bot() -> (Lifecycle, Instant) {
        let policy = CrashPolicy {
            backoff: Backoff::new(100 * MS, 400 * MS),
            limit: 3,
            window: Duration::from_secs(60),
            quarantine: Backoff::new(Duration::from_secs(300), Duration::from_secs(3600)),
        };
        (Lifecycle::new("b", policy), Instant::now())
    }

    /// A bot whose first generation serves.
    fn serving() -> (Lifecycle, Instant) {
        let (mut l, t) = bot();
        assert_eq!(l.start(t), [Action::Spawn(1)]);
        l.ready(1, 100, t + 5 * MS);
        (l, t + 5 * MS)
    }

    fn states(actions: &[Action]) -> Vec<BotState> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::State(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_first_generation_starts_then_serves() {
        let (mut l, t) = bot();
        assert_eq!(l.start(t), [Action::Spawn(1)]);
        assert_eq!(l.state(), BotState::Starting);
        assert_eq!(l.route(), Ok(Wait), "turns wait for the first generation");
        let out = l.ready(1, 42, t + 7 * MS);
        assert_eq!(
            out,
            [
                Action::TookOver(1),
                Action::Resolve(Ok(Restarted {
                    from: None,
                    to: 1,
                    millis: 7
                })),
                Action::State(BotState::Ready),
            ]
        );
        assert_eq!(l.route(), Ok(Worker(1)));
        assert_eq!(l.restarts(), 0, "a first start is not a restart");
    }

    #[test]
    fn a_handover_switches_routing_then_drains_the_old_generation() {
        let (mut l, t) = serving();
        assert_eq!(
            l.restart(RestartReason::Operator, t, true).unwrap(),
            [Action::Spawn(2)]
        );
        assert_eq!(
            l.route(),
            Ok(Worker(1)),
            "the old generation serves until the new one is ready"
        );
        assert_eq!(l.state(), BotState::Ready);
        let out = l.ready(2, 200, t + 3 * MS);
        assert_eq!(out[0], Action::Drain(1));
        assert!(out.contains(&Action::Count(RestartReason::Operator)));
        assert_eq!(l.route(), Ok(Worker(2)));
        assert_eq!(l.generations().collect::<Vec<_>>(), [2, 1]);
        assert!(l.gone(1, &Cause::Stopped, t + 10 * MS).is_empty());
        assert_eq!(l.generations().collect::<Vec<_>>(), [2]);
        assert_eq!(l.restarts(), 1);
    }

    #[test]
    fn a_second_restart_request_joins_the_one_under_way() {
        let (mut l, t) = serving();
        assert_eq!(
            l.restart(RestartReason::Operator, t, true).unwrap().len(),
            1
        );
        assert!(l
            .restart(RestartReason::Schedule, t, true)
            .unwrap()
            .is_empty());
        assert!(l.auto_restart(RestartReason::Memory, t, true).is_empty());
    }

    #[test]
    fn a_generation_replaced_for_memory_takes_no_new_turns() {
        let (mut l, t) = serving();
        assert_eq!(
            l.auto_restart(RestartReason::Memory, t, true),
            [Action::Spawn(2)]
        );
        assert_eq!(l.route(), Ok(Wait), "turns wait for generation 2");
        // Killed at its ceiling before the next is ready: still waiting.
        l.gone(1, &Cause::MemoryCeiling { rss: 2, ceiling: 1 }, t + MS);
        assert_eq!(l.route(), Ok(Wait));
        l.ready(2, 2, t + 2 * MS);
        assert_eq!(l.route(), Ok(Worker(2)));
        // A leak is slow: the old generation serves until the new one is ready.
        l.auto_restart(RestartReason::Leak, t + 3 * MS, true);
        assert_eq!(l.route(), Ok(Worker(2)));
    }

    #[test]
    fn a_crashed_bot_keeps_turns_waiting_until_it_fails() {
        let (mut l, t) = serving();
        l.gone(1, &Cause::Crashed("x".into()), t);
        assert_eq!(l.route(), Ok(Wait), "during the backoff");
        l.shutdown();
        assert!(l.route().is_err(), "not while shutting down");
    }

    #[test]
    fn a_failed_handover_keeps_the_old_generation_and_pauses_automatic_restarts() {
        let (mut l, t) = serving();
        l.restart(RestartReason::Memory, t, true).unwrap();
        let out = l.gone(2, &Cause::StartFailed("boom".into()), t + MS);
        assert_eq!(out[0], Action::HandoverFailed);
        let Action::Resolve(Err(e)) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(e.code, RestartErrorCode::Failed);
        assert!(e.message.contains("generation 1 keeps serving"), "{e}");
        assert_eq!(l.route(), Ok(Worker(1)));
        assert!(l
            .auto_restart(RestartReason::Memory, t + 2 * MS, true)
            .is_empty());
        assert_eq!(
            l.auto_restart(RestartReason::Memory, t + 500 * MS, true),
            [Action::Spawn(3)]
        );
    }

    #[test]
    fn a_crash_restarts_after_a_doubling_backoff_then_gives_up() {
        let (mut l, t) = serving();
        let out = l.gone(1, &Cause::Crashed("segfault".into()), t);
        assert_eq!(
            out,
            [
                Action::Lost,
                Action::Count(RestartReason::Crash),
                Action::State(BotState::Restarting),
                Action::RetryAfter(100 * MS),
            ]
        );
        assert_eq!(l.backoff_elapsed(t), [Action::Spawn(2)]);
        // The restarted generation dies before it is ready: a second crash.
        let out = l.gone(2, &Cause::Hung, t + MS);
        assert!(out.contains(&Action::Count(RestartReason::Hung)));
        assert!(out.contains(&Action::RetryAfter(200 * MS)));
        l.backoff_elapsed(t + MS);
        let out = l.gone(3, &Cause::Crashed("again".into()), t + 2 * MS);
        assert_eq!(states(&out), [BotState::Failed]);
        assert!(out.contains(&Action::RetryAfter(Duration::from_secs(300))));
        assert!(
            l.backoff_elapsed(t + 3 * MS).is_empty(),
            "an earlier timer does nothing"
        );
        let refused = l.route().unwrap_err();
        assert!(refused.message.contains("repeated failures"), "{refused}");
        // An operator brings it back, with a fresh crash history.
        assert_eq!(
            l.restart(RestartReason::Operator, t + 4 * MS, true)
                .unwrap(),
            [Action::Spawn(4), Action::State(BotState::Restarting)]
        );
    }

    #[test]
    fn a_failed_bot_is_tried_again_after_a_doubling_quarantine() {
        let (mut l, t) = bot();
        l.start(t);
        let mut now = t;
        let mut waits = Vec::new();
        for generation in 1.. {
            let out = l.gone(generation, &Cause::StartFailed("disk full".into()), now);
            if let Some(Action::RetryAfter(wait)) = out.last() {
                if l.state() == BotState::Failed {
                    waits.push(*wait);
                    assert!(l.retry_at().is_some());
                }
                now += *wait;
                assert!(!l.backoff_elapsed(now).is_empty(), "tried again");
            }
            if waits.len() == 3 {
                break;
            }
        }
        assert_eq!(
            waits,
            [300, 600, 1200].map(Duration::from_secs),
            "quarantines double"
        );
        // Once a generation serves, the next failure starts from the shortest.
        let serving = l.pending_generation().unwrap();
        l.ready(serving, 1, now);
        assert_eq!(l.retry_at(), None);
    }

    #[test]
    fn without_room_for_two_generations_the_old_one_stops_first() {
        let (mut l, t) = serving();
        let out = l.restart(RestartReason::Operator, t, false).unwrap();
        assert_eq!(
            out,
            [
                Action::ColdRestart,
                Action::Drain(1),
                Action::Lost,
                Action::State(BotState::Restarting)
            ]
        );
        assert_eq!(l.route(), Ok(Wait), "turns wait while the old one stops");
        assert!(l.restart_under_way());
        assert!(
            l.auto_restart(RestartReason::Memory, t, false).is_empty(),
            "joins"
        );
        assert_eq!(l.gone(1, &Cause::Stopped, t + MS), [Action::Spawn(2)]);
        let out = l.ready(2, 2, t + 2 * MS);
        assert!(out.contains(&Action::Count(RestartReason::Operator)));
        assert_eq!(l.route(), Ok(Worker(2)));
    }

    #[test]
    fn an_operator_cannot_restart_a_bot_between_crash_restarts() {
        let (mut l, t) = serving();
        l.gone(1, &Cause::Crashed("x".into()), t);
        let e = l.restart(RestartReason::Operator, t, true).unwrap_err();
        assert_eq!(e.code, RestartErrorCode::Recovering);
    }

    #[test]
    fn late_events_of_untracked_generations_change_nothing() {
        let (mut l, t) = serving();
        assert!(l.ready(7, 1, t).is_empty());
        assert!(l.gone(7, &Cause::Crashed("x".into()), t).is_empty());
        assert_eq!(l.route(), Ok(Worker(1)));
    }

    #[test]
    fn degraded_follows_the_model_servers_while_serving() {
        let (mut l, _) = serving();
        assert_eq!(l.set_degraded(true), [Action::State(BotState::Degraded)]);
        assert!(l.route().is_ok(), "a degraded bot still takes turns");
        assert_eq!(l.set_degraded(false), [Action::State(BotState::Ready)]);
        let (mut starting, t) = bot();
        starting.start(t);
        assert!(starting.set_degraded(true).is_empty());
        assert_eq!(
            states(&starting.ready(1, 1, t)),
            [BotState::Degraded],
            "a bot whose servers are down becomes degraded, not ready"
        );
    }

    #[test]
    fn shutdown_refuses_restarts_and_ignores_crashes() {
        let (mut l, t) = serving();
        assert_eq!(l.shutdown(), [Action::State(BotState::Draining)]);
        assert_eq!(
            l.restart(RestartReason::Operator, t, true)
                .unwrap_err()
                .code,
            RestartErrorCode::ShuttingDown
        );
        assert_eq!(l.gone(1, &Cause::Crashed("x".into()), t), [Action::Lost]);
        assert!(l.auto_restart(RestartReason::Leak, t, true).is_empty());
    }
}
