//! Ollama's wire format: `POST /api/chat` with `stream: true`, answered by
//! NDJSON, one JSON object per line:
//!
//! ```text
//! {"model":"llama3.2","message":{"role":"assistant","content":"Hel"},"done":false}
//! {"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,
//!  "done_reason":"stop","total_duration":812000000,"prompt_eval_count":26,"eval_count":9,...}
//! {"error":"an error line can arrive in the middle of a 200 stream"}
//! ```
//!
//! A stream that ends without `"done": true` did not finish. Errors before
//! the stream are an HTTP status with `{"error": "..."}`: 400 a bad request,
//! 404 a model the server does not have, 503 a full queue, 500 a failure.

use bot_worker::{ChatMessage, FailCode, RemoteSpec, Usage};
use serde_json::{json, Value};

use super::output::EngineError;
use super::wire::{count, error_text, Piece, WireFormat};

/// Ollama's `/api/chat` with NDJSON.
pub struct Ollama;

impl WireFormat for Ollama {
    fn chat_url(&self, base: &str) -> String {
        format!("{base}/api/chat")
    }

    fn body(&self, model: &str, messages: &[ChatMessage], spec: &RemoteSpec) -> Value {
        let mut options = serde_json::Map::new();
        if let Some(t) = spec.temperature {
            options.insert("temperature".into(), json!(t));
        }
        if let Some(n) = spec.num_ctx {
            options.insert("num_ctx".into(), json!(n));
        }
        let mut body = json!({"model": model, "messages": messages, "stream": true});
        if !options.is_empty() {
            body["options"] = Value::Object(options);
        }
        if let Some(k) = &spec.keep_alive {
            body["keep_alive"] = json!(k);
        }
        body
    }

    fn parse_line(&self, line: &str) -> Result<Piece, EngineError> {
        if line.is_empty() {
            return Ok(Piece::default());
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            EngineError::new(
                FailCode::EngineFailed,
                format!("the model server sent a line that is not JSON ({e})"),
            )
        })?;
        if let Some(error) = v.get("error") {
            return Err(EngineError::new(
                FailCode::EngineFailed,
                format!("the model server failed mid-reply: {}", error_text(error)),
            ));
        }
        let text = v["message"]["content"].as_str().map(str::to_owned);
        let done = v["done"].as_bool().unwrap_or(false);
        let usage = done.then(|| Usage {
            prompt_tokens: count(&v["prompt_eval_count"]),
            completion_tokens: count(&v["eval_count"]),
            endpoint: None,
            engine_ms: v["total_duration"].as_u64().map(|ns| ns / 1_000_000),
        });
        Ok(Piece { text, usage, done })
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
            let _ = Ollama.parse_line(&line);
        }

        #[test]
        fn any_json_parses_or_fails_cleanly(v in crate::engine::wire::arbitrary_json()) {
            let _ = Ollama.parse_line(&v.to_string());
        }
    }
    use bot_worker::Role;

    #[test]
    fn the_request_carries_model_messages_options_and_keep_alive() {
        let spec = RemoteSpec {
            endpoints: vec![],
            temperature: Some(0.2),
            num_ctx: Some(4096),
            keep_alive: Some("10m".into()),
        };
        let messages = [ChatMessage {
            role: Role::System,
            content: "be brief".into(),
        }];
        let b = Ollama.body("llama3.2", &messages, &spec);
        assert_eq!(b["model"], "llama3.2");
        assert_eq!(b["stream"], true);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["options"]["temperature"], 0.2);
        assert_eq!(b["options"]["num_ctx"], 4096);
        assert_eq!(b["keep_alive"], "10m");
        let bare = RemoteSpec {
            temperature: None,
            num_ctx: None,
            keep_alive: None,
            ..spec
        };
        assert!(Ollama.body("m", &messages, &bare).get("options").is_none());
    }

    #[test]
    fn lines_give_text_then_the_final_counters() {
        let p = Ollama
            .parse_line(
                r#"{"model":"m","message":{"role":"assistant","content":"Hel"},"done":false}"#,
            )
            .unwrap();
        assert_eq!((p.text.as_deref(), p.done), (Some("Hel"), false));
        let p = Ollama.parse_line(
            r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",
               "total_duration":812000000,"prompt_eval_count":26,"eval_count":9,"eval_duration":400000000}"#
                .replace('\n', " ")
                .as_str(),
        )
        .unwrap();
        assert!(p.done);
        let usage = p.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (26, 9));
        assert_eq!(usage.engine_ms, Some(812));
    }

    #[test]
    fn an_error_line_mid_stream_fails_the_turn() {
        let e = Ollama
            .parse_line(r#"{"error":"llama runner process has terminated"}"#)
            .unwrap_err();
        assert_eq!(e.code, FailCode::EngineFailed);
        assert!(
            e.message.contains("llama runner process has terminated"),
            "{}",
            e.message
        );
        assert_eq!(
            Ollama.parse_line("not json").unwrap_err().code,
            FailCode::EngineFailed
        );
    }
}
