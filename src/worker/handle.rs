//! WorkerHandle: one actor per worker generation, owning its child process
//! and its socket.
//!
//! It spawns `bot-worker`, performs the handshake, multiplexes chat turns
//! over the one connection, answers and sends heartbeats, and notices death.
//!
//! # Lifecycle
//!
//! ```text
//!  Spawning ──connect──▶ Handshaking ──Ready──▶ Ready ──Drain──▶ Draining ──exit──▶ Stopped
//!     │                      │                    │                 │
//!     └──────────────────────┴────────────────────┴─────────────────┴──▶ Dead
//!        child exit, socket EOF, bad frame, missed heartbeats, start timeout
//! ```
//!
//! A socket EOF waits up to [`EXIT_AFTER_EOF`] for the exit status, which
//! tells a death at the memory ceiling (the worker's out-of-memory exit
//! under a data limit) from a crash.
//!
//! Entering `Dead` fails every in-flight turn at once (no request ever
//! hangs), SIGKILLs the worker's process group, and sends `Gone` to the
//! Supervisor exactly once. The actor itself stops only after the child has
//! been reaped, so no zombie is left behind.
//!
//! **Invariant:** the child is started in its own process group with a
//! parent-death signal of SIGKILL. Linux sends that signal when the *thread*
//! that forked the child exits, so WorkerHandles must run on the System
//! arbiter, whose thread lives as long as the host.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bot_worker::frame::encode_frame;
use bot_worker::{
    ChatMessage, FailCode, FrameCodec, FrameError, Heartbeat, HostMessage, WorkerMessage,
    PROTOCOL_VERSION,
};
use bytes::Bytes;
use nix::sys::signal::Signal;
use prometheus::{IntCounterVec, IntGauge};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tracing::{error, info, warn};

use super::child::{bind_private, relay_logs, spawn_child, write_loop};
use super::messages::{
    Cause, Drain, Kill, SetEndpointsDown, StartTurn, WorkerEvent, WorkerSettings,
};
use crate::ceiling::Ceiling;
use crate::process::{describe_exit, signal_group};
use crate::turn::{CancelTurn, ErrorCode, TurnError, TurnEvent};

/// How long a socket EOF waits for the worker's exit status.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(1);

#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited(io::Result<ExitStatus>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Spawning,
    Handshaking,
    Ready,
    Draining,
    Dead,
}

pub struct WorkerHandle {
    settings: Arc<WorkerSettings>,
    generation: u64,
    supervisor: Recipient<WorkerEvent>,
    in_flight: IntGauge,
    /// `inference_failovers_total{from, to}`.
    failovers: IntCounterVec,
    /// Endpoints the host's health checks find down; told to the worker
    /// after `Hello` and on every change.
    endpoints_down: Vec<String>,
    phase: Phase,
    pid: Option<u32>,
    reaped: bool,
    socket_path: PathBuf,
    out: Option<mpsc::UnboundedSender<Bytes>>,
    turns: HashMap<u64, mpsc::UnboundedSender<TurnEvent>>,
    next_id: u64,
    last_heard: Instant,
    ping_seq: u64,
    /// Fired (by being dropped) when the actor stops.
    on_stop: Vec<oneshot::Sender<()>>,
    /// This generation's kernel memory ceiling.
    ceiling: Ceiling,
    /// How the process ended, once reaped.
    exit: Option<ExitStatus>,
    /// Why the connection ended, while the exit status is awaited.
    lost: Option<Cause>,
}

impl WorkerHandle {
    pub fn new(
        settings: Arc<WorkerSettings>,
        generation: u64,
        supervisor: Recipient<WorkerEvent>,
        in_flight: IntGauge,
        failovers: IntCounterVec,
        endpoints_down: Vec<String>,
    ) -> Self {
        let socket_path = settings.runtime_dir.join(format!(
            "{}.sock",
            crate::config::worker_socket_stem(&settings.spec.name, generation)
        ));
        Self {
            settings,
            generation,
            supervisor,
            in_flight,
            failovers,
            endpoints_down,
            phase: Phase::Spawning,
            pid: None,
            reaped: false,
            socket_path,
            out: None,
            turns: HashMap::new(),
            next_id: 0,
            last_heard: Instant::now(),
            ping_seq: 0,
            on_stop: Vec::new(),
            ceiling: Ceiling::None,
            exit: None,
            lost: None,
        }
    }

    fn bot(&self) -> &str {
        &self.settings.spec.name
    }

    fn spawn(&mut self, ctx: &mut Context<Self>) -> Result<(), String> {
        let listener = bind_private(&self.socket_path)
            .map_err(|e| format!("cannot listen on {}: {e}", self.socket_path.display()))?;
        self.ceiling = self.make_ceiling();
        let at_exec = self.ceiling.at_exec(self.settings.memory_limit);
        let keys = api_key_vars(&self.settings.spec.engine);
        let mut child = spawn_child(&self.settings.binary, &self.socket_path, at_exec, &keys)
            .map_err(|e| {
                format!(
                    "cannot start the worker {}: {e}",
                    self.settings.binary.display()
                )
            })?;
        let pid = child
            .id()
            .ok_or("the worker exited before it could be watched")?;
        self.pid = Some(pid);
        info!(bot = %self.bot(), generation = self.generation, pid, "worker spawned");
        if let Err(e) = self.ceiling.check_spawned(pid) {
            warn!(bot = %self.bot(), "cannot put the worker under its memory ceiling: {e}");
            self.drop_ceiling();
        }

        if let Some(stderr) = child.stderr.take() {
            actix_rt::spawn(relay_logs(
                stderr,
                self.settings.spec.name.clone(),
                self.generation,
                pid,
            ));
        }
        let me = ctx.address();
        actix_rt::spawn(async move {
            let status = child.wait().await;
            me.do_send(ChildExited(status));
        });

        let timeout = self.settings.start_timeout;
        ctx.spawn(
            async move { tokio::time::timeout(timeout, listener.accept()).await }
                .into_actor(self)
                .map(move |accepted, act, ctx| {
                    // The worker is connected (or never will be): nobody else
                    // may ever connect to this socket.
                    let _ = std::fs::remove_file(&act.socket_path);
                    match accepted {
                        Ok(Ok((stream, _))) => act.connected(stream, ctx),
                        Ok(Err(e)) => {
                            act.die(Cause::StartFailed(format!("accept failed: {e}")), ctx)
                        }
                        Err(_) => act.die(
                            Cause::StartFailed(format!(
                                "the worker did not connect within {timeout:?}"
                            )),
                            ctx,
                        ),
                    }
                }),
        );
        ctx.run_later(timeout, |act, ctx| {
            if matches!(act.phase, Phase::Spawning | Phase::Handshaking) {
                act.die(
                    Cause::StartFailed(format!("no Ready within {:?}", act.settings.start_timeout)),
                    ctx,
                );
            }
        });
        Ok(())
    }

    fn connected(&mut self, stream: UnixStream, ctx: &mut Context<Self>) {
        if self.phase != Phase::Spawning {
            return;
        }
        let (read, write) = stream.into_split();
        ctx.add_stream(FramedRead::new(
            read,
            FrameCodec::<WorkerMessage, HostMessage>::new(),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        actix_rt::spawn(write_loop(write, rx));
        self.out = Some(tx);
        self.phase = Phase::Handshaking;
        self.last_heard = Instant::now();
        let heartbeat = Heartbeat {
            interval_ms: crate::config::millis(self.settings.heartbeat_interval),
            timeout_ms: crate::config::millis(self.settings.heartbeat_timeout),
        };
        self.send(&HostMessage::Hello {
            version: PROTOCOL_VERSION,
            spec: self.settings.spec.clone(),
            heartbeat,
        });
        if !self.endpoints_down.is_empty() {
            self.send(&HostMessage::EndpointsDown {
                names: self.endpoints_down.clone(),
            });
        }
    }

    /// Queues a frame for the writer task. A frame that cannot be encoded is
    /// a bug in the host (sizes are checked before), so it is logged.
    fn send(&self, msg: &HostMessage) -> bool {
        let Some(out) = &self.out else { return false };
        match encode_frame(msg) {
            Ok(frame) => out.send(frame).is_ok(),
            Err(e) => {
                error!(bot = %self.bot(), "cannot encode a frame for the worker: {e}");
                false
            }
        }
    }

    fn on_message(&mut self, msg: WorkerMessage, ctx: &mut Context<Self>) {
        match msg {
            WorkerMessage::Ready { version, pid } if self.phase == Phase::Handshaking => {
                if version != PROTOCOL_VERSION {
                    return self.die(
                        Cause::StartFailed(format!(
                            "worker speaks protocol {version}, host speaks {PROTOCOL_VERSION}"
                        )),
                        ctx,
                    );
                }
                self.phase = Phase::Ready;
                if let Some(pid) = self.pid {
                    let (budget, ceiling) =
                        (self.settings.memory_budget, self.settings.memory_limit);
                    if let Err(e) = self.ceiling.fit(pid, budget, ceiling) {
                        warn!(bot = %self.bot(), "cannot fit the worker's memory limit to its RSS: {e}");
                    }
                }
                info!(bot = %self.bot(), generation = self.generation, pid, "worker ready");
                self.supervisor.do_send(WorkerEvent::Ready {
                    bot: self.bot().to_owned(),
                    generation: self.generation,
                    pid: self.pid.unwrap_or(pid),
                });
            }
            WorkerMessage::Ready { .. } => {
                self.die(Cause::ProtocolError("a second Ready".into()), ctx)
            }
            WorkerMessage::Refused { reason } => {
                self.die(Cause::StartFailed(format!("worker refused: {reason}")), ctx)
            }
            _ if self.phase == Phase::Handshaking => self.die(
                Cause::ProtocolError(format!("expected Ready, got {msg:?}")),
                ctx,
            ),
            WorkerMessage::Delta { id, text } => {
                let delivered = self
                    .turns
                    .get(&id)
                    .is_some_and(|t| t.send(TurnEvent::Delta(text)).is_ok());
                if !delivered && self.finish(id).is_some() {
                    // The caller went away: stop spending the engine on it.
                    self.send(&HostMessage::Cancel { id });
                }
            }
            WorkerMessage::Done { id, usage } => {
                if let Some(t) = self.finish(id) {
                    let _ = t.send(TurnEvent::Done(usage));
                }
            }
            WorkerMessage::Failed { id, code, message } => {
                if let Some(t) = self.finish(id) {
                    let _ = t.send(TurnEvent::Failed(turn_error(self.bot(), code, message)));
                }
            }
            WorkerMessage::EndpointFailed {
                id,
                endpoint,
                reason,
                next,
            } => {
                match &next {
                    Some(to) => {
                        warn!(bot = %self.bot(), turn = id, from = %endpoint, %to, "inference failover: {reason}");
                        self.failovers.with_label_values(&[&endpoint, to]).inc();
                    }
                    None => {
                        warn!(bot = %self.bot(), turn = id, %endpoint, "inference failed: {reason}")
                    }
                }
                self.supervisor
                    .do_send(WorkerEvent::EndpointFailed { endpoint });
            }
            WorkerMessage::Ping { seq } => {
                self.send(&HostMessage::Pong { seq });
            }
            WorkerMessage::Pong { .. } => {}
        }
    }

    fn finish(&mut self, id: u64) -> Option<mpsc::UnboundedSender<TurnEvent>> {
        let turn = self.turns.remove(&id)?;
        self.in_flight.dec();
        Some(turn)
    }

    fn fail_all(&mut self, error: &TurnError) {
        for id in self.turns.keys().copied().collect::<Vec<_>>() {
            if let Some(t) = self.finish(id) {
                let _ = t.send(TurnEvent::Failed(error.clone()));
            }
        }
    }

    /// Enters `Dead`: fails every turn, kills the process group, reports.
    fn die(&mut self, cause: Cause, ctx: &mut Context<Self>) {
        if self.phase == Phase::Dead {
            return;
        }
        // A worker the kernel stopped at its memory limit shows up as a
        // closed socket, a SIGKILL or its out-of-memory exit: say why.
        let cause = match cause {
            Cause::Crashed(_) | Cause::ProtocolError(_) if self.ceiling.stopped_it(self.exit) => {
                Cause::MemoryCeiling {
                    rss: self.ceiling.peak().unwrap_or(self.settings.memory_limit),
                    ceiling: self.settings.memory_limit,
                }
            }
            other => other,
        };
        self.phase = Phase::Dead;
        let message = match &cause {
            Cause::Stopped => "the bot's worker was stopped before it finished this reply",
            Cause::Hung => "the bot stopped responding and is being restarted; please try again",
            _ => "the bot's worker stopped unexpectedly and is being restarted; please try again",
        };
        self.fail_all(&TurnError::new(ErrorCode::WorkerDied, message));
        match &cause {
            Cause::Stopped => {
                info!(bot = %self.bot(), generation = self.generation, "worker stopped")
            }
            Cause::Crashed(why) | Cause::StartFailed(why) | Cause::ProtocolError(why) => error!(
                bot = %self.bot(), generation = self.generation, pid = self.pid,
                "worker failed: {why}"
            ),
            Cause::MemoryCeiling { .. } => error!(
                bot = %self.bot(), generation = self.generation, pid = self.pid,
                "worker killed: {cause}"
            ),
            Cause::Hung => warn!(
                bot = %self.bot(), generation = self.generation, pid = self.pid,
                "worker hung: no heartbeat for {:?}; killing it", self.settings.heartbeat_timeout
            ),
        }
        self.out = None;
        self.signal(Signal::SIGKILL);
        self.supervisor.do_send(WorkerEvent::Gone {
            bot: self.bot().to_owned(),
            generation: self.generation,
            cause,
        });
        if self.reaped {
            ctx.stop();
        }
    }

    /// Signals the worker's process group, unless it was already reaped (its
    /// pid may then belong to someone else).
    fn signal(&self, signal: Signal) {
        if let (Some(pid), false) = (self.pid, self.reaped) {
            signal_group(pid, signal);
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::Ready | Phase::Draining) {
            return;
        }
        if self.last_heard.elapsed() > self.settings.heartbeat_timeout {
            return self.die(Cause::Hung, ctx);
        }
        self.ping_seq += 1;
        self.send(&HostMessage::Ping { seq: self.ping_seq });
    }
}

impl WorkerHandle {
    /// This generation's kernel ceiling, where the kernel can enforce one.
    /// A group's name carries the host's pid: several hosts may share a
    /// parent.
    fn make_ceiling(&self) -> Ceiling {
        let name = format!(
            "bothost-{}-{}-{}",
            std::process::id(),
            self.bot(),
            self.generation
        );
        let (budget, ceiling) = (self.settings.memory_budget, self.settings.memory_limit);
        match self.settings.ceilings.for_worker(&name, budget, ceiling) {
            Ok(made) => made,
            Err(e) => {
                warn!(bot = %self.bot(), "cannot create the worker's memory cgroup: {e}");
                Ceiling::None
            }
        }
    }

    /// Gives the kernel ceiling up (the user-space ceiling alone guards
    /// this generation, as logged).
    fn drop_ceiling(&mut self) {
        std::mem::replace(&mut self.ceiling, Ceiling::None).remove();
    }
}

impl Actor for WorkerHandle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Err(why) = self.spawn(ctx) {
            self.reaped = true; // nothing was started, or it could not be watched
            self.die(Cause::StartFailed(why), ctx);
            return;
        }
        ctx.run_interval(self.settings.heartbeat_interval, |act, ctx| {
            act.heartbeat(ctx)
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let _ = std::fs::remove_file(&self.socket_path);
        self.signal(Signal::SIGKILL);
        self.drop_ceiling();
        self.on_stop.clear();
    }
}

impl StreamHandler<Result<WorkerMessage, FrameError>> for WorkerHandle {
    fn handle(&mut self, item: Result<WorkerMessage, FrameError>, ctx: &mut Context<Self>) {
        match item {
            Ok(msg) => {
                self.last_heard = Instant::now();
                self.on_message(msg, ctx);
            }
            // The peer is gone (reset, or closed mid-frame): as an EOF.
            Err(e @ FrameError::Io(_)) => self.connection_lost(Cause::Crashed(e.to_string()), ctx),
            Err(e @ FrameError::Truncated { .. }) => {
                self.connection_lost(Cause::ProtocolError(e.to_string()), ctx)
            }
            Err(e) => self.die(
                Cause::ProtocolError(format!("{e}; closing its connection")),
                ctx,
            ),
        }
    }

    /// Socket EOF. The default would stop the actor; the child must be
    /// reaped first.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Draining {
            self.connection_lost(
                Cause::Crashed("the worker closed its connection".into()),
                ctx,
            );
        }
    }
}

impl WorkerHandle {
    /// A worker that exits closes its socket (or resets it, with frames
    /// unread) a moment before it can be reaped, and its exit status says
    /// why it went (its out-of-memory exit): that is waited for, briefly.
    /// The first word on how it ended is kept (a broken frame, then EOF).
    fn connection_lost(&mut self, cause: Cause, ctx: &mut Context<Self>) {
        if self.lost.is_some() {
            return;
        }
        self.lost = Some(cause);
        ctx.run_later(EXIT_AFTER_EOF, |act, ctx| {
            if let Some(cause) = act.lost.take() {
                act.die(cause, ctx);
            }
        });
    }
}

impl Handler<ChildExited> for WorkerHandle {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        // Anything the worker started is in its process group: it goes too.
        // (The group id stays taken while a member lives, so this cannot
        // reach anyone else's processes.)
        self.signal(Signal::SIGKILL);
        self.reaped = true;
        let how = match msg.0 {
            Ok(status) => {
                self.exit = Some(status);
                describe_exit(status)
            }
            Err(e) => format!("could not be waited for: {e}"),
        };
        if self.phase == Phase::Draining {
            info!(bot = %self.bot(), generation = self.generation, "worker exited after drain ({how})");
            self.die(Cause::Stopped, ctx);
        } else {
            // A broken frame says more than the exit; a closed socket less.
            let cause = match self.lost.take() {
                Some(broken @ Cause::ProtocolError(_)) => broken,
                _ => Cause::Crashed(format!("the worker {how}")),
            };
            self.die(cause, ctx);
        }
        ctx.stop();
    }
}

impl Handler<StartTurn> for WorkerHandle {
    type Result = ();

    fn handle(&mut self, msg: StartTurn, ctx: &mut Context<Self>) {
        if self.phase == Phase::Dead {
            // Sent before the Supervisor read our `Gone`, which it reads
            // before this: it routes the turn to whoever serves now.
            self.supervisor.do_send(WorkerEvent::Returned {
                bot: self.bot().to_owned(),
                turn: msg,
            });
            return;
        }
        let started = self.start_turn(msg.messages, msg.events);
        let _ = msg
            .reply
            .send(started.map(|id| (id, ctx.address().recipient())));
    }
}

/// The environment variables holding the API keys of the model servers a
/// bot's engine calls: the only secrets its worker is given.
fn api_key_vars(engine: &bot_worker::EngineSpec) -> Vec<String> {
    match engine {
        bot_worker::EngineSpec::Ollama(remote) | bot_worker::EngineSpec::Openai(remote) => remote
            .endpoints
            .iter()
            .filter_map(|e| e.api_key_env.clone())
            .collect(),
        bot_worker::EngineSpec::Builtin(_) => Vec::new(),
    }
}

impl WorkerHandle {
    fn start_turn(
        &mut self,
        messages: Vec<ChatMessage>,
        events: mpsc::UnboundedSender<TurnEvent>,
    ) -> Result<u64, TurnError> {
        if self.phase != Phase::Ready {
            return Err(TurnError::new(
                ErrorCode::BotUnavailable,
                format!(
                    "the bot '{}' is restarting; please try again in a moment",
                    self.bot()
                ),
            ));
        }
        self.next_id += 1;
        let id = self.next_id;
        let frame = encode_frame(&HostMessage::Chat { id, messages }).map_err(|e| match e {
            FrameError::TooLarge { .. } => TurnError::new(
                ErrorCode::TooLarge,
                format!("the conversation is too large to send to the bot: {e}"),
            ),
            other => TurnError::new(ErrorCode::Internal, other.to_string()),
        })?;
        let sent = self.out.as_ref().is_some_and(|out| out.send(frame).is_ok());
        if !sent {
            return Err(TurnError::new(
                ErrorCode::WorkerDied,
                "the bot's worker is not connected",
            ));
        }
        self.turns.insert(id, events);
        self.in_flight.inc();
        Ok(id)
    }
}

impl Handler<CancelTurn> for WorkerHandle {
    type Result = ();

    fn handle(&mut self, msg: CancelTurn, _: &mut Context<Self>) {
        if self.finish(msg.id).is_some() {
            self.send(&HostMessage::Cancel { id: msg.id });
        }
    }
}

impl Handler<Kill> for WorkerHandle {
    type Result = ();

    fn handle(&mut self, msg: Kill, ctx: &mut Context<Self>) {
        self.die(msg.0, ctx);
    }
}

impl Handler<SetEndpointsDown> for WorkerHandle {
    type Result = ();

    fn handle(&mut self, msg: SetEndpointsDown, _: &mut Context<Self>) {
        self.endpoints_down = msg.0;
        // Before the connection exists, `connected` sends it after Hello.
        self.send(&HostMessage::EndpointsDown {
            names: self.endpoints_down.clone(),
        });
    }
}

impl Handler<Drain> for WorkerHandle {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.on_stop.push(tx);
        match self.phase {
            Phase::Ready => {
                self.phase = Phase::Draining;
                self.send(&HostMessage::Drain);
                let grace = self.settings.stop_grace;
                ctx.run_later(self.settings.drain_timeout, move |act, ctx| {
                    if act.reaped {
                        return;
                    }
                    warn!(bot = %act.bot(), "drain timed out; sending SIGTERM");
                    act.signal(Signal::SIGTERM);
                    ctx.run_later(grace, |act, _| {
                        if !act.reaped {
                            warn!(bot = %act.bot(), "still running after SIGTERM; sending SIGKILL");
                            act.signal(Signal::SIGKILL);
                        }
                    });
                });
            }
            Phase::Spawning | Phase::Handshaking => {
                self.phase = Phase::Draining;
                self.signal(Signal::SIGKILL);
            }
            Phase::Draining | Phase::Dead => {}
        }
        if self.reaped {
            ctx.stop();
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// What the caller of a failed turn is told. When no model server could
/// answer, the user gets a plain apology (the servers' addresses and errors
/// are for the operator's log, not for them).
fn turn_error(bot: &str, code: FailCode, message: String) -> TurnError {
    let code = match code {
        FailCode::EngineFailed
        | FailCode::BadRequest
        | FailCode::InvalidRequest
        | FailCode::Other => ErrorCode::EngineFailed,
        FailCode::InferenceUnavailable => {
            warn!(bot, "no model server could answer: {message}");
            return TurnError::new(
                ErrorCode::InferenceUnavailable,
                format!(
                    "{bot} is temporarily unavailable: its model server cannot be reached \
                     right now. Please try again in a moment."
                ),
            );
        }
        FailCode::ModelNotFound => ErrorCode::ModelNotFound,
        FailCode::Overloaded => ErrorCode::Overloaded,
        FailCode::Timeout => ErrorCode::EngineTimeout,
        FailCode::Cancelled => ErrorCode::Cancelled,
        FailCode::Draining => ErrorCode::BotUnavailable,
    };
    TurnError::new(code, message)
}
