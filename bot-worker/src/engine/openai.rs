//! The OpenAI-compatible wire format (llama.cpp, vLLM, LiteLLM, ...):
//! `POST /v1/chat/completions` with `stream: true`, answered by server-sent
//! events:
//!
//! ```text
//! data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}
//!
//! data: {"choices":[],"usage":{"prompt_tokens":26,"completion_tokens":9}}
//!
//! data: [DONE]
//! ```
//!
//! Only `data:` lines matter; `[DONE]` ends the stream, and a stream that
//! ends without it did not finish. Errors are an HTTP status with
//! `{"error": {"message": "..."}}`, or a `data:` line carrying `error`.

use bot_worker::{ChatMessage, FailCode, RemoteSpec, Usage};
use serde_json::{json, Value};

use super::output::EngineError;
use super::wire::{count, error_text, Piece, WireFormat};

/// Any `/v1/chat/completions` server with SSE.
pub struct Openai;

impl WireFormat for Openai {
    /// The completions URL under a base that may or may not end in `/v1`.
    fn chat_url(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        if base.ends_with("/v1") {
            format!("{base}/chat/completions")
        } else {
            format!("{base}/v1/chat/completions")
        }
    }

    fn body(&self, model: &str, messages: &[ChatMessage], spec: &RemoteSpec) -> Value {
        let mut body = json!({
            "model": model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(t) = spec.temperature {
            body["temperature"] = json!(t);
        }
        body
    }

    fn parse_line(&self, line: &str) -> Result<Piece, EngineError> {
        let Some(data) = line.strip_prefix("data:") else {
            // Blank separators, `event:`, `id:` and `:` comments carry nothing.
            return Ok(Piece::default());
        };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Piece {
                done: true,
                ..Piece::default()
            });
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            EngineError::new(
                FailCode::EngineFailed,
                format!("the model server sent an event that is not JSON ({e})"),
            )
        })?;
        if let Some(error) = v.get("error") {
            return Err(EngineError::new(
                FailCode::EngineFailed,
                format!("the model server failed mid-reply: {}", error_text(error)),
            ));
        }
        let text = v["choices"][0]["delta"]["content"]
            .as_str()
            .map(str::to_owned);
        let usage = v.get("usage").filter(|u| u.is_object()).map(|u| Usage {
            prompt_tokens: count(&u["prompt_tokens"]),
            completion_tokens: count(&u["completion_tokens"]),
            ..Usage::default()
        });
        Ok(Piece {
            text,
            usage,
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever a server sends on a line, the parser answers (a piece
        /// or an error) and never panics.
        #[test]
        fn any_line_parses_or_fails_cleanly(line in ".{0,200}") {
            let _ = Openai.parse_line(&line);
        }

        #[test]
        fn any_json_parses_or_fails_cleanly(v in crate::engine::wire::arbitrary_json()) {
            // As SSE carries it.
            let _ = Openai.parse_line(&format!("data: {v}"));
        }
    }

    #[test]
    fn the_url_is_found_under_either_kind_of_base() {
        assert_eq!(
            Openai.chat_url("http://h:8000"),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            Openai.chat_url("http://h:8000/v1/"),
            "http://h:8000/v1/chat/completions"
        );
    }

    #[test]
    fn events_give_text_usage_and_the_end() {
        let p = Openai
            .parse_line(
                r#"data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            )
            .unwrap();
        assert_eq!(p.text.as_deref(), Some("Hel"));
        let p = Openai
            .parse_line(
                r#"data: {"choices":[],"usage":{"prompt_tokens":26,"completion_tokens":9}}"#,
            )
            .unwrap();
        let u = p.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (26, 9));
        assert!(Openai.parse_line("data: [DONE]").unwrap().done);
        for nothing in ["", ": keep-alive", "event: message"] {
            assert_eq!(Openai.parse_line(nothing).unwrap(), Piece::default());
        }
    }

    #[test]
    fn an_error_event_fails_the_turn() {
        let e = Openai.parse_line(r#"data: {"error":{"message":"context length exceeded","type":"invalid_request_error"}}"#)
            .unwrap_err();
        assert_eq!(e.code, FailCode::EngineFailed);
        assert!(
            e.message.contains("context length exceeded"),
            "{}",
            e.message
        );
    }
}
