//! The HTTP front end. For now: liveness and metrics; the chat API, the
//! WebSocket and the page arrive with the front-end issue.
//!
//! Handlers stay thin: they translate HTTP to calls on the Supervisor or the
//! metrics registry and back, and hold no rules of their own.

use actix::Addr;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::metrics::Metrics;
use crate::supervisor::Supervisor;

#[derive(Clone)]
pub struct AppState {
    pub supervisor: Addr<Supervisor>,
    pub metrics: Metrics,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
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
