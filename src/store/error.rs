//! The store's errors, classified once: what a caller can do about each
//! (retry later, report a conflict, say "not found") decides the variant.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or has no free connection: retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// The user has `max` turns in flight on the fleet's hosts already:
    /// the new message was not stored.
    #[error("{max} turns in flight already")]
    TurnsInFlight { max: u32 },
    #[error("database error: {0}")]
    Query(DieselError),
    #[error("cannot prepare the database: {0}")]
    Setup(String),
}

impl From<DieselError> for StoreError {
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::NotFound => StoreError::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_owned())
            }
            // What the row refers to is gone (a message for a conversation
            // deleted meanwhile).
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                StoreError::NotFound
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
            | DieselError::BrokenTransactionManager => StoreError::Unavailable(e.to_string()),
            DieselError::DatabaseError(_, info) if is_connection_loss(info.message()) => {
                StoreError::Unavailable(e.to_string())
            }
            // Nothing can be written until the operator frees space: to a
            // user that is "not now", like a database that is down.
            DieselError::DatabaseError(_, info) if is_disk_full(info.message()) => {
                StoreError::Unavailable(format!("the database's disk is full ({e})"))
            }
            _ => StoreError::Query(e),
        }
    }
}

/// tokio-postgres reports a dead server as an unclassified error; these are
/// its words for it (and PostgreSQL's for a cancelled statement).
fn is_connection_loss(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "connection closed",
        "connection reset",
        "connection refused",
        "broken pipe",
        "canceling statement due to statement timeout",
        "terminating connection",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// SQLite's and PostgreSQL's words for a full disk.
fn is_disk_full(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("database or disk is full") || m.contains("no space left on device")
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        StoreError::Unavailable(match e {
            PoolError::Timeout(_) => "no database connection became free in time".to_owned(),
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool::managed::TimeoutType;

    #[test]
    fn a_pool_that_stays_busy_is_unavailable_not_a_query_error() {
        let e = StoreError::from(PoolError::Timeout(TimeoutType::Wait));
        assert_eq!(
            e.to_string(),
            "the database is unavailable: no database connection became free in time"
        );
    }

    #[test]
    fn lost_connections_and_cancelled_statements_are_unavailable() {
        for message in [
            "connection closed",
            "ERROR: canceling statement due to statement timeout",
            "FATAL: terminating connection due to administrator command",
        ] {
            let info: Box<dyn diesel::result::DatabaseErrorInformation + Send + Sync> =
                Box::new(message.to_owned());
            let e = StoreError::from(DieselError::DatabaseError(DatabaseErrorKind::Unknown, info));
            assert!(matches!(e, StoreError::Unavailable(_)), "{message}: {e:?}");
        }
    }

    #[test]
    fn a_full_disk_is_unavailable_on_either_backend() {
        for message in [
            "database or disk is full",
            "could not extend file \"base/16384/2619\": No space left on device",
        ] {
            let info: Box<dyn diesel::result::DatabaseErrorInformation + Send + Sync> =
                Box::new(message.to_owned());
            let e = StoreError::from(DieselError::DatabaseError(DatabaseErrorKind::Unknown, info));
            assert!(e.to_string().contains("disk is full"), "{message}: {e:?}");
            assert!(matches!(e, StoreError::Unavailable(_)), "{message}: {e:?}");
        }
    }

    #[test]
    fn a_unique_violation_is_a_conflict() {
        let info: Box<dyn diesel::result::DatabaseErrorInformation + Send + Sync> =
            Box::new("duplicate key".to_owned());
        let e = StoreError::from(DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            info,
        ));
        assert!(matches!(e, StoreError::Conflict(_)));
    }
}
