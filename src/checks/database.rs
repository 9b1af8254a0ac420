//! The checks that need the database: reachable, migrations current,
//! writable (with disk space for SQLite), the pool against the server's
//! connection limit, and an admin user.

use std::path::Path;

use super::report::{can_write, nearest_existing, Check};
use crate::config::{Config, DatabaseTarget};
use crate::store::inspect::{inspect, Inspection};
use crate::store::{migration_status, MigrationStatus};

/// Below this much free space for a SQLite database: FAIL.
const DISK_FAIL: u64 = 100 * 1000 * 1000;
/// Below this: WARN.
const DISK_WARN: u64 = 1000 * 1000 * 1000;

/// The database checks; `pool_size` and `admin_user` go later in the report.
pub struct DatabaseChecks {
    pub checks: Vec<Check>,
    pub pool_size: Check,
    pub admin_user: Check,
}

pub async fn check(config: &Config) -> DatabaseChecks {
    let target = match config.database_target() {
        Ok(t) => t,
        Err(e) => return unreachable_db(config, &e),
    };
    let timeout = config.database.connect_timeout;
    if let DatabaseTarget::Sqlite(path) = &target {
        if !path.exists() {
            return DatabaseChecks {
                checks: vec![
                    Check::pass(
                        "database",
                        format!(
                            "SQLite at {} does not exist yet: the first start creates it",
                            path.display()
                        ),
                    ),
                    Check::pass("migrations", "a new database: the first start applies all"),
                    sqlite_space(path, None),
                ],
                pool_size: pool_size(config, None),
                admin_user: admin_user(None),
            };
        }
    }
    let inspection = match tokio::time::timeout(timeout, inspect(&target)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return unreachable_db(config, &format!("{e}")),
        Err(_) => {
            return unreachable_db(
                config,
                &format!(
                    "no answer within database.connect_timeout ({})",
                    humantime::format_duration(timeout)
                ),
            )
        }
    };
    let migrations = match migration_status(&target).await {
        Ok(m) => migrations_check(&m),
        Err(e) => Check::fail(
            "migrations",
            format!("cannot read the applied migrations: {e}"),
        ),
    };
    let database = match &target {
        DatabaseTarget::Sqlite(path) => match readable_by_others(path) {
            Some(mode) => Check::warn(
                "database",
                format!(
                    "{} is mode {mode:o}: other users can read every conversation; \
                     `chmod 600` it (and its -wal and -shm files)",
                    path.display()
                ),
            ),
            None => Check::pass(
                "database",
                format!("SQLite at {}, readable by its owner only", path.display()),
            ),
        },
        DatabaseTarget::Postgres(_) => Check::pass("database", "PostgreSQL answers (database.url)"),
    };
    DatabaseChecks {
        checks: vec![database, migrations, writable_check(&target, &inspection)],
        pool_size: pool_size(config, inspection.connection_limit),
        admin_user: admin_user(inspection.admins),
    }
}

fn writable_check(target: &DatabaseTarget, inspection: &Inspection) -> Check {
    match (target, &inspection.read_only) {
        (_, Some(why)) => Check::fail(
            "database_writable",
            format!("writes would fail: {why}; point database.url at a writable database"),
        ),
        (DatabaseTarget::Sqlite(path), None) => sqlite_space(path, Some(inspection)),
        (DatabaseTarget::Postgres(_), None) => Check::pass(
            "database_writable",
            "the server takes writes (not a standby)",
        ),
    }
}

/// The file's mode, when users other than its owner may read it.
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

fn unreachable_db(config: &Config, why: &str) -> DatabaseChecks {
    let skipped = |name| Check::fail(name, "not checked: the database cannot be reached");
    DatabaseChecks {
        checks: vec![
            Check::fail(
                "database",
                format!("cannot reach database.url: {why}; is the server up, and the URL right?"),
            ),
            skipped("migrations"),
            skipped("database_writable"),
        ],
        pool_size: pool_size(config, None),
        admin_user: admin_user(None),
    }
}

pub fn migrations_check(m: &MigrationStatus) -> Check {
    if !m.unknown.is_empty() {
        return Check::fail(
            "migrations",
            format!(
                "the database has migrations this build does not know ({}): a newer bothost \
                 ran on it; deploy that version, or roll the database back first",
                m.unknown.join(", ")
            ),
        );
    }
    if m.applied.is_empty() {
        return Check::pass(
            "migrations",
            "an empty database: the first start applies all",
        );
    }
    if !m.pending.is_empty() {
        return Check::warn(
            "migrations",
            format!(
                "{} pending ({}): `bothost migrate` (or the next start) applies them; \
                 back up first",
                m.pending.len(),
                m.pending.join(", ")
            ),
        );
    }
    Check::pass(
        "migrations",
        format!("current ({} applied)", m.applied.len()),
    )
}

fn sqlite_space(path: &Path, inspection: Option<&Inspection>) -> Check {
    let dir = nearest_existing(path.parent().unwrap_or(path));
    let free = match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()),
        Err(e) => {
            return Check::fail(
                "database_writable",
                format!("cannot read the free space of {}: {e}", dir.display()),
            )
        }
    };
    if !can_write(dir) && inspection.is_none() {
        return Check::fail(
            "database_writable",
            format!(
                "{} is not writable by this user: the database cannot be created",
                dir.display()
            ),
        );
    }
    let free_text = bytesize::ByteSize::b(free).display().si().to_string();
    space_verdict(free, &format!("{free_text} free on {}", dir.display()))
}

pub fn space_verdict(free: u64, what: &str) -> Check {
    if free < DISK_FAIL {
        Check::fail(
            "database_writable",
            format!("only {what}: free space, or move database.url"),
        )
    } else if free < DISK_WARN {
        Check::warn("database_writable", format!("{what}: under 1 GB left"))
    } else {
        Check::pass("database_writable", format!("writable; {what}"))
    }
}

/// `pool_size ≤ pool_max` is validated at load; here the server's limit.
pub fn pool_size(config: &Config, limit: Option<i64>) -> Check {
    let db = &config.database;
    let sizes = format!("pool_size {} / pool_max {}", db.pool_size, db.pool_max);
    match limit {
        Some(limit) if i64::try_from(db.pool_max).unwrap_or(i64::MAX) >= limit => Check::fail(
            "pool_size",
            format!(
                "{sizes}, but the server allows {limit} connections (max_connections less the \
                 superuser reserve): lower database.pool_max, with room for every host"
            ),
        ),
        Some(limit) if db.pool_max as f64 > limit as f64 * 0.5 => Check::warn(
            "pool_size",
            format!(
                "{sizes} is over half of the server's {limit} connections: a second host \
                 would not fit"
            ),
        ),
        Some(limit) => Check::pass("pool_size", format!("{sizes}, within the server's {limit}")),
        None => Check::pass("pool_size", sizes),
    }
}

pub fn admin_user(admins: Option<i64>) -> Check {
    match admins {
        Some(n) if n > 0 => Check::pass("admin_user", format!("{n} admin user(s)")),
        _ => Check::warn(
            "admin_user",
            "no admin user: nobody can restart bots from the web; \
             `bothost user add NAME --admin`",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::report::Status;

    #[test]
    fn unknown_migrations_fail_and_pending_ones_warn() {
        let m = |applied: &[&str], pending: &[&str], unknown: &[&str]| MigrationStatus {
            applied: applied.iter().map(|s| s.to_string()).collect(),
            pending: pending.iter().map(|s| s.to_string()).collect(),
            unknown: unknown.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(migrations_check(&m(&["1"], &[], &[])).status, Status::Pass);
        assert_eq!(
            migrations_check(&m(&["1"], &["2"], &[])).status,
            Status::Warn
        );
        assert_eq!(
            migrations_check(&m(&["1", "9"], &[], &["9"])).status,
            Status::Fail
        );
    }

    #[test]
    fn free_space_floors() {
        assert_eq!(space_verdict(50_000_000, "x").status, Status::Fail);
        assert_eq!(space_verdict(500_000_000, "x").status, Status::Warn);
        assert_eq!(space_verdict(5_000_000_000, "x").status, Status::Pass);
    }
}
