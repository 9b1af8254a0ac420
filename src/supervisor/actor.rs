//! The Supervisor actor: the one place that knows every bot and carries out
//! what each bot's [`Lifecycle`] decides.
//!
//! It turns messages (worker events, restart requests, health checks, the
//! memory sampling tick) into lifecycle events, and the lifecycle's
//! [`Action`]s into effects: starting and draining WorkerHandles, metrics,
//! status broadcasts, answers to whoever waits. The decisions themselves are
//! plain functions elsewhere (`lifecycle`, `policy`, `crate::memory`).
//! It never touches a process or a socket itself (WorkerHandles do).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::board::{Board, BotLine};
use super::bot::{Bot, HeldTurn};
use super::endpoints::Endpoints;
use super::lifecycle::{Action, Lifecycle, Route};
use super::messages::{
    AwaitSettled, BeginRolling, EndRolling, GetStatus, RestartBot, Shutdown, StartChat,
};
use super::policy::CrashPolicy;
use crate::backoff::Backoff;
use crate::ceiling::{self, Ceilings};
use crate::config::Config;
use crate::inference::{EndpointChecked, Rechecks};
use crate::memory::{self, MemoryWatch, Sampler};
use crate::metrics::Metrics;
use crate::status::{
    EndpointStatus, RestartError, RestartErrorCode, RestartReason, Restarted, StatusReport,
};
use crate::turn::{CancelTurn, ErrorCode, TurnError};
use crate::worker::{
    Cause, Drain, Kill, SetEndpointsDown, StartTurn, WorkerEvent, WorkerHandle, WorkerSettings,
};

/// At most this many turns wait for one bot's next generation; more are
/// refused at once rather than queued without bound.
const MAX_HELD: usize = 1024;

pub struct Supervisor {
    bots: Vec<Bot>,
    metrics: Metrics,
    sample_interval: Duration,
    sampler: Sampler,
    host_rss: Option<u64>,
    /// When the host's own RSS is read next.
    host_next: Instant,
    /// How a worker's memory ceiling is enforced here, in words.
    enforcement: String,
    /// Workers run under a data limit, refitted at every reading.
    data_limits: bool,
    rolling: bool,
    shutting_down: bool,
    settle_waiters: Vec<oneshot::Sender<()>>,
    /// Each bot's state as the page lists it, and who watches it change.
    board: Board,
    endpoints: Endpoints,
    /// Where a turn that failed on an endpoint asks for its health check.
    rechecks: Rechecks,
}

impl Supervisor {
    /// `config` must have been validated (as `Config::load` does).
    pub fn new(config: &Config, metrics: Metrics, sampler: Sampler, ceilings: Ceilings) -> Self {
        let enforcement = ceilings.describe();
        let data_limits = matches!(ceilings, Ceilings::DataLimit { .. });
        metrics
            .memory_enforcement_info
            .with_label_values(&[
                config.supervisor.memory_measure.label(),
                ceilings.enforcer(),
            ])
            .set(1);
        let ceilings = Arc::new(ceilings);
        let s = &config.supervisor;
        let policy = CrashPolicy {
            backoff: Backoff::new(s.backoff_initial, s.backoff_max),
            limit: s.crash_limit,
            window: s.crash_window,
            quarantine: Backoff::new(s.quarantine_initial, s.quarantine_max),
        };
        let bots = config
            .bots
            .iter()
            .map(|bot| {
                let memory = config.memory_policy(bot);
                let endpoints: Vec<String> = config
                    .endpoints_of(bot)
                    .iter()
                    .map(|e| e.name.clone())
                    .collect();
                metrics.register_bot(&bot.name, memory.budget, &endpoints);
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
                        ceilings: Arc::clone(&ceilings),
                        memory_budget: memory.budget,
                        memory_limit: memory.kernel_ceiling(),
                    }),
                    memory,
                    life: Lifecycle::new(&bot.name, policy.clone()),
                    workers: HashMap::new(),
                    waiters: Vec::new(),
                    held: Default::default(),
                    rss: None,
                    watch: MemoryWatch::default(),
                    next_sample: Instant::now(),
                    pids: HashMap::new(),
                    endpoints,
                }
            })
            .collect::<Vec<Bot>>();
        let board = Board::new(
            bots.iter()
                .map(|bot| BotLine {
                    name: bot.name().to_owned(),
                    model: bot.settings.spec.model.clone(),
                    state: bot.life.state(),
                })
                .collect(),
        );
        Self {
            bots,
            metrics,
            sample_interval: s.sample_interval,
            sampler,
            host_rss: None,
            host_next: Instant::now(),
            enforcement,
            data_limits,
            rolling: false,
            shutting_down: false,
            settle_waiters: Vec::new(),
            board,
            endpoints: Endpoints::new(config),
            rechecks: Rechecks::default(),
        }
    }

    /// The bots' states for the web to read and watch (see `board`).
    pub fn board(&self) -> Board {
        self.board.clone()
    }

    /// Where a failed turn asks for an endpoint's health check at once.
    pub fn with_rechecks(mut self, rechecks: Rechecks) -> Self {
        self.rechecks = rechecks;
        self
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.bots.iter().position(|b| b.name() == name)
    }

    /// Carries out what bot `idx`'s lifecycle decided.
    fn apply(&mut self, idx: usize, actions: Vec<Action>, ctx: &mut Context<Self>) {
        for action in actions {
            let bot = &mut self.bots[idx];
            let name = bot.settings.spec.name.clone();
            match action {
                Action::Spawn(generation) => {
                    let down = if bot.endpoints.is_empty() {
                        Vec::new()
                    } else {
                        self.endpoints.down()
                    };
                    let addr = WorkerHandle::new(
                        Arc::clone(&bot.settings),
                        generation,
                        ctx.address().recipient(),
                        self.metrics.worker_in_flight.with_label_values(&[&name]),
                        self.metrics.inference_failovers.clone(),
                        down,
                    )
                    .start();
                    bot.workers.insert(generation, addr);
                }
                Action::Drain(generation) => {
                    if let Some(w) = bot.worker(generation) {
                        w.do_send(Drain);
                    }
                }
                Action::TookOver(generation) => {
                    bot.watch = MemoryWatch::default();
                    if let Some(g) = bot.life.current() {
                        bot.watch.set_startup(g.ready_at.duration_since(g.spawned));
                    }
                    // Its first reading need not wait a whole interval.
                    bot.next_sample = Instant::now();
                    bot.rss = None;
                    self.metrics
                        .worker_generation
                        .with_label_values(&[&name])
                        .set(i64::try_from(generation).unwrap_or(i64::MAX));
                }
                Action::Count(reason) => {
                    self.metrics
                        .worker_restarts
                        .with_label_values(&[&name, reason.as_str()])
                        .inc();
                }
                Action::Resolve(result) => {
                    for waiter in bot.waiters.drain(..) {
                        let _ = waiter.send(result.clone());
                    }
                }
                Action::RetryAfter(delay) => {
                    ctx.run_later(delay, move |act, ctx| {
                        let actions = act.bots[idx].life.backoff_elapsed(Instant::now());
                        act.apply(idx, actions, ctx);
                    });
                }
                Action::State(state) => {
                    self.board.set(&name, state);
                    self.metrics.set_state(&name, state);
                    if self.bots.iter().all(|b| b.life.state().settled()) {
                        self.settle_waiters.clear(); // dropping a sender wakes its waiter
                    }
                }
                Action::HandoverFailed => {
                    self.metrics
                        .worker_handover_failures
                        .with_label_values(&[&name])
                        .inc();
                }
                Action::ColdRestart => {
                    self.metrics
                        .worker_cold_restarts
                        .with_label_values(&[&name])
                        .inc();
                }
                Action::Lost => {
                    bot.rss = None;
                    self.metrics
                        .worker_rss_bytes
                        .with_label_values(&[&name])
                        .set(0);
                }
            }
        }
        self.release_held(idx, Instant::now());
    }

    fn on_endpoint_checked(&mut self, status: EndpointStatus, ctx: &mut Context<Self>) {
        if !self.endpoints.update(status) {
            return;
        }
        let down = self.endpoints.down();
        for idx in 0..self.bots.len() {
            let bot = &self.bots[idx];
            if bot.endpoints.is_empty() {
                continue;
            }
            for w in bot.workers.values() {
                w.do_send(SetEndpointsDown(down.clone()));
            }
            let model = &bot.settings.spec.model;
            if self.endpoints.model_present(&bot.endpoints, model) == Some(false) {
                warn!(
                    bot = %bot.name(), %model,
                    "the bot's model is on none of its model servers that are up"
                );
            }
            let degraded = self.endpoints.all_down(&bot.endpoints);
            let actions = self.bots[idx].life.set_degraded(degraded);
            self.apply(idx, actions, ctx);
        }
    }

    /// Runs every [`memory::CLOSE_INTERVAL`]: reads the workers that are
    /// due (each at its own pace, faster as it nears its budget), every
    /// draining generation (a runaway may go on in a turn it finishes), and
    /// the host every `sample_interval`.
    fn sample_memory(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for idx in 0..self.bots.len() {
            if !self.bots[idx].held.is_empty() {
                self.release_held(idx, now);
            }
        }
        let host_due = now >= self.host_next;
        // (bot, generation, pid, serving)
        let mut due = Vec::new();
        for (idx, bot) in self.bots.iter().enumerate() {
            let serving = bot.life.current().map(|g| g.number);
            for (&generation, &pid) in &bot.pids {
                let is_current = Some(generation) == serving;
                if !is_current || now >= bot.next_sample {
                    due.push((idx, generation, pid, is_current));
                }
            }
        }
        if due.is_empty() && !host_due {
            return;
        }
        let pids: Vec<u32> = due.iter().map(|d| d.2).collect();
        let sample = self.sampler.sample(&pids, host_due);
        if host_due {
            self.host_next = now + self.sample_interval;
            self.host_rss = sample.host;
            if let Some(rss) = sample.host {
                self.metrics.host_rss_bytes.set(clamp_i64(rss));
            }
        }
        for (idx, generation, pid, is_current) in due {
            let Some(&rss) = sample.workers.get(&pid) else {
                continue;
            };
            if self.data_limits {
                let ceiling = self.bots[idx].memory.kernel_ceiling();
                if let Err(e) = ceiling::rlimit::fit(pid, ceiling) {
                    debug!(pid, "cannot refit a worker's data limit (gone?): {e}");
                }
            }
            if is_current {
                self.observe_current(idx, rss, now, ctx);
            } else if rss >= self.bots[idx].memory.ceiling() {
                self.kill_over_ceiling(idx, generation, rss);
            }
        }
    }

    /// Judges a reading of bot `idx`'s serving generation and acts on it.
    fn observe_current(&mut self, idx: usize, rss: u64, now: Instant, ctx: &mut Context<Self>) {
        let bot = &mut self.bots[idx];
        let Some(serving) = bot.life.current().copied() else {
            return;
        };
        bot.rss = Some(rss);
        let reading = bot
            .watch
            .observe(&bot.memory, serving.ready_at.elapsed(), rss);
        bot.next_sample = now + bot.watch.next_interval(&bot.memory, self.sample_interval);
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
        let reason = match reading.action {
            None => return,
            Some(memory::Action::Ceiling { rss }) => {
                return self.kill_over_ceiling(idx, serving.number, rss);
            }
            Some(memory::Action::Leak { .. }) => RestartReason::Leak,
            Some(memory::Action::OverBudget { .. } | memory::Action::Approaching { .. }) => {
                RestartReason::Memory
            }
        };
        let room = self.sampler.has_room_for(bot.memory.budget);
        let actions = bot.life.auto_restart(reason, Instant::now(), room);
        if actions.is_empty() {
            return; // a handover is under way, or cooling after a failed one
        }
        match reading.action {
            Some(memory::Action::OverBudget { rss }) => warn!(
                bot = %name, rss, budget,
                "over budget: {} > {} for {} readings; replacing the worker",
                mb(rss), mb(budget), bot.memory.over_budget_samples
            ),
            Some(memory::Action::Approaching { rss, slope, eta }) => warn!(
                bot = %name, rss, budget, slope_bytes_per_second = slope,
                "memory rising {:.1} MB/s, {} of {}: over budget in {} ms; replacing the worker now",
                slope / 1e6, mb(rss), mb(budget), eta.as_millis()
            ),
            Some(memory::Action::Leak {
                rss,
                slope,
                time_to_budget,
            }) => warn!(
                bot = %name, rss, budget, slope_bytes_per_second = slope,
                time_to_budget_seconds = time_to_budget.as_secs(),
                "leaking: memory floor rising {:.0} kB/s, {} of {}, budget reached in {}; replacing the worker",
                slope / 1000.0, mb(rss), mb(budget),
                humantime::format_duration(Duration::from_secs(time_to_budget.as_secs()))
            ),
            _ => {}
        }
        self.apply(idx, actions, ctx);
    }

    /// The user-space ceiling: a generation at [`memory::CEILING_RATIO`] of
    /// its budget is killed at once, turns and all.
    fn kill_over_ceiling(&mut self, idx: usize, generation: u64, rss: u64) {
        let bot = &self.bots[idx];
        let ceiling = bot.memory.ceiling();
        error!(
            bot = %bot.name(), generation, rss, ceiling,
            "worker at its memory ceiling ({} of {}): killing it", mb(rss), mb(ceiling)
        );
        if let Some(w) = bot.worker(generation) {
            w.do_send(Kill(Cause::MemoryCeiling { rss, ceiling }));
        }
    }

    /// Sends a turn to the generation bot `idx`'s lifecycle routes it to,
    /// or keeps it waiting for one on its way, or answers why neither.
    ///
    /// The turn goes to the worker from here, in the worker's mailbox: the
    /// `Drain` a handover sends the same worker later is queued behind it,
    /// so a turn never reaches a worker that stopped taking turns. One that
    /// reaches a dead worker comes back (`WorkerEvent::Returned`, or a
    /// closed mailbox here) and is routed again: it never started.
    fn route_turn(&mut self, idx: usize, held: HeldTurn, now: Instant) {
        if held.turn.reply.is_closed() {
            return; // the client went away while it waited
        }
        let bot = &mut self.bots[idx];
        let refused = match bot.life.route() {
            Ok(Route::Worker(generation)) => match bot.worker(generation) {
                Some(worker) => match worker.try_send(held.turn) {
                    Ok(()) => return,
                    Err(SendError::Full(turn)) => return worker.do_send(turn),
                    Err(SendError::Closed(turn)) => {
                        // Its `Gone` is on the way: wait for what follows.
                        return bot.held.push_back(HeldTurn { turn, ..held });
                    }
                },
                None => TurnError::new(ErrorCode::Internal, "the serving worker has no handle"),
            },
            Ok(Route::Wait) if now < held.until && bot.held.len() < MAX_HELD => {
                return bot.held.push_back(held);
            }
            Ok(Route::Wait) => TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{}' is {} and did not come back in time; please try again in a moment",
                    bot.name(),
                    bot.life.state().as_str()
                ),
            ),
            Err(e) => e,
        };
        let _ = held.turn.reply.send(Err(refused));
    }

    /// Routes bot `idx`'s waiting turns again, in order: after anything that
    /// may have changed where they go, and on the sampling tick for those
    /// that waited too long.
    fn release_held(&mut self, idx: usize, now: Instant) {
        for turn in std::mem::take(&mut self.bots[idx].held) {
            self.route_turn(idx, turn, now);
        }
    }

    fn status(&self) -> StatusReport {
        let bots = self
            .bots
            .iter()
            .map(|bot| {
                let in_flight = self
                    .metrics
                    .worker_in_flight
                    .with_label_values(&[bot.name()])
                    .get();
                bot.status(&self.endpoints, in_flight)
            })
            .collect();
        StatusReport {
            bots,
            host_rss_bytes: self.host_rss,
            memory_enforcement: self.enforcement.clone(),
            inference: self.endpoints.all().to_vec(),
        }
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
        info!(bots = self.bots.len(), memory_ceiling = %self.enforcement, "supervisor starting workers");
        for idx in 0..self.bots.len() {
            let actions = self.bots[idx].life.start(Instant::now());
            self.apply(idx, actions, ctx);
        }
        let tick = memory::CLOSE_INTERVAL.min(self.sample_interval);
        ctx.run_interval(tick, |act, ctx| act.sample_memory(ctx));
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
                    self.bots[idx].pids.insert(generation, pid);
                    let actions = self.bots[idx].life.ready(generation, pid, Instant::now());
                    self.apply(idx, actions, ctx);
                }
            }
            WorkerEvent::Gone {
                bot,
                generation,
                cause,
            } => {
                if let Some(idx) = self.index_of(&bot) {
                    let actions = self.bots[idx].life.gone(generation, &cause, Instant::now());
                    self.bots[idx].workers.remove(&generation);
                    self.bots[idx].pids.remove(&generation);
                    self.apply(idx, actions, ctx);
                }
            }
            WorkerEvent::EndpointFailed { endpoint } => self.rechecks.poke(&endpoint),
            WorkerEvent::Returned { bot, turn } => {
                if let Some(idx) = self.index_of(&bot) {
                    let now = Instant::now();
                    let until = now + self.bots[idx].settings.start_timeout;
                    self.route_turn(idx, HeldTurn { turn, until }, now);
                }
            }
        }
    }
}

impl Handler<StartChat> for Supervisor {
    type Result = ResponseFuture<Result<(u64, Recipient<CancelTurn>), TurnError>>;

    fn handle(&mut self, msg: StartChat, _: &mut Context<Self>) -> Self::Result {
        let (reply, started) = oneshot::channel();
        let turn = StartTurn {
            messages: msg.messages,
            events: msg.events,
            reply,
        };
        match self.index_of(&msg.bot) {
            Some(idx) => {
                let now = Instant::now();
                let until = now + self.bots[idx].settings.start_timeout;
                self.route_turn(idx, HeldTurn { turn, until }, now);
            }
            None => {
                let _ = turn.reply.send(Err(TurnError::new(
                    ErrorCode::UnknownBot,
                    format!("there is no bot named '{}'", msg.bot),
                )));
            }
        }
        let bot = msg.bot;
        Box::pin(async move {
            started.await.unwrap_or_else(|_| {
                Err(TurnError::new(
                    ErrorCode::WorkerDied,
                    format!("the bot '{bot}' stopped before it could take the message; please try again"),
                ))
            })
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
        if self.bots.iter().any(|b| !b.life.state().settled()) {
            self.settle_waiters.push(tx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<RestartBot> for Supervisor {
    type Result = ResponseFuture<Result<Restarted, RestartError>>;

    fn handle(&mut self, msg: RestartBot, ctx: &mut Context<Self>) -> Self::Result {
        let started = match self.index_of(&msg.bot) {
            None => Err(RestartError::unknown_bot(&msg.bot)),
            Some(_) if self.shutting_down => Err(RestartError::shutting_down()),
            Some(idx) => {
                let room = self.sampler.has_room_for(self.bots[idx].memory.budget);
                self.bots[idx]
                    .life
                    .restart(msg.reason, Instant::now(), room)
                    .map(|actions| {
                        // Dropped (the restart abandoned) if nothing is pending.
                        let (tx, rx) = oneshot::channel();
                        let bot = &mut self.bots[idx];
                        if bot.life.restart_under_way() {
                            bot.waiters.push(tx);
                        }
                        self.apply(idx, actions, ctx);
                        rx
                    })
            }
        };
        Box::pin(async move {
            started?.await.unwrap_or_else(|_| {
                Err(RestartError::new(
                    RestartErrorCode::ShuttingDown,
                    "the restart was abandoned (shutting down)",
                ))
            })
        })
    }
}

impl Handler<BeginRolling> for Supervisor {
    type Result = Result<Vec<String>, RestartError>;

    fn handle(&mut self, _: BeginRolling, _: &mut Context<Self>) -> Self::Result {
        if self.rolling {
            return Err(RestartError::new(
                RestartErrorCode::Busy,
                "a rolling restart is already running",
            ));
        }
        if self.shutting_down {
            return Err(RestartError::shutting_down());
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

impl Handler<EndpointChecked> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: EndpointChecked, ctx: &mut Context<Self>) {
        self.on_endpoint_checked(msg.0, ctx);
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    /// Drains every worker, then stops: a Supervisor without workers has
    /// nothing left to do, and whoever still asks it is told it is gone.
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        let mut drains = Vec::new();
        for idx in 0..self.bots.len() {
            let bot = &self.bots[idx];
            drains.extend(
                bot.life
                    .generations()
                    .filter_map(|g| bot.worker(g))
                    .map(|w| w.send(Drain)),
            );
            let actions = self.bots[idx].life.shutdown();
            self.apply(idx, actions, ctx);
        }
        info!(workers = drains.len(), "draining all workers");
        Box::pin(
            futures_util::future::join_all(drains)
                .into_actor(self)
                .map(|_, _, ctx| ctx.stop()),
        )
    }
}
