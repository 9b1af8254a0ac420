//! `fake-ollama`: a stand-in model server for bothost's tests and
//! benchmarks, the only one they use. It speaks Ollama's wire format
//! (`POST /api/chat` answered by NDJSON, `GET /api/tags`, `GET /api/version`)
//! and the OpenAI-compatible one (`POST /v1/chat/completions` answered by
//! server-sent events, `GET /v1/models`), byte for byte as the real servers
//! shape them, and fails on request.
//!
//! ```text
//! fake-ollama [--port N] [--name NAME] [--models a,b] [--token-delay-ms N] [--latency-ms N]
//! ```
//!
//! It prints `fake-ollama listening on http://127.0.0.1:PORT` once it
//! listens. The reply to a chat is `Hello from NAME. You said: TEXT.`,
//! streamed a word at a time, `token_delay_ms` apart, the first after
//! `latency_ms`.
//!
//! Faults are set at run time with `POST /_fault` and a JSON body:
//!
//! | `mode` | chat requests get |
//! |---|---|
//! | `none` | a normal reply |
//! | `status` (`status`, `message`) | that HTTP status with the server's error body |
//! | `error_after` (`tokens`, `message`) | that many tokens, then an error line |
//! | `cut_after` (`tokens`) | that many tokens, then the end of the stream without `done` |
//! | `hang` | nothing at all: the request never gets an answer |
//! | `hang_after` (`tokens`) | that many tokens, then silence |
//! | `health_fail` | normal replies, but the health routes answer 500 |
//! | `unavailable` | 503 on every route, health checks too (a server going down) |
//!
//! `latency_ms` and `token_delay_ms` may be set in the same body.
//! `GET /_stats` counts chat requests and health checks; `GET /_last` is
//! the last chat request's body, with its `Authorization` header under
//! `_authorization`. A refused connection is a stopped fake.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum Fault {
    None,
    Status {
        status: u16,
        #[serde(default = "default_message")]
        message: String,
    },
    ErrorAfter {
        tokens: usize,
        #[serde(default = "default_message")]
        message: String,
    },
    CutAfter {
        tokens: usize,
    },
    Hang,
    HangAfter {
        tokens: usize,
    },
    HealthFail,
    Unavailable,
}

fn default_message() -> String {
    "injected failure".into()
}

#[derive(Deserialize)]
struct FaultRequest {
    #[serde(flatten)]
    fault: Fault,
    latency_ms: Option<u64>,
    token_delay_ms: Option<u64>,
}

struct Settings {
    name: String,
    models: Vec<String>,
    latency: Duration,
    token_delay: Duration,
    fault: Fault,
    chats: u64,
    health_checks: u64,
    last: Value,
}

type Shared = web::Data<Arc<Mutex<Settings>>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Settings> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Ollama,
    Openai,
}

fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut settings = Settings {
        name: "fake".into(),
        models: vec!["llama3.2:latest".into()],
        latency: Duration::ZERO,
        token_delay: Duration::ZERO,
        fault: Fault::None,
        chats: 0,
        health_checks: 0,
        last: Value::Null,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_default();
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| std::io::Error::other(format!("{}: {e}", pair[0])))
        };
        match pair[0].as_str() {
            "--port" => port = u16::try_from(number()?).map_err(std::io::Error::other)?,
            "--name" => settings.name = value.to_owned(),
            "--models" => settings.models = value.split(',').map(str::to_owned).collect(),
            "--latency-ms" => settings.latency = Duration::from_millis(number()?),
            "--token-delay-ms" => settings.token_delay = Duration::from_millis(number()?),
            other => return Err(std::io::Error::other(format!("unknown argument {other}"))),
        }
    }
    let shared = web::Data::new(Arc::new(Mutex::new(settings)));
    actix_rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .route("/api/version", web::get().to(version))
                .route("/api/tags", web::get().to(tags))
                .route("/api/chat", web::post().to(ollama_chat))
                .route("/v1/models", web::get().to(openai_models))
                .route("/v1/chat/completions", web::post().to(openai_chat))
                .route("/_fault", web::post().to(set_fault))
                .route("/_stats", web::get().to(stats))
                .route("/_last", web::get().to(last))
        })
        .workers(1)
        // As Ollama (Go) does: every token leaves at once.
        .tcp_nodelay(true)
        .bind(("127.0.0.1", port))?;
        let addr = server.addrs()[0];
        let running = server.run();
        println!("fake-ollama listening on http://{addr}");
        running.await
    })
}

/// A health route's answer, or 500 under `health_fail`.
fn health(shared: &Shared, body: impl FnOnce(&Settings) -> Value) -> HttpResponse {
    let mut s = lock(shared);
    s.health_checks += 1;
    match s.fault {
        Fault::HealthFail => {
            return HttpResponse::InternalServerError()
                .json(json!({"error": "health check failed"}))
        }
        Fault::Unavailable => {
            return HttpResponse::ServiceUnavailable().json(json!({"error": "server unavailable"}))
        }
        _ => {}
    }
    HttpResponse::Ok().json(body(&s))
}

async fn version(shared: Shared) -> HttpResponse {
    health(&shared, |_| json!({"version": "0.5.7"}))
}

async fn tags(shared: Shared) -> HttpResponse {
    health(&shared, |s| {
        let models: Vec<Value> = s
            .models
            .iter()
            .map(|m| {
                json!({"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 2019393189u64,
                       "digest": "a80c4f17acd5", "details": {"format": "gguf", "family": "llama"}})
            })
            .collect();
        json!({ "models": models })
    })
}

async fn openai_models(shared: Shared) -> HttpResponse {
    health(&shared, |s| {
        let data: Vec<Value> = s
            .models
            .iter()
            .map(|m| json!({"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}))
            .collect();
        json!({"object": "list", "data": data})
    })
}

async fn set_fault(shared: Shared, body: web::Json<FaultRequest>) -> HttpResponse {
    let request = body.into_inner();
    let mut s = lock(&shared);
    s.fault = request.fault;
    if let Some(ms) = request.latency_ms {
        s.latency = Duration::from_millis(ms);
    }
    if let Some(ms) = request.token_delay_ms {
        s.token_delay = Duration::from_millis(ms);
    }
    HttpResponse::NoContent().finish()
}

async fn stats(shared: Shared) -> HttpResponse {
    let s = lock(&shared);
    HttpResponse::Ok().json(json!({"chat_requests": s.chats, "health_checks": s.health_checks}))
}

async fn last(shared: Shared) -> HttpResponse {
    HttpResponse::Ok().json(lock(&shared).last.clone())
}

async fn ollama_chat(shared: Shared, req: HttpRequest, body: Bytes) -> HttpResponse {
    chat(shared, &req, body, Wire::Ollama).await
}

async fn openai_chat(shared: Shared, req: HttpRequest, body: Bytes) -> HttpResponse {
    chat(shared, &req, body, Wire::Openai).await
}

/// The error body each server sends with a failing status.
fn error_response(wire: Wire, status: u16, message: &str) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match wire {
        Wire::Ollama => json!({ "error": message }),
        Wire::Openai => json!({"error": {"message": message, "type": "invalid_request_error",
                                         "param": null, "code": null}}),
    };
    HttpResponse::build(code).json(body)
}

async fn chat(shared: Shared, req: &HttpRequest, body: Bytes, wire: Wire) -> HttpResponse {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(wire, 400, &format!("invalid JSON: {e}")),
    };
    let (fault, latency, delay, name, known) = {
        let mut s = lock(&shared);
        s.chats += 1;
        s.last = request.clone();
        if let Some(auth) = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            s.last["_authorization"] = json!(auth);
        }
        let model = request["model"].as_str().unwrap_or_default();
        let known = s
            .models
            .iter()
            .any(|m| m == model || *m == format!("{model}:latest"));
        (
            s.fault.clone(),
            s.latency,
            s.token_delay,
            s.name.clone(),
            known,
        )
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let Some(messages) = request["messages"].as_array() else {
        return error_response(wire, 400, "messages is required");
    };
    if request["stream"] != json!(true) {
        return error_response(wire, 400, "this fake only streams: set stream to true");
    }
    if !known {
        let message = match wire {
            Wire::Ollama => format!("model \"{model}\" not found, try pulling it first"),
            Wire::Openai => format!("The model `{model}` does not exist"),
        };
        return error_response(wire, 404, &message);
    }
    match &fault {
        Fault::Status { status, message } => return error_response(wire, *status, message),
        Fault::Unavailable => return error_response(wire, 503, "server unavailable"),
        Fault::Hang => std::future::pending::<()>().await,
        _ => {}
    }
    let said = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let reply = format!("Hello from {name}. You said: {said}.");
    let tokens: Vec<String> = reply.split_inclusive(' ').map(str::to_owned).collect();
    let prompt_tokens = messages.len() * 10;

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    actix_rt::spawn(async move {
        tokio::time::sleep(latency).await;
        let started = std::time::Instant::now();
        for (i, token) in tokens.iter().enumerate() {
            match &fault {
                Fault::ErrorAfter { tokens: n, message } if i == *n => {
                    let line = match wire {
                        Wire::Ollama => format!("{}\n", json!({ "error": message })),
                        Wire::Openai => format!(
                            "data: {}\n\n",
                            json!({"error": {"message": message, "type": "server_error"}})
                        ),
                    };
                    let _ = tx.send(Bytes::from(line)).await;
                    return;
                }
                Fault::CutAfter { tokens: n } if i == *n => return,
                Fault::HangAfter { tokens: n } if i == *n => {
                    std::future::pending::<()>().await;
                }
                _ => {}
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(token_line(wire, &model, token)).await.is_err() {
                return; // the client went away
            }
        }
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        for line in done_lines(wire, &model, prompt_tokens, tokens.len(), elapsed) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, actix_web::Error>(bytes), rx))
    });
    let content_type = match wire {
        Wire::Ollama => "application/x-ndjson",
        Wire::Openai => "text/event-stream",
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .streaming(stream)
}

fn token_line(wire: Wire, model: &str, token: &str) -> Bytes {
    Bytes::from(match wire {
        Wire::Ollama => format!(
            "{}\n",
            json!({"model": model, "created_at": "2026-01-01T00:00:00Z",
                   "message": {"role": "assistant", "content": token}, "done": false})
        ),
        Wire::Openai => format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": model, "choices": [{"index": 0, "delta": {"content": token},
                   "finish_reason": null}]})
        ),
    })
}

fn done_lines(wire: Wire, model: &str, prompt: usize, completion: usize, ns: u64) -> Vec<Bytes> {
    match wire {
        Wire::Ollama => vec![Bytes::from(format!(
            "{}\n",
            json!({"model": model, "created_at": "2026-01-01T00:00:00Z",
                   "message": {"role": "assistant", "content": ""}, "done": true,
                   "done_reason": "stop", "total_duration": ns, "load_duration": 0,
                   "prompt_eval_count": prompt, "prompt_eval_duration": 0,
                   "eval_count": completion, "eval_duration": ns})
        ))],
        Wire::Openai => vec![
            Bytes::from(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                       "created": 1700000000, "model": model,
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            )),
            Bytes::from(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                       "created": 1700000000, "model": model, "choices": [],
                       "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}})
            )),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ],
    }
}
