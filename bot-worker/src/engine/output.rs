//! What every engine shares: the error a turn ends with, and how an engine
//! sends a message to the host.

use bot_worker::{FailCode, WorkerMessage};
use tokio::sync::mpsc;

/// Why a turn ended without `Done`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineError {
    pub code: FailCode,
    pub message: String,
}

impl EngineError {
    pub fn new(code: FailCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Sends one message to the host, or reports that the turn's caller (the
/// connection) is gone.
pub async fn emit(
    out: &mpsc::Sender<WorkerMessage>,
    msg: WorkerMessage,
) -> Result<(), EngineError> {
    out.send(msg)
        .await
        .map_err(|_| EngineError::new(FailCode::Cancelled, "the connection to the host is gone"))
}
