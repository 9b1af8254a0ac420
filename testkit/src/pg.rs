//! Throwaway PostgreSQL schemas: each test or benchmark run gets a schema of
//! its own on the shared database (`search_path` set in the URL), so runs
//! never see each other's rows and can run in parallel.

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// The database the tests use: `BOTHOST_TEST_DATABASE_URL`. Unset, the
/// PostgreSQL half of a test is skipped with a message, except under
/// `CI=true`, where it must run: then this panics.
pub fn test_database_url() -> Option<String> {
    match std::env::var("BOTHOST_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but BOTHOST_TEST_DATABASE_URL is not set: PostgreSQL tests must run")
        }
        _ => {
            eprintln!("BOTHOST_TEST_DATABASE_URL is not set: skipping the PostgreSQL half");
            None
        }
    }
}

/// The database the benchmarks may use: `BOTHOST_BENCH_DATABASE_URL`, else
/// `BOTHOST_TEST_DATABASE_URL`; `None` when neither is set.
pub fn bench_database_url() -> Option<String> {
    std::env::var("BOTHOST_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("BOTHOST_TEST_DATABASE_URL"))
        .ok()
        .filter(|url| !url.is_empty())
}

/// A schema of its own; [`PgSchema::drop_schema`] removes it.
pub struct PgSchema {
    base: String,
    pub name: String,
    /// The database URL with `search_path` set to this schema.
    pub url: String,
}

impl PgSchema {
    pub async fn create(base: &str, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", unique());
        let mut admin = AsyncPgConnection::establish(base).await?;
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok(Self {
            base: base.to_owned(),
            name,
            url,
        })
    }

    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        let mut admin = AsyncPgConnection::establish(&self.base).await?;
        admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await?;
        Ok(())
    }
}

/// A throwaway database of its own, for what works on a whole database
/// (`pg_dump`, `pg_restore`); [`PgDatabase::drop_database`] removes it.
pub struct PgDatabase {
    base: String,
    pub name: String,
    /// `base` with this database's name in place of its own.
    pub url: String,
}

impl PgDatabase {
    pub async fn create(base: &str, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", unique());
        let mut admin = AsyncPgConnection::establish(base).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let (address, query) = base.split_once('?').unwrap_or((base, ""));
        let server = address
            .rsplit_once('/')
            .map_or(address, |(server, _)| server);
        let url = if query.is_empty() {
            format!("{server}/{name}")
        } else {
            format!("{server}/{name}?{query}")
        };
        Ok(Self {
            base: base.to_owned(),
            name,
            url,
        })
    }

    pub async fn drop_database(&self) -> anyhow::Result<()> {
        let mut admin = AsyncPgConnection::establish(&self.base).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

/// Unique across processes and within one: time, pid and a counter.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}{:x}{n:x}", std::process::id())
}
