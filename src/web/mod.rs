//! The HTTP front end: REST API, WebSocket, the page, health and metrics.
//!
//! Owns translation between HTTP and the rest of the host. Handlers stay
//! thin: they authenticate (`auth` checks the token, `sessions` the account
//! behind it, `caller` is the extractor that runs both), apply limits
//! (`limits`), call the store or the chat service, and map errors
//! (`error`). They hold no rules of their own. Modules: `api` (REST), `ws`
//! (the WebSocket session), `page` (the embedded web page).

mod admission;
mod api;
pub mod auth;
mod caller;
pub mod error;
mod fleet_minutes;
mod known;
mod limits;
mod manage;
mod page;
mod rewind;
pub mod sessions;
mod state;
mod watchers;
mod ws;

use std::time::Instant;

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use crate::status::{BotState, StatusReport};
use crate::supervisor::GetStatus;
pub use admission::{Admission, ATTEMPT_HEADER};
pub use api::API_ROUTES;
pub use auth::Auth;
use error::ApiError;
pub use fleet_minutes::BATCH_EVERY as FLEET_BATCH_EVERY;
pub use limits::Limits;
pub use manage::check_credentials;
pub use state::AppState;

/// Registers every route. Bodies over `limits.max_body` and malformed JSON
/// get JSON errors like everything else.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let max_body = usize::try_from(state.limits.config.max_body.as_u64()).unwrap_or(usize::MAX);
        let json = web::JsonConfig::default()
            .limit(max_body)
            .error_handler(|err, _req| json_error(&err).into());
        cfg.app_data(state)
            .app_data(json)
            .app_data(
                web::PathConfig::default().error_handler(|_, _| ApiError::not_found("that").into()),
            )
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::bad_request("invalid_query", err.to_string()).into()
            }))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .configure(api::routes)
            .configure(page::routes)
            .default_service(web::to(not_found));
    }
}

fn json_error(err: &actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is too large",
        ),
        E::ContentType => {
            ApiError::bad_request("invalid_json", "send Content-Type: application/json")
        }
        other => ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid: {other}"),
        ),
    }
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(&format!("{} {}", req.method(), req.path())).error_response()
}

/// Counts every response by route pattern (not raw path: ids would make
/// unbounded label values) and status, and times it.
/// Admission (see `admission`): a counted request over the limit is
/// answered 503 `overloaded` at once, without reaching its handler.
pub fn admit<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>> + 'static
where
    B: 'static,
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
{
    match req.app_data::<web::Data<AppState>>() {
        Some(state) if admission::counted(req.path()) => {
            match state.admission.enter(admission::attempt_of(req.request())) {
                Ok(ticket) => {
                    req.extensions_mut().insert(ticket);
                }
                Err(refused) => {
                    let response = req.error_response(refused).map_into_right_body();
                    return futures_util::future::Either::Left(std::future::ready(Ok(response)));
                }
            }
        }
        _ => {}
    }
    let fut = srv.call(req);
    futures_util::future::Either::Right(async move {
        let res = fut.await;
        if let Ok(res) = &res {
            // Not held while the body is written out.
            admission::release(res.request());
        }
        res.map(ServiceResponse::map_into_left_body)
    })
}

pub fn record<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + 'static
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
{
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let fut = srv.call(req);
    async move {
        let res = fut.await?;
        if let Some(metrics) = metrics {
            metrics
                .http_requests
                .with_label_values(&[&route, res.status().as_str()])
                .inc();
            metrics
                .http_request_duration
                .with_label_values(&[&route])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(res)
    }
}

/// Ready: the store answers and at least one bot can take turns. The body
/// says which part is not, so an operator (or a load balancer's log) sees
/// why.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state
        .out_of_rotation
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return HttpResponse::ServiceUnavailable().json(json!({"ready": false, "draining": true}));
    }
    let store = state.store.ping().await;
    let status = state.supervisor.send(GetStatus).await.ok();
    let ready = readiness(
        store.as_ref().err().map(ToString::to_string),
        status.as_ref(),
    );
    let body = json!({
        "ready": ready.ready,
        "store": {"ok": store.is_ok(), "backend": state.store.backend(), "error": ready.store_error},
        "workers": ready.bots,
        "inference": ready.inference,
    });
    if ready.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

struct Readiness {
    ready: bool,
    store_error: Option<String>,
    bots: serde_json::Value,
    inference: serde_json::Value,
}

/// The readiness rule: the store is reachable and some bot is ready (a
/// `degraded` bot, whose model servers are all down, is not).
fn readiness(store_error: Option<String>, status: Option<&StatusReport>) -> Readiness {
    let bots: serde_json::Map<String, serde_json::Value> = status
        .map(|s| {
            s.bots
                .iter()
                .map(|b| (b.name.clone(), json!(b.state.as_str())))
                .collect()
        })
        .unwrap_or_default();
    let any_ready = status.is_some_and(|s| s.bots.iter().any(|b| b.state == BotState::Ready));
    Readiness {
        ready: store_error.is_none() && any_ready,
        store_error,
        bots: serde_json::Value::Object(bots),
        inference: json!({
            "endpoints": status.map(|s| &s.inference),
            "models_present": status.map(|s| s.bots.iter()
                .filter_map(|b| Some((b.name.clone(), json!(b.model_present?))))
                .collect::<serde_json::Map<_, _>>()),
        }),
    }
}

/// Alive: the process answers HTTP. Readiness is `/readyz`.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::BotStatus;

    fn report(states: &[BotState]) -> StatusReport {
        StatusReport {
            bots: states
                .iter()
                .enumerate()
                .map(|(i, &state)| BotStatus {
                    name: format!("b{i}"),
                    model: "m".into(),
                    state,
                    pid: None,
                    generation: 1,
                    rss_bytes: None,
                    budget_bytes: 1,
                    uptime_seconds: None,
                    restarts: 0,
                    in_flight: 0,
                    startup_ms: None,
                    last_failure: None,
                    leak_slope_bytes_per_second: 0.0,
                    memory_warning: false,
                    pending_generation: None,
                    model_present: None,
                    retry_in_seconds: None,
                })
                .collect(),
            host_rss_bytes: None,
            memory_enforcement: String::new(),
            inference: Vec::new(),
        }
    }

    #[test]
    fn ready_needs_the_store_and_one_ready_not_degraded_bot() {
        let some = report(&[BotState::Failed, BotState::Ready]);
        assert!(readiness(None, Some(&some)).ready);
        assert!(!readiness(Some("down".into()), Some(&some)).ready);
        assert!(
            !readiness(
                None,
                Some(&report(&[BotState::Failed, BotState::Restarting]))
            )
            .ready
        );
        assert!(!readiness(None, None).ready);
        assert!(!readiness(None, Some(&report(&[BotState::Degraded]))).ready);
        assert_eq!(readiness(None, Some(&some)).bots["b0"], "failed");
    }
}
