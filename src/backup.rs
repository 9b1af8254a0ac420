//! Backups of the chat store: where they go, what each one promises, which
//! are kept, and putting one back.
//!
//! A backup is two files in `backup.dir`:
//!
//! ```text
//!   bothost-20261130T031500.123Z.sqlite            (or .pgdump: pg_dump -Fc)
//!   bothost-20261130T031500.123Z.sqlite.manifest.json
//! ```
//!
//! The manifest says when, from which backend, at which schema version,
//! how many rows of each table, and the data file's SHA-256 and size. The
//! data file is written under a dot-name and renamed into place only once
//! complete, and the manifest is written last: a backup without a manifest
//! is unfinished and is neither listed nor restored.
//!
//! A restore verifies the checksum before it touches anything, refuses while
//! a host is serving (its control socket answers) or when the target
//! already holds data, unless forced, then applies pending migrations.
//!
//! The database work itself (a consistent copy of a live database, and
//! loading one) is `store::dump`; this module never runs SQL.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{error, info};

use crate::config::{Config, DatabaseTarget};
use crate::metrics::Metrics;
use crate::store::dump::{self, Contents, RowCounts};
use crate::store::StoreError;

const PREFIX: &str = "bothost-";
const MANIFEST: &str = ".manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: its SHA-256 is {actual}, the manifest says {expected}: the file is damaged")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("database.url: {0}")]
    Config(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a backup holds, next to it as `<file>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The data file's name, in the same directory.
    pub file: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub backend: String,
    /// The newest migration the data has.
    pub schema_version: String,
    pub rows: RowCounts,
    pub sha256: String,
    pub bytes: u64,
    pub bothost_version: String,
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct Backup {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub took: Duration,
}

/// Backs the configured database up into `dir` (default `backup.dir`).
pub async fn create(config: &Config, dir: Option<&Path>) -> Result<Backup, BackupError> {
    let started = Instant::now();
    let target = config.database_target().map_err(BackupError::Config)?;
    let dir = dir.unwrap_or(&config.backup.dir);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_at(dir))?;
    }
    let now = chrono::Utc::now();
    let (backend, extension) = match target {
        DatabaseTarget::Sqlite(_) => ("sqlite", "sqlite"),
        DatabaseTarget::Postgres(_) => ("postgres", "pgdump"),
    };
    let name = format!("{PREFIX}{}.{extension}", now.format("%Y%m%dT%H%M%S%.3fZ"));
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let contents = dump::dump(&target, config.backup.pg_bin_dir.as_deref(), &partial).await;
    let contents: Contents = match contents {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    set_private(&partial)?;
    let (sha256, bytes) = digest(&partial)?;
    std::fs::rename(&partial, &path).map_err(io_at(&path))?;
    let manifest = Manifest {
        file: name,
        created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        backend: backend.to_owned(),
        schema_version: contents.schema_version,
        rows: contents.rows,
        sha256,
        bytes,
        bothost_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let manifest_path = manifest_of(&path);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Manifest {
        path: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&manifest_path, json).map_err(io_at(&manifest_path))?;
    set_private(&manifest_path)?;
    Ok(Backup {
        path,
        manifest,
        took: started.elapsed(),
    })
}

/// Reads `file`'s manifest and checks the file against it.
pub fn verify(file: &Path) -> Result<Manifest, BackupError> {
    let manifest_path = manifest_of(file);
    let text = std::fs::read(&manifest_path).map_err(io_at(&manifest_path))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| BackupError::Manifest {
        path: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    let (actual, _) = digest(file)?;
    if actual != manifest.sha256 {
        return Err(BackupError::Checksum {
            path: file.to_owned(),
            expected: manifest.sha256,
            actual,
        });
    }
    Ok(manifest)
}

/// Every finished backup in `dir` (those with a manifest), newest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(dir)(e)),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && !n.ends_with(MANIFEST))
                && manifest_of(p).exists()
        })
        .collect();
    // The names hold their UTC time, so name order is time order.
    found.sort();
    found.reverse();
    Ok(found)
}

/// Deletes all but the newest `keep` backups in `dir`; answers the deleted.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let old: Vec<PathBuf> = list(dir)?.into_iter().skip(keep).collect();
    for file in &old {
        std::fs::remove_file(file).map_err(io_at(file))?;
        let manifest = manifest_of(file);
        std::fs::remove_file(&manifest).map_err(io_at(&manifest))?;
    }
    Ok(old)
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    pub rows: RowCounts,
    /// Migrations applied after loading (a backup from an older version).
    pub migrated: Vec<String>,
    pub took: Duration,
}

/// Restores `file` into the configured database (see the module's notes).
pub async fn restore(config: &Config, file: &Path, force: bool) -> Result<Restored, BackupError> {
    let started = Instant::now();
    let manifest = verify(file)?;
    let target = config.database_target().map_err(BackupError::Config)?;
    let backend = match target {
        DatabaseTarget::Sqlite(_) => "sqlite",
        DatabaseTarget::Postgres(_) => "postgres",
    };
    if manifest.backend != backend {
        return Err(BackupError::Refused(format!(
            "{} is a {} backup; the configured database is {backend}",
            file.display(),
            manifest.backend
        )));
    }
    let socket = config.control_socket();
    if !force && crate::control::Client::is_listening(&socket).await {
        return Err(BackupError::Refused(format!(
            "a host is serving this configuration (its control socket {} answers): stop it first, \
             or restore anyway with --force",
            socket.display()
        )));
    }
    dump::load(&target, config.backup.pg_bin_dir.as_deref(), file, force).await?;
    let migrated = crate::store::migrate(&target).await?;
    let rows = dump::contents(&target).await?.rows;
    Ok(Restored {
        manifest,
        rows,
        migrated,
        took: started.elapsed(),
    })
}

/// Backs up at every time `backup.schedule` names, prunes to `backup.keep`,
/// and reports each outcome in the log and metrics. A failure is logged and
/// counted, never fatal; the next time is tried as usual.
pub fn spawn_schedule(config: Config, metrics: Metrics) {
    let cron = match config.backup_schedule() {
        Ok(Some(cron)) => cron,
        Ok(None) => return info!("scheduled backups are off (backup.schedule = \"off\")"),
        Err(e) => return error!("backup.schedule {e}"),
    };
    actix_rt::spawn(async move {
        loop {
            if let Err(e) = crate::schedule::sleep_until_next(&cron).await {
                return error!("backup.schedule {e}");
            }
            run_scheduled(&config, &metrics).await;
        }
    });
}

async fn run_scheduled(config: &Config, metrics: &Metrics) {
    match create(config, None).await {
        Ok(backup) => {
            metrics
                .backup_last_success
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
            metrics.backup_duration.set(backup.took.as_secs_f64());
            metrics
                .backup_size_bytes
                .set(i64::try_from(backup.manifest.bytes).unwrap_or(i64::MAX));
            info!(
                file = %backup.path.display(), bytes = backup.manifest.bytes,
                took_ms = backup.took.as_millis() as u64,
                messages = backup.manifest.rows.messages,
                "backup written"
            );
            let keep = usize::try_from(config.backup.keep).unwrap_or(usize::MAX);
            match prune(&config.backup.dir, keep) {
                Ok(deleted) if !deleted.is_empty() => {
                    info!(deleted = deleted.len(), keep, "old backups deleted")
                }
                Ok(_) => {}
                Err(e) => error!("cannot delete old backups: {e}"),
            }
        }
        Err(e) => {
            metrics.backup_failures.inc();
            error!("backup failed: {e}");
        }
    }
}

/// `<file>.manifest.json`.
pub fn manifest_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(MANIFEST);
    PathBuf::from(name)
}

fn digest(path: &Path) -> Result<(String, u64), BackupError> {
    let mut file = std::fs::File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut file, &mut hasher).map_err(io_at(path))?;
    Ok((format!("{:x}", hasher.finalize()), bytes))
}

/// Backups hold every conversation: only their owner may read them.
fn set_private(path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &Path, stamp: &str, with_manifest: bool) -> PathBuf {
        let file = dir.join(format!("{PREFIX}{stamp}.sqlite"));
        std::fs::write(&file, stamp).unwrap();
        if with_manifest {
            std::fs::write(manifest_of(&file), "{}").unwrap();
        }
        file
    }

    #[test]
    fn prune_keeps_the_newest_and_ignores_unfinished_backups() {
        let dir = tempfile::tempdir().unwrap();
        let a = fake(dir.path(), "20261130T010000.000Z", true);
        let b = fake(dir.path(), "20261130T020000.000Z", true);
        let c = fake(dir.path(), "20261130T030000.000Z", true);
        let unfinished = fake(dir.path(), "20261130T040000.000Z", false);
        assert_eq!(list(dir.path()).unwrap(), [c.clone(), b.clone(), a.clone()]);
        assert_eq!(prune(dir.path(), 2).unwrap(), std::slice::from_ref(&a));
        assert!(!a.exists() && !manifest_of(&a).exists());
        assert!(b.exists() && c.exists() && unfinished.exists());
    }

    #[test]
    fn a_damaged_backup_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bothost-x.sqlite");
        std::fs::write(&file, b"data").unwrap();
        let (sha256, bytes) = digest(&file).unwrap();
        let manifest = Manifest {
            file: "bothost-x.sqlite".into(),
            created_at: "2026-11-30T00:00:00.000Z".into(),
            backend: "sqlite".into(),
            schema_version: "1".into(),
            rows: RowCounts {
                users: 0,
                conversations: 0,
                messages: 0,
            },
            sha256,
            bytes,
            bothost_version: "0".into(),
        };
        std::fs::write(manifest_of(&file), serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert_eq!(verify(&file).unwrap(), manifest);
        std::fs::write(&file, b"dat4").unwrap();
        let e = verify(&file).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
