//! Stores for tests, on both backends: SQLite in a temporary directory, and
//! PostgreSQL at `BOTHOST_TEST_DATABASE_URL` in a schema of its own, so
//! tests run in parallel. Without that variable the PostgreSQL half is
//! skipped with a message, except under CI, where it must run.

use bothost::config::{DatabaseConfig, DatabaseTarget, Secret};
use bothost::metrics::Metrics;
use bothost::store::{self, Store};
use bothost_testkit::PgSchema;
use secrecy::ExposeSecret;

pub struct TestDb {
    pub store: Store,
    pub target: DatabaseTarget,
    pub metrics: Metrics,
    _sqlite_dir: Option<tempfile::TempDir>,
    pg_schema: Option<PgSchema>,
}

pub use bothost_testkit::test_database_url as pg_base_url;

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
    let schema = PgSchema::create(base, "t").await.expect("create schema");
    let target = DatabaseTarget::Postgres(Secret::from(schema.url.clone()));
    open(target, config, None, Some(schema)).await
}

async fn open(
    target: DatabaseTarget,
    config: &DatabaseConfig,
    sqlite_dir: Option<tempfile::TempDir>,
    pg_schema: Option<PgSchema>,
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
        if let Some(schema) = &self.pg_schema {
            let _ = schema.drop_schema().await;
        }
    }
}
