//! The worker's side of one connection to the host.
//!
//! Owns the socket, the set of running turns and the worker's view of the
//! host's liveness. It must never block the loop on one turn: every turn runs
//! as its own task and writes through one queue to a single writer task, so
//! many chats are served at once over the one connection.
//!
//! The worker exits when the host closes the connection, when the host stops
//! answering heartbeats, after a `Drain` (or SIGTERM) once its turns are done,
//! or on a frame it cannot decode.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bot_worker::{
    ChatMessage, FailCode, FrameCodec, FrameError, Heartbeat, HostMessage, WorkerMessage,
    PROTOCOL_VERSION,
};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{error, info, warn};

use crate::engine::Engine;

/// How long the worker waits for `Hello` after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Outgoing messages queued before turns wait for the socket.
const OUT_QUEUE: usize = 4096;

type Codec = FrameCodec<HostMessage, WorkerMessage>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot connect to the host at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("bad frame from the host: {0}")]
    Frame(#[from] FrameError),
    #[error("the host sent nothing for {0:?}; assuming it is gone")]
    HostSilent(Duration),
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

pub async fn run(socket: &Path) -> Result<(), WorkerError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| WorkerError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, Codec::new());
    let mut writer = FramedWrite::new(write, Codec::new());

    let (engine, heartbeat) = handshake(&mut reader, &mut writer).await?;
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let writer_task = tokio::spawn(write_loop(writer, out_rx));

    let result = Session::new(engine, heartbeat, out)
        .serve(&mut reader)
        .await;
    // Every sender is gone once the session ends, so the writer flushes what
    // is queued and stops.
    if let Ok(Err(e)) = writer_task.await {
        warn!("could not flush the last messages to the host: {e}");
    }
    result
}

async fn handshake(
    reader: &mut FramedRead<tokio::net::unix::OwnedReadHalf, Codec>,
    writer: &mut FramedWrite<OwnedWriteHalf, Codec>,
) -> Result<(Arc<Engine>, Heartbeat), WorkerError> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
        .await
        .map_err(|_| WorkerError::Handshake(format!("no Hello within {HELLO_TIMEOUT:?}")))?;
    let (version, spec, heartbeat) = match first {
        Some(Ok(HostMessage::Hello {
            version,
            spec,
            heartbeat,
        })) => (version, spec, heartbeat),
        Some(Ok(other)) => {
            return Err(WorkerError::Handshake(format!(
                "expected Hello, got {other:?}"
            )))
        }
        Some(Err(e)) => return Err(e.into()),
        None => return Err(WorkerError::Handshake("host closed the connection".into())),
    };
    if version != PROTOCOL_VERSION {
        let reason =
            format!("protocol version {version} requested, this worker speaks {PROTOCOL_VERSION}");
        writer
            .send(WorkerMessage::Refused {
                reason: reason.clone(),
            })
            .await?;
        return Err(WorkerError::Handshake(reason));
    }
    let engine = match Engine::new(&spec) {
        Ok(engine) => Arc::new(engine),
        Err(reason) => {
            writer
                .send(WorkerMessage::Refused {
                    reason: reason.clone(),
                })
                .await?;
            return Err(WorkerError::Handshake(reason));
        }
    };
    writer
        .send(WorkerMessage::Ready {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        })
        .await?;
    info!(bot = %spec.name, model = %spec.model, "ready");
    Ok((engine, heartbeat))
}

/// Batches whatever is queued into one flush: under load many deltas share a
/// single write system call.
async fn write_loop(
    mut writer: FramedWrite<OwnedWriteHalf, Codec>,
    mut rx: mpsc::Receiver<WorkerMessage>,
) -> Result<(), FrameError> {
    while let Some(msg) = rx.recv().await {
        writer.feed(msg).await?;
        while let Ok(more) = rx.try_recv() {
            writer.feed(more).await?;
        }
        writer.flush().await?;
    }
    Ok(())
}

struct Session {
    engine: Arc<Engine>,
    heartbeat: Heartbeat,
    out: mpsc::Sender<WorkerMessage>,
    turns: HashMap<u64, AbortHandle>,
    finished_tx: mpsc::UnboundedSender<u64>,
    finished_rx: mpsc::UnboundedReceiver<u64>,
    draining: bool,
    last_heard: Instant,
}

impl Session {
    fn new(engine: Arc<Engine>, heartbeat: Heartbeat, out: mpsc::Sender<WorkerMessage>) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        Self {
            engine,
            heartbeat,
            out,
            turns: HashMap::new(),
            finished_tx,
            finished_rx,
            draining: false,
            last_heard: Instant::now(),
        }
    }

    async fn serve(
        mut self,
        reader: &mut FramedRead<tokio::net::unix::OwnedReadHalf, Codec>,
    ) -> Result<(), WorkerError> {
        let mut sigterm = signal(SignalKind::terminate()).map_err(WorkerError::Signal)?;
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.heartbeat.interval_ms.max(1)));
        let silence_limit = Duration::from_millis(self.heartbeat.timeout_ms);
        let mut ping_seq = 0u64;
        loop {
            if self.draining && self.turns.is_empty() {
                info!("drained; exiting");
                return Ok(());
            }
            tokio::select! {
                frame = reader.next() => match frame {
                    None => {
                        info!("host closed the connection; exiting");
                        return Ok(());
                    }
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(msg)) => {
                        self.last_heard = Instant::now();
                        self.handle(msg).await;
                    }
                },
                Some(id) = self.finished_rx.recv() => {
                    self.turns.remove(&id);
                }
                _ = ticker.tick() => {
                    if self.last_heard.elapsed() > silence_limit {
                        return Err(WorkerError::HostSilent(silence_limit));
                    }
                    ping_seq += 1;
                    self.send(WorkerMessage::Ping { seq: ping_seq }).await;
                }
                _ = sigterm.recv() => {
                    info!(in_flight = self.turns.len(), "SIGTERM: draining");
                    self.draining = true;
                }
            }
        }
    }

    async fn handle(&mut self, msg: HostMessage) {
        match msg {
            HostMessage::Chat { id, messages } => self.start_turn(id, messages).await,
            HostMessage::Cancel { id } => {
                if let Some(turn) = self.turns.remove(&id) {
                    turn.abort();
                    self.send(WorkerMessage::Failed {
                        id,
                        code: FailCode::Cancelled,
                        message: "cancelled by the host".into(),
                    })
                    .await;
                }
            }
            HostMessage::Ping { seq } => self.send(WorkerMessage::Pong { seq }).await,
            HostMessage::Pong { .. } => {}
            HostMessage::Drain => {
                info!(in_flight = self.turns.len(), "drain requested");
                self.draining = true;
            }
            HostMessage::EndpointsDown { names } => self.engine.endpoints_down(names),
            HostMessage::Hello { .. } => warn!("ignoring a second Hello"),
        }
    }

    async fn start_turn(&mut self, id: u64, messages: Vec<ChatMessage>) {
        let refusal = if self.draining {
            Some((FailCode::Draining, "this worker is draining".to_owned()))
        } else if self.turns.contains_key(&id) {
            Some((
                FailCode::InvalidRequest,
                format!("request id {id} is already running"),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            self.send(WorkerMessage::Failed { id, code, message }).await;
            return;
        }
        let engine = Arc::clone(&self.engine);
        let out = self.out.clone();
        let finished = self.finished_tx.clone();
        let task = tokio::spawn(async move {
            // A panic in the engine is a bug, but it must end this turn
            // like any failure: otherwise the host waits on it for ever and
            // a drain never completes. The other turns carry on.
            let reply = AssertUnwindSafe(engine.reply(id, &messages, &out)).catch_unwind();
            let last = match reply.await {
                Ok(Ok(usage)) => WorkerMessage::Done { id, usage },
                Ok(Err(e)) => WorkerMessage::Failed {
                    id,
                    code: e.code,
                    message: e.message,
                },
                Err(_) => {
                    // The panic hook logged what and where.
                    error!(id, "the turn ended by a panic in the engine");
                    WorkerMessage::Failed {
                        id,
                        code: FailCode::EngineFailed,
                        message: "the bot's engine failed (a bug; it is logged)".into(),
                    }
                }
            };
            // Both can fail only when the session is ending; nothing to do then.
            let _ = out.send(last).await;
            let _ = finished.send(id);
        });
        self.turns.insert(id, task.abort_handle());
    }

    async fn send(&self, msg: WorkerMessage) {
        if self.out.send(msg).await.is_err() {
            warn!("the writer has stopped; message dropped");
        }
    }
}
