//! Supervisor: the one actor that knows every bot and decides about workers.
//!
//! It owns, per bot: the state, the generation serving turns (`current`),
//! the generation starting to replace it (`pending`), the old generations
//! still draining, the crash history, restart counts and the memory watch.
//! It routes new turns to `current`, restarts crashed and hung workers with
//! backoff, replaces leaking or oversized workers, runs the restart schedule,
//! and gives up on a bot that crashes too often.
//!
//! It never touches a process or a socket itself (WorkerHandles do), and it
//! ignores events from generations it no longer tracks, so a late report can
//! never undo a newer decision. The rules it applies are plain functions in
//! [`policy`] and [`crate::memory`].
//!
//! # Handover
//!
//! Every restart that is not a crash (memory, leak, schedule, operator) is a
//! handover: spawn the next generation as `pending`; when it is Ready, it
//! becomes `current` (so new turns go to it) and the old one is told to
//! drain, finishing its in-flight turns before it exits. If the pending
//! generation never becomes Ready, the current one keeps serving and the
//! failure is reported to whoever asked. A crash has nothing left to hand
//! over from: the next generation is spawned after the backoff.

mod policy;
mod rolling;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::inference::{has_model, EndpointStatus, Rechecks};
use crate::memory::{Action, MemoryPolicy, MemoryWatch, Sampler};
use crate::metrics::Metrics;
use crate::turn::{ErrorCode, TurnError, TurnEvent};
use crate::worker::{
    Cause, Drain, SetEndpointsDown, StartTurn, WorkerEvent, WorkerHandle, WorkerSettings,
};
use bot_worker::ChatMessage;
use tokio::sync::mpsc;

pub use policy::{BotState, CrashDecision, CrashPolicy, RestartReason};
pub use rolling::{restart_all, rolling_restart, BotRestart};

/// One bot as `bothost status` reports it. The field names are an interface
/// (DESIGN.md); add fields, rename none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BotStatus {
    pub name: String,
    pub model: String,
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
    /// Why the last generation ended badly, or the last restart failed.
    pub last_failure: Option<String>,
    /// Fitted growth of the memory floor, bytes per second.
    pub leak_slope_bytes_per_second: f64,
    /// RSS is above the warning line (a fraction of the budget).
    pub memory_warning: bool,
    /// A generation starting to take over, during a restart.
    pub pending_generation: Option<u64>,
    /// Whether an endpoint the bot uses, up at its last check, has the
    /// bot's model; `None` for builtin bots and before any check.
    #[serde(default)]
    pub model_present: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub bots: Vec<BotStatus>,
    pub host_rss_bytes: Option<u64>,
    /// Every `[[inference]]` endpoint, in configuration order.
    #[serde(default)]
    pub inference: Vec<EndpointStatus>,
}

/// A completed handover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarted {
    /// The generation replaced, if one was serving.
    pub from: Option<u64>,
    pub to: u64,
    /// Spawn of the new generation to its taking over.
    pub millis: u64,
}

/// Start a turn on the current worker of `bot`. Answers the request id and
/// the worker that has it (for cancelling).
#[derive(Message)]
#[rtype(result = "Result<(u64, Addr<WorkerHandle>), TurnError>")]
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

/// A bot's state changed (sent to subscribers of [`SubscribeStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub bot: String,
    pub state: BotState,
}

/// Every later change of any bot's state.
#[derive(Message)]
#[rtype(result = "tokio::sync::broadcast::Receiver<StatusChange>")]
pub struct SubscribeStatus;

/// The result of one health check of an inference endpoint.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndpointChecked(pub EndpointStatus);

/// Drain and stop every worker; resolves when all are gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Hand `bot` over to a new generation; resolves when the new generation
/// serves, or with why it could not. Joins a restart already under way.
#[derive(Message)]
#[rtype(result = "Result<Restarted, String>")]
pub struct RestartBot {
    pub bot: String,
    pub reason: RestartReason,
}

struct Generation {
    number: u64,
    addr: Addr<WorkerHandle>,
    spawned: Instant,
    ready: Option<(Instant, u32)>,
}

type RestartWaiter = oneshot::Sender<Result<Restarted, String>>;

struct Pending {
    generation: Generation,
    /// Counted as a restart with this reason when it takes over; `None` for a
    /// first start or a crash restart (counted when the crash was handled).
    reason: Option<RestartReason>,
    waiters: Vec<RestartWaiter>,
}

struct Bot {
    settings: Arc<WorkerSettings>,
    memory: MemoryPolicy,
    state: BotState,
    generation: u64,
    current: Option<Generation>,
    pending: Option<Pending>,
    draining: Vec<Generation>,
    crashes: VecDeque<Instant>,
    restarts: u64,
    last_failure: Option<String>,
    rss: Option<u64>,
    watch: MemoryWatch,
    /// No automatic (memory, leak) restart before this, after one failed.
    auto_restart_after: Option<Instant>,
    /// The inference endpoints the bot calls (none for builtin).
    endpoints: Vec<String>,
}

impl Bot {
    fn name(&self) -> &str {
        &self.settings.spec.name
    }

    fn ready_pid(&self) -> Option<u32> {
        self.current.as_ref()?.ready.map(|(_, pid)| pid)
    }

    /// Every generation that has a worker: current, pending and draining.
    fn generations(&self) -> impl Iterator<Item = &Generation> {
        self.current
            .iter()
            .chain(self.pending.as_ref().map(|p| &p.generation))
            .chain(&self.draining)
    }
}

pub struct Supervisor {
    bots: Vec<Bot>,
    metrics: Metrics,
    crash_policy: CrashPolicy,
    sample_interval: Duration,
    sampler: Sampler,
    host_rss: Option<u64>,
    schedule: Option<croner::Cron>,
    rolling: bool,
    shutting_down: bool,
    settle_waiters: Vec<oneshot::Sender<()>>,
    changes: tokio::sync::broadcast::Sender<StatusChange>,
    /// The last health check of every inference endpoint.
    inference: Vec<EndpointStatus>,
    rechecks: Rechecks,
}

impl Supervisor {
    /// `config` must have been validated (as `Config::load` does).
    pub fn new(config: &Config, metrics: Metrics, sampler: Sampler) -> Self {
        let s = &config.supervisor;
        let bots = config
            .bots
            .iter()
            .map(|bot| {
                let memory = config.memory_policy(bot);
                metrics.register_bot(&bot.name, memory.budget);
                Bot {
                    settings: Arc::new(WorkerSettings {
                        spec: config.spec_of(bot),
                        binary: config.worker_binary_of(bot),
                        runtime_dir: config.runtime_dir().to_owned(),
                        start_timeout: s.start_timeout,
                        heartbeat_interval: s.heartbeat_interval,
                        heartbeat_timeout: s.heartbeat_timeout,
                        drain_timeout: s.drain_timeout,
                        stop_grace: s.stop_grace,
                    }),
                    memory,
                    state: BotState::Starting,
                    generation: 0,
                    current: None,
                    pending: None,
                    draining: Vec::new(),
                    crashes: VecDeque::new(),
                    restarts: 0,
                    last_failure: None,
                    rss: None,
                    watch: MemoryWatch::default(),
                    auto_restart_after: None,
                    endpoints: config
                        .endpoints_of(bot)
                        .iter()
                        .map(|e| e.name.clone())
                        .collect(),
                }
            })
            .collect();
        Self {
            bots,
            metrics,
            crash_policy: CrashPolicy {
                backoff_initial: s.backoff_initial,
                backoff_max: s.backoff_max,
                limit: s.crash_limit,
                window: s.crash_window,
            },
            sample_interval: s.sample_interval,
            sampler,
            host_rss: None,
            // Validated at load; an invalid expression cannot reach here.
            schedule: config.restart_schedule().ok().flatten(),
            rolling: false,
            shutting_down: false,
            settle_waiters: Vec::new(),
            changes: tokio::sync::broadcast::channel(256).0,
            inference: config
                .inference
                .iter()
                .map(EndpointStatus::unchecked)
                .collect(),
            rechecks: Rechecks::default(),
        }
    }

    /// Where a failed turn asks for an endpoint's health check at once.
    pub fn with_rechecks(mut self, rechecks: Rechecks) -> Self {
        self.rechecks = rechecks;
        self
    }

    /// Endpoints whose last health check failed.
    fn endpoints_down(&self) -> Vec<String> {
        self.inference
            .iter()
            .filter(|e| !e.up)
            .map(|e| e.name.clone())
            .collect()
    }

    /// `Ready`, or `Degraded` when every model server the bot uses is down.
    fn ready_state(&self, idx: usize) -> BotState {
        let bot = &self.bots[idx];
        let all_down = !bot.endpoints.is_empty()
            && bot
                .endpoints
                .iter()
                .all(|name| self.inference.iter().any(|e| &e.name == name && !e.up));
        if all_down {
            BotState::Degraded
        } else {
            BotState::Ready
        }
    }

    /// Whether the bot's model is on an endpoint it uses that is up.
    fn model_present(&self, bot: &Bot) -> Option<bool> {
        let checked: Vec<&EndpointStatus> = self
            .inference
            .iter()
            .filter(|e| e.checked && e.up && bot.endpoints.contains(&e.name))
            .collect();
        if checked.is_empty() {
            return None;
        }
        Some(
            checked
                .iter()
                .any(|e| has_model(&e.models, &bot.settings.spec.model)),
        )
    }

    fn on_endpoint_checked(&mut self, status: EndpointStatus) {
        let Some(slot) = self.inference.iter_mut().find(|e| e.name == status.name) else {
            return;
        };
        let changed = slot.up != status.up || !slot.checked;
        *slot = status;
        if !changed {
            return;
        }
        let down = self.endpoints_down();
        for idx in 0..self.bots.len() {
            let bot = &self.bots[idx];
            if bot.endpoints.is_empty() {
                continue;
            }
            for g in bot.generations() {
                g.addr.do_send(SetEndpointsDown(down.clone()));
            }
            if self.model_present(bot) == Some(false) {
                warn!(
                    bot = %bot.name(), model = %bot.settings.spec.model,
                    "the bot's model is on none of its model servers that are up"
                );
            }
            if matches!(bot.state, BotState::Ready | BotState::Degraded) {
                let state = self.ready_state(idx);
                self.set_state(idx, state);
            }
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.bots.iter().position(|b| b.name() == name)
    }

    fn set_state(&mut self, idx: usize, state: BotState) {
        let bot = &mut self.bots[idx];
        if bot.state != state {
            // No subscribers is fine: nobody is watching.
            let _ = self.changes.send(StatusChange {
                bot: bot.name().to_owned(),
                state,
            });
        }
        bot.state = state;
        self.metrics.set_state(&bot.settings.spec.name, state);
        if self.bots.iter().all(|b| b.state.settled()) {
            self.settle_waiters.clear(); // dropping a sender wakes its waiter
        }
    }

    /// Starts the next generation of bot `idx` as its pending generation.
    fn spawn(&mut self, idx: usize, reason: Option<RestartReason>, ctx: &mut Context<Self>) {
        if self.shutting_down || self.bots[idx].pending.is_some() {
            return;
        }
        let me = ctx.address().recipient();
        let bot = &mut self.bots[idx];
        bot.generation += 1;
        let in_flight = self
            .metrics
            .worker_in_flight
            .with_label_values(&[bot.name()]);
        let down = if bot.endpoints.is_empty() {
            Vec::new()
        } else {
            self.endpoints_down()
        };
        let bot = &mut self.bots[idx];
        let addr = WorkerHandle::new(
            Arc::clone(&bot.settings),
            bot.generation,
            me,
            in_flight,
            self.metrics.inference_failovers.clone(),
            down,
        )
        .start();
        bot.pending = Some(Pending {
            generation: Generation {
                number: bot.generation,
                addr,
                spawned: Instant::now(),
                ready: None,
            },
            reason,
            waiters: Vec::new(),
        });
        if bot.current.is_none() {
            let state = if bot.generation == 1 {
                BotState::Starting
            } else {
                BotState::Restarting
            };
            self.set_state(idx, state);
        }
    }

    /// The pending generation is Ready: it takes over, the old one drains.
    fn on_ready(&mut self, idx: usize, number: u64, pid: u32) {
        let bot = &mut self.bots[idx];
        let Some(pending) = bot.pending.take_if(|p| p.generation.number == number) else {
            return;
        };
        let mut generation = pending.generation;
        let took = generation.spawned.elapsed();
        generation.ready = Some((Instant::now(), pid));
        let from = bot.current.as_ref().map(|g| g.number);
        if let Some(old) = bot.current.replace(generation) {
            old.addr.do_send(Drain);
            bot.draining.push(old);
        }
        bot.watch = MemoryWatch::default();
        bot.rss = None;
        self.metrics
            .worker_generation
            .with_label_values(&[bot.name()])
            .set(i64::try_from(number).unwrap_or(i64::MAX));
        if let Some(reason) = pending.reason {
            bot.restarts += 1;
            self.metrics
                .worker_restarts
                .with_label_values(&[bot.name(), reason.as_str()])
                .inc();
            info!(
                bot = %bot.name(), reason = reason.as_str(), from, to = number,
                took_ms = took.as_millis() as u64,
                "handover complete: generation {number} serving, the old one draining"
            );
        }
        let result = Restarted {
            from,
            to: number,
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        };
        for waiter in pending.waiters {
            let _ = waiter.send(Ok(result.clone()));
        }
        let state = self.ready_state(idx);
        self.set_state(idx, state);
    }

    fn on_gone(&mut self, idx: usize, number: u64, cause: Cause, ctx: &mut Context<Self>) {
        let bot = &mut self.bots[idx];
        if let Some(pos) = bot.draining.iter().position(|g| g.number == number) {
            bot.draining.remove(pos);
            return;
        }
        if let Some(pending) = bot.pending.take_if(|p| p.generation.number == number) {
            let why = format!("generation {number} {}", describe(&cause));
            if let Some(current) = &bot.current {
                let message = format!("{why}; generation {} keeps serving", current.number);
                error!(bot = %bot.name(), "restart failed: {message}");
                bot.last_failure = Some(message.clone());
                bot.auto_restart_after = Some(Instant::now() + self.crash_policy.backoff_max);
                self.metrics
                    .worker_handover_failures
                    .with_label_values(&[bot.name()])
                    .inc();
                for waiter in pending.waiters {
                    let _ = waiter.send(Err(message.clone()));
                }
                return;
            }
            for waiter in pending.waiters {
                let _ = waiter.send(Err(why.clone()));
            }
            return self.on_crash(idx, &cause, ctx);
        }
        if bot.current.as_ref().is_some_and(|g| g.number == number) {
            bot.current = None;
            bot.rss = None;
            self.metrics
                .worker_rss_bytes
                .with_label_values(&[bot.name()])
                .set(0);
            if cause != Cause::Stopped {
                self.on_crash(idx, &cause, ctx);
            }
        }
    }

    fn on_crash(&mut self, idx: usize, cause: &Cause, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let bot = &mut self.bots[idx];
        let reason = if *cause == Cause::Hung {
            RestartReason::Hung
        } else {
            RestartReason::Crash
        };
        bot.last_failure = Some(describe(cause));
        match self.crash_policy.on_crash(&mut bot.crashes, Instant::now()) {
            CrashDecision::GiveUp { crashes } => {
                if bot.pending.is_some() {
                    return; // a restart is already starting; let it decide
                }
                error!(
                    bot = %bot.name(), crashes,
                    "bot marked failed: it crashed {crashes} times within {:?}; not restarting it \
                     (`bothost restart {}` tries again)",
                    self.crash_policy.window, bot.name()
                );
                self.set_state(idx, BotState::Failed);
            }
            CrashDecision::RestartAfter(delay) => {
                bot.restarts += 1;
                self.metrics
                    .worker_restarts
                    .with_label_values(&[bot.name(), reason.as_str()])
                    .inc();
                warn!(bot = %bot.name(), reason = reason.as_str(), ?delay, "restarting the worker");
                if bot.current.is_none() {
                    self.set_state(idx, BotState::Restarting);
                }
                ctx.run_later(delay, move |act, ctx| {
                    let bot = &act.bots[idx];
                    if bot.current.is_none() && bot.pending.is_none() {
                        act.spawn(idx, None, ctx);
                    }
                });
            }
        }
    }

    /// Starts a handover of bot `idx`; the receiver resolves when it ends.
    fn restart(
        &mut self,
        idx: usize,
        reason: RestartReason,
        ctx: &mut Context<Self>,
    ) -> Result<oneshot::Receiver<Result<Restarted, String>>, String> {
        if self.shutting_down {
            return Err("the host is shutting down".into());
        }
        let bot = &mut self.bots[idx];
        if bot.pending.is_none() {
            match (&bot.current, bot.state) {
                (None, BotState::Failed) => bot.crashes.clear(),
                (None, state) => {
                    return Err(format!(
                        "the bot is {} after a crash and comes back by itself",
                        state.as_str()
                    ))
                }
                (Some(_), _) => {}
            }
            info!(bot = %bot.name(), reason = reason.as_str(), "restart requested");
            self.spawn(idx, Some(reason), ctx);
        }
        let (tx, rx) = oneshot::channel();
        if let Some(pending) = self.bots[idx].pending.as_mut() {
            pending.waiters.push(tx);
        }
        Ok(rx)
    }

    fn sample_memory(&mut self, ctx: &mut Context<Self>) {
        let pids: Vec<u32> = self.bots.iter().filter_map(Bot::ready_pid).collect();
        let sample = self.sampler.sample(&pids);
        self.host_rss = sample.host;
        if let Some(rss) = sample.host {
            self.metrics.host_rss_bytes.set(clamp_i64(rss));
        }
        let mut restarts = Vec::new();
        for (idx, bot) in self.bots.iter_mut().enumerate() {
            let Some((ready_at, pid)) = bot.current.as_ref().and_then(|g| g.ready) else {
                continue;
            };
            let Some(&rss) = sample.workers.get(&pid) else {
                continue;
            };
            bot.rss = Some(rss);
            let reading = bot.watch.observe(&bot.memory, ready_at.elapsed(), rss);
            let name = &bot.settings.spec.name;
            self.metrics
                .worker_rss_bytes
                .with_label_values(&[name])
                .set(clamp_i64(rss));
            self.metrics
                .worker_leak_slope
                .with_label_values(&[name])
                .set(bot.watch.slope());
            self.metrics
                .worker_memory_warning
                .with_label_values(&[name])
                .set(i64::from(bot.watch.above_warning()));
            let budget = bot.memory.budget;
            if reading.warning_crossed {
                warn!(
                    bot = %name, rss, budget,
                    "memory above {:.0}% of budget: {} of {}",
                    bot.memory.warn_ratio * 100.0, mb(rss), mb(budget)
                );
            }
            let Some(action) = reading.action else {
                continue;
            };
            let cooling = bot.auto_restart_after.is_some_and(|t| Instant::now() < t);
            if bot.pending.is_some() || cooling {
                continue;
            }
            let reason = match action {
                Action::OverBudget { rss } => {
                    warn!(
                        bot = %name, rss, budget,
                        "over budget: {} > {} for {} readings; replacing the worker",
                        mb(rss), mb(budget), bot.memory.over_budget_samples
                    );
                    RestartReason::Memory
                }
                Action::Leak {
                    rss,
                    slope,
                    time_to_budget,
                } => {
                    warn!(
                        bot = %name, rss, budget, slope_bytes_per_second = slope,
                        time_to_budget_seconds = time_to_budget.as_secs(),
                        "leaking: memory floor rising {:.0} kB/s, {} of {}, budget reached in {}; replacing the worker",
                        slope / 1000.0, mb(rss), mb(budget),
                        humantime::format_duration(Duration::from_secs(time_to_budget.as_secs()))
                    );
                    RestartReason::Leak
                }
            };
            restarts.push((idx, reason));
        }
        for (idx, reason) in restarts {
            self.spawn(idx, Some(reason), ctx);
        }
    }

    fn schedule_next_rolling(&mut self, ctx: &mut Context<Self>) {
        let Some(cron) = &self.schedule else {
            return;
        };
        let now = chrono::Local::now();
        let next = match cron.find_next_occurrence(&now, false) {
            Ok(next) => next,
            Err(e) => {
                error!("restart_schedule '{}' has no next time: {e}", cron.pattern);
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or_default();
        ctx.run_later(wait, |act, ctx| {
            let me = ctx.address();
            actix_rt::spawn(async move {
                if let Err(e) = rolling_restart(&me, RestartReason::Schedule, None).await {
                    warn!("scheduled rolling restart skipped: {e}");
                }
            });
            act.schedule_next_rolling(ctx);
        });
    }

    /// The worker that takes new turns for `name`.
    fn route(&self, name: &str) -> Result<Addr<WorkerHandle>, TurnError> {
        let Some(idx) = self.index_of(name) else {
            return Err(TurnError::new(
                ErrorCode::UnknownBot,
                format!("there is no bot named '{name}'"),
            ));
        };
        let bot = &self.bots[idx];
        match (&bot.current, bot.state) {
            (Some(g), _) => Ok(g.addr.clone()),
            (None, BotState::Failed) => Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{name}' is unavailable after repeated failures; an operator has been alerted"
                ),
            )),
            (None, state) => Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{name}' is {}; please try again in a moment",
                    state.as_str()
                ),
            )),
        }
    }

    fn status(&self) -> StatusReport {
        let bots = self
            .bots
            .iter()
            .map(|bot| {
                let name = bot.name();
                let ready = bot.current.as_ref().and_then(|g| Some((g, g.ready?)));
                BotStatus {
                    name: name.to_owned(),
                    model: bot.settings.spec.model.clone(),
                    state: bot.state,
                    pid: ready.map(|(_, (_, pid))| pid),
                    generation: bot.current.as_ref().map_or(bot.generation, |g| g.number),
                    rss_bytes: bot.rss,
                    budget_bytes: bot.memory.budget,
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
                    leak_slope_bytes_per_second: bot.watch.slope(),
                    memory_warning: bot.watch.above_warning(),
                    pending_generation: bot.pending.as_ref().map(|p| p.generation.number),
                    model_present: self.model_present(bot),
                }
            })
            .collect();
        StatusReport {
            bots,
            host_rss_bytes: self.host_rss,
            inference: self.inference.clone(),
        }
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

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn mb(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().si().to_string()
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(bots = self.bots.len(), "supervisor starting workers");
        for idx in 0..self.bots.len() {
            self.spawn(idx, None, ctx);
        }
        ctx.run_interval(self.sample_interval, |act, ctx| act.sample_memory(ctx));
        self.schedule_next_rolling(ctx);
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
                    self.sample_memory(ctx);
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
            WorkerEvent::EndpointFailed { endpoint } => self.rechecks.poke(&endpoint),
        }
    }
}

impl Handler<StartChat> for Supervisor {
    type Result = ResponseFuture<Result<(u64, Addr<WorkerHandle>), TurnError>>;

    /// The turn goes to the worker from here, by `do_send`: the `Drain` that
    /// a handover sends the same worker later is queued behind it, so a turn
    /// can never reach a worker that has stopped taking turns.
    fn handle(&mut self, msg: StartChat, _: &mut Context<Self>) -> Self::Result {
        let routed = self.route(&msg.bot).map(|worker| {
            let (reply, started) = oneshot::channel();
            worker.do_send(StartTurn {
                messages: msg.messages,
                events: msg.events,
                reply,
            });
            (worker, started)
        });
        let bot = msg.bot;
        Box::pin(async move {
            let (worker, started) = routed?;
            match started.await {
                Ok(Ok(id)) => Ok((id, worker)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(TurnError::new(
                    ErrorCode::WorkerDied,
                    format!("the bot '{bot}' stopped before it could take the message; please try again"),
                )),
            }
        })
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
        if self.bots.iter().any(|b| !b.state.settled()) {
            self.settle_waiters.push(tx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<RestartBot> for Supervisor {
    type Result = ResponseFuture<Result<Restarted, String>>;

    fn handle(&mut self, msg: RestartBot, ctx: &mut Context<Self>) -> Self::Result {
        let started = match self.index_of(&msg.bot) {
            None => Err(format!("there is no bot named '{}'", msg.bot)),
            Some(idx) => self.restart(idx, msg.reason, ctx),
        };
        Box::pin(async move {
            started?
                .await
                .unwrap_or_else(|_| Err("the restart was abandoned (shutting down)".into()))
        })
    }
}

impl Handler<EndpointChecked> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: EndpointChecked, _: &mut Context<Self>) {
        self.on_endpoint_checked(msg.0);
    }
}

impl Handler<SubscribeStatus> for Supervisor {
    type Result = MessageResult<SubscribeStatus>;

    fn handle(&mut self, _: SubscribeStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.changes.subscribe())
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let mut drains = Vec::new();
        for idx in 0..self.bots.len() {
            drains.extend(self.bots[idx].generations().map(|g| g.addr.send(Drain)));
            self.set_state(idx, BotState::Draining);
        }
        info!(workers = drains.len(), "draining all workers");
        Box::pin(async move {
            futures_util::future::join_all(drains).await;
        })
    }
}
