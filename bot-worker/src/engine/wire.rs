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

/// Longest stream line taken from a model server. A real one is a JSON
/// object of a token or two; a server that never ends its line would
/// otherwise grow the worker without bound.
pub const MAX_LINE: usize = 1 << 20;

/// Splits a streamed body into lines, however it is chunked.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
    /// Bytes of `pending` known to hold no newline.
    scanned: usize,
}

impl Lines {
    pub fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
    }

    /// The next complete line, trimmed; `None` until one has arrived.
    pub fn next_line(&mut self) -> Result<Option<String>, EngineError> {
        match self.pending[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
        {
            Some(at) => {
                let end = self.scanned + at;
                let line = String::from_utf8_lossy(&self.pending[..end])
                    .trim()
                    .to_owned();
                self.pending.drain(..=end);
                self.scanned = 0;
                Ok(Some(line))
            }
            None if self.pending.len() > MAX_LINE => Err(EngineError::new(
                FailCode::EngineFailed,
                format!(
                    "the model server sent a line of more than {} KiB without ending it",
                    MAX_LINE / 1024
                ),
            )),
            None => {
                self.scanned = self.pending.len();
                Ok(None)
            }
        }
    }
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

/// Arbitrary JSON, weighted toward the keys the two formats read, for
/// the parsers' properties.
#[cfg(test)]
pub fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            Just("message".to_owned()),
            Just("content".to_owned()),
            Just("done".to_owned()),
            Just("error".to_owned()),
            Just("choices".to_owned()),
            Just("delta".to_owned()),
            Just("usage".to_owned()),
            Just("finish_reason".to_owned()),
            Just("eval_count".to_owned()),
            Just("total_duration".to_owned()),
            ".{0,8}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However a body is chunked, the same lines come out, and nothing
        /// after the last newline.
        #[test]
        fn lines_do_not_depend_on_chunking(
            text in "[a-z{}\":\n ]{0,300}",
            cuts in proptest::collection::vec(0usize..300, 0..10),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut lines = Lines::default();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                lines.push(&text.as_bytes()[from..cut]);
                from = cut;
                while let Some(line) = lines.next_line().unwrap() {
                    got.push(line);
                }
            }
            let mut want: Vec<String> = text.split('\n').map(|l| l.trim().to_owned()).collect();
            want.pop(); // the unfinished last line
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_line_that_never_ends_is_refused_not_buffered_for_ever() {
        let mut lines = Lines::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut refused = None;
        for _ in 0..(MAX_LINE / chunk.len() + 2) {
            lines.push(&chunk);
            if let Err(e) = lines.next_line() {
                refused = Some(e);
                break;
            }
        }
        let e = refused.expect("refused");
        assert!(e.message.contains("without ending it"), "{}", e.message);
    }

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
