//! Orphaned turns: user messages whose turn died with its host.
//!
//! A turn writes its reply down at its first token and every 250 ms after
//! (`chat`), so a host killed mid-reply leaves a `partial` reply with what
//! the user saw. Killed before the first token, it leaves a user message
//! with no reply at all, which would read as "still being answered" for
//! ever. The sweep gives each such message a `failed` reply, so history
//! says what happened and a resend replays that outcome instead of asking
//! the bot a second time.
//!
//! Safe with several hosts on one database: a message is an orphan only
//! when it is older than any live turn can be without a reply row
//! ([`orphan_age`]: a worker's start, then the host's idle deadline for
//! the first token, plus 10 s), so a turn still running on another host is
//! never touched. The sweep runs at start and then every quarter of that
//! age (at most a minute), walking user messages by id from where it
//! stopped.
//!
//! It never writes anything but a `failed` reply to an unanswered message,
//! and that through `Store::append_reply`, which stores one reply per
//! message whoever writes first.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::{now_ms, NewReply, ReplyStatus, Store, StoreError};

/// User messages read per query.
const PAGE: i64 = 1000;

/// How old an unanswered message must be before no turn can still be
/// writing its reply: the longest a worker may take to start, then the
/// longest the host waits for a first token, then 10 s for clocks (hosts
/// keep time with NTP) and slow writes.
pub fn orphan_age(start_timeout: Duration, turn_idle_timeout: Duration) -> Duration {
    start_timeout + turn_idle_timeout + Duration::from_secs(10)
}

/// How often the sweep runs: a quarter of the orphan age, so an orphan is
/// marked soon after it becomes one, and at least every minute.
fn every(age: Duration) -> Duration {
    (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

pub struct Sweep {
    store: Store,
    age: Duration,
    /// Every user message up to this id has been judged.
    after: i64,
}

impl Sweep {
    pub fn new(store: Store, age: Duration) -> Self {
        Self {
            store,
            age,
            after: 0,
        }
    }

    /// One pass: every unanswered user message older than the orphan age
    /// gets a `failed` reply. Stops at the first message too young to
    /// judge, and starts there next time. Returns how many were marked.
    pub async fn run(&mut self) -> Result<usize, StoreError> {
        let age_ms = i64::try_from(self.age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age_ms);
        let mut marked = 0;
        loop {
            let page = self.store.user_messages_after(self.after, PAGE).await?;
            let full = i64::try_from(page.len()).is_ok_and(|n| n == PAGE);
            for (message, answered) in page {
                if message.created_at >= cutoff {
                    return Ok(marked);
                }
                if !answered {
                    self.store
                        .append_reply(NewReply {
                            conversation_id: message.conversation_id,
                            reply_to: message.id,
                            content: "",
                            status: ReplyStatus::Failed,
                            prompt_tokens: None,
                            completion_tokens: None,
                        })
                        .await?;
                    marked += 1;
                }
                self.after = message.id;
            }
            if !full {
                return Ok(marked);
            }
        }
    }
}

/// Runs the sweep now and then every [`every`]`(age)` until `stop` is
/// cancelled: between two passes, never during one (a SQLite call dropped
/// half-way blocks the host's thread; ARCHITECTURE.md's invariants).
pub fn spawn(store: Store, age: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let mut sweep = Sweep::new(store, age);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every(age));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match sweep.run().await {
                Ok(0) => {}
                Ok(marked) => warn!(
                    marked,
                    "messages whose turn died with its host (no reply) are marked failed"
                ),
                // The database may be down: the next pass tries again.
                Err(e) => warn!("cannot look for orphaned messages: {e}"),
            }
        }
    })
}
