//! The HTTP front end. For now: liveness, readiness and metrics; the chat
//! API, the WebSocket and the page arrive with the front-end issue.
//!
//! Handlers stay thin: they translate HTTP to calls on the Supervisor or the
//! metrics registry and back, and hold no rules of their own.

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::supervisor::{BotState, GetStatus, StatusReport, Supervisor};

#[derive(Clone)]
pub struct AppState {
    pub supervisor: Addr<Supervisor>,
    pub store: Store,
    pub metrics: Metrics,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// Ready: the store answers and at least one bot can take turns. The body
/// says which part is not, so an operator (or a load balancer's log) sees
/// why.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
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
}

/// The readiness rule: the store is reachable and some bot is ready.
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
    }
}

/// Alive: the process answers HTTP. Readiness is `/readyz` (later).
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
    use crate::supervisor::BotStatus;

    fn report(states: &[BotState]) -> StatusReport {
        StatusReport {
            bots: states
                .iter()
                .enumerate()
                .map(|(i, &state)| BotStatus {
                    name: format!("b{i}"),
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
                })
                .collect(),
            host_rss_bytes: None,
        }
    }

    #[test]
    fn ready_needs_the_store_and_one_ready_bot() {
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
        assert_eq!(readiness(None, Some(&some)).bots["b0"], "failed");
    }
}
