//! What the integration tests and the benchmarks share, so neither grows
//! its own copy:
//!
//! - [`HostProcess`]: the real `bothost serve` (which starts real
//!   `bot-worker` children) in a temporary directory, driven the way an
//!   operator drives it: its CLI, its control socket, its HTTP port,
//!   signals;
//! - [`PgSchema`]: a PostgreSQL schema of its own for one test or run, so
//!   they can run side by side on one database;
//! - [`ThrowawayPg`]: a PostgreSQL server of one's own (and a streaming
//!   standby of it), to stop, restart or fail over;
//! - [`eventually`] / [`eventually_async`]: wait for a condition with a
//!   deadline, never sleep and hope;
//! - [`runtime`]: a current-thread Tokio runtime for synchronous tests.

mod host;
mod pg;
mod throwaway_pg;
mod wait;

pub use host::{binary_dir, http_get, HostProcess};
pub use pg::{bench_database_url, test_database_url, PgDatabase, PgSchema};
pub use throwaway_pg::ThrowawayPg;
pub use wait::{eventually, eventually_async, TimedOut};

/// A current-thread runtime with I/O and timers, for a synchronous test
/// that needs to `block_on` a client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}
