//! Shared helpers for the benchmarks: the real `bothost serve` in a temp
//! directory, percentiles and figure printing. Benchmarks print figures;
//! they never assert timings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use bothost::control::{Client, ControlRequest, ControlResponse};
use bothost::status::StatusReport;

/// The directory holding the release `bothost` and `bot-worker` next to
/// this benchmark's own executable, or a plain error telling how to build.
pub fn release_binaries() -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("no directory for the bench binary")?
        .to_owned();
    for needed in ["bothost", "bot-worker"] {
        if !dir.join(needed).exists() {
            bail!(
                "{} is missing: run `cargo build --release --workspace` first",
                dir.join(needed).display()
            );
        }
    }
    Ok(dir)
}

/// Writes `supervisor.toml` into `dir`: a free port, sockets under `run/`,
/// quiet JSON logs, `supervisor_keys` under `[supervisor]`, then `tables`.
pub fn write_config(dir: &Path, supervisor_keys: &str, tables: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("supervisor.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[supervisor]\nruntime_dir = \"run\"\n\
             {supervisor_keys}\n[logging]\nlevel = \"warn\"\nformat = \"json\"\n{tables}"
        ),
    )?;
    Ok(path)
}

/// A real `bothost serve` on a free port, with its config, socket and
/// SQLite file in a temp directory, its log (warnings and errors) in
/// `host.log` there; stopped with SIGTERM when dropped.
pub struct RunningHost {
    child: Child,
    dir: tempfile::TempDir,
    /// `host:port` of its HTTP front end.
    pub addr: String,
}

impl RunningHost {
    /// Starts the host with `supervisor_keys` under `[supervisor]` and
    /// `tables` (bots, limits, ...) after it; returns once it listens.
    pub fn start(supervisor_keys: &str, tables: &str) -> anyhow::Result<Self> {
        let bothost = release_binaries()?.join("bothost");
        let dir = tempfile::tempdir()?;
        let config = write_config(dir.path(), supervisor_keys, tables)?;
        let mut child = Command::new(bothost)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("host.log"))?)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let Some(addr) = line.trim().strip_prefix("bothost listening on http://") else {
            bail!("bothost did not start: {line}");
        };
        let addr = addr.to_owned();
        Ok(Self { child, dir, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("run/control.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running host's status, through its control socket.
    pub async fn status(&self) -> anyhow::Result<StatusReport> {
        status(&mut Client::connect(&self.control_socket()).await?).await
    }

    /// The body of `GET path` on the host's HTTP front end.
    pub fn http_get(&self, path: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.addr)?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default())
    }

    /// SIGTERM, then wait for the host to finish draining and exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()?;
        Ok(())
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
    }
}

/// The PostgreSQL the benchmarks may use: `BOTHOST_BENCH_DATABASE_URL`, or
/// else `BOTHOST_TEST_DATABASE_URL`; `None` when neither is set.
pub fn bench_postgres_url() -> Option<String> {
    std::env::var("BOTHOST_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("BOTHOST_TEST_DATABASE_URL"))
        .ok()
}

/// A schema of its own for one benchmark run, so runs never see each
/// other's rows; [`PgSchema::drop_schema`] removes it afterwards.
pub struct PgSchema {
    admin: diesel_async::AsyncPgConnection,
    name: String,
    /// The database URL with `search_path` set to this schema.
    pub url: String,
}

impl PgSchema {
    pub async fn create(base: &str) -> anyhow::Result<Self> {
        use diesel_async::{AsyncConnection, SimpleAsyncConnection};
        let name = format!("bench_{}", std::process::id());
        let mut admin = diesel_async::AsyncPgConnection::establish(base).await?;
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok(Self { admin, name, url })
    }

    pub async fn drop_schema(mut self) -> anyhow::Result<()> {
        use diesel_async::SimpleAsyncConnection;
        let sql = format!("DROP SCHEMA {} CASCADE", self.name);
        self.admin.batch_execute(&sql).await?;
        Ok(())
    }
}

/// One status report over an open control connection.
pub async fn status(client: &mut Client) -> anyhow::Result<StatusReport> {
    client.send(ControlRequest::Status).await?;
    match client.next().await? {
        ControlResponse::Status(report) => Ok(report),
        other => bail!("unexpected {other:?}"),
    }
}

/// Latency summary of one run.
pub struct Percentiles {
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    /// `samples` need not be sorted; an empty slice gives zeros.
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let idx = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[idx]
        };
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p95, Duration::from_millis(95));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
    }
}
