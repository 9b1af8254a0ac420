//! Shared helpers for the benchmarks: the release `bothost serve` in a temp
//! directory (through `bothost-testkit`, like the tests), percentiles and
//! figure printing. Benchmarks print figures;
//! they never assert timings.

pub mod fake;
pub mod ws;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bothost::status::StatusReport;
pub use bothost_testkit::{bench_database_url, HostProcess, PgSchema};

/// The directory holding the release `bothost` and `bot-worker` next to
/// this benchmark's own executable, or a plain error telling how to build.
pub fn release_binaries() -> anyhow::Result<PathBuf> {
    bothost_testkit::binary_dir()
}

/// A `supervisor.toml`: a free port, sockets under `run/`, quiet JSON logs,
/// `supervisor_keys` under `[supervisor]`, then `tables`.
pub fn config_text(supervisor_keys: &str, tables: &str) -> String {
    format!(
        "[server]\nbind = \"127.0.0.1:0\"\n[supervisor]\nruntime_dir = \"run\"\n\
         {supervisor_keys}\n[logging]\nlevel = \"warn\"\nformat = \"json\"\n{tables}"
    )
}

/// Writes [`config_text`] as `supervisor.toml` into `dir`.
pub fn write_config(dir: &Path, supervisor_keys: &str, tables: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("supervisor.toml");
    std::fs::write(&path, config_text(supervisor_keys, tables))?;
    Ok(path)
}

/// A `[limits]` table far above any benchmark's load, so the figures
/// measure the host, not the rate limiter (which has its own tests).
pub const NO_LIMITS: &str = "[limits]\nmessages_per_minute_per_user = 100000000\n\
    messages_per_minute_per_ip = 100000000\nlogins_per_minute_per_ip = 100000\n\
    websockets_per_ip = 1000000\nwebsockets_per_user = 1000000\n\
    conversations_per_minute_per_user = 1000000\nmax_in_flight_per_user = 100000\n";

/// The release `bothost serve` with `supervisor_keys` under `[supervisor]`
/// and `tables` (bots, limits, ...) after it; returns once it listens.
pub fn start_host(supervisor_keys: &str, tables: &str) -> anyhow::Result<HostProcess> {
    let bothost = release_binaries()?.join("bothost");
    HostProcess::start(&bothost, &config_text(supervisor_keys, tables))
}

/// The running host's status, through its control socket.
pub async fn host_status(host: &HostProcess) -> anyhow::Result<StatusReport> {
    Ok(host.control().await?.status().await?)
}

/// Registers `name` at `base` and starts a conversation with `bot`:
/// (token, conversation id).
pub async fn user_with_conversation(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    password: &str,
    bot: &str,
) -> anyhow::Result<(String, i64)> {
    let body: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"username": name, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    let token = body["token"].as_str().unwrap_or_default().to_owned();
    let conv: serde_json::Value = http
        .post(format!("{base}/api/v1/conversations"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"bot": bot}))
        .send()
        .await?
        .json()
        .await?;
    Ok((token, conv["id"].as_i64().unwrap_or_default()))
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

/// CPU time (utime + stime) of `pid`, from `/proc/PID/stat`. `/proc`
/// counts in USER_HZ, 100 a second on Linux whatever the kernel's HZ.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Every process: (pid, parent pid, command name).
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (left, right) = stat.rsplit_once(')')?;
            let comm = left.split_once('(')?.1.to_owned();
            let ppid = right.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

/// CPU time used so far by a host, its workers (its child processes), the
/// machine's PostgreSQL server processes and this load tool (which shares
/// the cores). Differences of two are what a run cost each side; a worker
/// replaced in between is missed, which the bench's bots (no budget
/// reached) never are.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    pub host: Duration,
    pub workers: Duration,
    pub postgres: Duration,
    pub load_tool: Duration,
}

impl CpuSnapshot {
    pub fn take(host: u32) -> Self {
        let mut snapshot = Self {
            host: cpu_time(host).unwrap_or_default(),
            load_tool: cpu_time(std::process::id()).unwrap_or_default(),
            ..Self::default()
        };
        for (pid, ppid, comm) in processes() {
            let cpu = cpu_time(pid).unwrap_or_default();
            if ppid == host {
                snapshot.workers += cpu;
            } else if comm == "postgres" {
                snapshot.postgres += cpu;
            }
        }
        snapshot
    }

    /// "host 0.412 ms, workers 0.051 ms, PostgreSQL 0.633 ms of CPU per
    /// turn (… turns; the load tool 0.5 ms)".
    pub fn per_turn_since(&self, before: &Self, turns: u64) -> String {
        let per = |now: Duration, then: Duration| {
            now.saturating_sub(then).as_secs_f64() * 1000.0 / turns.max(1) as f64
        };
        format!(
            "host {:.3} ms, workers {:.3} ms, PostgreSQL {:.3} ms of CPU per turn \
             ({turns} turns; the load tool {:.3} ms)",
            per(self.host, before.host),
            per(self.workers, before.workers),
            per(self.postgres, before.postgres),
            per(self.load_tool, before.load_tool)
        )
    }
}

/// How many store operations of each kind a host has run so far (its
/// `bothost_db_query_duration_seconds_count` series). Per turn, the
/// difference of two is the one figure of a run that machine noise does not
/// move: a statement saved shows here even when the CPU figures cannot tell.
#[derive(Debug, Clone, Default)]
pub struct Statements(BTreeMap<String, f64>);

impl Statements {
    const SERIES: &'static str = "bothost_db_query_duration_seconds_count{query=\"";

    pub fn take(host: &HostProcess) -> Self {
        Self::parse(&host.http_get("/metrics").1)
    }

    fn parse(metrics: &str) -> Self {
        Self(
            metrics
                .lines()
                .filter_map(|line| {
                    let (name, value) = line.strip_prefix(Self::SERIES)?.split_once("\"} ")?;
                    Some((name.to_owned(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// "store operations per turn: 3.00 (begin_user_turn 1.00, …)", the
    /// ones run at least once every hundred turns.
    pub fn per_turn_since(&self, before: &Self, turns: u64) -> String {
        let turns = turns.max(1) as f64;
        let per: Vec<(&str, f64)> = self
            .0
            .iter()
            .map(|(name, now)| {
                let then = before.0.get(name).copied().unwrap_or(0.0);
                (name.as_str(), (now - then) / turns)
            })
            .filter(|(_, n)| *n >= 0.01)
            .collect();
        format!(
            "store operations per turn: {:.2} ({})",
            per.iter().map(|(_, n)| n).sum::<f64>(),
            per.iter()
                .map(|(name, n)| format!("{name} {n:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_per_turn_are_the_differences_of_the_counts() {
        let before = Statements::parse(
            "bothost_db_query_duration_seconds_count{query=\"put_reply\"} 10\n\
             bothost_db_query_duration_seconds_sum{query=\"put_reply\"} 0.5\n",
        );
        let after = Statements::parse(
            "bothost_db_query_duration_seconds_count{query=\"begin_user_turn\"} 4\n\
             bothost_db_query_duration_seconds_count{query=\"put_reply\"} 14\n\
             bothost_db_query_duration_seconds_count{query=\"user\"} 0\n",
        );
        assert_eq!(
            after.per_turn_since(&before, 4),
            "store operations per turn: 2.00 (begin_user_turn 1.00, put_reply 1.00)"
        );
    }

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
