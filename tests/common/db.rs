//! Stores for tests, on both backends: SQLite in a temporary directory, and
//! PostgreSQL at `BOTHOST_TEST_DATABASE_URL` in a schema of its own, so
//! tests run in parallel. Without that variable the PostgreSQL half is
//! skipped with a message, except under CI, where it must run.

use bothost::config::{DatabaseConfig, DatabaseTarget, Secret};
use bothost::metrics::Metrics;
use bothost::store::{self, Store};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use secrecy::ExposeSecret;

pub struct TestDb {
    pub store: Store,
    pub target: DatabaseTarget,
    pub metrics: Metrics,
    _sqlite_dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

pub fn pg_base_url() -> Option<String> {
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

/// A fresh, migrated store on each available backend.
pub async fn backends(config: &DatabaseConfig) -> Vec<TestDb> {
    let mut dbs = vec![sqlite(config).await];
    if let Some(base) = pg_base_url() {
        dbs.push(postgres(&base, config).await);
    }
    dbs
}

pub async fn sqlite(config: &DatabaseConfig) -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = DatabaseTarget::Sqlite(dir.path().join("test.db"));
    open(target, config, Some(dir), None).await
}

pub async fn postgres(base: &str, config: &DatabaseConfig) -> TestDb {
    let schema = format!("t_{}", uuid_ish());
    let mut admin = AsyncPgConnection::establish(base)
        .await
        .expect("connect to the test database");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let target = DatabaseTarget::Postgres(Secret::from(url));
    open(target, config, None, Some((base.to_owned(), schema))).await
}

async fn open(
    target: DatabaseTarget,
    config: &DatabaseConfig,
    sqlite_dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
) -> TestDb {
    let applied = store::migrate(&target).await.expect("migrate");
    assert!(!applied.is_empty(), "migrations from empty apply something");
    let metrics = Metrics::new().expect("metrics");
    let store = Store::connect(config, &target, metrics.clone()).expect("connect");
    TestDb {
        store,
        target,
        metrics,
        _sqlite_dir: sqlite_dir,
        pg_schema,
    }
}

impl TestDb {
    /// `database.url` for a host on this database.
    pub fn url(&self) -> String {
        match &self.target {
            DatabaseTarget::Postgres(url) => url.expose_secret().to_owned(),
            DatabaseTarget::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// Drops the PostgreSQL schema (SQLite's directory goes with the value).
    pub async fn cleanup(self) {
        if let Some((base, schema)) = &self.pg_schema {
            if let Ok(mut admin) = AsyncPgConnection::establish(base).await {
                let _ = admin
                    .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await;
            }
        }
    }
}

fn uuid_ish() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", nanos, std::process::id())
}
