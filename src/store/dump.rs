//! Whole-database copies, for backups and restores: a consistent copy of a
//! live database into one file, and that file back into a database.
//!
//! - SQLite: `VACUUM INTO` writes a consistent copy from one read
//!   transaction while the host goes on writing (WAL mode); the copy is a
//!   plain database file. Restoring puts it in place of the database file.
//! - PostgreSQL: `pg_dump --format=custom` inside a snapshot this module
//!   exports (`pg_export_snapshot`), so the row counts it reports are those
//!   of the very data dumped. Restoring is `pg_restore` into the configured
//!   database.
//!
//! The database URL's password reaches `pg_dump`/`pg_restore` through
//! their environment (`PGPASSWORD`), never their command line, which any
//! local user can read in `/proc`. It never decides where backups live or
//! which to keep (that is `crate::backup`), and never restores over data
//! unless told to (`replace`).

use std::path::{Path, PathBuf};

use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, QueryableByName, SqliteConnection};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::error::StoreError;
use crate::config::DatabaseTarget;

/// Rows per table: what a backup holds, and what a restore must give back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, QueryableByName)]
pub struct RowCounts {
    #[diesel(sql_type = BigInt)]
    pub users: i64,
    #[diesel(sql_type = BigInt)]
    pub conversations: i64,
    #[diesel(sql_type = BigInt)]
    pub messages: i64,
}

/// A database's contents in brief: its rows and its newest migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub rows: RowCounts,
    pub schema_version: String,
}

const COUNTS: &str = "SELECT (SELECT count(*) FROM users) AS users, \
     (SELECT count(*) FROM conversations) AS conversations, \
     (SELECT count(*) FROM messages) AS messages";
const VERSION: &str =
    "SELECT COALESCE(max(version), '') AS version FROM __diesel_schema_migrations";

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

#[derive(QueryableByName)]
struct Snapshot {
    #[diesel(sql_type = Text)]
    snapshot: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Copies the whole database into `dest` (which must not exist) and says
/// what the copy holds.
pub async fn dump(
    target: &DatabaseTarget,
    pg_bin: Option<&Path>,
    dest: &Path,
) -> Result<Contents, StoreError> {
    match target {
        DatabaseTarget::Sqlite(path) => {
            let (path, dest) = (path.clone(), dest.to_owned());
            blocking(move || sqlite_dump(&path, &dest)).await
        }
        DatabaseTarget::Postgres(url) => {
            let url = url.expose_secret();
            let mut conn = AsyncPgConnection::establish(url)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await?;
            let snapshot: Snapshot = diesel::sql_query("SELECT pg_export_snapshot() AS snapshot")
                .get_result(&mut conn)
                .await?;
            let rows: RowCounts = diesel::sql_query(COUNTS).get_result(&mut conn).await?;
            let version: Version = diesel::sql_query(VERSION).get_result(&mut conn).await?;
            run_pg_tool(
                pg_bin,
                "pg_dump",
                url,
                &[
                    "--format=custom".into(),
                    "--no-owner".into(),
                    "--no-privileges".into(),
                    format!("--snapshot={}", snapshot.snapshot),
                    format!("--file={}", dest.display()),
                ],
            )
            .await?;
            conn.batch_execute("COMMIT").await?;
            Ok(Contents {
                rows,
                schema_version: version.version,
            })
        }
    }
}

/// Puts a copy made by [`dump`] back as the database. Refuses a database
/// that already holds data unless `replace`.
pub async fn load(
    target: &DatabaseTarget,
    pg_bin: Option<&Path>,
    file: &Path,
    replace: bool,
) -> Result<(), StoreError> {
    match target {
        DatabaseTarget::Sqlite(path) => {
            let occupied = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
            if occupied && !replace {
                return Err(StoreError::Conflict(format!(
                    "{} already exists; restore into a new file, or replace it with --force",
                    path.display()
                )));
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
            }
            let staging = with_suffix(path, ".restoring");
            std::fs::copy(file, &staging).map_err(|e| io(&staging, &e))?;
            std::fs::set_permissions(
                &staging,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .map_err(|e| io(&staging, &e))?;
            // The old file's write-ahead log belongs to the old data.
            for stale in [with_suffix(path, "-wal"), with_suffix(path, "-shm")] {
                let _ = std::fs::remove_file(stale);
            }
            std::fs::rename(&staging, path).map_err(|e| io(path, &e))
        }
        DatabaseTarget::Postgres(url) => {
            let url = url.expose_secret();
            let mut conn = AsyncPgConnection::establish(url)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let tables: Count = diesel::sql_query(
                "SELECT count(*) AS n FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
            )
            .get_result(&mut conn)
            .await?;
            if tables.n > 0 && !replace {
                return Err(StoreError::Conflict(format!(
                    "the database already holds {} tables; restore into an empty database, \
                     or replace its contents with --force",
                    tables.n
                )));
            }
            let mut args = vec![
                "--no-owner".to_owned(),
                "--no-privileges".to_owned(),
                "--exit-on-error".to_owned(),
                "--single-transaction".to_owned(),
            ];
            if replace {
                args.extend(["--clean".to_owned(), "--if-exists".to_owned()]);
            }
            // pg_restore wants a database named; the name is no secret.
            if let Some((_, name)) = pg_env(url)?.into_iter().find(|(k, _)| *k == "PGDATABASE") {
                args.push(format!("--dbname={name}"));
            }
            args.push(file.display().to_string());
            run_pg_tool(pg_bin, "pg_restore", url, &args).await
        }
    }
}

/// What the database holds now.
pub async fn contents(target: &DatabaseTarget) -> Result<Contents, StoreError> {
    match target {
        DatabaseTarget::Sqlite(path) => {
            let path = path.clone();
            blocking(move || sqlite_contents(&mut open_sqlite(&path)?)).await
        }
        DatabaseTarget::Postgres(url) => {
            let mut conn = AsyncPgConnection::establish(url.expose_secret())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let rows: RowCounts = diesel::sql_query(COUNTS).get_result(&mut conn).await?;
            let version: Version = diesel::sql_query(VERSION).get_result(&mut conn).await?;
            Ok(Contents {
                rows,
                schema_version: version.version,
            })
        }
    }
}

fn sqlite_dump(path: &Path, dest: &Path) -> Result<Contents, StoreError> {
    let into = dest
        .to_str()
        .ok_or_else(|| StoreError::Setup(format!("{} is not valid UTF-8", dest.display())))?;
    let vacuum = diesel::sql_query("VACUUM INTO ?").bind::<Text, _>(into);
    diesel::RunQueryDsl::execute(vacuum, &mut open_sqlite(path)?)?;
    sqlite_contents(&mut open_sqlite(dest)?)
}

fn sqlite_contents(conn: &mut SqliteConnection) -> Result<Contents, StoreError> {
    let rows: RowCounts = diesel::RunQueryDsl::get_result(diesel::sql_query(COUNTS), conn)?;
    let version: Version = diesel::RunQueryDsl::get_result(diesel::sql_query(VERSION), conn)?;
    Ok(Contents {
        rows,
        schema_version: version.version,
    })
}

fn open_sqlite(path: &Path) -> Result<SqliteConnection, StoreError> {
    let mut conn = SqliteConnection::establish(&path.display().to_string())
        .map_err(|e| StoreError::Setup(format!("{}: {e}", path.display())))?;
    // The host may hold the write lock for a moment: wait, do not fail.
    diesel::connection::SimpleConnection::batch_execute(&mut conn, "PRAGMA busy_timeout = 5000;")?;
    Ok(conn)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Setup(format!("the database task failed: {e}")))?
}

/// Runs `pg_dump` or `pg_restore` against `url`, the connection given in
/// `PG*` variables of an otherwise empty environment (the host's own holds
/// secrets these tools have no business with).
async fn run_pg_tool(
    bin_dir: Option<&Path>,
    tool: &str,
    url: &str,
    args: &[String],
) -> Result<(), StoreError> {
    let program = bin_dir.map_or_else(|| PathBuf::from(tool), |d| d.join(tool));
    let mut command = tokio::process::Command::new(&program);
    command.env_clear().args(args);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    for (key, value) in pg_env(url)? {
        command.env(key, value);
    }
    let output = command
        .output()
        .await
        .map_err(|e| StoreError::Setup(format!("cannot run {}: {e}", program.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(StoreError::Setup(format!(
        "{tool} failed ({}): {}",
        output.status,
        stderr.trim()
    )))
}

/// libpq's environment variables for a `postgres://` URL.
pub fn pg_env(url: &str) -> Result<Vec<(&'static str, String)>, StoreError> {
    let bad = |why: &str| StoreError::Setup(format!("database.url: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut env = Vec::new();
    if let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) {
        env.push(("PGHOST", host.trim_matches(['[', ']']).to_owned()));
    }
    if let Some(port) = parsed.port() {
        env.push(("PGPORT", port.to_string()));
    }
    if !parsed.username().is_empty() {
        env.push(("PGUSER", decode(parsed.username())));
    }
    if let Some(password) = parsed.password() {
        env.push(("PGPASSWORD", decode(password)));
    }
    let database = parsed.path().trim_start_matches('/');
    if database.is_empty() {
        return Err(bad("names no database"));
    }
    env.push(("PGDATABASE", decode(database)));
    for (key, value) in parsed.query_pairs() {
        let var = match &*key {
            "host" => "PGHOST",
            "port" => "PGPORT",
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "application_name" => "PGAPPNAME",
            _ => continue,
        };
        env.push((var, value.into_owned()));
    }
    Ok(env)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn io(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Setup(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_goes_to_the_environment_decoded() {
        let env = pg_env("postgres://bot%40x:p%2Fss@db.internal:6543/chat?sslmode=require")
            .expect("valid");
        let get = |k| {
            env.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PGHOST"), Some("db.internal"));
        assert_eq!(get("PGPORT"), Some("6543"));
        assert_eq!(get("PGUSER"), Some("bot@x"));
        assert_eq!(get("PGPASSWORD"), Some("p/ss"));
        assert_eq!(get("PGDATABASE"), Some("chat"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
    }

    #[test]
    fn a_url_without_a_database_is_refused() {
        assert!(pg_env("postgres://localhost").is_err());
    }
}
