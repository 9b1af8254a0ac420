//! What the two remote wire formats share: the [`WireFormat`] each
//! implements (`ollama`, `openai`), the [`Piece`] a stream line carries, and
//! the reading of errors, which both servers put under `error`.

use bot_worker::{ChatMessage, FailCode, RemoteSpec, Usage};
use serde_json::Value;

use super::output::EngineError;

/// One model server protocol: where a chat goes, what it sends, how a line
/// of the streamed answer reads. The failover loop (`remote`) is written
/// once against this.
pub trait WireFormat: Send + Sync {
    /// The chat endpoint under the server's base URL (no trailing `/`).
    fn chat_url(&self, base: &str) -> String;
    /// The streaming request body.
    fn body(&self, model: &str, messages: &[ChatMessage], spec: &RemoteSpec) -> Value;
    /// One line of the streamed answer.
    fn parse_line(&self, line: &str) -> Result<Piece, EngineError>;
}

/// What one line of a stream carried.
#[derive(Debug, Default, PartialEq)]
pub struct Piece {
    pub text: Option<String>,
    pub usage: Option<Usage>,
    /// The server says the reply is complete.
    pub done: bool,
}

/// The message inside an `error` value: a string (Ollama) or an object
/// with `message` (OpenAI).
pub fn error_text(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        other => other["message"]
            .as_str()
            .map_or_else(|| other.to_string(), str::to_owned),
    }
}

/// A JSON count (tokens), 0 when absent.
pub fn count(v: &Value) -> u32 {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// The error for an HTTP failure status, from either kind of server: both
/// put their reason under `error` (a string for Ollama, an object with
/// `message` for OpenAI-compatible servers).
pub fn http_error(status: u16, body: &str, model: &str) -> EngineError {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(error_text))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let (code, message) = match status {
        400 | 422 => (
            FailCode::BadRequest,
            format!("the model server refused the request: {detail}"),
        ),
        401 | 403 => (
            FailCode::EngineFailed,
            format!("the model server refused the API key (HTTP {status}): {detail}"),
        ),
        404 => (
            FailCode::ModelNotFound,
            format!("the model '{model}' is not available: {detail}"),
        ),
        429 | 503 => (
            FailCode::Overloaded,
            format!("the model server is busy: {detail}"),
        ),
        _ => (
            FailCode::EngineFailed,
            format!("the model server failed (HTTP {status}): {detail}"),
        ),
    };
    EngineError::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_of_either_server_map_to_specific_errors() {
        let e = http_error(
            404,
            r#"{"error":"model \"nope\" not found, try pulling it first"}"#,
            "nope",
        );
        assert_eq!(e.code, FailCode::ModelNotFound);
        assert!(
            e.message.contains("'nope'") && e.message.contains("try pulling"),
            "{}",
            e.message
        );
        let openai = r#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error"}}"#;
        let e = http_error(404, openai, "x");
        assert!(e.message.contains("does not exist"), "{}", e.message);
        assert_eq!(
            http_error(400, r#"{"error":"bad"}"#, "m").code,
            FailCode::BadRequest
        );
        assert_eq!(
            http_error(503, r#"{"error":"server busy"}"#, "m").code,
            FailCode::Overloaded
        );
        assert_eq!(http_error(429, "{}", "m").code, FailCode::Overloaded);
        assert!(http_error(401, "{}", "m").message.contains("API key"));
        let e = http_error(500, "plain text", "m");
        assert_eq!(e.code, FailCode::EngineFailed);
        assert!(e.message.contains("HTTP 500") && e.message.contains("plain text"));
    }

    #[test]
    fn error_values_of_either_server_read_as_text() {
        assert_eq!(error_text(&Value::String("x".into())), "x");
        assert_eq!(
            error_text(&serde_json::json!({"message": "y", "type": "t"})),
            "y"
        );
    }
}
