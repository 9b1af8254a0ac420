//! Backup and restore times: how long `bothost backup` and `bothost
//! restore` take on a database of a given size, on both backends. Prints
//! figures; asserts nothing.
//!
//! ```text
//! BOTHOST_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p bothost-bench --bin backup -- [TURNS]
//! ```
//!
//! A migrated database is filled with TURNS turns (default 100,000: a user
//! message and its reply each, ~100 bytes of text apiece, in 100
//! conversations) by bulk SQL, then backed up (SQLite `VACUUM INTO`;
//! PostgreSQL `pg_dump -Fc` in an exported snapshot), verified (SHA-256),
//! and restored into a fresh database (with its migrations check and row
//! count). PostgreSQL runs in throwaway databases when the variable above is
//! set (or `BOTHOST_TEST_DATABASE_URL`).

use std::time::Instant;

use bothost::backup;
use bothost::config::{Config, DatabaseTarget, Secret};
use bothost_bench::{bench_database_url, ms};
use bothost_testkit::PgDatabase;
use diesel::connection::SimpleConnection;
use diesel::Connection;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// Fills a migrated schema with `turns` turns. `series(n)` is a query of
/// the numbers 1..=n as column `i`, the one thing the backends say apart.
fn fill_sql(turns: u64, series: fn(u64) -> String) -> String {
    let now = 1_764_460_800_000u64;
    let (conversations, messages) = (series(100), series(turns));
    format!(
        "INSERT INTO users (id, username, password_hash, role, created_at) \
           VALUES (1, 'bench', 'x', 'user', {now});
         INSERT INTO conversations (id, owner_id, bot, title, created_at, updated_at)
           SELECT i, 1, 'helper', 'conversation ' || i, {now}, {now} FROM ({conversations}) AS s;
         INSERT INTO messages (id, conversation_id, role, content, status, client_msg_id,
                               reply_to, created_at, updated_at)
           SELECT 2 * i - 1, 1 + i % 100, 'user',
                  'a question of ordinary length, number ' || i || ', asked by a user of the bench',
                  'complete', 'c' || i, NULL, {now} + i, {now} + i
           FROM ({messages}) AS s;
         INSERT INTO messages (id, conversation_id, role, content, status, client_msg_id,
                               reply_to, created_at, updated_at)
           SELECT 2 * i, 1 + i % 100, 'assistant',
                  'an answer of ordinary length to question ' || i || ', streamed by a builtin bot',
                  'complete', NULL, 2 * i - 1, {now} + i, {now} + i
           FROM ({messages}) AS s;"
    )
}

fn sqlite_series(n: u64) -> String {
    format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n")
}

fn postgres_series(n: u64) -> String {
    format!("SELECT generate_series(1, {n}) AS i")
}

fn config(url: &str, dir: &std::path::Path) -> anyhow::Result<Config> {
    let text = format!(
        "[database]\nurl = \"{url}\"\n[supervisor]\nruntime_dir = \"{}\"\n\
         [backup]\ndir = \"{}\"\n[[bots]]\nname = \"helper\"\n",
        dir.join("run").display(),
        dir.join("backups").display()
    );
    Ok(Config::parse(&text, &dir.join("supervisor.toml"), [])?)
}

async fn measure(name: &str, source: &Config, target: &Config) -> anyhow::Result<()> {
    let backup = backup::create(source, None).await?;
    let started = Instant::now();
    backup::verify(&backup.path)?;
    let verified = started.elapsed();
    let restored = backup::restore(target, &backup.path, false).await?;
    println!(
        "| {name} | {} | {} | {} | {} | {} |",
        restored.rows.messages,
        bytesize(backup.manifest.bytes),
        ms(backup.took),
        ms(verified),
        ms(restored.took)
    );
    Ok(())
}

fn bytesize(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let turns: u64 = std::env::args().nth(1).map_or(Ok(100_000), |s| s.parse())?;
    println!("# backup and restore, {turns} turns\n");
    println!("| backend | messages | backup size | backup | verify | restore |");
    println!("|---|---|---|---|---|---|");

    let dir = tempfile::tempdir()?;
    let (live, fresh) = (dir.path().join("live.db"), dir.path().join("restored.db"));
    let source = config(&format!("sqlite://{}", live.display()), dir.path())?;
    bothost::store::migrate(&DatabaseTarget::Sqlite(live.clone())).await?;
    let mut conn = diesel::SqliteConnection::establish(&live.display().to_string())?;
    conn.batch_execute(&fill_sql(turns, sqlite_series))?;
    let target = config(
        &format!("sqlite://{}", fresh.display()),
        &dir.path().join("t"),
    )?;
    measure("SQLite", &source, &target).await?;

    if let Some(base) = bench_database_url() {
        let (src, dst) = (
            PgDatabase::create(&base, "bench_src").await?,
            PgDatabase::create(&base, "bench_dst").await?,
        );
        let result = async {
            let target_src = DatabaseTarget::Postgres(Secret::from(src.url.clone()));
            bothost::store::migrate(&target_src).await?;
            let mut pg = AsyncPgConnection::establish(&src.url).await?;
            pg.batch_execute(&fill_sql(turns, postgres_series)).await?;
            let pg_dir = dir.path().join("pg");
            measure(
                "PostgreSQL 15",
                &config(&src.url, &pg_dir)?,
                &config(&dst.url, &pg_dir.join("t"))?,
            )
            .await
        }
        .await;
        src.drop_database().await?;
        dst.drop_database().await?;
        result?;
    }
    Ok(())
}
