//! Waiting for the next time a cron expression names, in local time: the
//! one clock behind the restart schedule and the backup schedule.
//!
//! Never runs anything itself; a caller loops `sleep_until_next` → work.

use std::time::Duration;

/// How long from now until `cron`'s next time.
pub fn until_next(cron: &croner::Cron) -> Result<Duration, String> {
    let now = chrono::Local::now();
    let next = cron
        .find_next_occurrence(&now, false)
        .map_err(|e| format!("'{}' has no next time: {e}", cron.pattern))?;
    Ok((next - now).to_std().unwrap_or_default())
}

/// Sleeps until `cron`'s next time.
pub async fn sleep_until_next(cron: &croner::Cron) -> Result<(), String> {
    tokio::time::sleep(until_next(cron)?).await;
    Ok(())
}

/// `cron`'s next `n` times, for an operator to check a schedule by.
pub fn next_times(cron: &croner::Cron, n: usize) -> Vec<chrono::DateTime<chrono::Local>> {
    cron.iter_after(chrono::Local::now()).take(n).collect()
}
