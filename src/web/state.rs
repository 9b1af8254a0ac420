//! What every handler may use: one [`AppState`] per host, shared by all
//! HTTP workers.

use std::collections::HashMap;

use actix::Addr;

use super::auth::Auth;
use super::limits::Limits;
use super::sessions::Sessions;
use crate::chat::Chats;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::supervisor::{Board, Supervisor};

/// Everything a handler may use; one per host, shared by all workers.
pub struct AppState {
    pub supervisor: Addr<Supervisor>,
    pub store: Store,
    pub metrics: Metrics,
    pub chats: Chats,
    pub auth: Auth,
    pub sessions: Sessions,
    pub limits: Limits,
    /// API requests worked on at once, and the limit.
    pub admission: super::admission::Admission,
    /// Each bot's state, kept by the Supervisor (`GET /bots`, `bot_status`).
    pub board: Board,
    /// The open WebSockets, told each bot's state change (`bot_status`).
    pub watchers: super::watchers::Watchers,
    /// Conversations seen lately (listed or read), for WebSockets.
    pub known: super::known::KnownConversations,
    pub open_registration: bool,
    /// Each bot's context window.
    pub history_windows: HashMap<String, u32>,
    pub ws_heartbeat: std::time::Duration,
    pub ws_timeout: std::time::Duration,
    /// At shutdown, how long a connection's turns may take to finish
    /// before it is closed anyway (`supervisor.drain_timeout`).
    pub drain_timeout: std::time::Duration,
    /// Set at shutdown: `/readyz` answers 503 so a load balancer stops
    /// sending new connections here.
    pub out_of_rotation: std::sync::atomic::AtomicBool,
}

impl AppState {
    pub fn new(
        config: &Config,
        supervisor: Addr<Supervisor>,
        board: Board,
        store: Store,
        metrics: Metrics,
        auth: Auth,
    ) -> Self {
        Self {
            chats: Chats::new(
                store.clone(),
                supervisor.clone(),
                metrics.clone(),
                config.supervisor.turn_idle_timeout,
                config.limits.max_in_flight_per_user,
            ),
            sessions: Sessions::new(store.clone()),
            supervisor,
            store,
            metrics,
            auth,
            limits: Limits::new(config.limits.clone()),
            admission: super::admission::Admission::new(config.server.max_requests_in_flight),
            known: Default::default(),
            watchers: Default::default(),
            board,
            open_registration: config.auth.open_registration,
            history_windows: config
                .bots
                .iter()
                .map(|b| (b.name.clone(), b.history_window))
                .collect(),
            ws_heartbeat: config.server.ws_heartbeat,
            ws_timeout: config.server.ws_timeout,
            drain_timeout: config.supervisor.drain_timeout,
            out_of_rotation: std::sync::atomic::AtomicBool::new(false),
        }
    }
}
