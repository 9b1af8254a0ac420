//! What the Supervisor keeps per bot: its lifecycle, the WorkerHandle of
//! each live generation, the memory watch of the serving one, and who waits
//! for a restart. Also how a bot reads in `bothost status`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use tokio::sync::oneshot;

use super::endpoints::Endpoints;
use super::lifecycle::Lifecycle;
use crate::memory::{MemoryPolicy, MemoryWatch};
use crate::status::{BotStatus, RestartError, Restarted};
use crate::worker::{StartTurn, WorkerHandle, WorkerSettings};

pub type RestartWaiter = oneshot::Sender<Result<Restarted, RestartError>>;

/// A turn that waits for a generation on its way (see
/// [`Route::Wait`](super::lifecycle::Route::Wait)).
pub struct HeldTurn {
    pub turn: StartTurn,
    /// Given up on after this: the bot did not come back in time.
    pub until: Instant,
}

pub struct Bot {
    pub settings: Arc<WorkerSettings>,
    pub memory: MemoryPolicy,
    pub life: Lifecycle,
    /// The WorkerHandle of every generation the lifecycle tracks.
    pub workers: HashMap<u64, Addr<WorkerHandle>>,
    /// Callers waiting for the pending generation to take over.
    pub waiters: Vec<RestartWaiter>,
    /// Turns waiting for a generation to serve, oldest first.
    pub held: VecDeque<HeldTurn>,
    /// The serving generation's last RSS reading.
    pub rss: Option<u64>,
    pub watch: MemoryWatch,
    /// When the serving generation is read next (sooner near its budget).
    pub next_sample: std::time::Instant,
    /// The pid of every generation that has been ready, by generation.
    pub pids: HashMap<u64, u32>,
    /// The inference endpoints the bot calls (none for builtin).
    pub endpoints: Vec<String>,
}

impl Bot {
    pub fn name(&self) -> &str {
        &self.settings.spec.name
    }

    /// The serving generation's worker.
    pub fn worker(&self, generation: u64) -> Option<&Addr<WorkerHandle>> {
        self.workers.get(&generation)
    }

    pub fn status(&self, endpoints: &Endpoints, in_flight: i64) -> BotStatus {
        let current = self.life.current();
        BotStatus {
            name: self.name().to_owned(),
            model: self.settings.spec.model.clone(),
            state: self.life.state(),
            pid: current.map(|g| g.pid),
            generation: self.life.generation(),
            rss_bytes: self.rss,
            budget_bytes: self.memory.budget,
            uptime_seconds: current.map(|g| g.ready_at.elapsed().as_secs()),
            restarts: self.life.restarts(),
            in_flight,
            startup_ms: current
                .map(|g| g.ready_at.duration_since(g.spawned).as_secs_f64() * 1000.0),
            last_failure: self.life.last_failure().map(str::to_owned),
            leak_slope_bytes_per_second: self.watch.slope(),
            memory_warning: self.watch.above_warning(),
            pending_generation: self.life.pending_generation(),
            model_present: endpoints.model_present(&self.endpoints, &self.settings.spec.model),
            retry_in_seconds: self.life.retry_at().map(|t| {
                t.saturating_duration_since(std::time::Instant::now())
                    .as_secs()
            }),
        }
    }
}
