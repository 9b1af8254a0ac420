//! The engines that call model servers, and the failover between them.
//!
//! A turn tries the bot's endpoints in order of preference. Until the first
//! token has been sent to the host, any failure (refused connection,
//! timeout, an HTTP error, an error line, a stream cut short) moves the turn
//! to the next endpoint at once and tells the host with `EndpointFailed`;
//! the failed endpoint cools down. After the first token a failure ends the turn:
//! repeating the reply from another server would show the user text twice.
//!
//! Which endpoints are preferred:
//! 1. up (by the host's health checks) and not cooling down, in order;
//! 2. then those cooling down: a cooldown is a preference, not a verdict.
//!
//! Endpoints the host reports down are skipped; when every endpoint is down
//! the turn fails at once with `inference_unavailable` instead of making the
//! user wait on servers known to be gone. An endpoint the host reports up
//! again leaves its cooldown at once, so turns return to the primary as
//! soon as its health check passes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bot_worker::{
    BotSpec, ChatMessage, EndpointSpec, FailCode, RemoteSpec, Role, Usage, WorkerMessage,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::timeout_at;

use super::output::{emit, EngineError};
use super::wire::{http_error, Lines, WireFormat};

struct Endpoint {
    spec: EndpointSpec,
    client: reqwest::Client,
}

#[derive(Default)]
struct Health {
    /// Down by the host's health checks.
    down: HashSet<String>,
    /// Failed a turn; skipped (while others are left) until then.
    cooling: HashMap<String, Instant>,
}

pub struct Remote {
    wire: &'static dyn WireFormat,
    model: String,
    system_prompt: String,
    spec: RemoteSpec,
    endpoints: Vec<Endpoint>,
    health: Mutex<Health>,
}

/// A failed attempt on one endpoint, and whether the user saw any of it.
struct Failure {
    error: EngineError,
    after_tokens: bool,
}

impl Remote {
    pub fn new(
        wire: &'static dyn WireFormat,
        bot: &BotSpec,
        spec: &RemoteSpec,
    ) -> Result<Self, String> {
        if spec.endpoints.is_empty() {
            return Err(format!("bot {}: no inference endpoints", bot.name));
        }
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| {
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_millis(e.connect_timeout_ms))
                    .build()
                    .map_err(|err| format!("endpoint {}: {err}", e.name))?;
                Ok(Endpoint {
                    spec: e.clone(),
                    client,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            wire,
            model: bot.model.clone(),
            system_prompt: bot.system_prompt.clone(),
            spec: spec.clone(),
            endpoints,
            health: Mutex::new(Health::default()),
        })
    }

    pub fn endpoints_down(&self, names: Vec<String>) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let down: HashSet<String> = names.into_iter().collect();
        // Back up by the health check: prefer it again at once.
        for name in health.down.difference(&down).cloned().collect::<Vec<_>>() {
            health.cooling.remove(&name);
        }
        health.down = down;
    }

    pub async fn reply(
        &self,
        id: u64,
        messages: &[ChatMessage],
        out: &mpsc::Sender<WorkerMessage>,
    ) -> Result<Usage, EngineError> {
        let order = {
            let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
            preference(&self.endpoints, &health, Instant::now())
        };
        let mut messages_with_prompt = Vec::with_capacity(messages.len() + 1);
        if !self.system_prompt.is_empty() {
            messages_with_prompt.push(ChatMessage {
                role: Role::System,
                content: self.system_prompt.clone(),
            });
        }
        messages_with_prompt.extend(messages.iter().cloned());

        let mut failures = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            let endpoint = &self.endpoints[i];
            let failure = match self.attempt(endpoint, id, &messages_with_prompt, out).await {
                Ok(usage) => return Ok(usage),
                Err(f) => f,
            };
            // The caller going away says nothing about the server.
            if failure.error.code == FailCode::Cancelled {
                return Err(failure.error);
            }
            self.cool_down(&endpoint.spec);
            if failure.after_tokens {
                return Err(failure.error);
            }
            // A request the server found malformed would be refused anywhere.
            let next = order
                .get(n + 1)
                .filter(|_| failure.error.code != FailCode::BadRequest)
                .map(|&i| self.endpoints[i].spec.name.clone());
            emit(
                out,
                WorkerMessage::EndpointFailed {
                    id,
                    endpoint: endpoint.spec.name.clone(),
                    reason: failure.error.message.clone(),
                    next: next.clone(),
                },
            )
            .await?;
            failures.push((endpoint.spec.name.clone(), failure.error));
            if next.is_none() {
                break;
            }
        }
        Err(all_failed(&failures, &self.endpoints))
    }

    fn cool_down(&self, endpoint: &EndpointSpec) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + Duration::from_millis(endpoint.cooldown_ms);
        health.cooling.insert(endpoint.name.clone(), until);
    }

    /// One try on one endpoint: send, then stream until the server says done.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        id: u64,
        messages: &[ChatMessage],
        out: &mpsc::Sender<WorkerMessage>,
    ) -> Result<Usage, Failure> {
        let spec = &endpoint.spec;
        let before = |error: EngineError| Failure {
            error,
            after_tokens: false,
        };
        let first_deadline = Instant::now() + Duration::from_millis(spec.first_token_timeout_ms);
        let gap = Duration::from_millis(spec.token_gap_timeout_ms);
        let response = timeout_at(
            first_deadline.into(),
            self.request(endpoint, messages).send(),
        )
        .await
        .map_err(|_| before(timed_out("answer", spec.first_token_timeout_ms)))?
        .map_err(|e| before(request_error(spec, e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = timeout_at((Instant::now() + gap).into(), response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(before(http_error(status.as_u16(), &body, &self.model)));
        }

        let mut stream = response.bytes_stream();
        let mut lines = Lines::default();
        let mut usage = Usage::default();
        let mut sent = false;
        loop {
            let fail = |error: EngineError, sent: bool| Failure {
                error,
                after_tokens: sent,
            };
            let deadline = if sent {
                Instant::now() + gap
            } else {
                first_deadline
            };
            let chunk = match timeout_at(deadline.into(), stream.next()).await {
                Err(_) if sent => {
                    return Err(fail(
                        timed_out("next token", spec.token_gap_timeout_ms),
                        sent,
                    ))
                }
                Err(_) => {
                    return Err(fail(
                        timed_out("first token", spec.first_token_timeout_ms),
                        sent,
                    ))
                }
                Ok(None) => {
                    return Err(fail(
                        EngineError::new(
                            FailCode::EngineFailed,
                            "the model server ended the reply before it was complete",
                        ),
                        sent,
                    ))
                }
                Ok(Some(Err(e))) => {
                    return Err(fail(
                        EngineError::new(
                            FailCode::EngineFailed,
                            format!(
                                "the connection to the model server broke: {}",
                                e.without_url()
                            ),
                        ),
                        sent,
                    ))
                }
                Ok(Some(Ok(bytes))) => bytes,
            };
            lines.push(&chunk);
            while let Some(line) = lines.next_line().map_err(|e| fail(e, sent))? {
                let piece = self.wire.parse_line(&line).map_err(|e| fail(e, sent))?;
                if let Some(text) = piece.text.filter(|t| !t.is_empty()) {
                    emit(out, WorkerMessage::Delta { id, text })
                        .await
                        .map_err(|e| fail(e, sent))?;
                    sent = true;
                }
                if let Some(u) = piece.usage {
                    usage = u;
                }
                if piece.done {
                    usage.endpoint = Some(spec.name.clone());
                    return Ok(usage);
                }
            }
        }
    }

    fn request(&self, endpoint: &Endpoint, messages: &[ChatMessage]) -> reqwest::RequestBuilder {
        let base = endpoint.spec.url.trim_end_matches('/');
        let request = endpoint
            .client
            .post(self.wire.chat_url(base))
            .json(&self.wire.body(&self.model, messages, &self.spec));
        match api_key(&endpoint.spec) {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

fn api_key(spec: &EndpointSpec) -> Option<String> {
    let var = spec.api_key_env.as_deref()?;
    std::env::var(var).ok().filter(|k| !k.is_empty())
}

/// Endpoint indexes to try, best first (see the module's rules).
fn preference(endpoints: &[Endpoint], health: &Health, now: Instant) -> Vec<usize> {
    let usable = |e: &Endpoint| !health.down.contains(&e.spec.name);
    let cooling = |e: &Endpoint| health.cooling.get(&e.spec.name).is_some_and(|t| *t > now);
    let fresh = (0..endpoints.len()).filter(|&i| usable(&endpoints[i]) && !cooling(&endpoints[i]));
    let cooled = (0..endpoints.len()).filter(|&i| usable(&endpoints[i]) && cooling(&endpoints[i]));
    fresh.chain(cooled).collect()
}

/// The error for a turn no endpoint could answer: the failure's own code
/// when every endpoint failed the same way (the model is missing
/// everywhere, say), otherwise `inference_unavailable`; the message names
/// each endpoint's reason.
fn all_failed(failures: &[(String, EngineError)], endpoints: &[Endpoint]) -> EngineError {
    let Some((_, first)) = failures.first() else {
        let names: Vec<&str> = endpoints.iter().map(|e| e.spec.name.as_str()).collect();
        return EngineError::new(
            FailCode::InferenceUnavailable,
            format!("every model server is down ({})", names.join(", ")),
        );
    };
    let code = if failures.iter().all(|(_, e)| e.code == first.code) {
        first.code
    } else {
        FailCode::InferenceUnavailable
    };
    if failures.len() == 1 {
        return EngineError::new(code, first.message.clone());
    }
    let reasons: Vec<String> = failures
        .iter()
        .map(|(name, e)| format!("{name}: {}", e.message))
        .collect();
    EngineError::new(
        code,
        format!("no model server could answer ({})", reasons.join("; ")),
    )
}

fn timed_out(what: &str, ms: u64) -> EngineError {
    EngineError::new(
        FailCode::Timeout,
        format!("the model server sent no {what} within {ms} ms"),
    )
}

/// The URL stays out of the message: it may carry a password.
fn request_error(spec: &EndpointSpec, e: reqwest::Error) -> EngineError {
    let e = e.without_url();
    if e.is_connect() {
        EngineError::new(
            FailCode::InferenceUnavailable,
            format!("cannot connect to {}: {e}", spec.name),
        )
    } else if e.is_timeout() {
        EngineError::new(
            FailCode::Timeout,
            format!(
                "cannot connect to {} within {} ms",
                spec.name, spec.connect_timeout_ms
            ),
        )
    } else {
        EngineError::new(
            FailCode::InferenceUnavailable,
            format!("the request to {} failed: {e}", spec.name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(names: &[&str]) -> Vec<Endpoint> {
        names
            .iter()
            .map(|n| Endpoint {
                spec: EndpointSpec {
                    name: (*n).into(),
                    url: "http://127.0.0.1:1".into(),
                    api_key_env: None,
                    connect_timeout_ms: 100,
                    first_token_timeout_ms: 100,
                    token_gap_timeout_ms: 100,
                    cooldown_ms: 1000,
                },
                client: reqwest::Client::new(),
            })
            .collect()
    }

    #[test]
    fn healthy_endpoints_first_then_cooling_ones_and_never_down_ones() {
        let eps = endpoints(&["primary", "secondary", "third"]);
        let now = Instant::now();
        let mut health = Health::default();
        assert_eq!(preference(&eps, &health, now), vec![0, 1, 2]);
        health
            .cooling
            .insert("primary".into(), now + Duration::from_secs(5));
        assert_eq!(preference(&eps, &health, now), vec![1, 2, 0]);
        // A cooldown that has run out is forgotten.
        assert_eq!(
            preference(&eps, &health, now + Duration::from_secs(6)),
            vec![0, 1, 2]
        );
        health.down.insert("secondary".into());
        assert_eq!(preference(&eps, &health, now), vec![2, 0]);
        health.down.extend(["primary".into(), "third".into()]);
        assert!(preference(&eps, &health, now).is_empty());
    }

    #[test]
    fn the_same_failure_everywhere_keeps_its_code_mixed_ones_mean_unavailable() {
        let eps = endpoints(&["a", "b"]);
        let e = |code, msg: &str| EngineError::new(code, msg);
        let missing = vec![
            ("a".to_owned(), e(FailCode::ModelNotFound, "no model on a")),
            ("b".to_owned(), e(FailCode::ModelNotFound, "no model on b")),
        ];
        assert_eq!(all_failed(&missing, &eps).code, FailCode::ModelNotFound);
        let mixed = vec![
            ("a".to_owned(), e(FailCode::InferenceUnavailable, "refused")),
            ("b".to_owned(), e(FailCode::Overloaded, "busy")),
        ];
        let err = all_failed(&mixed, &eps);
        assert_eq!(err.code, FailCode::InferenceUnavailable);
        assert!(err.message.contains("a: refused") && err.message.contains("b: busy"));
        let single = vec![("a".to_owned(), e(FailCode::EngineFailed, "HTTP 500"))];
        assert_eq!(
            all_failed(&single, &eps),
            e(FailCode::EngineFailed, "HTTP 500")
        );
        let busy = vec![("a".to_owned(), e(FailCode::Overloaded, "queue full"))];
        assert_eq!(all_failed(&busy, &eps).code, FailCode::Overloaded);
        let none = all_failed(&[], &eps);
        assert_eq!(none.code, FailCode::InferenceUnavailable);
        assert!(none.message.contains("a, b"), "{}", none.message);
    }
}
