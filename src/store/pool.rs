//! Building the pool for either backend, and growing it under load.
//!
//! Every new connection is set up before use: PostgreSQL gets a connect
//! timeout and a `statement_timeout`; SQLite gets WAL, a busy timeout and
//! foreign keys (without them concurrent writers see "database is locked"
//! and cascades do nothing). Checkout waits at most `acquire_timeout`. A
//! connection idle for more than [`VERIFY_AFTER`] is verified with a round
//! trip at checkout, so connections broken by a database restart are
//! replaced instead of handed out; one used a moment ago is not (its last
//! query proved it, and a turn checks out five: the round trips cost a
//! third of the database's work).
//!
//! PostgreSQL's pool is split by thread ([`Shards`]): a thread checks out
//! connections it opened, whose I/O it drives itself, so a statement does
//! not wait for another thread to wake up and pass it on. Half goes to the
//! thread that built the pool (the System arbiter, where turns run). A
//! thread whose shard is busy borrows from another rather than wait.
//! SQLite's connections do their work on the blocking pool either way.
//!
//! Growth: when utilisation (in use, or anyone waiting, over all shards)
//! stays at or above 80% for `pool_grow_window`, the limit grows by a
//! quarter toward `pool_max`, and the log says so. It never shrinks by
//! itself.

use secrecy::ExposeSecret;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use deadpool::managed::{Manager, Metrics, QueueMode, RecycleResult};
use diesel::{ConnectionError, SqliteConnection};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError, PoolableConnection,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;
use tracing::{info, warn};

use super::error::StoreError;
use crate::config::{DatabaseConfig, DatabaseTarget};
use crate::metrics::Metrics as HostMetrics;

const HIGH_WATER: f64 = 0.8;

/// SQLite checkpoints the WAL into the database when it reaches this many
/// pages (40 MB), instead of SQLite's 1,000: a turn writes ~20 pages, so at
/// 1,000 a checkpoint ran every ~50 turns, on the writer's thread, while
/// every other write waited, and copied the same hot pages (the newest
/// index leaves, the conversation row) again each time. Measured
/// (`wsload 100 200 20`, twenty interleaved runs): about 10 % more turns
/// a minute and 5 % less host CPU a turn. The WAL is written to disk
/// (`fsync`) at checkpoints only (`synchronous = NORMAL`), so
/// [`crate::store::Store::spawn_checkpoints`] also checkpoints every
/// second: what a power cut can take back is bounded in time, where the
/// page count alone bounded it in size only.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Connections idle longer than this are verified at checkout.
pub const VERIFY_AFTER: Duration = Duration::from_secs(1);

/// One pool of whichever backend the store uses.
pub(super) enum Pools {
    Postgres(Shards<Checked<AsyncPgConnection>>),
    Sqlite(Pool<SyncConnectionWrapper<SqliteConnection>>),
}

/// PostgreSQL's pool, split by thread: each thread that queries checks out
/// from its own shard first ([`Shards::get`]). A connection's I/O runs as
/// a task on the thread that opened it (`tokio-postgres` spawns its driver
/// there), so with one pool a query from any other thread was handed to
/// that thread and its answer handed back, two wake-ups of another thread
/// a statement (about two thirds of all statements, with two HTTP workers
/// and the System arbiter querying). With a shard each, a thread's
/// connections are mostly opened by it and driven by it.
///
/// The thread that builds the pool, in the host the System arbiter where
/// every turn runs ([`crate::chat`]), has shard 0 and half the
/// connections: a turn's statements are most of the work, and they should
/// not have a third of the pool where they had all of it. Every other
/// thread takes one of the remaining shards in turn, the first time it
/// asks (one per HTTP worker: actix runs one a core).
pub(super) struct Shards<M: Manager> {
    shards: Vec<deadpool::managed::Pool<M>>,
}

thread_local! {
    /// This thread's place among the shards: 0 for the thread that built
    /// a pool, 1, 2, … in order of first use for the others.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

impl<M: Manager> Shards<M> {
    /// One shard for this thread and one per HTTP worker, sharing `size`
    /// connections, each at least one.
    fn new(
        size: usize,
        shard: impl FnMut(usize) -> Result<deadpool::managed::Pool<M>, StoreError>,
    ) -> Result<Self, StoreError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
        // Half is the first shard's; the rest must give each other one.
        let count = threads.min(1 + size / 2);
        let shards = split(size, count).map(shard).collect::<Result<_, _>>()?;
        SHARD.with(|s| s.set(Some(0)));
        Ok(Self { shards })
    }

    /// A connection from this thread's shard, unless it would wait there
    /// longer than in another: one with a connection idle or room to open
    /// one, or else the shortest queue for its size. Waiting costs more
    /// than another thread's hand-offs, and a shard's connections must not
    /// sit idle while other threads queue: the System arbiter's between
    /// turns, or a multi-threaded runtime's main thread's, which builds the
    /// pool and then only waits (the store benchmark's 100 writers on such
    /// a runtime got a quarter fewer turns through with each thread held
    /// to its own shard).
    pub(super) async fn get(
        &self,
    ) -> Result<deadpool::managed::Object<M>, deadpool::managed::PoolError<M::Error>> {
        let local = self.local();
        let here = wait_at(&local.status());
        if here == 0 {
            return local.get().await;
        }
        let shortest = self
            .shards
            .iter()
            .map(|s| (wait_at(&s.status()), s))
            .min_by_key(|(wait, _)| *wait);
        match shortest {
            Some((wait, other)) if wait < here => other.get().await,
            _ => local.get().await,
        }
    }

    /// This thread's shard.
    fn local(&self) -> &deadpool::managed::Pool<M> {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let place = SHARD.with(|s| {
            let place = s
                .get()
                .unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed));
            s.set(Some(place));
            place
        });
        let others = self.shards.len() - 1;
        if place == 0 || others == 0 {
            return &self.shards[0];
        }
        &self.shards[1 + (place - 1) % others]
    }

    /// All the shards' numbers added up.
    fn status(&self) -> deadpool::Status {
        self.shards
            .iter()
            .map(deadpool::managed::Pool::status)
            .fold(
                deadpool::Status {
                    max_size: 0,
                    size: 0,
                    available: 0,
                    waiting: 0,
                },
                |sum, s| deadpool::Status {
                    max_size: sum.max_size + s.max_size,
                    size: sum.size + s.size,
                    available: sum.available + s.available,
                    waiting: sum.waiting + s.waiting,
                },
            )
    }

    /// `to` connections in all, split as at the start.
    fn resize(&self, to: usize) {
        for (shard, size) in self.shards.iter().zip(split(to, self.shards.len())) {
            shard.resize(size);
        }
    }
}

/// How long a checkout from a pool so would wait, in no unit: 0 with a
/// connection idle or room to open one, else its queue (this checkout
/// included) for each connection it has.
fn wait_at(s: &deadpool::Status) -> usize {
    if s.available > 0 || s.size < s.max_size {
        return 0;
    }
    (s.waiting + 1) * 1024 / s.max_size.max(1) + 1
}

/// `total` in `parts`: the first half of it (rounded up), the others the
/// rest as evenly as whole numbers go; each at least one.
fn split(total: usize, parts: usize) -> impl Iterator<Item = usize> {
    let first = if parts > 1 { total.div_ceil(2) } else { total };
    let (rest, others) = (total - first, parts.saturating_sub(1).max(1));
    std::iter::once(first)
        .chain(
            (0..parts.saturating_sub(1))
                .map(move |i| rest / others + usize::from(i < rest % others)),
        )
        .map(|n| n.max(1))
}

pub(super) type Pool<C> = deadpool::managed::Pool<Checked<C>>;

/// diesel-async's manager, verifying only connections idle past
/// [`VERIFY_AFTER`] (see the module's notes).
pub(super) struct Checked<C: diesel_async::AsyncConnection + 'static>(
    Arc<AsyncDieselConnectionManager<C>>,
);

impl<C> Manager for Checked<C>
where
    C: PoolableConnection + Send + 'static,
    AsyncDieselConnectionManager<C>: Manager<Type = C, Error = PoolError>,
{
    type Type = C;
    type Error = PoolError;

    async fn create(&self) -> Result<C, PoolError> {
        self.0.create().await
    }

    async fn recycle(&self, conn: &mut C, metrics: &Metrics) -> RecycleResult<PoolError> {
        if metrics.last_used() < VERIFY_AFTER && !conn.is_broken() {
            return Ok(());
        }
        self.0.recycle(conn, metrics).await
    }
}

pub(super) fn build(config: &DatabaseConfig, target: &DatabaseTarget) -> Result<Pools, StoreError> {
    match target {
        DatabaseTarget::Postgres(url) => {
            let connect_timeout = config.connect_timeout;
            let statement_ms = config.statement_timeout.as_millis();
            let mut manager_config = ManagerConfig::default();
            manager_config.custom_setup = Box::new(move |url: &str| {
                let url = url.to_owned();
                async move {
                    let mut conn =
                        tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(&url))
                            .await
                            .map_err(|_| {
                                ConnectionError::BadConnection(format!(
                                    "no connection within {connect_timeout:?}"
                                ))
                            })??;
                    conn.batch_execute(&format!("SET statement_timeout = {statement_ms}"))
                        .await
                        .map_err(ConnectionError::CouldntSetupConfiguration)?;
                    Ok(conn)
                }
                .boxed()
            });
            let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
                url.expose_secret(),
                manager_config,
            );
            let manager = Arc::new(manager);
            Shards::new(config.pool_size, |size| {
                pool_of(Arc::clone(&manager), size, config, QueueMode::Fifo)
            })
            .map(Pools::Postgres)
        }
        DatabaseTarget::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Setup(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let busy_ms = config.acquire_timeout.as_millis().max(1000);
            let mut manager_config = ManagerConfig::default();
            manager_config.custom_setup = Box::new(move |path: &str| {
                let path = path.to_owned();
                async move {
                    let mut conn =
                        SyncConnectionWrapper::<SqliteConnection>::establish(&path).await?;
                    // busy_timeout first: the journal_mode pragma itself
                    // takes a lock, and without a timeout a busy database
                    // fails the new connection at once.
                    conn.batch_execute(&format!(
                        "PRAGMA busy_timeout = {busy_ms}; PRAGMA journal_mode = WAL; \
                         PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
                         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
                    ))
                    .await
                    .map_err(ConnectionError::CouldntSetupConfiguration)?;
                    Ok(conn)
                }
                .boxed()
            });
            let manager = AsyncDieselConnectionManager::<SyncConnectionWrapper<SqliteConnection>>::new_with_config(
                path.display().to_string(),
                manager_config,
            );
            // The connection used last goes out first. Each SQLite
            // connection keeps its own page cache, which a write on any
            // other connection makes it drop and read again from the file;
            // handed out in turn, every connection's cache was cold at
            // every turn (a tenth of the host's CPU per turn, measured).
            pool_of(Arc::new(manager), config.pool_size, config, QueueMode::Lifo).map(Pools::Sqlite)
        }
    }
}

/// The pool around `manager`: its size and timeouts from `config`.
fn pool_of<C>(
    manager: Arc<AsyncDieselConnectionManager<C>>,
    size: usize,
    config: &DatabaseConfig,
    queue_mode: QueueMode,
) -> Result<Pool<C>, StoreError>
where
    C: PoolableConnection + Send + 'static,
    AsyncDieselConnectionManager<C>: Manager<Type = C, Error = PoolError>,
{
    Pool::builder(Checked(manager))
        .max_size(size)
        .queue_mode(queue_mode)
        .wait_timeout(Some(config.acquire_timeout))
        .create_timeout(Some(config.connect_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Setup(e.to_string()))
}

/// The pool's numbers at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub max: usize,
    pub in_use: usize,
    pub idle: usize,
    pub waiting: usize,
}

impl PoolSnapshot {
    fn utilisation(&self) -> f64 {
        if self.waiting > 0 {
            return 1.0;
        }
        self.in_use as f64 / self.max.max(1) as f64
    }
}

pub(super) fn snapshot(pools: &Pools) -> PoolSnapshot {
    let status = match pools {
        Pools::Postgres(p) => p.status(),
        Pools::Sqlite(p) => p.status(),
    };
    PoolSnapshot {
        max: status.max_size,
        in_use: status.size.saturating_sub(status.available),
        idle: status.available,
        waiting: status.waiting,
    }
}

/// The growth rule, fed one snapshot at a time.
#[derive(Debug)]
pub struct PoolGrowth {
    window: Duration,
    ceiling: usize,
    high_since: Option<Instant>,
}

impl PoolGrowth {
    pub fn new(window: Duration, ceiling: usize) -> Self {
        Self {
            window,
            ceiling,
            high_since: None,
        }
    }

    /// The new limit, when the pool should grow now.
    pub fn observe(&mut self, snap: PoolSnapshot, now: Instant) -> Option<usize> {
        if snap.utilisation() < HIGH_WATER || snap.max >= self.ceiling {
            self.high_since = None;
            return None;
        }
        let since = *self.high_since.get_or_insert(now);
        if now.duration_since(since) < self.window {
            return None;
        }
        self.high_since = None;
        Some((snap.max + snap.max.div_ceil(4)).min(self.ceiling))
    }
}

/// Watches the pool once a second: metrics, and growth. Stops when the
/// store is dropped.
pub(super) fn spawn_growth(pools: &Arc<Pools>, metrics: HostMetrics, config: &DatabaseConfig) {
    let pools: Weak<Pools> = Arc::downgrade(pools);
    metrics
        .db_pool_max_connections
        .set(i64::try_from(config.pool_max).unwrap_or(i64::MAX));
    let mut growth = PoolGrowth::new(config.pool_grow_window, config.pool_max);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(pools) = pools.upgrade() else { return };
            let snap = snapshot(&pools);
            for (state, value) in [
                ("in_use", snap.in_use),
                ("idle", snap.idle),
                ("max", snap.max),
            ] {
                metrics
                    .db_pool_connections
                    .with_label_values(&[state])
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
            if let Some(to) = growth.observe(snap, Instant::now()) {
                warn!(
                    from = snap.max,
                    to,
                    in_use = snap.in_use,
                    waiting = snap.waiting,
                    "database pool busy; growing it"
                );
                match &*pools {
                    Pools::Postgres(p) => p.resize(to),
                    Pools::Sqlite(p) => p.resize(to),
                }
                info!(max = to, "database pool resized");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(max: usize, in_use: usize, waiting: usize) -> PoolSnapshot {
        PoolSnapshot {
            max,
            in_use,
            idle: max - in_use,
            waiting,
        }
    }

    #[test]
    fn grows_by_a_quarter_after_a_busy_window() {
        let mut g = PoolGrowth::new(Duration::from_secs(10), 40);
        let t0 = Instant::now();
        assert_eq!(g.observe(snap(20, 16, 0), t0), None);
        assert_eq!(
            g.observe(snap(20, 17, 0), t0 + Duration::from_secs(5)),
            None
        );
        assert_eq!(
            g.observe(snap(20, 16, 0), t0 + Duration::from_secs(10)),
            Some(25)
        );
    }

    #[test]
    fn a_quiet_moment_restarts_the_window() {
        let mut g = PoolGrowth::new(Duration::from_secs(10), 40);
        let t0 = Instant::now();
        g.observe(snap(20, 18, 0), t0);
        g.observe(snap(20, 5, 0), t0 + Duration::from_secs(6));
        assert_eq!(
            g.observe(snap(20, 18, 0), t0 + Duration::from_secs(11)),
            None
        );
    }

    #[test]
    fn waiters_count_as_full_and_growth_stops_at_the_ceiling() {
        let mut g = PoolGrowth::new(Duration::ZERO, 40);
        let t0 = Instant::now();
        assert_eq!(g.observe(snap(36, 10, 3), t0), Some(40));
        assert_eq!(g.observe(snap(40, 40, 9), t0), None);
    }

    #[test]
    fn a_split_gives_the_first_half_and_the_others_the_rest() {
        assert_eq!(split(20, 3).collect::<Vec<_>>(), [10, 5, 5]);
        assert_eq!(split(41, 3).collect::<Vec<_>>(), [21, 10, 10]);
        assert_eq!(split(2, 2).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(split(7, 1).collect::<Vec<_>>(), [7]);
    }

    /// Hands out numbers instead of connections.
    struct Numbers;

    impl Manager for Numbers {
        type Type = u32;
        type Error = std::convert::Infallible;

        async fn create(&self) -> Result<u32, Self::Error> {
            Ok(0)
        }

        async fn recycle(&self, _: &mut u32, _: &Metrics) -> RecycleResult<Self::Error> {
            Ok(())
        }
    }

    fn shards(size: usize) -> Shards<Numbers> {
        Shards::new(size, |size| {
            deadpool::managed::Pool::builder(Numbers)
                .max_size(size)
                .build()
                .map_err(|e| StoreError::Setup(e.to_string()))
        })
        .expect("shards")
    }

    #[test]
    fn the_builder_keeps_the_large_shard_and_other_threads_take_the_rest() {
        let pool = shards(20);
        assert_eq!(pool.status().max_size, 20);
        assert_eq!(shards(1).status().max_size, 1, "one shard of one");
        let pool_first: *const _ = &pool.shards[0];
        assert!(std::ptr::eq(pool.local(), pool_first), "the builder's");
        assert!(std::ptr::eq(pool.local(), pool_first), "and kept");
        let theirs = std::thread::scope(|s| {
            s.spawn(|| {
                (
                    pool.local() as *const _ as usize,
                    pool.local() as *const _ as usize,
                )
            })
            .join()
            .expect("thread")
        });
        assert_eq!(theirs.0, theirs.1, "another thread keeps its shard too");
        assert_ne!(theirs.0, pool_first as usize, "and it is not the builder's");
        pool.resize(41);
        assert_eq!(pool.status().max_size, 41);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_shard_borrows_from_the_others_before_it_waits() {
        let pool = shards(4);
        let mine = pool.local().status().max_size;
        assert!(mine < 4, "more than one shard");
        let mut held = Vec::new();
        for _ in 0..4 {
            let got = tokio::time::timeout(Duration::from_secs(5), pool.get()).await;
            held.push(got.expect("no wait").expect("a connection"));
        }
        assert_eq!(pool.status().size, 4, "every shard's share in use");
        assert_eq!(pool.local().status().size, mine, "this thread's own first");
        held.pop();
        let again = tokio::time::timeout(Duration::from_secs(5), pool.get()).await;
        assert!(matches!(again, Ok(Ok(_))), "the one given back is found");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_every_shard_full_a_checkout_waits_where_the_queue_is_shortest() {
        let pool = Arc::new(shards(4));
        let mut held = Vec::new();
        for _ in 0..4 {
            let got = tokio::time::timeout(Duration::from_secs(5), pool.get()).await;
            held.push(got.expect("no wait").expect("a connection"));
        }
        // This thread's shard has two, the others one each: two waiters
        // queue here (a queue of one and of two for two connections), the
        // third at another shard (one for one) rather than third here.
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let pool = Arc::clone(&pool);
            waiters.push(tokio::spawn(async move { pool.get().await.map(drop) }));
            tokio::task::yield_now().await;
        }
        let queues: Vec<usize> = pool.shards.iter().map(|s| s.status().waiting).collect();
        assert_eq!(queues[0], 2, "{queues:?}");
        assert_eq!(queues.iter().sum::<usize>(), 3, "{queues:?}");
        drop(held);
        for w in waiters {
            let served = tokio::time::timeout(Duration::from_secs(5), w).await;
            assert!(matches!(served, Ok(Ok(Ok(())))), "every waiter is served");
        }
    }
}
