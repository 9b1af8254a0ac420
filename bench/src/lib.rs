//! Shared helpers for the benchmarks: the release `bothost serve` in a temp
//! directory (through `bothost-testkit`, like the tests), percentiles and
//! figure printing. Benchmarks print figures;
//! they never assert timings.

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
