//! Supervisor: the one actor that knows every bot and decides about workers.
//!
//! It owns, per bot: the state (`starting`, `ready`, `draining`,
//! `restarting`, `failed`), the current generation's [`WorkerHandle`], the
//! crash history, restart counts and the last memory reading. It routes new
//! turns to the current generation, restarts crashed and hung workers with
//! exponential backoff, gives up on a bot that crashes too often, and samples
//! RSS on a timer.
//!
//! It never touches a process or a socket itself (WorkerHandles do), and
//! events from a generation that is no longer current are ignored, so a late
//! report can never undo a newer decision. The rules it applies live in plain
//! functions ([`CrashPolicy`]) that unit tests call directly.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::memory::Sampler;
use crate::metrics::Metrics;
use crate::turn::{ErrorCode, TurnError};
use crate::worker::{Cause, Drain, WorkerEvent, WorkerHandle, WorkerSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotState {
    Starting,
    Ready,
    Draining,
    Restarting,
    Failed,
}

impl BotState {
    pub const ALL: [BotState; 5] = [
        BotState::Starting,
        BotState::Ready,
        BotState::Draining,
        BotState::Restarting,
        BotState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Starting => "starting",
            BotState::Ready => "ready",
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

/// One bot as `bothost status` reports it. The field names are an interface
/// (DESIGN.md); add fields, rename none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotStatus {
    pub name: String,
    pub state: BotState,
    pub pid: Option<u32>,
    pub generation: u64,
    pub rss_bytes: Option<u64>,
    pub budget_bytes: u64,
    pub uptime_seconds: Option<u64>,
    pub restarts: u64,
    pub in_flight: i64,
    /// Spawn to Ready of the current generation.
    pub startup_ms: Option<f64>,
    /// Why the last generation ended, when it ended badly.
    pub last_failure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub bots: Vec<BotStatus>,
    pub host_rss_bytes: Option<u64>,
}

/// Which worker takes a new turn for `bot`.
#[derive(Message)]
#[rtype(result = "Result<Addr<WorkerHandle>, TurnError>")]
pub struct Route {
    pub bot: String,
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

struct Generation {
    number: u64,
    addr: Addr<WorkerHandle>,
    spawned: Instant,
    ready: Option<(Instant, u32)>,
}

struct Bot {
    settings: Arc<WorkerSettings>,
    budget: u64,
    state: BotState,
    generation: u64,
    current: Option<Generation>,
    crashes: VecDeque<Instant>,
    restarts: u64,
    last_failure: Option<String>,
    rss: Option<u64>,
}

pub struct Supervisor {
    bots: Vec<Bot>,
    metrics: Metrics,
    policy: CrashPolicy,
    sample_interval: Duration,
    sampler: Sampler,
    host_rss: Option<u64>,
    shutting_down: bool,
    settle_waiters: Vec<oneshot::Sender<()>>,
}

impl Supervisor {
    pub fn new(config: &Config, metrics: Metrics, sampler: Sampler) -> Self {
        let s = &config.supervisor;
        let bots = config
            .bots
            .iter()
            .map(|bot| {
                let budget = config.budget_of(bot).as_u64();
                metrics.register_bot(&bot.name, budget);
                Bot {
                    settings: Arc::new(WorkerSettings {
                        spec: bot.spec(),
                        binary: config.worker_binary_of(bot),
                        runtime_dir: config.runtime_dir().to_owned(),
                        start_timeout: s.start_timeout,
                        heartbeat_interval: s.heartbeat_interval,
                        heartbeat_timeout: s.heartbeat_timeout,
                        drain_timeout: s.drain_timeout,
                        stop_grace: s.stop_grace,
                    }),
                    budget,
                    state: BotState::Starting,
                    generation: 0,
                    current: None,
                    crashes: VecDeque::new(),
                    restarts: 0,
                    last_failure: None,
                    rss: None,
                }
            })
            .collect();
        Self {
            bots,
            metrics,
            policy: CrashPolicy {
                backoff_initial: s.backoff_initial,
                backoff_max: s.backoff_max,
                limit: s.crash_limit,
                window: s.crash_window,
            },
            sample_interval: s.sample_interval,
            sampler,
            host_rss: None,
            shutting_down: false,
            settle_waiters: Vec::new(),
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.bots.iter().position(|b| b.settings.spec.name == name)
    }

    fn set_state(&mut self, idx: usize, state: BotState) {
        let bot = &mut self.bots[idx];
        bot.state = state;
        self.metrics.set_state(&bot.settings.spec.name, state);
        if self
            .bots
            .iter()
            .all(|b| matches!(b.state, BotState::Ready | BotState::Failed))
        {
            self.settle_waiters.clear(); // dropping a sender wakes its waiter
        }
    }

    fn spawn_generation(&mut self, idx: usize, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let me = ctx.address().recipient();
        let bot = &mut self.bots[idx];
        bot.generation += 1;
        let name = &bot.settings.spec.name;
        let in_flight = self.metrics.worker_in_flight.with_label_values(&[name]);
        self.metrics
            .worker_generation
            .with_label_values(&[name])
            .set(i64::try_from(bot.generation).unwrap_or(i64::MAX));
        let addr =
            WorkerHandle::new(Arc::clone(&bot.settings), bot.generation, me, in_flight).start();
        bot.current = Some(Generation {
            number: bot.generation,
            addr,
            spawned: Instant::now(),
            ready: None,
        });
        let state = if bot.generation == 1 {
            BotState::Starting
        } else {
            BotState::Restarting
        };
        self.set_state(idx, state);
    }

    fn on_ready(&mut self, idx: usize, generation: u64, pid: u32) {
        let Some(current) = self.bots[idx].current.as_mut() else {
            return;
        };
        if current.number != generation {
            return;
        }
        current.ready = Some((Instant::now(), pid));
        self.set_state(idx, BotState::Ready);
    }

    fn on_gone(&mut self, idx: usize, generation: u64, cause: Cause, ctx: &mut Context<Self>) {
        let bot = &mut self.bots[idx];
        if bot.current.as_ref().map(|g| g.number) != Some(generation) {
            return;
        }
        bot.current = None;
        bot.rss = None;
        let name = bot.settings.spec.name.clone();
        self.metrics
            .worker_rss_bytes
            .with_label_values(&[&name])
            .set(0);
        if self.shutting_down || cause == Cause::Stopped {
            return;
        }
        let reason = if cause == Cause::Hung {
            RestartReason::Hung
        } else {
            RestartReason::Crash
        };
        bot.last_failure = Some(describe(&cause));
        match self.policy.on_crash(&mut bot.crashes, Instant::now()) {
            CrashDecision::GiveUp { crashes } => {
                error!(
                    bot = %name, crashes, window = ?self.policy.window,
                    "bot marked failed: it crashed {crashes} times within {:?}; not restarting it",
                    self.policy.window
                );
                self.set_state(idx, BotState::Failed);
            }
            CrashDecision::RestartAfter(delay) => {
                bot.restarts += 1;
                self.metrics
                    .worker_restarts
                    .with_label_values(&[&name, reason.as_str()])
                    .inc();
                warn!(bot = %name, reason = reason.as_str(), ?delay, "restarting the worker");
                self.set_state(idx, BotState::Restarting);
                ctx.run_later(delay, move |act, ctx| act.spawn_generation(idx, ctx));
            }
        }
    }

    fn sample_memory(&mut self) {
        let pids: Vec<u32> = self.bots.iter().filter_map(Bot::ready_pid).collect();
        let sample = self.sampler.sample(&pids);
        for bot in &mut self.bots {
            bot.rss = bot
                .ready_pid()
                .and_then(|pid| sample.workers.get(&pid).copied());
            if let Some(rss) = bot.rss {
                self.metrics
                    .worker_rss_bytes
                    .with_label_values(&[&bot.settings.spec.name])
                    .set(i64::try_from(rss).unwrap_or(i64::MAX));
            }
        }
        self.host_rss = sample.host;
        if let Some(rss) = sample.host {
            self.metrics
                .host_rss_bytes
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
    }

    fn status(&self) -> StatusReport {
        let bots = self
            .bots
            .iter()
            .map(|bot| {
                let name = &bot.settings.spec.name;
                let ready = bot.current.as_ref().and_then(|g| Some((g, g.ready?)));
                BotStatus {
                    name: name.clone(),
                    state: bot.state,
                    pid: ready.map(|(_, (_, pid))| pid),
                    generation: bot.generation,
                    rss_bytes: bot.rss,
                    budget_bytes: bot.budget,
                    uptime_seconds: ready.map(|(_, (at, _))| at.elapsed().as_secs()),
                    restarts: bot.restarts,
                    in_flight: self
                        .metrics
                        .worker_in_flight
                        .with_label_values(&[name])
                        .get(),
                    startup_ms: ready
                        .map(|(g, (at, _))| at.duration_since(g.spawned).as_secs_f64() * 1000.0),
                    last_failure: bot.last_failure.clone(),
                }
            })
            .collect();
        StatusReport {
            bots,
            host_rss_bytes: self.host_rss,
        }
    }
}

impl Bot {
    fn ready_pid(&self) -> Option<u32> {
        self.current.as_ref()?.ready.map(|(_, pid)| pid)
    }
}

fn describe(cause: &Cause) -> String {
    match cause {
        Cause::Stopped => "stopped".into(),
        Cause::Hung => "hung: missed heartbeats".into(),
        Cause::Crashed(why) => format!("crashed: {why}"),
        Cause::StartFailed(why) => format!("failed to start: {why}"),
        Cause::ProtocolError(why) => format!("protocol error: {why}"),
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(bots = self.bots.len(), "supervisor starting workers");
        for idx in 0..self.bots.len() {
            self.spawn_generation(idx, ctx);
        }
        ctx.run_interval(self.sample_interval, |act, _| act.sample_memory());
    }
}

impl Handler<WorkerEvent> for Supervisor {
    type Result = ();

    fn handle(&mut self, event: WorkerEvent, ctx: &mut Context<Self>) {
        match event {
            WorkerEvent::Ready {
                bot,
                generation,
                pid,
            } => {
                if let Some(idx) = self.index_of(&bot) {
                    self.on_ready(idx, generation, pid);
                    // A fresh worker's first reading should not wait a whole
                    // interval.
                    self.sample_memory();
                }
            }
            WorkerEvent::Gone {
                bot,
                generation,
                cause,
            } => {
                if let Some(idx) = self.index_of(&bot) {
                    self.on_gone(idx, generation, cause, ctx);
                }
            }
        }
    }
}

impl Handler<Route> for Supervisor {
    type Result = Result<Addr<WorkerHandle>, TurnError>;

    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        let Some(idx) = self.index_of(&msg.bot) else {
            return Err(TurnError::new(
                ErrorCode::UnknownBot,
                format!("there is no bot named '{}'", msg.bot),
            ));
        };
        let bot = &self.bots[idx];
        match (&bot.current, bot.state) {
            (Some(g), BotState::Ready) => Ok(g.addr.clone()),
            (_, BotState::Failed) => Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{}' is unavailable after repeated failures; an operator has been alerted",
                    msg.bot
                ),
            )),
            _ => Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{}' is {}; please try again in a moment",
                    msg.bot,
                    bot.state.as_str()
                ),
            )),
        }
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<AwaitSettled> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: AwaitSettled, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self
            .bots
            .iter()
            .any(|b| !matches!(b.state, BotState::Ready | BotState::Failed))
        {
            self.settle_waiters.push(tx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let mut drains = Vec::new();
        for idx in 0..self.bots.len() {
            if let Some(g) = &self.bots[idx].current {
                drains.push(g.addr.send(Drain));
                self.set_state(idx, BotState::Draining);
            }
        }
        info!(workers = drains.len(), "draining all workers");
        Box::pin(async move {
            futures_util::future::join_all(drains).await;
        })
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
