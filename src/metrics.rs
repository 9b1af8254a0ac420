//! Prometheus metrics: one registry, every series bothost exports.
//!
//! Owns metric names and labels, which operators' dashboards depend on
//! (DESIGN.md lists them; rename none). Series for a bot are created when the
//! bot is registered, so a dashboard sees zeros rather than gaps. This module
//! only records and renders; it decides nothing.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use std::sync::Arc;

use crate::status::{BotState, RestartReason};

/// Cheap to clone: one reference count (a store, a turn and a request
/// each carry one; cloned field by field it was some thirty atomic
/// operations per clone, visible in a turn's profile).
#[derive(Clone)]
pub struct Metrics(Arc<Series>);

impl std::ops::Deref for Metrics {
    type Target = Series;

    fn deref(&self) -> &Series {
        &self.0
    }
}

/// Every series, behind [`Metrics`].
pub struct Series {
    registry: Registry,
    pub worker_up: IntGaugeVec,
    pub worker_generation: IntGaugeVec,
    pub worker_in_flight: IntGaugeVec,
    pub worker_restarts: IntCounterVec,
    pub worker_rss_bytes: IntGaugeVec,
    pub worker_memory_budget_bytes: IntGaugeVec,
    pub worker_state: IntGaugeVec,
    pub worker_leak_slope: GaugeVec,
    pub worker_memory_warning: IntGaugeVec,
    pub worker_handover_failures: IntCounterVec,
    pub worker_cold_restarts: IntCounterVec,
    /// 1 for how workers' memory is measured and their ceiling enforced.
    pub memory_enforcement_info: IntGaugeVec,
    pub host_rss_bytes: IntGauge,
    /// 1 for each inference endpoint a bot calls, so PromQL can join a
    /// bot to its endpoints' `inference_up`.
    pub bot_endpoint_info: IntGaugeVec,
    pub db_up: IntGauge,
    pub backup_last_success: prometheus::Gauge,
    pub backup_duration: prometheus::Gauge,
    pub backup_size_bytes: IntGauge,
    pub backup_failures: prometheus::IntCounter,
    pub db_pool_connections: IntGaugeVec,
    pub db_pool_max_connections: IntGauge,
    pub db_query_duration: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub ws_connections: IntGauge,
    pub chat_messages: IntCounterVec,
    pub chat_first_token: prometheus::Histogram,
    pub chat_reply: prometheus::Histogram,
    pub inference_up: IntGaugeVec,
    pub inference_failovers: IntCounterVec,
}

/// Label values of `bothost_chat_messages_total{outcome}`.
///
/// `refused`: not started, and nothing failed: the host is restarting (the
/// page sends it again once reconnected), the same message is being
/// answered now (a resend that raced it), or the user's turns in flight
/// are at their cap. Not in the chat error ratio.
pub const CHAT_OUTCOMES: [&str; 6] = [
    "complete",
    "partial",
    "failed",
    "unavailable",
    "replayed",
    "refused",
];

/// Latency buckets from a millisecond to half a minute.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("bothost".into()), None)?;
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let worker_up = gauge(
            "worker_up",
            "1 when the bot's worker is Ready, else 0",
            &["bot"],
        )?;
        let worker_generation = gauge(
            "worker_generation",
            "Generation of the bot's current worker (1 for the first)",
            &["bot"],
        )?;
        let worker_in_flight = gauge(
            "worker_in_flight",
            "Chat turns in flight in the bot's workers",
            &["bot"],
        )?;
        let worker_rss_bytes = gauge(
            "worker_rss_bytes",
            "Resident set size of the bot's current worker",
            &["bot"],
        )?;
        let worker_memory_budget_bytes = gauge(
            "worker_memory_budget_bytes",
            "Memory budget of the bot",
            &["bot"],
        )?;
        let worker_state = gauge(
            "worker_state",
            "1 for the bot's current state, 0 for the others",
            &["bot", "state"],
        )?;
        let worker_restarts = IntCounterVec::new(
            Opts::new("worker_restarts_total", "Worker restarts by reason"),
            &["bot", "reason"],
        )?;
        registry.register(Box::new(worker_restarts.clone()))?;
        let worker_memory_warning = gauge(
            "worker_memory_warning",
            "1 while the worker's RSS is above the warning fraction of its budget",
            &["bot"],
        )?;
        let worker_leak_slope = GaugeVec::new(
            Opts::new(
                "worker_leak_slope_bytes_per_second",
                "Fitted growth of the worker's memory floor over the leak window",
            ),
            &["bot"],
        )?;
        registry.register(Box::new(worker_leak_slope.clone()))?;
        let worker_handover_failures = IntCounterVec::new(
            Opts::new(
                "worker_handover_failures_total",
                "Restarts whose new generation never became ready (the old one kept serving)",
            ),
            &["bot"],
        )?;
        registry.register(Box::new(worker_handover_failures.clone()))?;
        let worker_cold_restarts = IntCounterVec::new(
            Opts::new(
                "worker_cold_restarts_total",
                "Restarts done by stopping the old generation first, for lack of memory for two",
            ),
            &["bot"],
        )?;
        registry.register(Box::new(worker_cold_restarts.clone()))?;
        let memory_enforcement_info = gauge(
            "memory_enforcement_info",
            "1 for how a worker's memory is measured (rss_tree or pss_tree: over its process tree) \
             and who enforces its ceiling (kernel: a cgroup per worker; supervisor: sampling)",
            &["measure", "ceiling"],
        )?;
        let db_pool_connections = gauge(
            "db_pool_connections",
            "Database pool connections: in_use, idle, and the current max",
            &["state"],
        )?;
        let db_pool_max_connections = IntGauge::new(
            "db_pool_max_connections",
            "The ceiling the pool may grow to (database.pool_max)",
        )?;
        registry.register(Box::new(db_pool_max_connections.clone()))?;
        let db_up = IntGauge::new(
            "db_up",
            "1 when the database answered its last probe (every 5 s), else 0",
        )?;
        registry.register(Box::new(db_up.clone()))?;
        let backup_last_success = prometheus::Gauge::new(
            "backup_last_success_timestamp_seconds",
            "When the last backup succeeded (Unix time); 0 before the first",
        )?;
        registry.register(Box::new(backup_last_success.clone()))?;
        let backup_duration = prometheus::Gauge::new(
            "backup_duration_seconds",
            "How long the last successful backup took",
        )?;
        registry.register(Box::new(backup_duration.clone()))?;
        let backup_size_bytes = IntGauge::new(
            "backup_size_bytes",
            "The size of the last successful backup's file",
        )?;
        registry.register(Box::new(backup_size_bytes.clone()))?;
        let backup_failures = prometheus::IntCounter::new(
            "backup_failures_total",
            "Scheduled backups that failed (the log says why)",
        )?;
        registry.register(Box::new(backup_failures.clone()))?;
        let bot_endpoint_info = gauge(
            "bot_endpoint_info",
            "1 for each inference endpoint the bot calls",
            &["bot", "endpoint"],
        )?;
        let db_query_duration = HistogramVec::new(
            HistogramOpts::new(
                "db_query_duration_seconds",
                "Store operations, by operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["query"],
        )?;
        registry.register(Box::new(db_query_duration.clone()))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route pattern and status",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route pattern",
            )
            .buckets(latency_buckets()),
            &["route"],
        )?;
        registry.register(Box::new(http_request_duration.clone()))?;
        let ws_connections = IntGauge::new("ws_connections", "Open WebSocket connections")?;
        registry.register(Box::new(ws_connections.clone()))?;
        let chat_messages = IntCounterVec::new(
            Opts::new(
                "chat_messages_total",
                "User messages by outcome: complete, partial, failed, unavailable, replayed, refused",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(chat_messages.clone()))?;
        // Every outcome exists from the start, so an error ratio is 0, not
        // missing, before the first error.
        for outcome in CHAT_OUTCOMES {
            chat_messages.with_label_values(&[outcome]);
        }
        let histogram =
            |name: &str, help: &str| -> Result<prometheus::Histogram, prometheus::Error> {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(name, help).buckets(latency_buckets()),
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let chat_first_token = histogram(
            "chat_first_token_seconds",
            "From the user's message being stored to the bot's first token",
        )?;
        let chat_reply = histogram(
            "chat_reply_seconds",
            "From the user's message being stored to the stored reply",
        )?;
        let inference_up = gauge(
            "inference_up",
            "1 while the endpoint passes its health check, else 0",
            &["endpoint"],
        )?;
        let inference_failovers = IntCounterVec::new(
            Opts::new(
                "inference_failovers_total",
                "Turns moved to another endpoint after a failure before their first token",
            ),
            &["from", "to"],
        )?;
        registry.register(Box::new(inference_failovers.clone()))?;
        let host_rss_bytes =
            IntGauge::new("host_rss_bytes", "Resident set size of the bothost process")?;
        registry.register(Box::new(host_rss_bytes.clone()))?;
        Ok(Self(Arc::new(Series {
            registry,
            worker_up,
            worker_generation,
            worker_in_flight,
            worker_restarts,
            worker_rss_bytes,
            worker_memory_budget_bytes,
            worker_state,
            worker_leak_slope,
            worker_memory_warning,
            worker_handover_failures,
            worker_cold_restarts,
            memory_enforcement_info,
            host_rss_bytes,
            bot_endpoint_info,
            db_up,
            backup_last_success,
            backup_duration,
            backup_size_bytes,
            backup_failures,
            db_pool_connections,
            db_pool_max_connections,
            db_query_duration,
            http_requests,
            http_request_duration,
            ws_connections,
            chat_messages,
            chat_first_token,
            chat_reply,
            inference_up,
            inference_failovers,
        })))
    }

    /// Creates every series of `bot` at its starting value.
    pub fn register_bot(&self, bot: &str, budget_bytes: u64, endpoints: &[String]) {
        for endpoint in endpoints {
            self.bot_endpoint_info
                .with_label_values(&[bot, endpoint])
                .set(1);
            // Every failover this bot can make exists at zero, so a rate
            // over it is 0 rather than missing.
            for to in endpoints.iter().filter(|to| *to != endpoint) {
                self.inference_failovers.with_label_values(&[endpoint, to]);
            }
        }
        self.worker_up.with_label_values(&[bot]).set(0);
        self.worker_generation.with_label_values(&[bot]).set(0);
        self.worker_in_flight.with_label_values(&[bot]).set(0);
        self.worker_rss_bytes.with_label_values(&[bot]).set(0);
        self.worker_leak_slope.with_label_values(&[bot]).set(0.0);
        self.worker_memory_warning.with_label_values(&[bot]).set(0);
        self.worker_handover_failures.with_label_values(&[bot]);
        self.worker_cold_restarts.with_label_values(&[bot]);
        self.worker_memory_budget_bytes
            .with_label_values(&[bot])
            .set(i64::try_from(budget_bytes).unwrap_or(i64::MAX));
        for &reason in RestartReason::ALL {
            self.worker_restarts
                .with_label_values(&[bot, reason.as_str()]);
        }
        self.set_state(bot, BotState::Starting);
    }

    pub fn set_state(&self, bot: &str, state: BotState) {
        for &s in BotState::ALL {
            self.worker_state
                .with_label_values(&[bot, s.as_str()])
                .set(i64::from(s == state));
        }
        // A degraded bot's worker is up; its model server is not.
        self.worker_up
            .with_label_values(&[bot])
            .set(i64::from(matches!(
                state,
                BotState::Ready | BotState::Degraded
            )));
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec fails only on metrics we never create.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
