//! Embedded migrations for both backends, run before anything listens.
//!
//! diesel's migration harness is synchronous: it runs on a blocking thread,
//! PostgreSQL through diesel-async's `AsyncConnectionWrapper` (no libpq),
//! SQLite through diesel's own connection.

use diesel::{Connection, SqliteConnection};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use secrecy::ExposeSecret;

use super::error::StoreError;
use crate::config::DatabaseTarget;

const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Runs `$body` on a blocking thread with `$conn`, a migration harness on
/// `$target`'s backend, and `$source`, a `fn()` giving that backend's
/// migrations; written once, expanded for each backend's connection type.
macro_rules! with_harness {
    ($target:expr, |$conn:ident, $source:ident| $body:expr) => {{
        let target = $target.clone();
        tokio::task::spawn_blocking(move || match target {
            DatabaseTarget::Postgres(url) => {
                let mut conn =
                    AsyncConnectionWrapper::<AsyncPgConnection>::establish(url.expose_secret())
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let ($conn, $source) = (&mut conn, || POSTGRES);
                $body
            }
            DatabaseTarget::Sqlite(path) => {
                let at = |e: &dyn std::fmt::Display| {
                    StoreError::Setup(format!("{}: {e}", path.display()))
                };
                let mut conn =
                    SqliteConnection::establish(&path.display().to_string()).map_err(|e| at(&e))?;
                // A host serving this file may hold its lock for a moment (a
                // new pooled connection setting WAL, a write): wait, do not fail.
                diesel::connection::SimpleConnection::batch_execute(
                    &mut conn,
                    "PRAGMA busy_timeout = 5000;",
                )
                .map_err(|e| at(&e))?;
                let ($conn, $source) = (&mut conn, || SQLITE);
                $body
            }
        })
        .await
        .map_err(|e| StoreError::Setup(format!("the migration task failed: {e}")))?
    }};
}

/// Applies pending migrations; returns the versions applied (empty when the
/// schema was current).
pub async fn migrate(target: &DatabaseTarget) -> Result<Vec<String>, StoreError> {
    if let DatabaseTarget::Sqlite(path) = target {
        create_private(path)?;
    }
    with_harness!(target, |conn, source| run(conn, source()))
}

/// Creates a new SQLite database's directory (0700) and file (0600) before
/// SQLite does: it would make them world-readable, and its `-wal` and
/// `-shm` files take the database file's mode. Existing ones are left as
/// they are (`check-config` warns when others can read them).
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |p: &std::path::Path, e: std::io::Error| {
        StoreError::Setup(format!("cannot create {}: {e}", p.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(path, e))?;
    Ok(())
}

/// Reverts every applied migration newer than `version` (which must be
/// applied), newest first, with its `down.sql`; returns the reverted ones.
pub async fn revert_to(target: &DatabaseTarget, version: &str) -> Result<Vec<String>, StoreError> {
    let version = version.to_owned();
    with_harness!(target, |conn, source| revert(conn, source, &version))
}

/// `migrations` makes the (const) source anew for each revert, which
/// consumes it.
fn revert<DB: diesel::backend::Backend>(
    conn: &mut impl MigrationHarness<DB>,
    migrations: fn() -> EmbeddedMigrations,
    version: &str,
) -> Result<Vec<String>, StoreError> {
    // Diesel records "2026-11-25-000001_init" as 20261125000001; take either.
    let version: &str = &version
        .split('_')
        .next()
        .unwrap_or(version)
        .replace('-', "");
    let before = applied_sorted(conn)?;
    if !before.iter().any(|v| v == version) {
        return Err(StoreError::Setup(format!(
            "migration {version} is not applied here; applied: {}",
            before.join(", ")
        )));
    }
    let mut reverted = Vec::new();
    while let Some(newest) = applied_sorted(conn)?.pop().filter(|v| v.as_str() > version) {
        conn.revert_last_migration(migrations())
            .map_err(|e| StoreError::Setup(format!("reverting {newest}: {e}")))?;
        reverted.push(newest);
    }
    Ok(reverted)
}

/// Applied versions, oldest first (the version strings sort by time).
fn applied_sorted<DB: diesel::backend::Backend>(
    conn: &mut impl MigrationHarness<DB>,
) -> Result<Vec<String>, StoreError> {
    let mut versions: Vec<String> = conn
        .applied_migrations()
        .map_err(|e| StoreError::Setup(e.to_string()))?
        .iter()
        .map(ToString::to_string)
        .collect();
    versions.sort();
    Ok(versions)
}

/// Migrations this build has that the database lacks, and ones the
/// database has that this build does not know (a newer build ran there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    pub applied: Vec<String>,
    pub pending: Vec<String>,
    pub unknown: Vec<String>,
}

/// Compares the database's migrations with this build's, changing nothing.
pub async fn migration_status(target: &DatabaseTarget) -> Result<MigrationStatus, StoreError> {
    with_harness!(target, |conn, source| status(conn, source()))
}

fn status<DB: diesel::backend::Backend>(
    conn: &mut impl MigrationHarness<DB>,
    migrations: EmbeddedMigrations,
) -> Result<MigrationStatus, StoreError> {
    let known: Vec<String> = diesel::migration::MigrationSource::<DB>::migrations(&migrations)
        .map_err(|e| StoreError::Setup(e.to_string()))?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    let applied = applied_sorted(conn)?;
    Ok(MigrationStatus {
        pending: known
            .iter()
            .filter(|v| !applied.contains(v))
            .cloned()
            .collect(),
        unknown: applied
            .iter()
            .filter(|v| !known.contains(v))
            .cloned()
            .collect(),
        applied,
    })
}

fn run<DB: diesel::backend::Backend>(
    conn: &mut impl MigrationHarness<DB>,
    migrations: EmbeddedMigrations,
) -> Result<Vec<String>, StoreError> {
    conn.run_pending_migrations(migrations)
        .map(|done| done.iter().map(ToString::to_string).collect())
        .map_err(|e| StoreError::Setup(format!("migration failed: {e}")))
}
