//! The local control socket: how `bothost status`, `bothost chat` and
//! `bothost restart` (for operators and system cron) reach a running host.
//!
//! `<runtime_dir>/control.sock`, mode 0600 inside the 0700 runtime
//! directory: only the user running the host can connect, which is the whole
//! of its authentication. It speaks the same frames as the worker protocol
//! (4-byte length + JSON, see `bot_worker::frame`) with its own messages:
//! the client sends one [`ControlRequest`], the host answers with one or more
//! [`ControlResponse`]s (a chat streams `Delta`s, then `Done` or `Error`).
//!
//! A client that disconnects mid-chat cancels its turn in the worker.

use std::io;
use std::path::{Path, PathBuf};

use actix::Addr;
use bot_worker::{ChatMessage, FrameCodec, FrameError, Role, Usage};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;
use tracing::{debug, warn};

use crate::status::{BotRestart, RestartError, RestartReason, StatusReport};
use crate::supervisor::{
    restart_all, rolling_restart, start_turn, GetStatus, RestartBot, Supervisor,
};
use crate::turn::{ErrorCode, TurnError, TurnEvent};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Chat {
        bot: String,
        text: String,
    },
    /// Handover restart of one bot, or of all of them (at once, or one at a
    /// time when `rolling`). Answered with one `restarted` per bot as each
    /// finishes, then `restarts_done`.
    Restart {
        bot: Option<String>,
        rolling: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlResponse {
    Status(StatusReport),
    Delta {
        text: String,
    },
    Done {
        usage: Usage,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Restarted(BotRestart),
    RestartsDone {
        failed: usize,
    },
    /// The request was refused as a whole (a rolling restart is already
    /// running, or the host is shutting down).
    Refused {
        message: String,
    },
}

type ServerCodec = FrameCodec<ControlRequest, ControlResponse>;
type ClientCodec = FrameCodec<ControlResponse, ControlRequest>;

/// Accepts control connections until the task is dropped.
pub async fn serve(listener: UnixListener, supervisor: Addr<Supervisor>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let supervisor = supervisor.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = handle(stream, &supervisor).await {
                        debug!("control connection ended: {e}");
                    }
                });
            }
            Err(e) => warn!("control socket accept failed: {e}"),
        }
    }
}

async fn handle(stream: UnixStream, supervisor: &Addr<Supervisor>) -> Result<(), FrameError> {
    let mut framed = Framed::new(stream, ServerCodec::new());
    while let Some(request) = framed.next().await {
        match request? {
            ControlRequest::Status => {
                let report = supervisor.send(GetStatus).await.map_err(|e| {
                    FrameError::Io(io::Error::other(format!("supervisor unavailable: {e}")))
                })?;
                framed.send(ControlResponse::Status(report)).await?;
            }
            ControlRequest::Chat { bot, text } => {
                let messages = vec![ChatMessage {
                    role: Role::User,
                    content: text,
                }];
                let mut turn = match start_turn(supervisor, &bot, messages).await {
                    Ok(turn) => turn,
                    Err(e) => {
                        framed.send(error_response(e)).await?;
                        continue;
                    }
                };
                while let Some(event) = turn.next().await {
                    let response = match event {
                        TurnEvent::Delta(text) => ControlResponse::Delta { text },
                        TurnEvent::Done(usage) => ControlResponse::Done { usage },
                        TurnEvent::Failed(e) => error_response(e),
                    };
                    framed.send(response).await?;
                }
            }
            ControlRequest::Restart { bot, rolling } => {
                restart(&mut framed, supervisor, bot, rolling).await?;
            }
        }
    }
    Ok(())
}

async fn restart(
    framed: &mut Framed<UnixStream, ServerCodec>,
    supervisor: &Addr<Supervisor>,
    bot: Option<String>,
    rolling: bool,
) -> Result<(), FrameError> {
    let reason = RestartReason::Operator;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Its own task: a client that disconnects does not stop a restart
    // half-way through.
    let sup = supervisor.clone();
    let task = actix_rt::spawn(async move {
        match bot {
            Some(bot) => {
                let result = match sup
                    .send(RestartBot {
                        bot: bot.clone(),
                        reason,
                    })
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(RestartError::supervisor_gone()),
                };
                let _ = tx.send(BotRestart { bot, result });
                Ok(())
            }
            None if rolling => rolling_restart(&sup, reason, Some(tx)).await.map(drop),
            None => {
                for outcome in restart_all(&sup, reason).await? {
                    let _ = tx.send(outcome);
                }
                Ok(())
            }
        }
    });
    let mut failed = 0;
    while let Some(outcome) = rx.recv().await {
        failed += usize::from(outcome.result.is_err());
        framed.send(ControlResponse::Restarted(outcome)).await?;
    }
    let response = match task.await {
        Ok(Err(e)) => ControlResponse::Refused { message: e.message },
        Ok(Ok(())) => ControlResponse::RestartsDone { failed },
        Err(e) => ControlResponse::Refused {
            message: format!("the restart task failed: {e}"),
        },
    };
    framed.send(response).await
}

fn error_response(e: TurnError) -> ControlResponse {
    ControlResponse::Error {
        code: e.code,
        message: e.message,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no bothost is running: nothing is listening on {0} (start one with `bothost serve`, using the same --config)")]
    NotRunning(PathBuf),
    #[error("cannot reach the host at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the host closed the connection before answering")]
    Closed,
    #[error("unexpected answer from the host: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One connection to a running host.
pub struct Client {
    framed: Framed<UnixStream, ClientCodec>,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(path.to_owned())
                }
                _ => ClientError::Connect {
                    path: path.to_owned(),
                    source,
                },
            })?;
        Ok(Self {
            framed: Framed::new(stream, ClientCodec::new()),
        })
    }

    pub async fn send(&mut self, request: ControlRequest) -> Result<(), ClientError> {
        Ok(self.framed.send(request).await?)
    }

    pub async fn next(&mut self) -> Result<ControlResponse, ClientError> {
        self.framed
            .next()
            .await
            .ok_or(ClientError::Closed)?
            .map_err(Into::into)
    }

    /// One chat turn, the whole reply collected: the outer error is the
    /// connection's, the inner one the turn's.
    pub async fn chat(
        &mut self,
        bot: &str,
        text: &str,
    ) -> Result<Result<String, TurnError>, ClientError> {
        self.send(ControlRequest::Chat {
            bot: bot.to_owned(),
            text: text.to_owned(),
        })
        .await?;
        let mut reply = String::new();
        loop {
            match self.next().await? {
                ControlResponse::Delta { text } => reply.push_str(&text),
                ControlResponse::Done { .. } => return Ok(Ok(reply)),
                ControlResponse::Error { code, message } => {
                    return Ok(Err(TurnError { code, message }))
                }
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// The host's status report.
    pub async fn status(&mut self) -> Result<StatusReport, ClientError> {
        self.send(ControlRequest::Status).await?;
        match self.next().await? {
            ControlResponse::Status(report) => Ok(report),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Whether a host answers on `path`: used to refuse a second host on the
    /// same runtime directory.
    pub async fn is_listening(path: &Path) -> bool {
        UnixStream::connect(path).await.is_ok()
    }
}
