//! Store benchmark: turns persisted per second (a user message and its
//! reply, written as the chat path writes them) with 1, 20 and 100
//! concurrent writers, and latency of the two hottest reads: a history page
//! and the bot's context window. Prints figures; asserts nothing.
//!
//! ```text
//! BOTHOST_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p bothost-bench --bin store -- [SECONDS_PER_RUN]
//! ```
//!
//! SQLite always runs (in a temporary directory); PostgreSQL runs when
//! `BOTHOST_BENCH_DATABASE_URL` (or `BOTHOST_TEST_DATABASE_URL`) is set, in a
//! schema of its own that is dropped afterwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bothost::config::{DatabaseConfig, DatabaseTarget, Secret};
use bothost::metrics::Metrics;
use bothost::store::{self, NewReply, ReplyStatus, Store, UserRole};
use bothost_bench::{bench_database_url, ms, Percentiles, PgSchema};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let run = Duration::from_secs(seconds);
    println!("# bothost store benchmark ({seconds} s per run, 2 runtime threads)");

    let dir = tempfile::tempdir()?;
    bench(
        "SQLite (bundled, WAL)",
        DatabaseTarget::Sqlite(dir.path().join("bench.db")),
        run,
    )
    .await?;

    match bench_database_url() {
        Some(base) => {
            let schema = PgSchema::create(&base, "bench").await?;
            let result = bench(
                "PostgreSQL",
                DatabaseTarget::Postgres(Secret::from(schema.url.clone())),
                run,
            )
            .await;
            schema.drop_schema().await?;
            result?;
        }
        None => println!("\n(PostgreSQL skipped: set BOTHOST_BENCH_DATABASE_URL)"),
    }
    Ok(())
}

async fn bench(name: &str, target: DatabaseTarget, run: Duration) -> anyhow::Result<()> {
    store::migrate(&target).await?;
    println!("\n## {name}: turns persisted");
    println!("| writers | pool | turns | turns/s | turns/min | P50 turn | P99 turn |");
    println!("|---|---|---|---|---|---|---|");
    for writers in [1usize, 20, 100] {
        let config = DatabaseConfig {
            pool_size: 20,
            pool_max: 40,
            acquire_timeout: Duration::from_secs(10),
            ..DatabaseConfig::default()
        };
        let store = Store::connect(&config, &target, Metrics::new()?)?;
        let owner = store
            .create_user(&format!("writer-{writers}"), "h", UserRole::User)
            .await?
            .id;
        let (turns, mut latencies) = persist(&store, owner, writers, run).await?;
        let p = Percentiles::of(&mut latencies);
        let rate = turns as f64 / run.as_secs_f64();
        println!(
            "| {writers} | {} | {turns} | {rate:.0} | {:.0} | {} | {} |",
            store.pool_snapshot().max,
            rate * 60.0,
            ms(p.p50),
            ms(p.p99)
        );
    }

    let store = Store::connect(&DatabaseConfig::default(), &target, Metrics::new()?)?;
    let owner = store.create_user("reader", "h", UserRole::User).await?.id;
    let conv = store.create_conversation(owner, "helper", "").await?.id;
    for i in 0..1000 {
        let m = store
            .begin_user_turn(
                conv,
                &format!("r{i}"),
                "a question of some length",
                20,
                None,
                None,
            )
            .await?
            .message;
        store.append_reply(reply(conv, m.id)).await?;
    }
    let middle = store.history(conv, None, 100).await?.last().map(|m| m.id);
    println!("\n## {name}: reads on a 2,000-message conversation (2,000 runs each)");
    println!("| query | P50 | P95 | P99 |");
    println!("|---|---|---|---|");
    for (label, before, context) in [
        ("history page (latest 50)", None, false),
        ("history page (50 before an id)", middle, false),
        ("context window (last 20)", None, true),
    ] {
        let mut lat = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            if context {
                store.context(conv, 20).await?;
            } else {
                store.history(conv, before, 50).await?;
            }
            lat.push(t.elapsed());
        }
        let p = Percentiles::of(&mut lat);
        println!(
            "| {label} | {} | {} | {} |",
            ms(p.p50),
            ms(p.p95),
            ms(p.p99)
        );
    }
    Ok(())
}

fn reply(conversation_id: i64, reply_to: i64) -> NewReply<'static> {
    NewReply {
        conversation_id,
        reply_to,
        content: "Here is what I have. You said something, and this is a reply of ordinary length.",
        status: ReplyStatus::Complete,
        prompt_tokens: Some(12),
        completion_tokens: Some(16),
    }
}

/// `writers` tasks, each in its own conversation, store turns back to back
/// for `run`.
async fn persist(
    store: &Store,
    owner: i64,
    writers: usize,
    run: Duration,
) -> anyhow::Result<(u64, Vec<Duration>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let turns = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let conv = store.create_conversation(owner, "helper", "").await?.id;
        let (store, stop, turns) = (store.clone(), stop.clone(), turns.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                // A turn's writes, and its context read with the message.
                let m = store
                    .begin_user_turn(
                        conv,
                        &format!("{w}-{i}"),
                        "a question of some length",
                        20,
                        None,
                        None,
                    )
                    .await?
                    .message;
                store.append_reply(reply(conv, m.id)).await?;
                latencies.push(t.elapsed());
                turns.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, bothost::store::StoreError>(latencies)
        }));
    }
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((turns.load(Ordering::Relaxed), all))
}
