//! What `bothost check-config` asks of a database, changing nothing: can it
//! be written, how many connections it allows, whether it has an admin.
//!
//! It never creates a database or a table (a SQLite file that does not
//! exist yet is the caller's to report, before calling here).

use diesel::sql_types::{BigInt, Bool};
use diesel::{Connection, QueryableByName, SqliteConnection};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use secrecy::ExposeSecret;

use super::error::StoreError;
use crate::config::DatabaseTarget;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Why writes would fail (a standby, a read-only file), if they would.
    pub read_only: Option<String>,
    /// PostgreSQL: `max_connections` less the superuser reserve.
    pub connection_limit: Option<i64>,
    /// Admin users; `None` before the schema exists.
    pub admins: Option<i64>,
}

#[derive(QueryableByName)]
struct PgFacts {
    #[diesel(sql_type = Bool)]
    recovery: bool,
    #[diesel(sql_type = Bool)]
    read_only: bool,
    #[diesel(sql_type = BigInt)]
    limit: i64,
    #[diesel(sql_type = Bool)]
    has_users: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const ADMINS: &str = "SELECT count(*) AS n FROM users WHERE role = 'admin'";

pub async fn inspect(target: &DatabaseTarget) -> Result<Inspection, StoreError> {
    match target {
        DatabaseTarget::Postgres(url) => {
            let mut conn = AsyncPgConnection::establish(url.expose_secret())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let facts: PgFacts = diesel::sql_query(
                "SELECT pg_is_in_recovery() AS recovery, \
                 current_setting('transaction_read_only') = 'on' AS read_only, \
                 current_setting('max_connections')::bigint \
                   - current_setting('superuser_reserved_connections')::bigint AS limit, \
                 to_regclass('users') IS NOT NULL AS has_users",
            )
            .get_result(&mut conn)
            .await?;
            let admins = if facts.has_users {
                let c: Count = diesel::sql_query(ADMINS).get_result(&mut conn).await?;
                Some(c.n)
            } else {
                None
            };
            let read_only = if facts.recovery {
                Some("the server is a standby (in recovery): writes go to the primary".into())
            } else if facts.read_only {
                Some("default_transaction_read_only is on for this user or database".into())
            } else {
                None
            };
            Ok(Inspection {
                read_only,
                connection_limit: Some(facts.limit),
                admins,
            })
        }
        DatabaseTarget::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                use diesel::connection::SimpleConnection;
                let at = |e: &dyn std::fmt::Display| {
                    StoreError::Setup(format!("{}: {e}", path.display()))
                };
                let mut conn =
                    SqliteConnection::establish(&path.display().to_string()).map_err(|e| at(&e))?;
                conn.batch_execute("PRAGMA busy_timeout = 5000;")
                    .map_err(|e| at(&e))?;
                // Takes the write lock and gives it back: what a write needs.
                let read_only = conn
                    .batch_execute("BEGIN IMMEDIATE; ROLLBACK;")
                    .err()
                    .map(|e| e.to_string());
                let admins =
                    diesel::RunQueryDsl::get_result::<Count>(diesel::sql_query(ADMINS), &mut conn)
                        .ok()
                        .map(|c| c.n);
                Ok(Inspection {
                    read_only,
                    connection_limit: None,
                    admins,
                })
            })
            .await
            .map_err(|e| StoreError::Setup(format!("the database task failed: {e}")))?
        }
    }
}
