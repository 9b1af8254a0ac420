//! API errors: every failure leaves as `{"error": {"code", "message"}}` with
//! a fitting status (and `Retry-After` when waiting helps). Codes are stable
//! strings clients can switch on; messages are for people.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::store::StoreError;
use crate::turn::{ErrorCode, TurnError};

#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// Extra fields merged into the body next to `error` (for example the
    /// stored user message when its reply failed).
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            extra: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A fault of the host, not of the request; `message` must not carry
    /// internal detail (log that instead).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    pub fn with_extra(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (&self.extra, body.as_object_mut())
        {
            obj.extend(extra.clone());
        }
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.json(body)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                // The user gets the plain words; the operator needs the cause.
                tracing::warn!("store unavailable: {why}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database is unavailable; please try again shortly",
                )
            }
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound => Self::not_found("the record"),
            other => {
                tracing::error!("store error: {other}");
                Self::internal("an internal error occurred")
            }
        }
    }
}

impl From<TurnError> for ApiError {
    fn from(e: TurnError) -> Self {
        Self {
            retry_after: turn_retry_after(e.code),
            ..Self::new(turn_status(e.code), e.code.as_str(), e.message)
        }
    }
}

/// The `Retry-After` (seconds) of a turn's error, where waiting is the
/// answer: a reply in progress takes about that long to leave room.
pub fn turn_retry_after(code: ErrorCode) -> Option<u64> {
    (code == ErrorCode::RateLimited).then_some(1)
}

/// The HTTP status of a turn's error.
fn turn_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::UnknownBot | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::BotUnavailable
        | ErrorCode::Restarting
        | ErrorCode::InferenceUnavailable
        | ErrorCode::Overloaded
        | ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::WorkerDied | ErrorCode::EngineFailed | ErrorCode::ModelNotFound => {
            StatusCode::BAD_GATEWAY
        }
        ErrorCode::EngineTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Cancelled | ErrorCode::InProgress => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
